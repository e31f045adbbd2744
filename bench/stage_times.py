"""Time every stage of one `curate` command on Beam's in-memory runner.

Runs `curate` in this process (arguments passed through) with a timer around each bundle
the runner executes (its fused stages: on this runner one bundle a stage), and prints to
stderr when it ends: when each stage started, its wall and this process's CPU seconds (the
measuring children's CPU is not in it), the slowest first. This is how the shard stage's
figures in BENCHMARKS.md and pipelines/spool.py and pipelines/io.py were taken, e.g. on the
10,000-URL list that `bench_images.py --large 10000` serves:

    python bench/stage_times.py run --input LIST --output OUT --overwrite --images-from http \
        --allow-private-network true --nsfw false

TOP (environment, default 15) sets how many stages are printed.
"""

from __future__ import annotations

import atexit
import os
import sys
import time
from typing import Any

from apache_beam.runners.portability.fn_api_runner import fn_runner

_T0 = time.perf_counter()
_rows: list[tuple[str, float, float, float]] = []
_execute_bundle = fn_runner.FnApiRunner._execute_bundle


def _timed(self: Any, context: Any, bundle: Any, bundle_input: Any) -> Any:
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        return _execute_bundle(self, context, bundle, bundle_input)
    finally:
        _rows.append(
            (
                bundle.stage.name,
                wall - _T0,
                time.perf_counter() - wall,
                time.process_time() - cpu,
            )
        )


def _report() -> None:
    if not _rows:
        return
    top = int(os.environ.get("TOP", "15"))
    end = max(start + wall for _, start, wall, _ in _rows)
    print(
        f"{len(_rows)} bundles; first started at {_rows[0][1]:.2f} s, last ended at {end:.2f} s"
        f" (from this script's start); their wall {sum(r[2] for r in _rows):.2f} s, CPU of "
        f"this process {sum(r[3] for r in _rows):.2f} s\n  start    wall     cpu  stage",
        file=sys.stderr,
    )
    for name, start, wall, cpu in sorted(_rows, key=lambda r: -r[2])[:top]:
        print(f"{start:7.2f} {wall:7.2f} {cpu:7.2f}  {name[:160]}", file=sys.stderr)


if __name__ == "__main__":
    fn_runner.FnApiRunner._execute_bundle = _timed
    atexit.register(_report)
    from pipelines.cli import main

    main(sys.argv[1:])
