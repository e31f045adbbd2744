"""Run every benchmark and rewrite BENCHMARKS.md: one command for the whole performance suite.

    python bench/run_all.py            # everything (~1 hour on 2 cores)
    python bench/run_all.py --quick    # smaller sizes and fewer repeats (~15 minutes)

Each benchmark rewrites its own section of BENCHMARKS.md (figures are medians over repeated
runs, as ratios to a baseline timed in the same invocation); this script then refreshes the
machine line at the top. The img2dataset comparison needs img2dataset in its own venv first:
`python3 -m venv /tmp/i2d && /tmp/i2d/bin/pip install img2dataset` (bench_images.py's
--img2dataset points at it); a benchmark that fails is reported and the others still run.
bench_nsfw_int8.py is left out: it needs `onnx`, which the project does not depend on (run it
by hand after `pip install onnx`).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

ROOT = Path(__file__).resolve().parents[1]

FULL = [
    ["bench/bench_extract.py", "--repeats", "7"],
    ["bench/bench_language.py", "--repeats", "7"],
    ["bench/bench_text_stage.py", "--repeats", "3", "--repeats-large", "1"],
    ["bench/bench_runner_memory.py", "--repeats", "2"],
    ["bench/bench_phash.py", "--rounds", "7"],
    ["bench/bench_nsfw_threads.py", "--rounds", "7"],
    ["bench/bench_startup.py", "--rounds", "7"],
    ["bench/bench_spool.py", "--n", "10000", "--rounds", "9"],
    ["bench/bench_images.py", "--n", "2000", "--rounds", "3", "--repeats", "9"],
]
QUICK = [
    ["bench/bench_extract.py", "--repeats", "5"],
    ["bench/bench_language.py", "--repeats", "5"],
    ["bench/bench_text_stage.py", "--sizes", "10000,100000", "--repeats", "3", "--mp-sizes", ""],
    ["bench/bench_runner_memory.py", "--sizes", "10000,100000", "--repeats", "1"],
    ["bench/bench_phash.py", "--rounds", "5"],
    ["bench/bench_nsfw_threads.py", "--rounds", "5"],
    ["bench/bench_startup.py", "--rounds", "3"],
    ["bench/bench_spool.py", "--n", "2000", "--rounds", "5"],
    ["bench/bench_images.py", "--n", "500", "--small", "125", "--rounds", "3", "--repeats", "5"],
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes, fewer repeats")
    ap.add_argument("--only", help="comma-separated names, e.g. extract,images")
    args = ap.parse_args()
    plan = QUICK if args.quick else FULL
    if args.only:
        wanted = {f"bench/bench_{n.strip()}.py" for n in args.only.split(",")}
        plan = [cmd for cmd in plan if cmd[0] in wanted]
    failed = []
    for cmd in plan:
        start = time.monotonic()
        print(f"== {' '.join(cmd)} --write", flush=True)
        result = subprocess.run([sys.executable, *cmd, "--write"], cwd=ROOT)
        print(f"== {cmd[0]}: exit {result.returncode} in {time.monotonic() - start:.0f} s")
        if result.returncode:
            failed.append(cmd[0])
    path = ROOT / "BENCHMARKS.md"
    text = path.read_text()
    line = f"Machine of the last full run: {common.machine()}."
    text = re.sub(r"^Machine of the last full run: .*$", line, text, flags=re.M)
    if line not in text:
        text = text.replace("\n\n", f"\n\n{line}\n\n", 1)
    path.write_text(text)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
