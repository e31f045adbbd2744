"""Helpers of bench/bench_images.py: the real images, a corpus of distinct JPEG variants made
from them, distinct captions, and a bounded local HTTP server (127.0.0.1 only) that serves
the corpus and robots.txt, with 404 for everything else.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import multiprocessing as mp
import os
import random
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageOps

from curation.config import CurationConfig
from curation.record import Rejection
from filters.image import check_size, decode, phash, read_header

ROBOTS = b"User-agent: *\nAllow: /\n"


def real_images(roots: list[Path]) -> tuple[list[tuple[str, bytes]], int]:
    """(name, bytes) of every file under roots that our guard reads (header and full
    decode), and how many files it rejects. .md/.csv files are not images."""
    cfg, out, rejected = CurationConfig(), [], 0
    for root in roots:
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            if path.suffix in (".md", ".csv"):
                continue
            data = path.read_bytes()
            header = read_header(data, cfg.max_image_pixels)
            if isinstance(header, Rejection) or isinstance(decode(data, None), Rejection):
                rejected += 1
            else:
                out.append((path.name, data))
    return out, rejected


def source_photos(images: list[tuple[str, bytes]]) -> list[Image.Image]:
    """The distinct JPEG photos that pass ALIGN's size rule, decoded upright to RGB."""
    cfg, seen, out = CurationConfig(), set(), []
    for _, data in images:
        header = read_header(data, cfg.max_image_pixels)
        digest = hashlib.sha256(data).digest()
        if isinstance(header, Rejection) or header.format not in ("JPEG", "MPO"):
            continue
        if check_size(header, cfg) is None and digest not in seen:
            seen.add(digest)
            im = decode(data, None)
            assert not isinstance(im, Rejection)
            out.append(im)
    return out


def _crop(im: Image.Image, rng: random.Random, size: tuple[int, int]) -> Image.Image:
    w, h = im.size
    f = rng.uniform(0.35, 1.0)
    cw, ch = max(16, int(w * f)), max(16, int(h * f * rng.uniform(0.8, 1.25)))
    cw, ch = min(cw, w), min(ch, h)
    x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
    return im.crop((x, y, x + cw, y + ch)).resize(size, Image.Resampling.BILINEAR)


def variant(photos: list[Image.Image], seed: int) -> bytes:
    """One JPEG: two crops of two photos side by side, colour-shifted, flipped, re-sized."""
    rng = random.Random(seed)
    short = rng.randint(230, 720)
    long = int(short * rng.uniform(1.0, 1.8))
    w, h = (long, short) if rng.random() < 0.7 else (short, long)
    a, b = rng.sample(photos, 2)
    canvas = Image.new("RGB", (w, h))
    if rng.random() < 0.5:  # split left/right
        cut = int(w * rng.uniform(0.3, 0.7))
        canvas.paste(_crop(a, rng, (cut, h)), (0, 0))
        canvas.paste(_crop(b, rng, (w - cut, h)), (cut, 0))
    else:
        cut = int(h * rng.uniform(0.3, 0.7))
        canvas.paste(_crop(a, rng, (w, cut)), (0, 0))
        canvas.paste(_crop(b, rng, (w, h - cut)), (0, cut))
    gains = [rng.uniform(0.8, 1.2) for _ in range(3)]
    channels = [
        c.point(lambda v, g=g: min(255, int(v * g)))
        for c, g in zip(canvas.split(), gains, strict=True)
    ]
    canvas = Image.merge("RGB", channels)
    if rng.random() < 0.5:
        canvas = ImageOps.mirror(canvas)
    buf = io.BytesIO()
    canvas.save(buf, format="JPEG", quality=rng.randint(78, 94))
    return buf.getvalue()


_WORDS = {
    "adj": "red old small wooden bright quiet busy green tall rusty snowy sunny dark golden",
    "noun": "house boat dog bridge garden tower market car river train cat street field lamp",
    "verb": "stands sits waits rests shines appears lies glows",
    "place": "Lisbon Oslo Kyoto Denver Quebec Hobart Galway Bergen Tucson Nairobi Porto Split",
    "when": "at dawn|in the rain|after sunset|in early spring|on a winter morning|at noon",
}


def captions(n: int, seed: int) -> list[str]:
    """n distinct English captions of 11-14 words (ALIGN's 3-20 unigram rule holds)."""
    rng, out, seen = random.Random(seed), [], set()
    pick = {k: v.split("|" if k == "when" else None) for k, v in _WORDS.items()}
    while len(out) < n:
        w = {k: rng.choice(v) for k, v in pick.items()}
        text = (
            f"A {w['adj']} {w['noun']} {w['verb']} near the {rng.choice(pick['adj'])} "
            f"{rng.choice(pick['noun'])} in {w['place']} {w['when']}"
        )
        if text not in seen:
            seen.add(text)
            out.append(text)
    return out


def make_corpus(photos: list[Image.Image], n: int, seed: int, max_distance: int) -> list[bytes]:
    """n variants whose pHashes (ours) are pairwise more than max_distance apart."""
    out: list[bytes] = []
    hashes: list[int] = []
    k = seed * 1_000_003
    while len(out) < n:
        data = variant(photos, k)
        k += 1
        im = decode(data)
        assert not isinstance(im, Rejection)
        h = int(phash(im), 16)
        if hashes:
            dist = np.bitwise_count(np.array(hashes, dtype=np.uint64) ^ np.uint64(h))
            if int(dist.min()) <= max_distance:
                continue  # a near-duplicate of one we have: draw another
        hashes.append(h)
        out.append(data)
    return out


def write_url_list(path: Path, urls: list[str], texts: list[str]) -> None:
    """The URL list both tools read: Parquet with columns url, caption."""
    pq.write_table(pa.table({"url": urls, "caption": texts}), path)


# --- The server: one process, one ThreadingHTTPServer per port, all on 127.0.0.1.


def _serve(folder: str, ports: list[int], ready: mp.Event, stop: mp.Event) -> None:
    files = {"/" + p.name: p.read_bytes() for p in Path(folder).iterdir()}

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive for clients that want it

        def do_GET(self) -> None:
            if self.path == "/robots.txt":
                body, ctype = ROBOTS, "text/plain"
            elif self.path in files:
                body, ctype = files[self.path], "image/jpeg"
            else:
                body, ctype = b"not found", "text/plain"
            self.send_response(200 if ctype == "image/jpeg" or body is ROBOTS else 404)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    class Server(http.server.ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 256

    servers = [Server(("127.0.0.1", port), Handler) for port in ports]
    for s in servers:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    ready.set()
    parent = os.getppid()
    while not stop.wait(1) and os.getppid() == parent:
        pass  # also stop when the benchmark process dies without closing us
    for s in servers:
        s.shutdown()


class LocalServer:
    """Serves a folder on 127.0.0.1 at the given ports from a child process, until close()."""

    def __init__(self, folder: Path, ports: list[int]) -> None:
        ctx = mp.get_context("spawn")
        self._ready, self._stop = ctx.Event(), ctx.Event()
        self._proc = ctx.Process(
            target=_serve, args=(str(folder), ports, self._ready, self._stop), daemon=True
        )
        self._proc.start()
        if not self._ready.wait(120):
            self.close()
            raise RuntimeError("the local image server did not start")

    def close(self) -> None:
        self._stop.set()
        self._proc.join(10)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join()
