"""A periodic one-line progress summary for local runs.

Workers (threads of this process, or the processes of multi_processing) add to counters that
are flushed, at most once a second and at the end of every bundle, to one small JSON file
per process in the folder named by CURATE_PROGRESS_DIR; the CLI sums the files and prints
a line. Without that variable (Dataflow, tests) every call is a no-op.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

ENV = "CURATE_PROGRESS_DIR"
_lock = threading.Lock()
_counts: Counter[str] = Counter()
_last_flush = 0.0


def bump(name: str, n: int = 1) -> None:
    """Add n to a progress counter of this process."""
    if not n or not os.environ.get(ENV):
        return
    with _lock:
        _counts[name] += n
    if time.monotonic() - _last_flush > 1.0:
        flush()


def flush() -> None:
    """Write this process's counters to its file in the progress folder."""
    global _last_flush
    folder = os.environ.get(ENV)
    if not folder:
        return
    with _lock:
        data = json.dumps(dict(_counts))
        _last_flush = time.monotonic()
    path = Path(folder) / f"{os.getpid()}.json"
    tmp = path.with_suffix(f".{threading.get_ident()}.tmp")
    try:
        tmp.write_text(data)
        tmp.replace(path)
    except OSError:
        pass  # progress is a convenience: a full disk must not fail the run


def _total(folder: Path) -> Counter[str]:
    total: Counter[str] = Counter()
    for f in folder.glob("*.json"):
        try:
            total.update(json.loads(f.read_text()))
        except (OSError, ValueError):
            continue  # a file being replaced this instant: counted next time
    return total


class Reporter:
    """Prints `progress: ...` to stderr every `interval` seconds while the run lasts; with an
    interval of 0 or less, nothing (and the workers count nothing)."""

    def __init__(self, interval: float = 10.0) -> None:
        self.interval = interval
        self.folder: Path | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._start = time.monotonic()

    def __enter__(self) -> Reporter:
        with _lock:  # a second run in this process counts from zero
            _counts.clear()
        if self.interval > 0:
            self.folder = Path(tempfile.mkdtemp(prefix="curate-progress-"))
            os.environ[ENV] = str(self.folder)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.folder is None:
            return
        self._stop.set()
        self._thread.join(timeout=5)
        os.environ.pop(ENV, None)
        for f in self.folder.glob("*"):
            f.unlink(missing_ok=True)
        self.folder.rmdir()

    def line(self) -> str:
        """The current summary."""
        c = _total(self.folder) if self.folder else Counter()
        elapsed = max(1e-9, time.monotonic() - self._start)
        images = c["images"]
        return (
            f"progress {elapsed:6.0f}s: {c['candidates']:,} candidates read, "
            f"{c['kept']:,} kept, {c['rejected']:,} rejected, "
            f"{images:,} images ({images / elapsed:.1f}/s)"
        )

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            print(self.line(), file=sys.stderr, flush=True)
