"""One measuring process: starting it, the wire protocol both ways, and the child's loop.

The parent side (`_Child`) sends typed requests and reads the answers in a thread of its
own; the child side (`serve`) runs filters/measure.py's `measure_bytes` (or, for a
LANGUAGES request, filters.language.detect_languages) on each. No Beam here: a child
imports this module, filters/ and curation/ only (~0.3 s to start). The children isolate
crashes and hangs, not attacks: their answers are unpickled by the parent.
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
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from pathlib import Path
from typing import Any, BinaryIO

from curation.record import Rejection
from filters.measure import Measured

# Wire format, both ways over the child's stdin/stdout (its own stdout goes to stderr, so a
# stray print cannot corrupt it): a request is <id, kind, len(url), len(data)> + url + data;
# an answer is <id, len(payload)> + pickle of ("ok", result) or ("error", type, repr, trace).
# The first request (HELLO) carries (settings, target); its answer ("ready",) says the
# child is up.
_REQUEST = struct.Struct("<QBIQ")
_ANSWER = struct.Struct("<QQ")
_PIPE_BYTES = 1 << 20  # a pipe this large holds the images queued for a child
HELLO, MEASURE, LANGUAGES = 0, 1, 2  # request kinds; LANGUAGES carries pickled (items, detector)


class MeasureError(RuntimeError):
    """measure_bytes raised in a child; the message carries the child's traceback."""


class ChildDied(Exception):
    """The child measuring this image exited or was killed before answering."""


class Child:
    """One measuring process, the images sent to it and not yet answered, and the thread
    that reads its answers (so the child never waits for a busy fetch thread)."""

    def __init__(self, settings: Any, target: str) -> None:
        env = dict(os.environ)
        # The child imports this package as this process does, installed or from a checkout.
        root = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        # One child per core already: thread pools of numpy's BLAS in each would only
        # contend (and starting them is 0.2 s of CPU per child; the user's settings win).
        for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env.setdefault(var, "1")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from pipelines.measure_child import serve; serve()"],
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
        hello = pickle.dumps((settings, target), protocol=5)
        self.ready: Future = self.submit_raw(HELLO, b"", hello)
        self.reader = threading.Thread(target=self._read_answers, daemon=True)
        self.reader.start()

    def submit(self, url: str, data: bytes) -> Future:
        """Measure one image; the future holds the child's answer."""
        return self.submit_raw(MEASURE, url.encode("utf-8", "surrogatepass"), data)

    def submit_languages(self, items: list[tuple[str, str | None]], detector: str) -> Future:
        """Detect the languages of (text, hint) items; the future holds the answer."""
        return self.submit_raw(LANGUAGES, b"", pickle.dumps((items, detector), protocol=5))

    def submit_raw(self, kind: int, url: bytes, data: bytes) -> Future:
        future: Future = Future()
        with self.lock:
            if self.dead:
                _fail(future, self.describe())
                return future
            ident, self.next_id = self.next_id, self.next_id + 1
            self.pending[ident] = future
        try:
            head = _REQUEST.pack(ident, kind, len(url), len(data))
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
        future.set_exception(ChildDied(why))


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
        if first[1] != HELLO:
            raise ValueError(f"expected a HELLO request first, got kind {first[1]}")
        settings, target = pickle.loads(first[3])
        fn = _load(target)
        _send(out, first[0], pickle.dumps(("ready",)))
    except Exception as e:
        _send(out, first[0], pickle.dumps(("failed", repr(e))))
        return
    while (request := _read_request(inp)) is not None:
        ident, kind, url, data = request
        try:
            if kind == LANGUAGES:
                from filters.language import detect_languages

                result: Any = detect_languages(*pickle.loads(data))
            elif kind == MEASURE:
                result = fn(url, data, settings)
                if not isinstance(result, Rejection) and result[1] is data:
                    result = (result[0], None)  # the parent has these bytes
            else:
                raise ValueError(f"unknown request kind {kind}")
            payload = pickle.dumps(("ok", result), protocol=5)
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


def _read_request(inp: BinaryIO) -> tuple[int, int, str, bytes] | None:
    head = _read_exact(inp, _REQUEST.size)
    if head is None:
        return None
    ident, kind, url_len, data_len = _REQUEST.unpack(head)
    url = _read_exact(inp, url_len)
    data = _read_exact(inp, data_len)
    if url is None or data is None:
        return None
    return ident, kind, url.decode("utf-8", "surrogatepass"), data


def _send(out: int, ident: int, payload: bytes) -> None:
    _write_all(out, _ANSWER.pack(ident, len(payload)), payload)


def _load(target: str) -> Callable[[str, bytes, Any], Measured]:
    module, _, name = target.partition(":")
    mod = __import__(module, fromlist=[name])
    return getattr(mod, name)
