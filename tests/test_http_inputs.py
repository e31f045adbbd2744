"""http(s):// inputs (pipelines/http_filesystem.py) against a faulty crawl server on 127.0.0.1.

The server holds real archives (../shared/data/warc), a WAT made from one, and a Common Crawl
manifest listing them. It drops connections mid-file, answers 503 with Retry-After and 429
without, and drips bytes slowly; the candidates must equal those of the same files read from
disk, and a dropped read must resume with a Range request, not start again. Every server loop
is bounded (a request sends at most one file; a drip is at most 64 pauses of 5 ms) and the
number of requests per test is capped.
"""

from __future__ import annotations

import gzip
import io
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from curation.config import CurationConfig
from curation.inputs import input_kind
from curation.stats import Funnel
from pipelines.http_filesystem import HttpClient, HttpInputError, HttpReader, HttpSettings
from tests.conftest import WARC_DIR, make_wat, require, running

CRAWL = "crawl-data/CC-MAIN-2024-22"
ARCHIVES = ("resiliparse_warcfile.warc.gz", "dolma_sample-0000.warc.gz")
MAX_REQUESTS = 300  # the busiest test sends about 40 (measured)


class CrawlServer(ThreadingHTTPServer):
    """Serves `files` (path -> bytes) with Range support and injected faults."""

    daemon_threads = True

    def __init__(self, files: dict[str, bytes]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files = files
        self.lock = threading.Lock()
        self.requests: Counter[str] = Counter()
        self.ranges: list[tuple[str, int]] = []  # (path, first byte) of every GET
        self.drop_after = 0  # > 0: send at most this many body bytes, then reset
        self.busy = 0  # the first n GETs of each file answer 503, Retry-After: 1
        self.throttle = 0  # the first n GETs of each file answer 429 without Retry-After
        self.drip = 0  # > 0: send the body in pieces of this size with a pause between
        self.ignore_range = False  # answer every GET from byte 0 (200), as some servers do
        self.drops = 10**6  # how many GETs of each file drop_after applies to

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def handle_error(self, request, client_address) -> None:
        pass  # resets are what the tests inject


class _Handler(BaseHTTPRequestHandler):
    server: CrawlServer
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def _head(self, status: int, headers: dict[str, str]) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()

    def do_HEAD(self) -> None:
        data = self.server.files.get(self.path)
        if data is None:
            self._head(404, {"Content-Length": "0"})
        else:
            self._head(200, {"Content-Length": str(len(data)), "ETag": '"v1"'})

    def do_GET(self) -> None:
        srv = self.server
        data = srv.files.get(self.path)
        with srv.lock:
            srv.requests[self.path] += 1
            n = srv.requests[self.path]
        if data is None:
            self._head(404, {"Content-Length": "0"})
            return
        if n <= srv.busy:
            self._head(503, {"Retry-After": "1", "Content-Length": "0"})
            return
        if n <= srv.busy + srv.throttle:
            self._head(429, {"Content-Length": "0"})
            return
        m = re.match(r"bytes=(\d+)-$", self.headers.get("Range", ""))
        start = int(m.group(1)) if m and not srv.ignore_range else 0
        with srv.lock:
            srv.ranges.append((self.path, start))
        if start >= len(data) and m:
            self._head(416, {"Content-Range": f"bytes */{len(data)}", "Content-Length": "0"})
            return
        body = data[start:]
        headers = {"Content-Length": str(len(body)), "ETag": '"v1"'}
        if start:
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        self._head(206 if start else 200, headers)
        if srv.drop_after and n - srv.busy - srv.throttle <= srv.drops:
            self.wfile.write(body[: srv.drop_after])
            self.wfile.flush()
            # The connection closes with the body short of its Content-Length: to the reader
            # a dropped connection. (A TCP reset would do too, but Linux then discards what
            # the reader had not yet taken from its socket, so the split would vary.)
            self.connection.shutdown(socket.SHUT_WR)
            self.close_connection = True
            return
        if srv.drip:
            for i in range(0, min(len(body), srv.drip * 64), srv.drip):  # at most 64 pauses
                self.wfile.write(body[i : i + srv.drip])
                self.wfile.flush()
                time.sleep(0.005)
            self.wfile.write(body[min(len(body), srv.drip * 64) :])
            return
        self.wfile.write(body)


@contextmanager
def crawl_server(files: dict[str, bytes]) -> Iterator[CrawlServer]:
    server = CrawlServer(files)
    with running(server, lambda: sum(server.requests.values()), MAX_REQUESTS):
        yield server


@pytest.fixture(scope="module")
def crawl() -> dict[str, bytes]:
    """The served files by path: two real WARCs, a WAT of one, and the manifest of all."""
    files: dict[str, bytes] = {}
    listed = []
    for i, name in enumerate(ARCHIVES):
        path = f"{CRAWL}/segments/1716{i}/warc/{name}"
        files["/" + path] = require(WARC_DIR / name).read_bytes()
        listed.append(path)
    wat = make_wat(files["/" + listed[1]], ARCHIVES[1], "2024-01-01T00:00:00Z")
    wat_path = f"{CRAWL}/segments/17161/wat/dolma_sample-0000.warc.wat.gz"
    files["/" + wat_path] = wat
    listed.append(wat_path)
    files[f"/{CRAWL}/warc.paths.gz"] = gzip.compress("\n".join(listed).encode(), mtime=0)
    return files


def read_candidates(path: str, stream) -> tuple[list[tuple], Funnel]:
    """The candidates of one file as the pipeline reads it, keyed without the file name."""
    funnel = Funnel()
    found = input_kind(path).read_candidates(stream, path, CurationConfig(), funnel)
    return [(c.uid, c.source_offset, c.source_kind) for c in found], funnel


def local(crawl: dict[str, bytes], path: str) -> tuple[list[tuple], Funnel]:
    return read_candidates(path, io.BytesIO(crawl[path]))


def over_http(server: CrawlServer, path: str) -> tuple[list[tuple], Funnel]:
    with FileSystems.open(server.base + path, compression_type=CompressionTypes.UNCOMPRESSED) as fh:
        return read_candidates(path, fh)


FILES = [
    f"/{CRAWL}/segments/17160/warc/{ARCHIVES[0]}",
    f"/{CRAWL}/segments/17161/warc/{ARCHIVES[1]}",
    f"/{CRAWL}/segments/17161/wat/dolma_sample-0000.warc.wat.gz",
]


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.rsplit("/", 1)[1])
@pytest.mark.parametrize("fault", ["none", "drop", "busy", "drip", "no_range"])
def test_candidates_over_http_equal_those_from_disk(crawl, path: str, fault: str) -> None:
    with crawl_server(crawl) as server:
        if fault == "drop":
            server.drop_after = 40_000
        elif fault == "busy":
            server.busy = 1
        elif fault == "drip":
            server.drip = 512
        elif fault == "no_range":
            server.drop_after, server.drops, server.ignore_range = 60_000, 1, True
        got = over_http(server, path)
        starts = [s for p, s in server.ranges if p == path]
    want = local(crawl, path)
    assert got[0] == want[0] and got[0]  # the same candidates, in the same order
    assert got[1] == want[1]  # and the same funnel
    size = len(crawl[path])
    if fault == "drop":
        # Each request starts where the last one broke: 40,000 bytes further, never at 0.
        assert starts == list(range(0, size, 40_000))
    if fault == "busy":
        assert starts == [0]  # the 503 was waited out, then one whole read
    if fault == "no_range" and size > 60_000:
        assert starts == [0, 0]  # read again from the start, the first 60,000 bytes skipped


def test_a_manifest_served_with_faults_gives_the_candidates_of_the_files_on_disk(
    crawl, tmp_path
) -> None:
    from pipelines.cli import main
    from tests.test_cli import check_invariant

    mirror = tmp_path / "mirror"
    for path, data in crawl.items():
        (mirror / path.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        (mirror / path.lstrip("/")).write_bytes(data)
    runs = {}
    with crawl_server(crawl) as server:
        server.drop_after, server.busy = 90_000, 1
        for name, manifest in (
            ("http", f"{server.base}/{CRAWL}/warc.paths.gz"),
            ("disk", str(mirror / CRAWL / "warc.paths.gz")),
        ):
            out = tmp_path / name
            args = ["run", "--input", manifest, "--output", str(out), "--stop-after", "extract"]
            assert main(args) == 0
            kept, _, stats = check_invariant(out)
            runs[name] = (
                sorted(
                    (r["uid"], r["source_offset"], r["source_file"].rsplit("/", 1)[1]) for r in kept
                ),
                stats["read"],
                stats["extract"],
            )
        resumed = [s for _, s in server.ranges if s]
    assert runs["http"] == runs["disk"]
    assert len(runs["http"][0]) > 50
    assert resumed  # the dolma WARC (214 KB) was read in pieces


def test_a_missing_file_fails_at_once_and_reads_are_bounded(crawl) -> None:
    settings = HttpSettings(failures_in_a_row=3, backoff_seconds=0.01, max_backoff_seconds=0.05)
    client = HttpClient(settings)
    with crawl_server(crawl) as server:
        with pytest.raises(FileNotFoundError):
            HttpReader(server.base + "/nope.warc.gz", client).read(10)
        assert server.requests["/nope.warc.gz"] == 1  # a 404 is not retried
        server.throttle = 10  # 429 more often than the reader's patience: it gives up after 3
        with pytest.raises(HttpInputError, match="HTTP 429 after 3 tries"):
            HttpReader(server.base + FILES[0], client).read(10)
        assert server.requests[FILES[0]] == 3
        # A Retry-After longer than the reader's longest wait: it says so at once.
        server.busy, server.throttle = 10**6, 0
        with pytest.raises(HttpInputError, match="Retry-After 1 s is longer"):
            HttpReader(server.base + FILES[1], client).read(10)
        assert server.requests[FILES[1]] == 1
        assert not FileSystems.exists(server.base + "/nope.warc.gz")
        assert FileSystems.exists(server.base + FILES[0])


def test_429_backs_off_and_retry_after_is_honoured(crawl) -> None:
    waits: list[float] = []
    client = HttpClient(HttpSettings(backoff_seconds=0.25), sleep=waits.append)
    with crawl_server(crawl) as server:
        server.busy, server.throttle = 1, 2
        data = HttpReader(server.base + FILES[0], client).readall()
    assert data == crawl[FILES[0]]
    assert waits[0] == 1.0  # Retry-After: 1 on the 503
    # Then the second and third failures in a row: 0.25 s x 2^(n-1), plus up to 0.25 s jitter.
    assert 0.5 <= waits[1] <= 0.75 and 1.0 <= waits[2] <= 1.25
    assert len(waits) == 3


def test_the_per_host_cap_holds_streams_back(crawl) -> None:
    client = HttpClient(HttpSettings(streams_per_host=1, slot_wait_seconds=0.2))
    with crawl_server(crawl) as server:
        first = HttpReader(server.base + FILES[0], client)
        first.read(100)  # holds the host's only slot while open
        with pytest.raises(HttpInputError, match="no free connection"):
            HttpReader(server.base + FILES[1], client).read(100)
        first.close()  # hands it back
        assert len(HttpReader(server.base + FILES[1], client).read(100)) == 100


def test_seeking_reads_from_the_new_place(crawl) -> None:
    client = HttpClient()
    data = crawl[FILES[0]]
    with crawl_server(crawl) as server:
        reader = HttpReader(server.base + FILES[0], client)
        assert reader.read(10) == data[:10]
        reader.seek(1000)
        assert reader.read(10) == data[1000:1010]
        reader.seek(-10, io.SEEK_END)
        assert reader.readall() == data[-10:]
        reader.close()
        assert (FILES[0], 1000) in server.ranges


def test_http_cannot_be_listed_or_written() -> None:
    with pytest.raises(Exception, match="cannot list"):
        FileSystems.match(["http://127.0.0.1:9/crawl-data/*.warc.gz"])
    with pytest.raises(Exception, match="read-only"):
        FileSystems.create("http://127.0.0.1:9/x")


def test_the_module_registers_both_schemes() -> None:
    from pipelines.http_filesystem import HttpFileSystem, HttpsFileSystem

    assert type(FileSystems.get_filesystem("https://data.commoncrawl.org/x")) is HttpsFileSystem
    assert type(FileSystems.get_filesystem("http://127.0.0.1/x")) is HttpFileSystem


def test_a_read_given_up_mid_file_fails_the_file_not_as_a_corrupt_archive(crawl) -> None:
    # The reader gives up (the server cuts every answer at 20,000 bytes and ignores Range):
    # the error must leave the archive reader, whose damage handler would count an OSError
    # as archive_corrupt, so that the pipeline records the file as a dead letter.
    client = HttpClient(HttpSettings(failures_in_a_row=2, backoff_seconds=0.01))
    with crawl_server(crawl) as server:
        server.drop_after, server.ignore_range = 20_000, True
        stream = io.BufferedReader(HttpReader(server.base + FILES[1], client))
        funnel = Funnel()
        with pytest.raises(HttpInputError, match="read failed at byte 20,000 after 2 tries"):
            for _ in input_kind(FILES[1]).read_candidates(
                stream, FILES[1], CurationConfig(), funnel
            ):
                pass
        assert funnel.get("read", "archive_corrupt") == 0
