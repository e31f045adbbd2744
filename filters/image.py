"""The image decode guard and ALIGN's image rules (§3), as pure functions over bytes.

Cheapest first: the header alone gives the format, the size and the EXIF orientation, so
the pixel limit and the size/aspect rules are decided before any pixel is decoded. Only
then is the image decoded, in JPEG draft mode (a reduced DCT decode) when a thumbnail is
all that the hash and the NSFW model need.
"""

from __future__ import annotations

import hashlib
import io
import re
import struct
import warnings
import zlib
from dataclasses import dataclass

import imagehash
import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from curation import reasons
from curation.config import CurationConfig
from curation.record import Rejection

_STAGE = reasons.STAGE_IMAGE
# The smallest side the NSFW model needs (open_nsfw resizes to 256 x 256).
THUMBNAIL_SIDE = 256
# The smallest side decoded for the pHash, which reads a 32 x 32 greyscale image; JPEG draft
# mode then decodes 1/4 of the pixels of a 256-511 px photo and 1/16 to 1/64 of larger
# ones. Measured (bench/bench_phash.py): copies (resized, re-encoded, greyscale, cropped) and
# unrelated photos at the same distances as from a decode >= 256 px, where 64 lets 1/4-size
# copies drift to 4 bits, the near-duplicate threshold; 0.66x the time on the 16
# evaluation JPEGs (~640 x 480).
HASH_SIDE = 128
_ORIENTATION_TAG = 0x0112
# Pillow's errors on hostile files are of many kinds; all mean "cannot decode".
DECODE_ERRORS = (
    UnidentifiedImageError,
    OSError,
    ValueError,
    SyntaxError,
    EOFError,
    IndexError,
    KeyError,
    TypeError,
    ZeroDivisionError,
    struct.error,
    zlib.error,
    MemoryError,
)

# We enforce our own pixel limit from the header; Pillow's global one would raise first.
Image.MAX_IMAGE_PIXELS = None
# A truncated file must fail, not decode grey: never let Pillow pad missing data.
ImageFile.LOAD_TRUNCATED_IMAGES = False


@dataclass(frozen=True, slots=True)
class ImageHeader:
    """What the header says, before decoding: format and oriented size."""

    format: str
    width: int  # after applying the EXIF orientation
    height: int
    orientation: int
    frames: int


def read_header(data: bytes, max_pixels: int) -> ImageHeader | Rejection:
    """Open an image lazily and read its header; reject unreadable files and pixel bombs."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            im = Image.open(io.BytesIO(data))
            width, height = im.size
            fmt = im.format or "unknown"
            orientation = _orientation(im)
            frames = getattr(im, "n_frames", 1) if fmt in ("GIF", "WEBP", "PNG", "MPO") else 1
    except DECODE_ERRORS as e:
        return Rejection(_STAGE, reasons.IMAGE_UNREADABLE, _error(e))
    if width <= 0 or height <= 0:
        return Rejection(_STAGE, reasons.IMAGE_UNREADABLE, f"size {width}x{height}")
    if width * height > max_pixels:
        # A decompression bomb: decoding would allocate width*height*channels bytes.
        return Rejection(_STAGE, reasons.IMAGE_TOO_MANY_PIXELS, f"{width}x{height}")
    if orientation in (5, 6, 7, 8):
        width, height = height, width  # rotated by 90 degrees when displayed
    return ImageHeader(fmt, width, height, orientation, frames)


def _orientation(im: Image.Image) -> int:
    try:
        value = im.getexif().get(_ORIENTATION_TAG, 1)
    except DECODE_ERRORS:
        return 1  # an unreadable EXIF block: show the image as stored, as browsers do
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _error(e: BaseException) -> str:
    # Pillow names the stream it read, with its memory address: dropped, so that a detail
    # is the same in every run and process.
    return _ADDRESS.sub("", f"{type(e).__name__}: {e}")[:200]


_ADDRESS = re.compile(r" object at 0x[0-9a-fA-F]+")


def check_size(header: ImageHeader, cfg: CurationConfig) -> Rejection | None:
    """ALIGN §3: keep images whose shorter side is > 200 px and aspect ratio is < 3."""
    short, long = sorted((header.width, header.height))
    if short <= cfg.min_image_side:
        return Rejection(_STAGE, reasons.IMAGE_TOO_SMALL, f"{header.width}x{header.height}")
    if long / short >= cfg.max_aspect_ratio:
        return Rejection(_STAGE, reasons.IMAGE_ASPECT_RATIO, f"{header.width}x{header.height}")
    return None


def to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode to RGB: alpha over white, 16-bit scaled down, palette expanded."""
    if im.mode == "RGB":
        return im
    if im.mode.startswith(("I;16", "I", "F")):
        # 16/32-bit greyscale: stretch to 8 bits by the image's own range.
        arr = np.asarray(im, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scaled = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
        im = Image.fromarray(scaled.astype(np.uint8), mode="L")
    if im.mode == "P":
        im = im.convert("RGBA") if "transparency" in im.info else im.convert("RGB")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")


def decode(
    data: bytes, min_side: int | None = THUMBNAIL_SIDE, grey: bool = False
) -> Image.Image | Rejection:
    """Decode the first frame to RGB, upright; with `min_side`, as small as JPEG draft allows
    while keeping both sides >= min_side. With `grey`, a colour JPEG is decoded to its luma
    alone (mode L), all that a pHash reads; other images still come back as RGB."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # Pillow opens animations on their first frame, which is the one we keep.
            im = Image.open(io.BytesIO(data))
            if min_side and im.format == "JPEG":
                w, h = im.size
                scale = min(w, h) / min_side
                size = (int(w / scale) + 1, int(h / scale) + 1) if scale >= 2 else None
                if size or grey:
                    im.draft("L" if grey else "RGB", size)
            im.load()
            im = ImageOps.exif_transpose(im) or im
            return im if grey and im.mode == "L" else to_rgb(im)
    except DECODE_ERRORS as e:
        return Rejection(_STAGE, reasons.IMAGE_UNREADABLE, _error(e))


def phash(im: Image.Image) -> str:
    """The 64-bit perceptual hash (imagehash's pHash) as 16 hex digits."""
    return str(imagehash.phash(im, hash_size=8))


def image_phash(data: bytes) -> str | Rejection:
    """The pHash of encoded image bytes, decoded only as large as the hash needs (the one
    way candidates and evaluation images are hashed, so that their distances compare)."""
    # A JPEG's own luma (its Y channel, the ITU-R 601 weights that imagehash's RGB -> L
    # conversion uses too), not RGB converted back: no colour conversion or chroma
    # upsampling. 0.88x the time of decode + pHash on the benchmark corpus; hashes are
    # within 2 bits of the RGB path's (8 of 600 moved), distances as before
    # (bench/bench_phash.py).
    im = decode(data, min_side=HASH_SIDE, grey=True)
    return im if isinstance(im, Rejection) else phash(im)


def sha256(data: bytes) -> str:
    """Content hash of the original bytes."""
    return hashlib.sha256(data).hexdigest()


def resized(im: Image.Image, mode: str, max_side: int) -> Image.Image:
    """Resize like img2dataset: keep_ratio (longer side <= max_side) or center_crop."""
    if mode == "center_crop":
        return ImageOps.fit(im, (max_side, max_side), Image.Resampling.LANCZOS)
    if mode == "keep_ratio" and max(im.size) > max_side:
        im = im.copy()
        im.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return im


# --- The stored image: bytes that the trainers' decoders read (issue #20's table).
#
# Kept as fetched: JPEG, PNG and WebP without alpha, the formats open_clip's WebDataset
# filter keeps (jpg/jpeg/png/webp) and tf.io.decode_image reads. Everything else (GIF, APNG
# and animated WebP: their first frame; TIFF, BMP, ICO, JPEG 2000, AVIF, HEIC, MPO, WebP
# with alpha) is transcoded: to PNG when it has transparent pixels (a flat background would
# change the picture, and PNG keeps the alpha that RGBA-aware loaders use), else to JPEG.

ENCODE_FORMATS = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}  # --encode-format -> Pillow
KEPT_AS_FETCHED = frozenset({"JPEG", "PNG", "WEBP"})


def stored_image(
    data: bytes,
    header: ImageHeader,
    encode_format: str = "original",
    quality: int = 95,
    resize_mode: str = "none",
    resize_max_side: int = 512,
) -> tuple[bytes, str, int, int] | Rejection:
    """The bytes the shards store for an image, their Pillow format name and their size:
    the fetched bytes when trainers read them as they are, else the first frame, upright,
    re-encoded (see above). `encode_format` jpg/png/webp re-encodes every image to that
    format (fetched bytes already in it are kept); a resize mode always re-encodes."""
    target = ENCODE_FORMATS.get(encode_format)
    # The header decides for most web images: no second open of the file (a WebP is opened
    # for its mode, below: one with alpha is transcoded).
    wanted = (target,) if target else ("JPEG", "PNG")
    if resize_mode == "none" and header.frames == 1 and header.format in wanted:
        return data, header.format, header.width, header.height
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            im = Image.open(io.BytesIO(data))
            if resize_mode == "none" and _keep_as_fetched(im, header, target):
                return data, header.format, header.width, header.height
            im.load()
            im = ImageOps.exif_transpose(im) or im
    except DECODE_ERRORS as e:
        return Rejection(_STAGE, reasons.IMAGE_UNREADABLE, _error(e))
    im = _eight_bit(im)
    transparent = _has_transparency(im)
    if resize_mode != "none":
        im = resized(im, resize_mode, resize_max_side)
    fmt = target or ("PNG" if transparent else "JPEG")
    if fmt == "JPEG":
        im = to_rgb(im)  # alpha over white: JPEG has none
    elif im.mode not in ("RGB", "RGBA", "L", "LA"):
        im = im.convert("RGBA" if transparent else "RGB")
    buf = io.BytesIO()
    if fmt == "PNG":
        im.save(buf, format="PNG", compress_level=6)
    else:
        im.save(buf, format=fmt, quality=quality)
    return buf.getvalue(), fmt, im.width, im.height


def _keep_as_fetched(im: Image.Image, header: ImageHeader, target: str | None) -> bool:
    if header.frames > 1:
        return False  # animations are stored as their first frame
    if target is not None:
        return header.format == target
    if header.format == "WEBP":
        # tf.io.decode_image cannot read a WebP with an alpha channel, opaque or not.
        return im.mode not in ("RGBA", "LA", "PA") and "transparency" not in im.info
    return header.format in KEPT_AS_FETCHED


def _eight_bit(im: Image.Image) -> Image.Image:
    """16/32-bit and CMYK images in 8-bit modes the encoders take (alpha and palette kept)."""
    if im.mode.startswith(("I;16", "I", "F")) or im.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        return to_rgb(im)
    if im.mode == "P":
        return im.convert("RGBA") if "transparency" in im.info else im.convert("RGB")
    if im.mode in ("RGBa", "La", "PA"):
        return im.convert("RGBA")
    return im


def _has_transparency(im: Image.Image) -> bool:
    if im.mode not in ("RGBA", "LA"):
        return False
    low, _ = im.getchannel("A").getextrema()
    return low < 255


# Magic numbers of the image formats we accept, sniffed before trusting Content-Type.
_MAGIC = (
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"BM", "image/bmp"),
    (b"II*\x00", "image/tiff"),
    (b"MM\x00*", "image/tiff"),
    (b"\x00\x00\x01\x00", "image/x-icon"),
    (b"\x00\x00\x00\x0cjP  ", "image/jp2"),
    (b"\xff\x4f\xff\x51", "image/jp2"),
)


def sniff_image(head: bytes) -> str | None:
    """The image media type from magic bytes, or None if these are not image bytes."""
    for magic, mime in _MAGIC:
        if head.startswith(magic):
            return mime
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head[4:8] == b"ftyp" and head[8:12] in (b"avif", b"avis", b"heic", b"heix", b"mif1"):
        return "image/avif" if head[8:12] in (b"avif", b"avis") else "image/heic"
    return None
