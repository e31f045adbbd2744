"""Output through Beam's FileSystems (local paths and gs:// alike), written atomically.

A file is written under a hidden temporary name in its folder and renamed into place, so a
reader globbing `*.parquet` never sees a partial file, and a killed run leaves no shard that
looks complete.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import queue
import threading
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import apache_beam as beam
import pyarrow as pa
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from curation.shards import SUFFIX, write_shard
from pipelines.spool import with_image_bytes

TMP_PREFIX = ".tmp-"


def _anonymous_gcs_for_emulator() -> None:
    """Against a GCS emulator (STORAGE_EMULATOR_HOST), use anonymous access at once.

    Without credentials, Beam looks for Application Default Credentials with four retries
    and exponential backoff (~25 s per process) before falling back to anonymous access. An
    emulator needs none, so Beam's credential cache is primed with "none" here. This runs
    when this module is imported: in the launcher and in every worker process that
    unpickles our steps. Real GCS (no emulator variable) is untouched.
    """
    if not os.environ.get("STORAGE_EMULATOR_HOST"):
        return
    try:
        from apache_beam.internal.gcp import auth
    except ImportError:  # Beam without the gcp extra: gs:// is unavailable anyway
        return
    with auth._Credentials._credentials_lock:
        auth._Credentials._credentials = None
        auth._Credentials._credentials_init = True


_anonymous_gcs_for_emulator()


def join(*parts: str) -> str:
    """Join path parts for any filesystem (local or gs://)."""
    return FileSystems.join(*parts)


# Small writes are gathered into chunks of about this size before they cross to the
# background thread (a tar writer makes tens of thousands of them); a larger write crosses
# as it is, uncopied.
_CHUNK_BYTES = 1 << 20
# Bytes handed over and not yet written, at most (a single larger write still goes through
# alone): the encoder waits past them. About two of the shard writer's row groups
# (curation/shards.py ROW_GROUP_BYTES).
_QUEUED_BYTES = 32 << 20


class _Digest(io.RawIOBase):
    """A write-only file that passes bytes on, counting them and their sha256.

    The sha256 and the writes to the file run in a background thread, behind the encoder
    that calls write(): both release the GIL, so on the local runner, which runs one stage at
    a time on one core, they take the second core (BENCHMARKS.md, "figures behind code
    choices"). finish() waits for the thread and raises what it met. (Beam's opt-in
    per-thread GCS write metric does not see writes made from it.)
    """

    def __init__(self, fh: Any) -> None:
        super().__init__()
        self.fh, self.size, self.sha256 = fh, 0, hashlib.sha256()
        self._pending: list[bytes] = []
        self._held = 0
        self._queue: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._room = threading.Condition()
        self._queued = 0  # bytes handed over, not yet written; under self._room
        self._error: BaseException | None = None
        self._abort = False  # set by finish(abort=True): drop what is still queued
        self._finished = False
        self._done = threading.Event()  # set when the thread has written its last chunk
        self._thread = threading.Thread(target=self._drain, name="write-behind", daemon=True)
        self._thread.start()

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.size  # a tar writer asks where it starts

    def write(self, data: Any) -> int:
        if self._finished:
            raise ValueError("write to a finished file")
        if self._error is not None:
            raise self._error  # what the thread met writing an earlier chunk
        # The thread reads it later: a mutable buffer is copied (pyarrow and tarfile pass
        # bytes, which are not).
        chunk = data if type(data) is bytes else bytes(memoryview(data))
        self.size += len(chunk)
        if len(chunk) >= _CHUNK_BYTES:  # pyarrow's image columns: no copy into a join
            self._hand_over()
            self._put(chunk)
        else:
            self._pending.append(chunk)
            self._held += len(chunk)
            if self._held >= _CHUNK_BYTES:
                self._hand_over()
        return len(chunk)

    def _hand_over(self) -> None:
        if self._pending:
            chunk = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
            self._pending, self._held = [], 0
            self._put(chunk)

    def _put(self, chunk: bytes) -> None:
        with self._room:
            while self._queued and self._queued + len(chunk) > _QUEUED_BYTES:
                self._room.wait()
            self._queued += len(chunk)
        self._queue.put(chunk)

    def _drain(self) -> None:
        try:
            self._write_queued()
        finally:
            self._done.set()

    def _write_queued(self) -> None:
        while (chunk := self._queue.get()) is not None:
            if self._error is None and not self._abort:  # else only empty the queue
                try:
                    self.sha256.update(chunk)
                    self.fh.write(chunk)
                except BaseException as exc:  # re-raised by write() and finish()
                    self._error = exc
            with self._room:
                self._queued -= len(chunk)
                self._room.notify()

    def finish(self, abort: bool = False) -> None:
        """Write what is left (or, with `abort`, drop it) and wait for the thread; then
        raise its error, if it met one and `abort` is not set."""
        if not self._finished:
            self._finished = True
            try:
                if abort:
                    self._abort = True
                else:
                    self._hand_over()
            finally:
                self._queue.put(None)  # never blocks: the queue is unbounded, bytes are not
                self._join()
        if self._error is not None and not abort:
            raise self._error

    def _join(self) -> None:
        # Joined even when an interrupt lands here, since the file closes next; the
        # interrupt is raised once the thread is done (dropping what is still queued).
        # Waits on an event of its own: an interrupted Thread.join() (Python 3.11) can mark
        # the thread stopped while it still runs.
        interrupted: BaseException | None = None
        while not self._done.is_set():
            try:
                self._done.wait()
            except BaseException as exc:
                self._abort = True
                interrupted = interrupted or exc
        if interrupted is not None:
            raise interrupted


def write_atomic_with(path: str, write: Callable[[Any], None]) -> tuple[int, str]:
    """Have `write` write a file to `path` through a temporary file and a rename; returns
    the file's size and sha256."""
    folder, name = FileSystems.split(path)
    tmp = FileSystems.join(folder, f"{TMP_PREFIX}{uuid.uuid4().hex}-{name}")
    if not FileSystems.exists(folder):
        FileSystems.mkdirs(folder)
    with FileSystems.create(tmp, compression_type=CompressionTypes.UNCOMPRESSED) as fh:
        sink = _Digest(fh)
        try:
            write(sink)
        except BaseException:
            # The thread is done before the file closes; the writer's own error is raised.
            sink.finish(abort=True)
            raise
        sink.finish()
    if FileSystems.exists(path):
        FileSystems.delete([path])
    FileSystems.rename([tmp], [path])
    return sink.size, sink.sha256.hexdigest()


def write_atomic(path: str, data: bytes) -> None:
    """Write bytes to `path` through a temporary file and a rename."""
    write_atomic_with(path, lambda fh: fh.write(data))


def write_json(doc: Any, path: str) -> None:
    """A JSON document with sorted keys, so that equal documents give equal bytes."""
    write_atomic(path, (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode())


def read_bytes(path: str) -> bytes:
    """The whole content of a file on any filesystem."""
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as fh:
        return fh.read()


def shard_name(index: int, suffix: str) -> str:
    """The file name of shard `index`: 00000.parquet, 00001.parquet, ..."""
    return f"{index:05d}{suffix}"


class WriteShardFn(beam.DoFn):
    """(shard index, rows) -> one file per format, rows sorted by uid; yields manifest entries."""

    def __init__(self, directories: dict[str, str], schema: pa.Schema) -> None:
        self.directories = directories  # format -> folder
        self.schema = schema

    def process(self, element: tuple[int, Iterable[dict[str, Any]]]):
        index, rows = element
        # Sorting by uid makes the bytes independent of arrival order.
        ordered = sorted(rows, key=lambda r: r["uid"])
        # Spooled images are read here, where they are written out: once for every format.
        # A local spool file is mapped and its images handed out as views (no copy); any
        # other is read in one pass in offset order (uid order, a group at a time, made a
        # spool in gs:// download 11x the bytes in 12x the requests: review script). The
        # writers then encode a row group at a time (curation/shards.py ROW_GROUP_BYTES).
        ordered = with_image_bytes(ordered)
        for fmt, directory in sorted(self.directories.items()):
            yield write_shard_file(directory, index, fmt, ordered, self.schema)


def write_shard_file(
    directory: str, index: int, fmt: str, rows: list[dict[str, Any]], schema: pa.Schema
) -> dict[str, Any]:
    """Shard `index` of `rows` in one format, written atomically; its manifest entry."""
    name = shard_name(index, SUFFIX[fmt])
    size, digest = write_atomic_with(
        join(directory, name), lambda fh: write_shard(fmt, rows, schema, fh)
    )
    return {"shard": name, "format": fmt, "count": len(rows), "bytes": size, "sha256": digest}


def manifest_json(entries: list[dict[str, Any]]) -> bytes:
    """_manifest.json: every shard file with its sample count and checksum, in name order."""
    ordered = sorted(entries, key=lambda e: e["shard"])
    doc = {"shards": ordered, "total": sum(e["count"] for e in ordered)}
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()


def sizes_json(entries: list[dict[str, Any]]) -> bytes:
    """sizes.json beside WebDataset tars: {tar name: samples}, which open_clip's loader
    reads for the dataset's size (so no --train-num-samples is needed)."""
    doc = {e["shard"]: e["count"] for e in sorted(entries, key=lambda e: e["shard"])}
    return (json.dumps(doc, indent=2) + "\n").encode()


def remove_stale_temporaries(directory: str) -> None:
    """Delete temporary files that a retried or killed worker left behind."""
    pattern = join(directory, TMP_PREFIX + "*")
    found = [m.path for r in FileSystems.match([pattern]) for m in r.metadata_list]
    if found:
        FileSystems.delete(found)
