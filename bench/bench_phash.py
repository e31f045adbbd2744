"""Benchmark: how large to decode an image for its pHash. Speed and distances, side by side.

pHash reads a 32 x 32 greyscale image, so the decode for it can be small: JPEG draft mode
then decodes a fraction of the pixels. This compares the decode sizes (shorter side >= 256,
what the hash used before, against >= HASH_SIDE and smaller ones) on the real photos in
../shared/data: decode + pHash time per image (one core, rounds interleaved, ratio to 256 in
the same round), how far each moves an image's hash from the 256 one, and the distances the
thresholds rest on: transformed copies of the 16 evaluation photos (resized, re-encoded,
greyscale, cropped) to their original, and the closest pair of unrelated photos.

    python bench/bench_phash.py --rounds 7 --write
"""

from __future__ import annotations

import argparse
import datetime
import io
import itertools
import os
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import common  # bench/common.py, beside this script
from images_corpus import real_images  # bench/images_corpus.py, beside this script
from PIL import Image

from curation.record import Rejection
from filters.image import HASH_SIDE, decode, image_phash, phash

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
START, END = "<!-- bench_phash:start -->", "<!-- bench_phash:end -->"
BASE = 256
OURS = (HASH_SIDE, True)  # what filters.image.image_phash does


def _jpeg(im: Image.Image, quality: int = 85) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _crop(im: Image.Image, left: float, top: float, right: float, bottom: float) -> Image.Image:
    w, h = im.size
    return im.crop((int(w * left), int(h * top), int(w * (1 - right)), int(h * (1 - bottom))))


# The copies README's distances are stated for: name -> bytes of the copy.
COPIES: dict[str, Callable[[Image.Image], bytes]] = {
    "1/2 size": lambda im: _jpeg(im.resize((im.width // 2, im.height // 2))),
    "1/4 size": lambda im: _jpeg(im.resize((im.width // 4, im.height // 4))),
    "JPEG quality 30": lambda im: _jpeg(im, 30),
    "greyscale": lambda im: _jpeg(im.convert("L").convert("RGB")),
    "5% cropped off one side": lambda im: _jpeg(_crop(im, 0.05, 0, 0, 0)),
    "5% cropped off every side": lambda im: _jpeg(_crop(im, 0.05, 0.05, 0.05, 0.05)),
}


def hamming(a: str, b: str) -> int:
    return (int(a, 16) ^ int(b, 16)).bit_count()


# A way to hash: (shorter side decoded, JPEG decoded to its luma alone).
Variant = tuple[int, bool]


def hash_at(data: bytes, variant: Variant) -> str | None:
    side, grey = variant
    im = decode(data, min_side=side, grey=grey)
    return None if isinstance(im, Rejection) else phash(im)


def label(variant: Variant) -> str:
    side, grey = variant
    text = f"{side}, luma" if grey else f"{side}"
    if variant == OURS:
        return f"{text} (image_phash)"
    return f"{text} (before)" if variant == (BASE, False) else text


def photos() -> tuple[list[bytes], list[bytes], list[bytes]]:
    """(every readable photo for speed, the 16 evaluation photos, the unrelated photos)."""
    evals = sorted(
        p for p in (DATA / "evalsets").rglob("*") if p.suffix.lower() in (".jpg", ".jpeg")
    )
    unrelated = sorted((DATA / "images" / "skimage").iterdir())
    unrelated += [DATA / "images" / "pillow" / n for n in ("flower.jpg", "hopper.jpg")]
    everything, _ = real_images([DATA / "evalsets", DATA / "images"])  # what the guard reads
    read = lambda paths: [p.read_bytes() for p in paths]  # noqa: E731
    return [data for _, data in everything], read(evals), read(unrelated)


def timed(
    images: Sequence[bytes], sides: Sequence[Variant], rounds: int
) -> dict[Variant, list[float]]:
    times: dict[Variant, list[float]] = {s: [] for s in sides}
    for r in range(rounds + 1):  # the first round warms up
        for side in [*sides[r % len(sides) :], *sides[: r % len(sides)]]:
            t0 = time.perf_counter()
            for data in images:
                hash_at(data, side)
            if r:
                times[side].append((time.perf_counter() - t0) / len(images))
    return times


def distances(evals: list[bytes], unrelated: list[bytes], side: Variant) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {name: [] for name in COPIES}
    for data in evals:
        original = Image.open(io.BytesIO(data)).convert("RGB")
        h = hash_at(data, side)
        for name, make in COPIES.items():
            out[name].append(hamming(h, hash_at(make(original), side)))
    hashes = [hash_at(d, side) for d in [*evals, *unrelated]]
    out["closest unrelated pair"] = [
        min(hamming(a, b) for a, b in itertools.combinations(hashes, 2))
    ]
    return out


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--rounds", type=int, default=7, help="timed rounds (>= 5 advised)")
    ap.add_argument("--write", action="store_true", help="rewrite the section in BENCHMARKS.md")
    args = ap.parse_args(argv)
    if hasattr(os, "sched_setaffinity"):  # one core: less migration noise on a shared box
        os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})
    sides: list[Variant] = [(BASE, False), (HASH_SIDE, False), OURS, (64, False), (32, False)]
    images, evals, unrelated = photos()
    for data in images:  # the row marked image_phash is what the pipeline computes
        ours = image_phash(data)
        assert hash_at(data, OURS) == (None if isinstance(ours, Rejection) else ours)
    times = timed(images, sides, args.rounds)
    photo_times = timed(evals, sides, args.rounds)  # JPEG photos of web size
    base = (BASE, False)
    base_hashes = [hash_at(d, base) for d in images]
    speed = [
        f"| decode: shorter side >= | all {len(images)}: ms/image | × 256 (min–max) "
        f"| the {len(evals)} JPEG photos: ms/image | × 256 (min–max) | hashes moved "
        "| bits moved: mean / max |",
        "|--:|--:|--:|--:|--:|--:|--:|",
    ]

    def cells(t: dict[Variant, list[float]], side: Variant) -> str:
        ratios = [a / b for a, b in zip(t[side], t[base], strict=True)]
        return (
            f"{1e3 * statistics.median(t[side]):.2f} "
            f"| {statistics.median(ratios):.2f} ({min(ratios):.2f}–{max(ratios):.2f})"
        )

    for side in sides:
        moved = [hamming(a, hash_at(d, side)) for a, d in zip(base_hashes, images, strict=True)]
        speed.append(
            f"| {label(side)} | {cells(times, side)} | {cells(photo_times, side)} "
            f"| {sum(m > 0 for m in moved)} of {len(moved)} "
            f"| {statistics.mean(moved):.2f} / {max(moved)} |"
        )
    dist = {s: distances(evals, unrelated, s) for s in sides}
    head = " | ".join(f">= {label(s)}" for s in sides)
    rows = [
        f"| pHash distance (range over the {len(evals)} photos) | {head} |",
        "|---" + "|--:" * len(sides) + "|",
    ]
    for name in dist[base]:
        ranges = " | ".join(f"{min(dist[s][name])}–{max(dist[s][name])}" for s in sides)
        rows.append(f"| {name} | {ranges} |")
    section = f"""## Decode size for the pHash (`bench/bench_phash.py`)

{datetime.date.today().isoformat()}, `python bench/bench_phash.py --rounds {args.rounds}
--write`. Machine: {common.machine(["pillow", "imagehash"])}. {len(images)} readable photos
of `../shared/data` (images/ and evalsets/), in memory, one process pinned to one core;
decode (JPEG draft mode where the format allows; "luma": a JPEG decoded to its Y channel
alone, which is what `image_phash` does) + pHash, medians over {args.rounds} rounds
after a warm-up, the sizes interleaved (order rotated), ratio = per-round time over the
>= {BASE} time of the same round. Moved = the hash differs from the >= {BASE} hash of the
same image (all photos). The {len(evals)} evaluation photos are JPEGs of ~640 × 480, the size
of most web photos; most of the others are PNG, GIF or small, which draft mode cannot reduce.

{chr(10).join(speed)}

The distances the thresholds rested on (the opt-in near_dup_distance 4, and 12 for the
pHash eval rule that filters/evaldup.py replaced): each copy of the {len(evals)} evaluation photos
against its original, both hashed the same way, and the closest pair among those and
{len(unrelated)} unrelated photos:

{chr(10).join(rows)}"""
    common.publish(common.unwrap(section), START, END, args.write)


if __name__ == "__main__":
    main()
