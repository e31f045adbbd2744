"""Shared fixtures and helpers: paths to the third-party data beside the checkout, the
bundled sample, and a misbehaving image server on 127.0.0.1 for the fetcher tests (every
route bounded: the slowest sleeps 2 s, the largest streams 3 MB; it stops with its test)."""

from __future__ import annotations

import gzip
import io
import os
import signal
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from curation.config import CurationConfig
from filters.measure import Measured, measure_bytes

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
WARC_DIR = SHARED_DATA / "warc"
SAMPLE_WARC = ROOT / "sample" / "crawl.warc.gz"
LAION_PARQUET = SHARED_DATA / "captions" / "img2dataset_laion_test_1000.parquet"

_TUNED = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "ARROW_DEFAULT_MEMORY_POOL")


@pytest.fixture(autouse=True)
def _untuned_after_each_test() -> Iterator[None]:
    """`curate run` called in-process tunes this process's allocator and exports the
    settings for its workers (pipelines/runtime.py tune_allocator); the next test starts with
    the environment and Arrow pool it had, so that a subprocess it starts decides for
    itself. (glibc's thresholds, once set, stay for the process: they change no result.)"""
    import pyarrow as pa

    before = {k: os.environ.get(k) for k in _TUNED}
    pool = pa.default_memory_pool()
    yield
    for key, value in before.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    pa.set_memory_pool(pool)


def require(path: Path) -> Path:
    """Skip the calling test when third-party data is absent (a clone without ../shared)."""
    if not path.exists():
        pytest.skip(f"test data not present: {path} (see ../shared/data/README.md)")
    return path


@pytest.fixture
def warc_dir() -> Path:
    return require(WARC_DIR)


@pytest.fixture
def laion_parquet() -> Path:
    return require(LAION_PARQUET)


def make_wat(warc: bytes, name: str, date: str) -> bytes:
    """scripts/make_wat.py's WAT of a WARC (the script is not a package module)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_wat", ROOT / "scripts" / "make_wat.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_wat(warc, name, date)


def archive_files() -> list[Path]:
    """Every archive in ../shared/data/warc (empty when absent)."""
    if not WARC_DIR.exists():
        return []
    return sorted(p for p in WARC_DIR.iterdir() if p.suffix != ".md")


# --- The image server.


def jpeg_bytes(size: tuple[int, int] = (320, 240), colour: int = 90) -> bytes:
    """A small real JPEG with some structure."""
    im = Image.new("RGB", size, (colour, 120, 200))
    for x in range(0, size[0], 16):
        for y in range(size[1]):
            im.putpixel((x, y), (255, 255, 255))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=85)
    return buf.getvalue()


class ImageServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.hits: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.image = jpeg_bytes()
        self.robots = b"User-agent: *\nDisallow: /private/\n"
        self.images: dict[str, bytes] = {}  # extra path -> bytes routes

    def handle_error(self, request, client_address) -> None:
        # The fetcher hangs up on purpose (timeouts, size caps): not an error here.
        import sys

        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def hit(self, path: str) -> int:
        with self.lock:
            self.hits[path] += 1
            return self.hits[path]


class _Handler(BaseHTTPRequestHandler):
    server: ImageServer

    def log_message(self, *args: object) -> None:  # keep test output clean
        pass

    def _send(self, status: int, body: bytes = b"", ctype: str = "image/jpeg", **headers):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers.items():
            self.send_header(k.replace("_", "-"), v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        n = self.server.hit(path)
        img = self.server.image
        if path == "/robots.txt":
            self._send(200, self.server.robots, "text/plain")
        elif path in self.server.images:
            self._send(200, self.server.images[path])
        elif path in ("/ok.jpg", "/private/x.jpg", "/other.jpg"):
            self._send(200, img)
        elif path == "/octet.jpg":
            self._send(200, img, "application/octet-stream")
        elif path == "/404.jpg":
            self._send(404, b"not here", "text/html")
        elif path == "/flaky.jpg":
            self._send(500, b"oops", "text/html") if n == 1 else self._send(200, img)
        elif path == "/503-then-ok.jpg":
            self._send(503, b"busy", "text/html") if n == 1 else self._send(200, img)
        elif path == "/always500.jpg":
            self._send(503, b"down", "text/html")
        elif path == "/429.jpg":
            if n == 1:
                self._send(429, b"slow down", "text/html", Retry_After="1")
            else:
                self._send(200, img)
        elif path == "/slow.jpg":
            time.sleep(2.0)
            self._send(200, img)
        elif path == "/big.jpg":
            self._send(200, img + b"\0" * 3_000_000)
        elif path == "/big-stream.jpg":
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.end_headers()  # no Content-Length: the cap must act while streaming
            for _ in range(30):
                self.wfile.write(b"\0" * 100_000)
        elif path == "/gzip-bomb.jpg":
            self._send(200, gzip.compress(b"\0" * 20_000_000), Content_Encoding="gzip")
        elif path == "/page.html":
            self._send(200, b"<html>a page</html>", "text/html; charset=utf-8")
        elif path == "/noai.jpg":
            self._send(200, img, X_Robots_Tag="noindex, noai")
        elif path == "/loop.jpg":
            self._send(302, b"", "text/html", Location="/loop.jpg")
        elif path == "/redirect.jpg":
            self._send(301, b"", "text/html", Location="/ok.jpg")
        elif path == "/to-metadata.jpg":
            self._send(302, b"", "text/html", Location="http://169.254.169.254/latest/meta-data")
        elif path == "/to-ftp.jpg":
            self._send(302, b"", "text/html", Location="ftp://127.0.0.1/x.jpg")
        elif path == "/reset-mid-body.jpg":
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.write(img[:1000])
            self.wfile.flush()
            # SO_LINGER 0: close with a TCP reset, as a crashing server does.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        elif path == "/short-body.jpg":
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(img) + 5000))  # a lie
            self.end_headers()
            self.wfile.write(img)
            self.close_connection = True
        elif path == "/slow-drip.jpg":
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.end_headers()
            for byte in img[:50]:  # bounded: at most 50 drops, 10 s
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(0.2)
        elif path == "/endless.jpg":
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.end_headers()
            for _ in range(800):  # bounded: 50 MB at most, the client stops long before
                self.wfile.write(b"\xff" * 65536)
        elif path.startswith("/chain/"):
            hops = int(path.split("/")[2].split(".")[0])
            if hops == 0:
                self._send(200, img)
            else:
                self._send(302, b"", "text/html", Location=f"/chain/{hops - 1}.jpg")
        elif path == "/flap.jpg":
            self._send(500, b"", "text/html") if n % 3 else self._send(200, img)
        elif path == "/fake.jpg":
            self._send(200, b"<html>an error page</html>")  # says image/jpeg, is HTML
        else:
            self._send(404, b"", "text/html")


# Requests one test may send the image server; the busiest sends 88 (measured).
MAX_REQUESTS = 500


@contextmanager
def running(
    server: ThreadingHTTPServer, requests: Callable[[], int], budget: int
) -> Iterator[None]:
    """Run a test HTTP server in a thread for the duration of the block; on leaving it,
    check that the server stopped and served at most `budget` requests (`requests()`)."""
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    # Every request loop a test drives is bounded in count and time (DEVELOPERS.md): a
    # client retrying without end shows here as a runaway count or a server that did not stop.
    assert not thread.is_alive(), "the test server thread did not stop within 5 s"
    total = requests()
    assert total <= budget, f"{total} requests to the test server (budget {budget})"


@contextmanager
def serve(server: ImageServer | None = None) -> Iterator[ImageServer]:
    """Run an ImageServer for the duration of the block (see `running`)."""
    server = server or ImageServer()
    with running(server, lambda: sum(server.hits.values()), MAX_REQUESTS):
        yield server


# --- A faulty measure_bytes for the measuring processes' tests (tests/test_measure.py): a
# child process imports it from here by name ("tests.conftest:measure_or_fail"); it crashes,
# hangs or raises on the images whose URL says so, and measures the rest.


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


@pytest.fixture
def pools_made(monkeypatch) -> list:
    """Every MeasurePool made while the test runs (started early or not), in order."""
    from pipelines import measure_pool

    made: list = []

    class Recording(measure_pool.MeasurePool):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(measure_pool, "MeasurePool", Recording)
    return made
