"""Measuring fetched images in child processes: `MeasurePool` runs filters/measure.py's
`measure_bytes` there, so that the measuring of one worker uses every core, and a decoder
that crashes or hangs on a hostile file takes down a child, not the worker.

Why processes: measuring holds the GIL for nearly all of its ~1.3 ms an image, so in the
fetch threads it ran on one core (BENCHMARKS.md, "image path"). On the in-memory runner
the pool starts with the run and the text rules' language detection uses its children
before the fetch step takes it: the stages that share it are handed one `WorkerPool`.
"""

from __future__ import annotations

import contextlib
import subprocess
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

from curation import reasons
from curation.config import CurationConfig
from curation.record import Rejection
from filters.measure import Measured, MeasureSettings
from pipelines.measure_child import Child, ChildDied, MeasureError

_IMAGE = reasons.STAGE_IMAGE

# What a child runs, "module:function" with measure_bytes' signature (tests name a faulty
# one); the module must be importable in a fresh interpreter.
DEFAULT_TARGET = "filters.measure:measure_bytes"

__all__ = [
    "DEFAULT_TARGET",
    "MeasureError",
    "MeasurePool",
    "PoolUnavailable",
    "WorkerPool",
    "borrow_warm_pool",
    "take_pool",
    "warm_pool",
]


class PoolUnavailable(RuntimeError):
    """The measuring processes cannot start here (the message says why); measure in-process."""


def _kill_all(procs: list[subprocess.Popen]) -> None:
    # At interpreter exit (or when the pool is collected) without close(): a child that
    # hangs in a decoder would otherwise outlive us.
    for proc in procs:
        with contextlib.suppress(OSError):
            proc.kill()


@dataclass(frozen=True)
class WorkerPool:
    """The measuring processes of a run as the stages that share them are handed it: a
    small picklable description; the live `MeasurePool` is made in each worker process
    that uses it (or taken warm there, see `warm_pool`)."""

    processes: int
    settings: MeasureSettings
    timeout: float
    target: str = DEFAULT_TARGET
    # The detector the children load ahead of the text rules; None: they detect nothing.
    language_detector: str | None = None

    def take(self) -> MeasurePool:
        """This process's pool for the fetch step (the warm one, once), closed by the caller."""
        return take_pool(self)

    def borrow(self) -> MeasurePool | None:
        """The warm pool for the text rules, left for `take`; None if none is warm."""
        return borrow_warm_pool(self)

    def warm(self) -> contextlib.AbstractContextManager[None]:
        """Start this process's pool now, for the stages that use it later in the run."""
        return warm_pool(self)


class MeasurePool:
    """`measure_bytes` in `processes` child processes, called from many threads at once.

    A call blocks its thread, not the GIL. Each child works through its queue while the
    threads that wait for it are parked. An image on which a child dies, or which takes
    longer than `timeout` seconds (from when it was queued), is measured once more, alone,
    in a quarantine child: only if that one dies too does the image get
    `image_decoder_crashed`, so the images that shared the first child with it are measured
    as usual. An exception raised by measure_bytes comes back as MeasureError with the
    child's traceback. If a child cannot start (its function does not import, or no process
    can be made), every call raises PoolUnavailable at once: the caller measures itself.
    """

    def __init__(
        self,
        processes: int,
        settings: MeasureSettings | CurationConfig,
        timeout: float = 120.0,
        target: str = DEFAULT_TARGET,
    ) -> None:
        if processes < 1:
            raise ValueError(f"a MeasurePool needs at least one process, got {processes}")
        if timeout <= 0:
            raise ValueError(f"a MeasurePool needs a timeout above 0 s, got {timeout}")
        self.settings, self.timeout, self.target = settings, timeout, target
        self._lock = threading.Lock()  # guards _children, _started, _closed, _unavailable
        self._closed = False
        self._unavailable: PoolUnavailable | None = None
        self._started: list[subprocess.Popen] = []
        self._finalizer = weakref.finalize(self, _kill_all, self._started)
        self._alone_lock = threading.Lock()
        self._alone: Child | None = None
        # Not awaited here: the children start (~0.3 s, imports) while the first images
        # are fetched; a call waits for its child only if that child is not up yet.
        with self._lock:
            self._children = [self._start() for _ in range(processes)]

    def _start(self) -> Child:
        # Called with self._lock held.
        if self._closed:
            raise RuntimeError("the MeasurePool is closed")
        if self._unavailable is not None:
            raise self._unavailable
        try:
            child = Child(self.settings, self.target)
        except OSError as e:
            self._unavailable = PoolUnavailable(f"cannot start a measuring process: {e}")
            raise self._unavailable from e
        self._started.append(child.proc)
        return child

    def _await_ready(self, child: Child) -> None:
        try:
            answer = child.ready.result(60)
        except (ChildDied, FutureTimeout):
            child.kill()
            answer = ("failed", child.describe())
        if answer != ("ready",):
            child.kill()
            with self._lock:
                self._unavailable = self._unavailable or PoolUnavailable(
                    f"a measuring process could not start: {answer[-1]} (its error is on "
                    "stderr); measuring in the fetch threads instead"
                )
                raise self._unavailable

    def measure(self, url: str, data: bytes) -> Measured:
        """measure_bytes(url, data, settings), in a child; blocks the calling thread."""
        child = self._child()
        try:
            answer = child.submit(url, data).result(self.timeout)
        except ChildDied:
            return self._alone_retry(url, data)
        except FutureTimeout:
            # It may be this image or one queued before it: the child goes, and each of
            # its images is tried again alone.
            child.kill()
            return self._alone_retry(url, data)
        return _unpack(answer, data)

    def _live_children(self) -> list[Child]:
        """The children, a dead one replaced (its ready answer is awaited by the caller)."""
        with self._lock:
            if self._unavailable is not None:
                raise self._unavailable
            for i, child in enumerate(self._children):
                if child.dead:
                    self._children[i] = self._start()
            if not self._children:
                raise RuntimeError("the MeasurePool is closed")
            return list(self._children)

    def _child(self) -> Child:
        child = min(self._live_children(), key=lambda c: len(c.pending))
        self._await_ready(child)  # at once when it is up
        return child

    def detect_languages(
        self, items: Sequence[tuple[str, str | None]], detector: str
    ) -> list[str | None]:
        """filters.language.detect_languages(items, detector), the items split evenly over
        the children, which run their parts at once; the same answers as in this process.

        Raises MeasureError if a part fails in any way (an exception there, a child that
        dies or does not answer within the timeout): the caller detects here instead."""
        if not items:
            return []
        children = self._live_children()
        size = -(-len(items) // len(children))
        parts = [list(items[i : i + size]) for i in range(0, len(items), size)]
        futures = []
        for child, part in zip(children, parts, strict=False):
            self._await_ready(child)
            futures.append(child.submit_languages(part, detector))
        langs: list[str | None] = []
        deadline = time.monotonic() + self.timeout
        for child, future in zip(children, futures, strict=False):
            try:
                answer = future.result(max(0.0, deadline - time.monotonic()))
            except FutureTimeout:
                child.kill()  # restarted by the next call
                raise MeasureError(f"no language answer within {self.timeout:g} s") from None
            except ChildDied as e:
                raise MeasureError(f"language detection: {e}") from None
            if answer[0] == "error":
                raise MeasureError(f"{answer[1]}: {answer[2]}\n\nIn the child:\n{answer[3]}")
            langs.extend(answer[1])
        return langs

    def prepare_languages(self, detector: str) -> None:
        """Have every child load the language model now (not awaited): its first texts
        then find it loaded."""
        with self._lock:
            children = [c for c in self._children if not c.dead]
        for child in children:
            child.submit_languages([("warm up", None)], detector)

    def _alone_retry(self, url: str, data: bytes) -> Measured:
        with self._alone_lock:
            if self._alone is None or self._alone.dead:
                with self._lock:
                    self._alone = self._start()
                self._await_ready(self._alone)
            child = self._alone
            try:
                answer = child.submit(url, data).result(self.timeout)
            except ChildDied:
                return Rejection(_IMAGE, reasons.IMAGE_DECODER_CRASHED, child.describe())
            except FutureTimeout:
                child.kill()
                detail = f"no answer within {self.timeout:g} s"
                return Rejection(_IMAGE, reasons.IMAGE_DECODER_CRASHED, detail)
        return _unpack(answer, data)

    def close(self, wait: float = 10.0) -> None:
        """Stop every child (each also stops by itself when this process's pipes close)."""
        with self._lock:
            self._closed = True
            children, self._children = self._children, []
        with self._alone_lock:
            if self._alone is not None:
                children.append(self._alone)
                self._alone = None
        deadline = time.monotonic() + wait
        for child in children:
            child.close(max(0.1, deadline - time.monotonic()))
        self._finalizer()  # anything still running (none, normally)

    def __enter__(self) -> MeasurePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# Pools started ahead of need (warm_pool), each with the WorkerPool it was made for.
_WARM: list[tuple[WorkerPool, MeasurePool]] = []
_WARM_LOCK = threading.Lock()


@contextlib.contextmanager
def warm_pool(spec: WorkerPool) -> Iterator[None]:
    """Start a pool's children now, for this process's first `take_pool(spec)`; on leaving,
    close the pool if nothing took it. Each child also loads spec's language detector.

    The local runner builds the pipeline and runs the text rules (seconds) before its first
    image is fetched, while the other cores idle: the children start (~0.3 s each) then.
    """
    try:
        pool = MeasurePool(spec.processes, spec.settings, spec.timeout, spec.target)
    except PoolUnavailable:
        yield  # the fetch step finds out again, and says so
        return
    if spec.language_detector:
        pool.prepare_languages(spec.language_detector)
    with _WARM_LOCK:
        _WARM.append((spec, pool))
    try:
        yield
    finally:
        with _WARM_LOCK:
            untaken = any(p is pool for _, p in _WARM)
            _WARM[:] = [(k, p) for k, p in _WARM if p is not pool]
        if untaken:
            pool.close()


def borrow_warm_pool(spec: WorkerPool) -> MeasurePool | None:
    """The pool warm_pool started for spec, if any, left for take_pool."""
    with _WARM_LOCK:
        return next((pool for key, pool in _WARM if key == spec), None)


def take_pool(spec: WorkerPool) -> MeasurePool:
    """The pool warm_pool started for spec (once), else a new one; the caller closes it."""
    with _WARM_LOCK:
        for i, (key, pool) in enumerate(_WARM):
            if key == spec:
                del _WARM[i]
                return pool
    return MeasurePool(spec.processes, spec.settings, spec.timeout, spec.target)


def _unpack(answer: tuple[Any, ...], data: bytes) -> Measured:
    if answer[0] == "error":
        _, kind, text, trace = answer
        raise MeasureError(f"{kind}: {text}\n\nIn the measuring process:\n{trace}")
    outcome = answer[1]
    if not isinstance(outcome, Rejection) and outcome[1] is None:
        return outcome[0], data  # the stored bytes are the original: not sent back
    return outcome
