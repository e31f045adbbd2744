"""Where does an SDK worker's memory grow? RSS before and after every bundle, per worker.

Runs the text stage (`curate run --stop-after text --detect-language false`) on a synthetic
table (bench/gen_candidates.py) with `--direct_running_mode=multi_processing
--direct_num_workers=2`. A `sitecustomize` module, put on the workers' PYTHONPATH, wraps
Beam's BundleProcessor.process_bundle to log each bundle's seconds, RSS before and after,
and the stage's first transforms; `--cap-precombine K` also caps Beam's combiner-lifting
tables at K keys, to test whether they are what grows. Prints the largest growths.

    python bench/trace_worker_memory.py --rows 100000
    python bench/trace_worker_memory.py --rows 1000000 --cap-precombine 10000
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gen_candidates import write_table  # bench/gen_candidates.py, beside this script

CURATE = shutil.which("curate", path=Path(sys.executable).parent) or "curate"
MP_FLAGS = ("--direct_running_mode=multi_processing", "--direct_num_workers=2")

HOOK = """
import os, resource, time
if os.environ.get("CONTROL_API_SERVICE_DESCRIPTOR"):  # only in SDK worker processes
    from apache_beam.runners.worker import bundle_processor, operations
    if os.environ.get("CAP_PRECOMBINE"):
        _init = operations.PGBKCVOperation.__init__
        def _capped(self, *a, **k):
            _init(self, *a, **k)
            self.max_keys = int(os.environ["CAP_PRECOMBINE"])
        operations.PGBKCVOperation.__init__ = _capped
    _process = bundle_processor.BundleProcessor.process_bundle
    _log = open(os.path.join(os.environ["TRACE_DIR"], f"{os.getpid()}.log"), "a", buffering=1)
    def _rss():
        with open(f"/proc/{os.getpid()}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    def process_bundle(self, *a, **k):
        names = sorted(t.unique_name for t in self.process_bundle_descriptor.transforms.values())
        before, t0 = _rss(), time.time()
        try:
            return _process(self, *a, **k)
        finally:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            _log.write(f"{time.time() - t0:.1f}\\t{before:.0f}\\t{_rss():.0f}\\t{peak:.0f}\\t"
                       + " | ".join(n for n in names if "/" in n)[:300] + "\\n")
    bundle_processor.BundleProcessor.process_bundle = process_bundle
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--cap-precombine", type=int, default=0, help="cap Beam's tables (0: no)")
    ap.add_argument("--top", type=int, default=8, help="largest growths to print")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="trace_worker_memory_") as tmp:
        work = Path(tmp)
        (work / "hook").mkdir()
        (work / "hook" / "sitecustomize.py").write_text(HOOK)
        (work / "trace").mkdir()
        table = write_table(args.rows, work / "candidates.parquet", seed=0)
        env = {**os.environ, "PYTHONPATH": str(work / "hook"), "TRACE_DIR": str(work / "trace")}
        if args.cap_precombine:
            env["CAP_PRECOMBINE"] = str(args.cap_precombine)
        cmd = [CURATE, "run", "--input", str(table), "--output", str(work / "out"), "--overwrite"]
        cmd += ["--stop-after", "text", "--detect-language", "false", *MP_FLAGS]
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, timeout=1800)
        for log in sorted((work / "trace").glob("*.log")):
            rows = [line.rstrip("\n").split("\t") for line in log.read_text().splitlines()]
            peak = max(float(r[3]) for r in rows)
            print(f"worker {log.stem}: {len(rows)} bundles, peak RSS {peak:,.0f} MB")
            for r in sorted(rows, key=lambda r: float(r[1]) - float(r[2]))[: args.top]:
                grew = float(r[2]) - float(r[1])
                print(f"  +{grew:6.0f} MB ({r[1]} -> {r[2]}), {r[0]} s: {r[4][:150]}")


if __name__ == "__main__":
    main()
