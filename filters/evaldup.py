"""Duplicates of downstream evaluation images (ALIGN §3), in two stages.

ALIGN removed duplicates and near-duplicates of its test images (ILSVRC-2012, Flickr30K,
MSCOCO) from the training data. A pHash within a fixed distance cannot do this at the size of
those sets: unrelated photos collide at the distances where crops of a copy sit (issue #19).

Stage 1 (candidates, generous): the 64-bit pHash of the web image, and of the web image with
its uniform borders (letterbox bars) trimmed, is looked up in an index holding the pHashes of
several crops and the mirror of every eval image: a cropped copy hashes like the matching crop
of its original. Lookups use multi-index hashing (four 16-bit bands, each probed within 2 bits)
over dense bucket tables, so the cost per web image stays flat as the eval set grows and every
variant within `CANDIDATE_DISTANCE` is found.

Stage 2 (verification, discriminating): a small grey thumbnail of the web image is compared with
the candidate's crop resampled from the eval image's stored thumbnail, after a short search over
the crop box that aligns them; both the pixels' and the gradients' normalised cross-correlation
must be high. A copy keeps its thumbnail whatever its size, encoding, colour or brightness; two
different photos whose low frequencies agree (what pHash reads) still differ in their pixels and
edges.
"""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import combinations

import numpy as np
from numpy.typing import NDArray
from PIL import Image
from scipy.fft import dct

from curation import reasons
from curation.record import Rejection
from filters.image import HASH_SIDE, decode

# The crops (left, top, right, bottom, as fractions) and the mirror of each eval image that
# stage 1 hashes: the transforms to catch are 5% off every side and 10% off one side; the 10%
# centre covers crops between. With them every listed transform of the shared photos hashes
# within 8 bits of a variant, most at 0-2 (measured while choosing them); without, 5% crops reach
# 20 bits, where unrelated photos already collide.
VARIANTS: tuple[tuple[float, float, float, float, bool], ...] = (
    (0.0, 0.0, 1.0, 1.0, False),
    (0.05, 0.05, 0.95, 0.95, False),
    (0.1, 0.1, 0.9, 0.9, False),
    (0.1, 0.0, 1.0, 1.0, False),
    (0.0, 0.1, 1.0, 1.0, False),
    (0.0, 0.0, 0.9, 1.0, False),
    (0.0, 0.0, 1.0, 0.9, False),
    (0.0, 0.0, 1.0, 1.0, True),
)
# The side of the grey thumbnail stored per eval image, from which stage 2 resamples any crop;
# and the side of the web image's thumbnail compared with it. While choosing them (64-px eval
# thumbnails, no alignment), unrelated pairs reached a pixel correlation of 0.924 at 16 px and
# 0.89-0.90 at 24 and 32 px; 48 px keeps the index at 2.3 KB an image (136 MB for 56,000).
EVAL_THUMB_SIDE = 48
WEB_THUMB_SIDE = 24
# Stage 1: four 16-bit bands probed within 2 bits find every variant within 4 * 2 + 3 = 11
# bits (pigeonhole); copies of the listed transforms hash within 8 of a variant.
BAND_BITS = 16
BAND_RADIUS = 2
CANDIDATE_DISTANCE = 11
# At most this many candidates (nearest first) are verified per view: bounds the cost of a
# web image whose hash sits in a crowded region (flat or near-uniform images).
MAX_VERIFIED = 16
# Stage 2 thresholds (bench/bench_evaldup.py on the shared photos): every listed transform's
# copies score >= 0.942 as min(pixels, gradients) after alignment (the lowest: 5% off every
# side, and brightness +15% at 0.951); over all 178,538 ordered pairs of distinct pictures,
# with no stage 1 in front, the best crop variant reaches at most 0.903 on pixels, 0.857 on
# gradients and 0.724 on both together.
MIN_PIXEL_NCC = 0.93
MIN_GRADIENT_NCC = 0.90
# A thumbnail flatter than this (grey levels of standard deviation) carries no identity:
# a flat colour matches any other flat colour, so it never matches anything.
MIN_THUMB_STD = 4.0
# Letterbox bars: a border line is uniform when its grey levels span at most this many steps
# (JPEG noise in a flat bar stays within it) and sit this close to the outermost line's level.
_BAR_SPAN = 12
_BAR_LEVEL = 8
# A trimmed view is added only when the bars take at least this fraction of a side, and what
# is left keeps at least this fraction of each side (a 3:1 photo padded to a square keeps 1/3).
_MIN_BAR = 0.02
_MIN_KEEP = 0.25
# The alignment search: each edge of the crop box moves by these steps (fractions of the
# eval image) while the pixel correlation improves.
_ALIGN_STEPS = (0.04, 0.02, 0.01)
# Below this pixel correlation at the variant's own box, no search is tried: copies cropped
# between the variants start at >= 0.6 (7% off every side against the 5% variant; bench).
_ALIGN_FROM = 0.5
_MIN_BOX_SIDE = 0.5

FORMAT_VERSION = 1
_FORMAT_NAME = "align-curation-eval-index"
_STAGE = reasons.STAGE_IMAGE

Box = tuple[float, float, float, float]


@dataclass(frozen=True, slots=True)
class EvalFeatures:
    """What the index keeps of one eval image: its variants' pHashes and a grey thumbnail."""

    hashes: tuple[int, ...]  # one 64-bit pHash per entry of VARIANTS, in that order
    thumb: bytes  # EVAL_THUMB_SIDE x EVAL_THUMB_SIDE grey levels, row-major


@dataclass(frozen=True, slots=True)
class WebView:
    """One region of a web image as the matcher sees it: its pHash and its thumbnail."""

    phash: int
    thumb: bytes  # WEB_THUMB_SIDE x WEB_THUMB_SIDE grey levels, row-major


@dataclass(frozen=True, slots=True)
class WebFeatures:
    """What a web image needs to be matched: the whole image, and without letterbox bars."""

    views: tuple[WebView, ...]


@dataclass(frozen=True, slots=True)
class EvalMatch:
    """The eval image a web image copies, and how well it matched."""

    name: str
    score: float  # the smaller of the pixel and gradient correlations, in [-1, 1]
    distance: int  # stage 1: pHash bits between the web view and the variant
    variant: int  # index into VARIANTS


def grey_image(data: bytes) -> Image.Image | Rejection:
    """Decode to an upright greyscale image, as small as JPEG draft allows for the pHash
    (the decode that filters/image.py's `image_phash` does)."""
    im = decode(data, min_side=HASH_SIDE, grey=True)
    if isinstance(im, Rejection):
        return im
    return im if im.mode == "L" else im.convert("L")


def compute_eval_features(data: bytes) -> EvalFeatures | Rejection:
    """The index's features of one eval image's bytes, or why it cannot be decoded."""
    im = grey_image(data)
    return im if isinstance(im, Rejection) else eval_features_of(im)


def eval_features_of(im: Image.Image) -> EvalFeatures:
    """The index's features of a decoded greyscale (mode L) eval image."""
    _check_grey(im)
    mirrored = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    hashes = tuple(
        _phash(mirrored if flip else im, _pixel_box(im, (x0, y0, x1, y1)))
        for x0, y0, x1, y1, flip in VARIANTS
    )
    side = EVAL_THUMB_SIDE
    thumb = im.resize((side, side), Image.Resampling.LANCZOS).tobytes()
    return EvalFeatures(hashes, thumb)


def compute_web_features(data: bytes) -> WebFeatures | Rejection:
    """The matcher's features of one web image's bytes, or why it cannot be decoded."""
    im = grey_image(data)
    return im if isinstance(im, Rejection) else web_features_of(im)


def web_features_of(im: Image.Image) -> WebFeatures:
    """The matcher's features of a decoded greyscale (mode L) web image: the whole image,
    and the image inside its letterbox bars when it has any."""
    _check_grey(im)
    boxes = [(0, 0, im.width, im.height)]
    trimmed = trim_box(np.asarray(im))
    if trimmed != boxes[0]:
        boxes.append(trimmed)
    side = WEB_THUMB_SIDE
    views = tuple(
        WebView(_phash(im, box), im.resize((side, side), Image.Resampling.LANCZOS, box).tobytes())
        for box in boxes
    )
    return WebFeatures(views)


def trim_box(pixels: NDArray[np.uint8]) -> tuple[int, int, int, int]:
    """The (left, top, right, bottom) pixel box inside uniform border bars, or the whole
    image when there are none worth trimming."""
    height, width = pixels.shape
    lines = pixels.astype(np.int16)
    top = _bar(lines)
    bottom = _bar(lines[::-1])
    left = _bar(lines.T)
    right = _bar(lines.T[::-1])
    whole = (0, 0, width, height)
    if max(top + bottom, 0) < _MIN_BAR * height and left + right < _MIN_BAR * width:
        return whole
    if height - top - bottom < _MIN_KEEP * height or width - left - right < _MIN_KEEP * width:
        return whole  # a nearly uniform image: nothing inside to trim to
    return (left, top, width - right, height - bottom)


def _bar(lines: NDArray[np.int16]) -> int:
    """How many lines from the first one are uniform at the first one's level."""
    level = int(np.median(lines[0]))
    uniform = (lines.max(axis=1) - lines.min(axis=1) <= _BAR_SPAN) & (
        np.abs(lines.mean(axis=1) - level) <= _BAR_LEVEL
    )
    broken = np.flatnonzero(~uniform)
    return int(broken[0]) if broken.size else len(lines)


def _check_grey(im: Image.Image) -> None:
    if im.mode != "L":
        raise ValueError(f"expected a greyscale (mode L) image, got mode {im.mode}")


def _pixel_box(im: Image.Image, box: Box) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = box
    return (x0 * im.width, y0 * im.height, x1 * im.width, y1 * im.height)


def _phash(im: Image.Image, box: tuple[float, float, float, float]) -> int:
    """imagehash's pHash (32 x 32 Lanczos, 2-D DCT-II, the 8 x 8 lowest frequencies against
    their median) of a region, without cropping a copy first."""
    pixels = np.asarray(im.resize((32, 32), Image.Resampling.LANCZOS, box), dtype=np.float64)
    low = dct(dct(pixels, axis=0), axis=1)[:8, :8]
    bits = np.packbits((low > np.median(low)).ravel())
    return int.from_bytes(bits.tobytes(), "big")


# --- Stage 2: aligned thumbnails.


def _normalised(values: NDArray[np.float32]) -> NDArray[np.float32] | None:
    """Zero-mean, unit-norm vector, or None for a flat thumbnail."""
    flat = values.ravel() - values.mean()
    if float(flat.std()) < MIN_THUMB_STD:
        return None
    return flat / np.float32(np.linalg.norm(flat))


def _gradient(values: NDArray[np.float32]) -> NDArray[np.float32]:
    gx = np.diff(values, axis=1)[:-1, :]
    gy = np.diff(values, axis=0)[:, :-1]
    return np.hypot(gx, gy)


def _ncc(a: NDArray[np.float32] | None, b: NDArray[np.float32] | None) -> float:
    return -1.0 if a is None or b is None else float(a @ b)


def _gradient_vector(values: NDArray[np.float32]) -> NDArray[np.float32] | None:
    g = _gradient(values).ravel()
    g = g - g.mean()
    norm = float(np.linalg.norm(g))
    return None if norm < 1e-6 else g / np.float32(norm)


class _Verifier:
    """Aligns one web thumbnail with crops of one eval thumbnail and scores the best."""

    def __init__(self, web_thumb: bytes) -> None:
        side = WEB_THUMB_SIDE
        self.web = np.frombuffer(web_thumb, np.uint8).reshape(side, side).astype(np.float32)
        self.web_pixels = _normalised(self.web)
        self.web_gradient = _gradient_vector(self.web)

    def score(self, eval_thumb: Image.Image, start: Box) -> tuple[float, float]:
        """(pixel NCC, gradient NCC) at the crop box near `start` that best fits the pixels."""
        if self.web_pixels is None:
            return (-1.0, -1.0)
        box = start
        crop = _resampled(eval_thumb, box)
        best = _ncc(self.web_pixels, _normalised(crop))
        if best >= MIN_PIXEL_NCC:
            gradient = _ncc(self.web_gradient, _gradient_vector(crop))
            if gradient >= MIN_GRADIENT_NCC:
                return best, gradient  # aligned already: the variant's own crop
        if best < _ALIGN_FROM:
            return best, -1.0  # too far for a small move of the box to reach a match
        for step in _ALIGN_STEPS:
            improved = True
            while improved:
                improved = False
                for edge in range(4):
                    for sign in (-1.0, 1.0):
                        moved = _moved(box, edge, sign * step)
                        if moved is None:
                            continue
                        value = self._pixels(eval_thumb, moved)
                        if value > best + 1e-6:
                            best, box, improved = value, moved, True
        crop = _resampled(eval_thumb, box)
        return best, _ncc(self.web_gradient, _gradient_vector(crop))

    def _pixels(self, eval_thumb: Image.Image, box: Box) -> float:
        return _ncc(self.web_pixels, _normalised(_resampled(eval_thumb, box)))


def _moved(box: Box, edge: int, delta: float) -> Box | None:
    edges = list(box)
    edges[edge] = min(1.0, max(0.0, edges[edge] + delta))
    x0, y0, x1, y1 = edges
    if x1 - x0 < _MIN_BOX_SIDE or y1 - y0 < _MIN_BOX_SIDE or tuple(edges) == box:
        return None
    return (x0, y0, x1, y1)


def _resampled(eval_thumb: Image.Image, box: Box) -> NDArray[np.float32]:
    side, s = WEB_THUMB_SIDE, EVAL_THUMB_SIDE
    x0, y0, x1, y1 = box
    crop = eval_thumb.resize(
        (side, side), Image.Resampling.LANCZOS, (x0 * s, y0 * s, x1 * s, y1 * s)
    )
    return np.asarray(crop, dtype=np.float32)


# --- The index.


def _probe_masks() -> NDArray[np.uint32]:
    """Every 16-bit mask of at most BAND_RADIUS bits, the flips probed in each band."""
    masks = [0]
    for r in range(1, BAND_RADIUS + 1):
        for bits in combinations(range(BAND_BITS), r):
            masks.append(sum(1 << b for b in bits))
    return np.array(masks, dtype=np.uint32)


_MASKS = _probe_masks()
_BANDS = 64 // BAND_BITS
_BAND_BASE = (np.arange(_BANDS, dtype=np.uint32) * ((1 << BAND_BITS) + 1))[:, None]


class EvalMatchIndex:
    """Eval images by name, matched against web images in two stages (see the module doc)."""

    def __init__(self, entries: Iterable[tuple[str, EvalFeatures]]) -> None:
        ordered = sorted(entries, key=lambda e: e[0])
        names = [name for name, _ in ordered]
        if len(set(names)) != len(names):
            raise ValueError("eval index entries must have distinct names")
        n, v, s = len(ordered), len(VARIANTS), EVAL_THUMB_SIDE
        hashes = np.zeros((n, v), dtype=np.uint64)
        thumbs = np.zeros((n, s, s), dtype=np.uint8)
        for i, (_, features) in enumerate(ordered):
            if len(features.hashes) != v or len(features.thumb) != s * s:
                raise ValueError(f"features of {names[i]!r} do not fit this index's format")
            hashes[i] = np.array(features.hashes, dtype=np.uint64)
            thumbs[i] = np.frombuffer(features.thumb, np.uint8).reshape(s, s)
        self._set(np.array(names, dtype=np.str_), hashes, thumbs)

    def _set(
        self, names: NDArray[np.str_], hashes: NDArray[np.uint64], thumbs: NDArray[np.uint8]
    ) -> None:
        self.names = names
        self.hashes = hashes
        self.thumbs = thumbs
        flat = hashes.ravel()  # entry i's variant v at i * len(VARIANTS) + v
        self._flat = flat
        # One bucket table for all bands: band b's bucket k spans
        # members[offsets[b * (2**16 + 1) + k] : offsets[b * (2**16 + 1) + k + 1]].
        buckets = 1 << BAND_BITS
        offsets = np.zeros(_BANDS * (buckets + 1), dtype=np.int64)
        members = []
        for band in range(_BANDS):
            keys = ((flat >> np.uint64(band * BAND_BITS)) & np.uint64(buckets - 1)).astype(np.int64)
            members.append(np.argsort(keys, kind="stable").astype(np.int32))
            counts = np.bincount(keys, minlength=buckets)
            start = band * (buckets + 1)
            offsets[start + 1 : start + buckets + 1] = np.cumsum(counts) + band * len(flat)
            offsets[start] = band * len(flat)
        self._offsets = offsets
        self._members = np.concatenate(members) if members else np.zeros(0, np.int32)

    def __len__(self) -> int:
        return len(self.names)

    def candidates(self, phash: int) -> list[tuple[int, int]]:
        """Stage 1: (distance, flat variant id) of every variant within CANDIDATE_DISTANCE
        bits of `phash`, nearest first (ties by id)."""
        if not len(self.names):
            return []
        keys = np.array([(phash >> (b * BAND_BITS)) & 0xFFFF for b in range(_BANDS)], np.uint32)
        probes = (np.bitwise_xor(_MASKS[None, :], keys[:, None]) + _BAND_BASE).ravel()
        starts, ends = self._offsets[probes], self._offsets[probes + 1]
        sizes = ends - starts
        total = int(sizes.sum())
        if not total:
            return []
        # The members of every probed bucket, gathered without a Python loop; an id found in
        # several bands is measured more than once, cheaper than deduplicating first.
        shift = np.repeat(starts - np.cumsum(sizes) + sizes, sizes)
        ids = self._members[np.arange(total) + shift]
        distances = np.bitwise_count(self._flat[ids] ^ np.uint64(phash))
        keep = distances <= CANDIDATE_DISTANCE
        ids, first = np.unique(ids[keep], return_index=True)
        distances = distances[keep][first]
        order = np.lexsort((ids, distances))
        return [(int(distances[k]), int(ids[k])) for k in order]

    def matches(self, web: WebFeatures) -> list[EvalMatch]:
        """Every eval image that a view of the web image verifiably copies, best first
        (ties by name); one match per eval image."""
        best: dict[int, EvalMatch] = {}
        v = len(VARIANTS)
        for view in web.views:
            candidates = self.candidates(view.phash)[:MAX_VERIFIED]
            if not candidates:
                continue
            verifier = _Verifier(view.thumb)
            for distance, flat_id in candidates:
                entry, variant = divmod(flat_id, v)
                if entry in best and best[entry].score >= 1.0:
                    continue
                x0, y0, x1, y1, flip = VARIANTS[variant]
                pixels, gradient = verifier.score(self._thumb(entry, flip), (x0, y0, x1, y1))
                if pixels < MIN_PIXEL_NCC or gradient < MIN_GRADIENT_NCC:
                    continue
                match = EvalMatch(str(self.names[entry]), min(pixels, gradient), distance, variant)
                if entry not in best or match.score > best[entry].score:
                    best[entry] = match
        return sorted(best.values(), key=lambda m: (-m.score, m.name))

    def match(self, web: WebFeatures) -> EvalMatch | None:
        """The eval image this web image copies (the best verified match), or None."""
        found = self.matches(web)
        return found[0] if found else None

    def thumbnail(self, name: str) -> Image.Image | None:
        """The grey thumbnail the index keeps of eval image `name` (what stage 2 compares
        with), or None if the index has no such name."""
        i = int(np.searchsorted(self.names, name))
        if i >= len(self.names) or str(self.names[i]) != name:
            return None
        return self._thumb(i, False)

    def _thumb(self, entry: int, flip: bool) -> Image.Image:
        pixels = self.thumbs[entry]
        return Image.fromarray(pixels[:, ::-1].copy() if flip else pixels, mode="L")

    # --- Serialisation: a zip of .npy arrays (np.load reads it), written deterministically.

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the index; the same entries give the same bytes."""
        arrays = {
            "format": np.array([FORMAT_VERSION, EVAL_THUMB_SIDE], dtype=np.int64),
            "variants": np.array(VARIANTS, dtype=np.float64),
            "names": self.names,
            "hashes": self.hashes,
            "thumbs": self.thumbs,
        }
        tmp = f"{os.fspath(path)}.tmp"
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as archive:
            archive.comment = _FORMAT_NAME.encode()
            for key, array in arrays.items():
                # A fixed timestamp: zipfile stamps the current time by default.
                info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                buffer = io.BytesIO()
                np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
                archive.writestr(info, buffer.getvalue())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> EvalMatchIndex:
        """Read an index written by `save`; refuses another format or variant set."""
        with np.load(path, allow_pickle=False) as data:
            fmt = data["format"]
            if int(fmt[0]) != FORMAT_VERSION or int(fmt[1]) != EVAL_THUMB_SIDE:
                raise ValueError(
                    f"{path}: eval index format {fmt.tolist()}, expected "
                    f"{[FORMAT_VERSION, EVAL_THUMB_SIDE]}"
                )
            if not np.array_equal(data["variants"], np.array(VARIANTS, dtype=np.float64)):
                raise ValueError(f"{path}: built with other crop variants; rebuild it")
            names, hashes, thumbs = data["names"], data["hashes"], data["thumbs"]
        index = cls.__new__(cls)
        index._set(names.astype(np.str_), hashes.astype(np.uint64), thumbs.astype(np.uint8))
        return index
