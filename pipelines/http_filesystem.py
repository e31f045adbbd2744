"""http:// and https:// inputs as a Beam filesystem: crawl files streamed where they lie.

`FileSystems.open("https://data.commoncrawl.org/crawl-data/...")` returns a stream that
reads the file as it is consumed, so a 1 GB WARC never sits on disk or in memory. Beam finds a
filesystem by its scheme among the loaded `FileSystem` subclasses; importing this module
registers both schemes, and the Dataflow runner ships every loaded plugin's module path to its
workers (`--beam_plugins`), so the same code reads the same URLs there.

What it does for a file read over a long-lived connection from a busy server:
- a dropped connection (reset, timeout, a body that ends early) is resumed from the byte it
  stopped at with a Range request, not read again from the start; an ETag that changes
  between the parts fails the read rather than splice two versions;
- 429 and 5xx are retried after Retry-After (when given) or an exponential backoff with
  jitter; 404 and other 4xx fail at once (a dead letter naming the URL);
- at most `streams_per_host` files of one host are open at a time in a worker process
  (Common Crawl asks its users to be gentle, and answers 503 "Slow Down" when they are not);
- every loop is bounded: failures in a row without a byte of progress, resumptions per file,
  each wait, and the wait for a slot.
Listing is not possible over HTTP: name files, or a manifest (warc.paths.gz) that lists them.
"""

from __future__ import annotations

import io
import random
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import BinaryIO
from urllib.parse import urlsplit

import urllib3
from apache_beam.io.filesystem import (
    BeamIOError,
    CompressedFile,
    CompressionTypes,
    FileMetadata,
    FileSystem,
)
from urllib3.exceptions import HTTPError as Urllib3Error

from curation.fetch import _retry_after as retry_after_seconds


@dataclass(frozen=True)
class HttpSettings:
    """How input files are read over HTTP (per worker process)."""

    streams_per_host: int = 2  # politeness: Common Crawl's guidance is a few at a time
    connect_timeout: float = 10.0
    read_timeout: float = 60.0  # between bytes; a slow drip that keeps coming is progress
    failures_in_a_row: int = 8  # requests failing with no byte read between them
    max_resumes: int = 200  # Range resumptions of one file over its whole read
    backoff_seconds: float = 1.0  # the first retry's wait, doubled each failure in a row
    max_backoff_seconds: float = 60.0  # the longest wait, Retry-After included
    slot_wait_seconds: float = 1800.0  # the longest wait for a host slot
    buffer_bytes: int = 1 << 20
    user_agent: str = "align-curation/0.1 (input reader; image-text dataset research)"


class HttpClient:
    """A connection pool and the per-host slots, shared by every stream of a process."""

    _shared: HttpClient | None = None
    _shared_lock = threading.Lock()

    def __init__(
        self, settings: HttpSettings | None = None, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        self.settings = settings or HttpSettings()
        self.sleep = sleep
        self.pool = urllib3.PoolManager(
            num_pools=64,
            maxsize=max(1, self.settings.streams_per_host),
            retries=False,  # retried here, with resumption and Retry-After
            timeout=urllib3.Timeout(
                connect=self.settings.connect_timeout, read=self.settings.read_timeout
            ),
        )
        self._slots: dict[str, threading.BoundedSemaphore] = {}
        self._lock = threading.Lock()
        self._rng = random.Random()

    @classmethod
    def shared(cls) -> HttpClient:
        """The process's client (Beam builds a FileSystem per call; the slots must be one)."""
        with cls._shared_lock:
            if cls._shared is None:
                cls._shared = cls()
            return cls._shared

    def slot(self, url: str) -> threading.BoundedSemaphore:
        """The semaphore bounding the open streams to the URL's host."""
        host = (urlsplit(url).hostname or "").lower()
        with self._lock:
            if host not in self._slots:
                self._slots[host] = threading.BoundedSemaphore(self.settings.streams_per_host)
            return self._slots[host]

    def request(self, method: str, url: str, headers: dict[str, str]) -> urllib3.BaseHTTPResponse:
        """One request, its body left unread (streamed)."""
        return self.pool.request(
            method,
            url,
            headers={
                "User-Agent": self.settings.user_agent,
                "Accept-Encoding": "identity",  # the bytes as stored: Range counts them
                **headers,
            },
            preload_content=False,
            decode_content=False,
            redirect=True,
        )

    def wait(self, failures: int, retry_after: float | None) -> None:
        """Back off before the next try: Retry-After when given, else 2^n with jitter."""
        s = self.settings
        delay = s.backoff_seconds * 2 ** max(0, failures - 1)
        with self._lock:
            delay += self._rng.uniform(0, s.backoff_seconds)
        if retry_after is not None:
            delay = retry_after
        self.sleep(min(delay, s.max_backoff_seconds))

    def send(self, method: str, url: str, headers: dict[str, str]) -> urllib3.BaseHTTPResponse:
        """A request retried on connection errors, 429 and 5xx (bounded in tries, and in
        wait: a Retry-After past max_backoff_seconds gives up); any other answer returned
        with its body unread."""
        s = self.settings
        failures = 0
        while True:
            try:
                resp = self.request(method, url, headers)
            except Urllib3Error as e:
                failures += 1
                if failures >= s.failures_in_a_row:
                    raise HttpInputError(f"{url}: {type(e).__name__}: {e}") from e
                self.wait(failures, None)
                continue
            if resp.status != 429 and resp.status < 500:
                return resp
            retry_after = retry_after_seconds(resp.headers.get("Retry-After"))
            resp.drain_conn()
            resp.release_conn()
            failures += 1
            if failures >= s.failures_in_a_row:
                raise HttpInputError(f"{url}: HTTP {resp.status} after {failures} tries")
            if retry_after is not None and retry_after > s.max_backoff_seconds:
                raise HttpInputError(
                    f"{url}: HTTP {resp.status}, Retry-After {retry_after:.0f} s is longer "
                    f"than the {s.max_backoff_seconds:.0f} s this reader waits"
                )
            self.wait(failures, retry_after)

    def head(self, url: str) -> urllib3.BaseHTTPResponse | None:
        """The headers of a URL (None: it does not exist), retried as reads are."""
        resp = self.send("HEAD", url, {})
        resp.drain_conn()
        resp.release_conn()
        if resp.status in (404, 410):
            return None
        if resp.status >= 400:
            raise HttpInputError(f"{url}: HTTP {resp.status}")
        return resp


class HttpInputError(RuntimeError):
    """A read that retrying could not mend (or was given up on, after its bounds).

    Not an OSError: the archive readers count an OSError mid-file as a damaged archive
    (`archive_corrupt`); a network failure must instead fail the file, which the pipeline
    records as a dead letter (`file_failed`) naming the URL and the cause."""


_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


class HttpReader(io.RawIOBase):
    """A seekable, resuming read stream of one URL (wrap it in a BufferedReader)."""

    def __init__(self, url: str, client: HttpClient) -> None:
        super().__init__()
        self.url = url
        self.client = client
        self.pos = 0
        self.size: int | None = None
        self.resumes = 0  # connections opened after the first, for tests and logs
        self._resp: urllib3.BaseHTTPResponse | None = None
        self._etag: str | None = None
        self._slot: threading.BoundedSemaphore | None = None

    # --- io.RawIOBase
    @property
    def mode(self) -> str:
        return "rb"  # Beam's CompressedFile asks (BufferedReader passes it through)

    @property
    def name(self) -> str:
        return self.url

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_CUR:
            offset += self.pos
        elif whence == io.SEEK_END:
            offset += self._total_size()
        if offset < 0:
            raise OSError(f"{self.url}: seek to {offset}")
        if offset != self.pos:
            self._drop()  # the next read opens at the new position with a Range request
            self.pos = offset
        return self.pos

    def readinto(self, buffer) -> int:
        s = self.client.settings
        failures = 0
        while True:
            if self.size is not None and self.pos >= self.size:
                self._finish()
                return 0
            try:
                if self._resp is None:
                    self._open()
                    if self.size is not None and self.pos >= self.size:
                        continue
                n = self._resp.readinto(buffer)
            except (Urllib3Error, OSError) as e:
                if isinstance(e, FileNotFoundError):
                    raise
                n, error = -1, e
            else:
                error = None
            if n > 0:
                self.pos += n
                return n
            if n == 0 and self.size is None:
                self._finish()  # no length was given: the end of the body is the end
                return 0
            # A body that ended or broke before the file's end: resume from here.
            self._drop()
            failures += 1
            self.resumes += 1
            if failures >= s.failures_in_a_row or self.resumes > s.max_resumes:
                raise HttpInputError(
                    f"{self.url}: read failed at byte {self.pos:,} after {failures} tries in a "
                    f"row, {self.resumes} resumptions ({error or 'connection closed early'})"
                )
            if failures > 1:  # the first resumption after progress goes at once
                self.client.wait(failures - 1, None)

    def close(self) -> None:
        self._drop()
        self._release()
        super().close()

    # --- connections
    def _open(self) -> None:
        """Open the body at self.pos (Range), retrying 429 / 5xx / connection errors."""
        s = self.client.settings
        if self._slot is None:
            slot = self.client.slot(self.url)
            if not slot.acquire(timeout=s.slot_wait_seconds):
                raise HttpInputError(
                    f"{self.url}: no free connection to its host in {s.slot_wait_seconds} s"
                )
            self._slot = slot
        headers = {"Range": f"bytes={self.pos}-"} if self.pos else {}
        if self.pos and self._etag:
            headers["If-Range"] = self._etag
        resp = self.client.send("GET", self.url, headers)
        if resp.status in (404, 410):
            resp.release_conn()
            if self.pos:  # gone mid-read: a failed file, not a damaged archive (OSError)
                raise HttpInputError(f"{self.url}: HTTP {resp.status} at byte {self.pos:,}")
            raise FileNotFoundError(f"{self.url}: HTTP {resp.status}")
        if resp.status == 416:  # asked from at or past the end: nothing left to read
            resp.release_conn()
            self.size = self.pos
            return
        if resp.status not in (200, 206):
            resp.release_conn()
            raise HttpInputError(f"{self.url}: HTTP {resp.status}")
        etag = resp.headers.get("ETag")
        if self._etag and etag and etag != self._etag:
            resp.release_conn()
            raise HttpInputError(
                f"{self.url}: changed while being read (ETag {self._etag} -> {etag})"
            )
        self._etag = self._etag or etag
        if resp.status == 206:
            m = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
            if m is None or int(m.group(1)) != self.pos:
                resp.release_conn()
                raise HttpInputError(
                    f"{self.url}: a Range answer from the wrong byte ({m and m.group(0)})"
                )
            if m.group(3) != "*":
                self.size = int(m.group(3))
        else:
            length = resp.headers.get("Content-Length")
            self.size = int(length) if length and length.isdigit() else None
            if self.pos:
                # A server that ignores Range: skip to where we were (the only way on).
                self._skip(resp, self.pos)
        self._resp = resp

    def _skip(self, resp: urllib3.BaseHTTPResponse, n: int) -> None:
        while n > 0:
            chunk = resp.read(min(n, 1 << 20))
            if not chunk:
                raise HttpInputError(f"{self.url}: ended while skipping to byte {self.pos:,}")
            n -= len(chunk)

    def _total_size(self) -> int:
        if self.size is None:
            resp = self.client.head(self.url)
            if resp is None:
                raise FileNotFoundError(self.url)
            length = resp.headers.get("Content-Length")
            if not (length and length.isdigit()):
                raise HttpInputError(f"{self.url}: the server gives no length to seek from the end")
            self.size = int(length)
        return self.size

    def _drop(self) -> None:
        if self._resp is not None:
            # Closed, not drained: the rest of a large file is not worth reading to reuse a
            # socket; releasing hands the pool its slot back.
            self._resp.close()
            self._resp.release_conn()
            self._resp = None

    def _finish(self) -> None:
        self._drop()
        self._release()

    def _release(self) -> None:
        if self._slot is not None:
            self._slot.release()
            self._slot = None


class HttpFileSystem(FileSystem):
    """Read-only `http://` inputs, streamed; see the module docstring."""

    def __init__(self, pipeline_options) -> None:
        super().__init__(pipeline_options)
        self.client = HttpClient.shared()

    @classmethod
    def scheme(cls) -> str:
        return "http"

    def join(self, basepath: str, *paths: str) -> str:
        return "/".join([basepath.rstrip("/"), *(p.strip("/") for p in paths)])

    def split(self, path: str) -> tuple[str, str]:
        head, _, tail = path.rstrip("/").rpartition("/")
        return head, tail

    def has_dirs(self) -> bool:
        return False

    def _list(self, dir_or_prefix: str):
        raise BeamIOError(
            f"cannot list {dir_or_prefix!r} over HTTP: name the files, or give a manifest "
            "(warc.paths.gz) that lists them"
        )

    def open(
        self,
        path: str,
        mime_type: str = "application/octet-stream",
        compression_type: str = CompressionTypes.AUTO,
    ) -> BinaryIO:
        raw = HttpReader(path, self.client)
        stream = io.BufferedReader(raw, buffer_size=self.client.settings.buffer_bytes)
        compression_type = self._get_compression_type(path, compression_type)
        if compression_type == CompressionTypes.UNCOMPRESSED:
            return stream
        return CompressedFile(stream, compression_type=compression_type)

    def exists(self, path: str) -> bool:
        return self.client.head(path) is not None

    def size(self, path: str) -> int:
        return self.metadata(path).size_in_bytes

    def last_updated(self, path: str) -> float:
        return self.metadata(path).last_updated_in_seconds

    def checksum(self, path: str) -> str:
        resp = self._head(path)
        return resp.headers.get("ETag") or resp.headers.get("Content-Length") or "0"

    def metadata(self, path: str) -> FileMetadata:
        resp = self._head(path)
        length = resp.headers.get("Content-Length") or "0"
        modified = 0.0
        if resp.headers.get("Last-Modified"):
            try:
                modified = parsedate_to_datetime(resp.headers["Last-Modified"]).timestamp()
            except (TypeError, ValueError):
                modified = 0.0
        return FileMetadata(path, int(length) if length.isdigit() else 0, modified)

    def _head(self, path: str) -> urllib3.BaseHTTPResponse:
        resp = self.client.head(path)
        if resp is None:
            raise BeamIOError(f"{path}: not found (HTTP 404)")
        return resp

    # Inputs are read, never written: a write is a mistake worth a clear message.
    def _read_only(self, what: str):
        raise BeamIOError(f"http(s):// is read-only here: cannot {what}")

    def mkdirs(self, path: str) -> None:
        self._read_only(f"make {path}")

    def create(
        self,
        path: str,
        mime_type: str = "application/octet-stream",
        compression_type: str = CompressionTypes.AUTO,
    ) -> BinaryIO:
        self._read_only(f"write {path}")

    def copy(self, source_file_names, destination_file_names) -> None:
        self._read_only("copy")

    def rename(self, source_file_names, destination_file_names) -> None:
        self._read_only("rename")

    def delete(self, paths) -> None:
        self._read_only("delete")


class HttpsFileSystem(HttpFileSystem):
    """Read-only `https://` inputs, streamed."""

    @classmethod
    def scheme(cls) -> str:
        return "https"
