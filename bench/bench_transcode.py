"""Benchmark: what storing images in formats the trainers read costs (issue #20).

Every image of ../shared/data/images that passes the header and size rules, in memory, one
process: `filters.image.stored_image` with `encode_format` original (most bytes kept as
fetched; GIF, TIFF, JPEG 2000, AVIF, MPO, ... transcoded) and jpg (everything JPEG), against
the measuring it adds to (`filters.measure.measure_bytes` without transcoding: header, size
rule, draft decode, pHash, sha256) in the same round. Rounds interleaved; medians per image
by original format.

    python bench/bench_transcode.py --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from curation.config import CurationConfig
from curation.record import Rejection
from filters.image import check_size, image_phash, read_header, sha256, stored_image

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "images"


def images() -> list[tuple[str, bytes, object]]:
    cfg = CurationConfig()
    found = []
    for path in sorted(
        p for p in DATA.rglob("*") if p.is_file() and p.suffix not in (".md", ".csv")
    ):
        data = path.read_bytes()
        header = read_header(data, cfg.max_image_pixels)
        if isinstance(header, Rejection) or check_size(header, cfg) is not None:
            continue
        kind = header.format + (" (animated)" if header.frames > 1 else "")
        found.append((kind, data, header))
    return found


def timed(fn, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)
    items = images()
    per: dict[tuple[str, str], list[float]] = defaultdict(list)
    for _ in range(args.rounds):
        for kind, data, header in items:

            def measure(data=data) -> None:
                image_phash(data)
                sha256(data)

            per[(kind, "measure")].append(timed(measure))
            for fmt in ("original", "jpg"):
                per[(kind, fmt)].append(
                    timed(lambda data=data, h=header, f=fmt: stored_image(data, h, f))
                )
    kinds = sorted({k for k, _ in per})
    print(
        "| original format | images | measuring ms | + stored, original ms "
        "| + stored, --encode-format jpg ms |"
    )
    print("|---|--:|--:|--:|--:|")
    counts = defaultdict(int)
    for kind, _, _ in items:
        counts[kind] += 1
    for kind in kinds:
        row = [statistics.median(per[(kind, col)]) * 1e3 for col in ("measure", "original", "jpg")]
        print(f"| {kind} | {counts[kind]} | {row[0]:.2f} | {row[1]:.2f} | {row[2]:.2f} |")


if __name__ == "__main__":
    main()
