"""A faulty measure_bytes for the measuring processes' tests (pipelines/measure_pool.py): it
crashes, hangs or raises on the images whose URL says so, and measures the rest."""

from __future__ import annotations

import os
import signal
import time

from curation.config import CurationConfig
from filters.measure import Measured, measure_bytes


def measure_or_fail(url: str, data: bytes, cfg: CurationConfig) -> Measured:
    """measure_bytes, except: 'crash' in the URL kills the process as a decoder's segfault
    would (SIGKILL: no core file), 'hang' never answers, 'raise' raises, 'unpicklable'
    answers what the parent cannot read."""
    if "crash" in url or url.endswith("/fox.jpg"):
        os.kill(os.getpid(), signal.SIGKILL)
    if "hang" in url:
        time.sleep(3600)
    if "raise" in url or url.endswith("/owl.png"):
        raise ValueError(f"boom in a measuring process: {url}")
    if "unpicklable" in url:
        return Unpicklable(), b""  # type: ignore[return-value]
    return measure_bytes(url, data, cfg)


def _explode() -> None:
    raise RuntimeError("this answer cannot be read back")


class Unpicklable:
    """An answer that pickles in the child and fails to unpickle in the parent."""

    def __reduce__(self) -> tuple:
        return _explode, ()
