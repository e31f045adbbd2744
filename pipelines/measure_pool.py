"""Measuring fetched images in child processes: `MeasurePool` runs filters/measure.py's
`measure_bytes` there, so that the measuring of one worker uses every core, and a decoder
that crashes or hangs on a hostile file takes down a child, not the worker.

Why processes: a measure is ~1.3 ms of CPU an image (a JPEG draft decode, the pHash), and
nearly all of it holds the GIL (py-spy). In the fetch threads it ran on one core, and the
32 fetch threads then waited for the GIL as well. With the local runner's one process, a
child per core is the only way to the other cores (Beam's multi-process mode costs more in
its data plane than it gains: session 4's figures in BENCHMARKS.md).

On the in-memory runner the pool starts with the run (`warm_pool`), and the text rules'
language detection uses its children before the fetch step takes it (`detect_languages`):
that stage too ran on one core.

No Beam here: a child imports this module, filters/ and curation/ only (~0.3 s to start).
The children isolate crashes and hangs, not attacks: their answers are unpickled here.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import struct
import subprocess
import sys
import threading
import time
import traceback
import weakref
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, InvalidStateError
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any, BinaryIO

from curation import reasons
from curation.config import CurationConfig
from curation.record import Rejection
from filters.measure import Measured

_IMAGE = reasons.STAGE_IMAGE

# What a child runs, "module:function" with measure_bytes' signature (tests put a faulty
# one here); the module must be importable in a fresh interpreter.
DEFAULT_TARGET = "filters.measure:measure_bytes"


# --- The pool of measuring processes.
#
# Wire format, both ways over the child's stdin/stdout (its own stdout goes to stderr, so a
# stray print cannot corrupt it): a request is <id, len(url), len(data)> + url + data; an
# answer is <id, len(payload)> + pickle of ("ok", Measured) or ("error", type, repr, trace).
# The first request carries (config, target) and its answer ("ready",) says the child is up.
_REQUEST = struct.Struct("<QIQ")
_ANSWER = struct.Struct("<QQ")
_PIPE_BYTES = 1 << 20  # a pipe this large holds the images queued for a child
# In place of an image's URL: a request to run filters.language.detect_languages on the
# pickled (items, detector) it carries (no URL starts with a NUL).
_LANGUAGES = "\x00languages"


class MeasureError(RuntimeError):
    """measure_bytes raised in a child; the message carries the child's traceback."""


class PoolUnavailable(RuntimeError):
    """The measuring processes cannot start here (the message says why); measure in-process."""


class _ChildDied(Exception):
    """The child measuring this image exited or was killed before answering."""


class _Child:
    """One measuring process, the images sent to it and not yet answered, and the thread
    that reads its answers (so the child never waits for a busy fetch thread)."""

    def __init__(self, cfg: CurationConfig, target: str) -> None:
        env = dict(os.environ)
        # The child imports this package as this process does, installed or from a checkout.
        root = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        # One child per core already: thread pools of numpy's BLAS in each would only
        # contend (and starting them is 0.2 s of CPU per child; the user's settings win).
        for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env.setdefault(var, "1")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from pipelines.measure_pool import serve; serve()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            bufsize=0,
        )
        for pipe in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError, AttributeError):  # Linux only; a size, not a must
                import fcntl

                fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, _PIPE_BYTES)  # type: ignore[union-attr]
        # Two locks: the reader thread takes only `lock`, so a writer blocked on a full pipe
        # can never keep the reader from draining the answers the child is blocked on.
        self.lock = threading.Lock()  # guards pending, next_id and dead
        self.write_lock = threading.Lock()  # one request on the pipe at a time; stdin open
        self.pending: dict[int, Future] = {}
        self.next_id = 1
        self.dead = False
        self.ready: Future = self.submit_raw(b"", pickle.dumps((cfg, target), protocol=5))
        self.reader = threading.Thread(target=self._read_answers, daemon=True)
        self.reader.start()

    def submit(self, url: str, data: bytes) -> Future:
        return self.submit_raw(url.encode("utf-8", "surrogatepass"), data)

    def submit_raw(self, url: bytes, data: bytes) -> Future:
        future: Future = Future()
        with self.lock:
            if self.dead:
                _fail(future, self.describe())
                return future
            ident, self.next_id = self.next_id, self.next_id + 1
            self.pending[ident] = future
        try:
            head = _REQUEST.pack(ident, len(url), len(data))
            with self.write_lock:
                _write_all(self.proc.stdin.fileno(), head, url, data)  # type: ignore[union-attr]
        except (OSError, ValueError):  # the child is gone (or closed); its reader fails the rest
            with self.lock:
                self.pending.pop(ident, None)
            _fail(future, self.describe())
        return future

    def _read_answers(self) -> None:
        stdout: BinaryIO = self.proc.stdout  # type: ignore[assignment]
        try:
            while True:
                head = _read_exact(stdout, _ANSWER.size)
                if head is None:
                    break
                ident, size = _ANSWER.unpack(head)
                payload = _read_exact(stdout, size)
                if payload is None:
                    break
                with self.lock:
                    future = self.pending.pop(ident, None)
                if future is None:
                    continue
                try:
                    future.set_result(pickle.loads(payload))
                except Exception as e:  # an answer that does not unpickle: this call's error
                    future.set_exception(MeasureError(f"unreadable answer: {e!r}"))
        finally:
            self.kill()  # no one reads its answers any more (a no-op if it has exited)
            with self.lock:
                orphans, self.pending = list(self.pending.values()), {}
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                self.proc.wait(5)
            for future in orphans:
                _fail(future, self.describe())

    def describe(self) -> str:
        code = self.proc.returncode
        if code is None:
            return "the measuring process stopped answering"
        if code < 0:
            with contextlib.suppress(ValueError):
                return f"the measuring process died of {signal.Signals(-code).name}"
        return f"the measuring process exited with status {code}"

    def kill(self) -> None:
        """Stop the child now; from here on nothing is sent to it."""
        with self.lock:
            self.dead = True  # before the signal: no caller may queue behind a dying child
        with contextlib.suppress(OSError):
            self.proc.kill()

    def close(self, wait: float) -> None:
        with self.lock:
            self.dead = True
        # stdin is closed only with the write lock held: a writer still in a partial write
        # would otherwise go on writing to whatever file reuses its descriptor number.
        if not self.write_lock.acquire(timeout=wait):
            self.kill()  # the blocked writer now gets EPIPE and lets go
            self.write_lock.acquire()
        try:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()  # type: ignore[union-attr]
        finally:
            self.write_lock.release()
        try:
            self.proc.wait(wait)
        except subprocess.TimeoutExpired:
            self.kill()
            self.proc.wait()
        self.reader.join(5)


def _fail(future: Future, why: str) -> None:
    with contextlib.suppress(InvalidStateError):  # already failed by the other side
        future.set_exception(_ChildDied(why))


def _write_all(fd: int, *parts: bytes) -> None:
    # One system call for the whole message where the pipe takes it (each call lets go of
    # the GIL, and getting it back is the slow part under 32 busy threads).
    views = [memoryview(p) for p in parts if p]
    while views:
        written = os.writev(fd, views)
        while views and written >= len(views[0]):
            written -= len(views[0])
            views.pop(0)
        if views and written:
            views[0] = views[0][written:]


def _read_exact(stream: BinaryIO, size: int) -> bytes | None:
    """`size` bytes, or None if the stream ends first (a pipe may return fewer per read)."""
    chunks, left = [], size
    while left:
        chunk = stream.read(left)
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _kill_all(procs: list[subprocess.Popen]) -> None:
    # At interpreter exit (or when the pool is collected) without close(): a child that
    # hangs in a decoder would otherwise outlive us.
    for proc in procs:
        with contextlib.suppress(OSError):
            proc.kill()


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
        cfg: CurationConfig,
        timeout: float = 120.0,
        target: str = DEFAULT_TARGET,
    ) -> None:
        if processes < 1:
            raise ValueError(f"a MeasurePool needs at least one process, got {processes}")
        if timeout <= 0:
            raise ValueError(f"a MeasurePool needs a timeout above 0 s, got {timeout}")
        self.cfg, self.timeout, self.target = cfg, timeout, target
        self._lock = threading.Lock()  # guards _children, _started, _closed, _unavailable
        self._closed = False
        self._unavailable: PoolUnavailable | None = None
        self._started: list[subprocess.Popen] = []
        self._finalizer = weakref.finalize(self, _kill_all, self._started)
        self._alone_lock = threading.Lock()
        self._alone: _Child | None = None
        # Not awaited here: the children start (~0.3 s, imports) while the first images
        # are fetched; a call waits for its child only if that child is not up yet.
        with self._lock:
            self._children = [self._start() for _ in range(processes)]

    def _start(self) -> _Child:
        # Called with self._lock held.
        if self._closed:
            raise RuntimeError("the MeasurePool is closed")
        if self._unavailable is not None:
            raise self._unavailable
        try:
            child = _Child(self.cfg, self.target)
        except OSError as e:
            self._unavailable = PoolUnavailable(f"cannot start a measuring process: {e}")
            raise self._unavailable from e
        self._started.append(child.proc)
        return child

    def _await_ready(self, child: _Child) -> None:
        try:
            answer = child.ready.result(60)
        except (_ChildDied, FutureTimeout):
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
        """measure_bytes(url, data, cfg), in a child; blocks the calling thread."""
        child = self._child()
        try:
            answer = child.submit(url, data).result(self.timeout)
        except _ChildDied:
            return self._alone_retry(url, data)
        except FutureTimeout:
            # It may be this image or one queued before it: the child goes, and each of
            # its images is tried again alone.
            child.kill()
            return self._alone_retry(url, data)
        return _unpack(answer, data)

    def _child(self) -> _Child:
        with self._lock:
            if self._unavailable is not None:
                raise self._unavailable
            for i, child in enumerate(self._children):
                if child.dead:
                    self._children[i] = self._start()  # its ready answer is awaited below
            if not self._children:
                raise RuntimeError("the MeasurePool is closed")
            child = min(self._children, key=lambda c: len(c.pending))
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
        with self._lock:
            if self._unavailable is not None:
                raise self._unavailable
            for i, child in enumerate(self._children):
                if child.dead:
                    self._children[i] = self._start()
            children = list(self._children)
        if not children:
            raise RuntimeError("the MeasurePool is closed")
        size = -(-len(items) // len(children))
        parts = [list(items[i : i + size]) for i in range(0, len(items), size)]
        futures = []
        for child, part in zip(children, parts, strict=False):
            self._await_ready(child)
            request = pickle.dumps((part, detector), protocol=5)
            futures.append(child.submit(_LANGUAGES, request))
        langs: list[str | None] = []
        deadline = time.monotonic() + self.timeout
        for child, future in zip(children, futures, strict=False):
            try:
                answer = future.result(max(0.0, deadline - time.monotonic()))
            except FutureTimeout:
                child.kill()  # restarted by the next call
                raise MeasureError(f"no language answer within {self.timeout:g} s") from None
            except _ChildDied as e:
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
            child.submit(_LANGUAGES, pickle.dumps(([("warm up", None)], detector), protocol=5))

    def _alone_retry(self, url: str, data: bytes) -> Measured:
        with self._alone_lock:
            if self._alone is None or self._alone.dead:
                with self._lock:
                    self._alone = self._start()
                self._await_ready(self._alone)
            child = self._alone
            try:
                answer = child.submit(url, data).result(self.timeout)
            except _ChildDied:
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


# Pools started ahead of need (warm_pool), each with the arguments it was made with.
_WARM: list[tuple[tuple[Any, ...], MeasurePool]] = []
_WARM_LOCK = threading.Lock()


@contextlib.contextmanager
def warm_pool(
    processes: int, cfg: CurationConfig, timeout: float, target: str, languages: bool = False
) -> Iterator[None]:
    """Start a pool's children now, for this process's first `take_pool` with the same
    arguments; on leaving, close the pool if nothing took it. With `languages`, each child
    also loads cfg's language detector (for `borrow_warm_pool`'s user).

    The local runner builds and translates the pipeline and runs the text rules (seconds)
    before its first image is fetched, while the other cores idle; the children import
    (~0.3 s a child) then, instead of while the first images wait for them.
    """
    try:
        pool = MeasurePool(processes, cfg, timeout, target)
    except PoolUnavailable:
        yield  # the fetch step finds out again, and says so
        return
    if languages:
        pool.prepare_languages(cfg.language_detector)
    with _WARM_LOCK:
        _WARM.append(((processes, cfg, timeout, target), pool))
    try:
        yield
    finally:
        with _WARM_LOCK:
            untaken = any(p is pool for _, p in _WARM)
            _WARM[:] = [(k, p) for k, p in _WARM if p is not pool]
        if untaken:
            pool.close()


def borrow_warm_pool(cfg: CurationConfig) -> MeasurePool | None:
    """A pool warm_pool started for this config, if any, left for take_pool (the text
    rules use its children before the fetch step takes it), else None."""
    with _WARM_LOCK:
        return next((pool for key, pool in _WARM if key[1] == cfg), None)


def take_pool(processes: int, cfg: CurationConfig, timeout: float, target: str) -> MeasurePool:
    """The pool warm_pool started with these arguments (once), else a new one; the caller
    closes it."""
    key = (processes, cfg, timeout, target)
    with _WARM_LOCK:
        for i, (k, pool) in enumerate(_WARM):
            if k == key:
                del _WARM[i]
                return pool
    return MeasurePool(processes, cfg, timeout, target)


def _unpack(answer: tuple[Any, ...], data: bytes) -> Measured:
    if answer[0] == "error":
        _, kind, text, trace = answer
        raise MeasureError(f"{kind}: {text}\n\nIn the measuring process:\n{trace}")
    outcome = answer[1]
    if not isinstance(outcome, Rejection) and outcome[1] is None:
        return outcome[0], data  # the stored bytes are the original: not sent back
    return outcome


def serve() -> None:
    """A child's loop: read requests from stdin, answer on stdout, until stdin closes."""
    # Answers go on a copy of stdout; the real one is pointed at stderr for stray prints.
    out = os.dup(1)
    os.dup2(2, 1)
    # Ctrl-C reaches the whole process group: the parent stops us by closing our stdin.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    inp = os.fdopen(os.dup(0), "rb", buffering=1 << 16)
    first = _read_request(inp)
    if first is None:
        return
    try:
        cfg, target = pickle.loads(first[2])
        fn = _load(target)
        _send(out, first[0], pickle.dumps(("ready",)))
    except Exception as e:
        _send(out, first[0], pickle.dumps(("failed", repr(e))))
        return
    while (request := _read_request(inp)) is not None:
        ident, url, data = request
        try:
            if url == _LANGUAGES:
                from filters.language import detect_languages

                payload = pickle.dumps(("ok", detect_languages(*pickle.loads(data))), protocol=5)
                _send(out, ident, payload)
                continue
            outcome = fn(url, data, cfg)
            if not isinstance(outcome, Rejection) and outcome[1] is data:
                outcome = (outcome[0], None)  # the parent has these bytes
            payload = pickle.dumps(("ok", outcome), protocol=5)
        except BaseException as e:  # SystemExit too: an answer, not a dead child
            trace = "".join(traceback.format_exception(e))
            payload = pickle.dumps(("error", type(e).__name__, repr(e)[:500], trace), protocol=5)
        _send(out, ident, payload)


def _exit_with_parent(parent: int) -> None:
    # A child stuck in a decoder never reads its closed stdin: if the parent is gone (even
    # killed, with no chance to stop us), leave.
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


def _read_request(inp: BinaryIO) -> tuple[int, str, bytes] | None:
    head = _read_exact(inp, _REQUEST.size)
    if head is None:
        return None
    ident, url_len, data_len = _REQUEST.unpack(head)
    url = _read_exact(inp, url_len)
    data = _read_exact(inp, data_len)
    if url is None or data is None:
        return None
    return ident, url.decode("utf-8", "surrogatepass"), data


def _send(out: int, ident: int, payload: bytes) -> None:
    _write_all(out, _ANSWER.pack(ident, len(payload)), payload)


def _load(target: str) -> Callable[[str, bytes, CurationConfig], Measured]:
    module, _, name = target.partition(":")
    mod = __import__(module, fromlist=[name])
    return getattr(mod, name)
