"""Time the main process spends in garbage collection during one `curate` command.

Runs `curate` in this process (arguments passed through) with a gc.callbacks hook, and
prints the collections and seconds by generation to stderr when it ends. pipelines/run.py
freezes the modules and the built graph for the run (_RUN_FROZEN); this is how that was
measured, e.g. on the 10,000-URL list that `bench_images.py --large 10000` serves:

    python bench/gc_time.py run --input LIST --output OUT --overwrite --images-from http \
        --allow-private-network true --nsfw false
"""

from __future__ import annotations

import atexit
import gc
import sys
import time
from typing import Any

seconds = {0: 0.0, 1: 0.0, 2: 0.0}
counts = {0: 0, 1: 0, 2: 0}
_started = [0.0]


def _hook(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _started[0] = time.perf_counter()
    else:
        generation = info["generation"]
        seconds[generation] += time.perf_counter() - _started[0]
        counts[generation] += 1


def _report() -> None:
    parts = [f"gen {g}: {counts[g]} collections, {seconds[g]:.2f} s" for g in seconds]
    print("garbage collection, main process: " + "; ".join(parts), file=sys.stderr)


if __name__ == "__main__":
    gc.callbacks.append(_hook)
    atexit.register(_report)
    from pipelines.cli import main

    sys.exit(main(sys.argv[1:]))
