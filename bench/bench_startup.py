"""What the NSFW rule adds to a run's start: Beam's RunInference module as Beam imports it
(which pulls in torch and scipy for its ModelManager whenever torch is installed), against
pipelines/nsfw.py's import of the same module without them; and the README's sample run
with NSFW on against the same run with it off.

Each measurement is a fresh process; the variants interleaved (order rotated); ratio = time
over the first variant's time in the same round. Needs torch installed (the trainer's extra)
for the first pair to differ.

    python bench/bench_startup.py --rounds 7 --write
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.util import find_spec
from pathlib import Path

import common  # bench/common.py, beside this script

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- bench_startup:start -->", "<!-- bench_startup:end -->"


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def _curate(out: Path, *flags: str) -> list[str]:
    sample = str(ROOT / "sample" / "crawl.warc.gz")
    run = ["run", "--input", sample, "--output", str(out), "--overwrite"]
    return [sys.executable, "-m", "pipelines.cli", *run, "--images-from", "archive", *flags]


def timed(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True, cwd=ROOT)
    return time.perf_counter() - start


def table(groups: dict[str, list[str]], rounds: int) -> str:
    names = list(groups)
    seconds: dict[str, list[float]] = {n: [] for n in names}
    ratios: dict[str, list[float]] = {n: [] for n in names}
    timed(groups[names[0]])  # warm the disk cache
    for r in range(rounds):
        k = r % len(names)
        for n in names[k:] + names[:k]:
            seconds[n].append(timed(groups[n]))
        for n in names:
            ratios[n].append(seconds[n][-1] / seconds[names[0]][-1])
    return "".join(
        f"| {n} | {statistics.median(seconds[n]):.2f} ({min(seconds[n]):.2f}–"
        f"{max(seconds[n]):.2f}) | {statistics.median(ratios[n]):.2f} "
        f"({min(ratios[n]):.2f}–{max(ratios[n]):.2f}) |\n"
        for n in names
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    if find_spec("torch") is None:
        print("torch is not installed: Beam's import would not pull it in either")
    check = "import sys; assert ('torch' in sys.modules) == {}"
    imports = {
        "`import apache_beam.ml.inference.base` (as Beam imports it)": _python(
            "import apache_beam.ml.inference.base;" + check.format(find_spec("torch") is not None)
        ),
        "`import pipelines.nsfw` (the same module, without its ModelManager)": _python(
            "import pipelines.nsfw;" + check.format(False)
        ),
    }
    with tempfile.TemporaryDirectory(prefix="bench_startup-") as tmp:
        runs = {
            "README sample, `--nsfw false`": _curate(Path(tmp) / "off", "--nsfw", "false"),
            "README sample, NSFW on (the default)": _curate(Path(tmp) / "on"),
        }
        import_rows = table(imports, args.rounds)
        run_rows = table(runs, args.rounds)
    head = "| {} | seconds (median, min–max) | × first row (median of per-round ratios, min–max) |"
    section = (
        "## What the NSFW rule adds to the start of a run (`bench/bench_startup.py`)\n\n"
        f"{datetime.date.today()}, `python bench/bench_startup.py --rounds {args.rounds} "
        f"--write`. Machine: {common.machine(['apache-beam', 'torch'])}; load average "
        f"{os.getloadavg()[0]:.1f} when written. Each a fresh process; rounds interleaved, "
        "order rotated.\n\n"
        "Beam 2.77's RunInference module imports its ModelManager, and with it torch and "
        "scipy, whenever torch is installed (the trainer's extra installs it); the NSFW rule "
        "never uses the ModelManager. Since session 8, `pipelines/nsfw.py` imports the module "
        "with the ModelManager marked absent:\n\n"
        + head.format("process")
        + "\n|---|--:|--:|\n"
        + import_rows
        + "\nThe README's sample crawl (12 images kept), NSFW off and on; the difference is "
        "the rule's whole cost on a small run, its import, the model's load and 12+ scores:\n\n"
        + head.format("run")
        + "\n|---|--:|--:|\n"
        + run_rows
    )
    common.publish(common.unwrap(section), START, END, args.write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
