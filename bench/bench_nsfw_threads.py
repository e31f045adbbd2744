"""The slowest stage, made faster: open_nsfw with one onnxruntime thread vs one per core.

The image-stage profile (bench_images.py) puts open_nsfw at ~60% of the end-to-end wall
time. Scores do not depend on the thread count; the speed does. Medians over interleaved
rounds, as a ratio to the one-thread baseline in the same round.

    python bench/bench_nsfw_threads.py --rounds 7 --write
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import time
from pathlib import Path

from common import write_marked_section  # bench/common.py, beside this script

from filters.image import decode
from filters.nsfw import OpenNsfwScorer

START, END = "<!-- bench_nsfw_threads:start -->", "<!-- bench_nsfw_threads:end -->"
EVALSETS = Path(__file__).resolve().parents[2] / "shared" / "data" / "evalsets"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    paths = sorted(p for p in EVALSETS.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
    images = [decode(p.read_bytes()) for p in paths] * 4
    scorers = {1: OpenNsfwScorer(threads=1), 0: OpenNsfwScorer(threads=0)}
    scores = {t: s.score_batch(images[:16]) for t, s in scorers.items()}  # warm-up
    assert (
        scores[1] == scores[0]
        or max(abs(a - b) for a, b in zip(scores[1], scores[0], strict=True)) < 1e-5
    )
    per_image: dict[int, list[float]] = {1: [], 0: []}
    ratios = []
    for r in range(args.rounds):
        order = (1, 0) if r % 2 == 0 else (0, 1)
        got = {}
        for t in order:
            start = time.perf_counter()
            for i in range(0, len(images), 16):
                scorers[t].score_batch(images[i : i + 16])
            got[t] = (time.perf_counter() - start) / len(images) * 1000
            per_image[t].append(got[t])
        ratios.append(got[0] / got[1])
    one, all_ = statistics.median(per_image[1]), statistics.median(per_image[0])
    section = (
        "## The slowest stage: open_nsfw threads (`bench/bench_nsfw_threads.py`)\n\n"
        f"{datetime.date.today()}, `python bench/bench_nsfw_threads.py --rounds {args.rounds} "
        f"--write`; {len(images)} images (the 16 eval photos, 4 times), batches of 16, "
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} when written.\n\n"
        "| onnxruntime threads | ms/image (median) | × one thread (median of per-round ratios) |\n"
        "|---|--:|--:|\n"
        f"| 1 (before) | {one:.1f} | 1.00 |\n"
        f"| one per core (after, the local default) | {all_:.1f} | "
        f"{statistics.median(ratios):.2f} (min {min(ratios):.2f}, max {max(ratios):.2f}) |\n\n"
        "Scores are identical. The local default now uses every core for the model, since the "
        "in-memory runner runs one bundle at a time; on Dataflow, where many SDK threads share "
        "a worker, it stays at one thread to avoid oversubscription (`--nsfw-threads` sets it)."
    )
    print(section)
    if args.write:
        write_marked_section(START, END, section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
