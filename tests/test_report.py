"""stats.json's distributions, `curate report`, and report.html opened in headless Chromium."""

from __future__ import annotations

import itertools
import json
import shutil
import socket
import subprocess
import threading
from pathlib import Path

import pytest
from PIL import Image

from curation.report import build_html, compare_table, funnel_table
from curation.stats import Distributions
from pipelines.cli import main
from tests.conftest import SAMPLE_WARC


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report") / "out"
    args = ["run", "--input", str(SAMPLE_WARC), "--output", str(out), "--images-from", "archive"]
    # The opt-in near-duplicate rule on, so that its histogram and gallery show.
    assert main([*args, "--near-dup-distance", "4"]) == 0
    return out


def test_stats_json_has_distributions_and_hosts(run_dir: Path) -> None:
    stats = json.loads((run_dir / "stats.json").read_text())
    hist = stats["distributions"]["histograms"]
    for name in (
        "width",
        "height",
        "aspect_ratio",
        "shorter_side",
        "file_size",
        "text_unigrams",
        "nsfw_score",
        "near_dup_group_size",
    ):
        assert len(hist[name]["counts"]) == len(hist[name]["edges"]) - 1
    kept = stats["totals"]["kept"]
    assert sum(hist["width"]["counts"]) == kept == sum(hist["text_unigrams"]["counts"])
    assert sum(hist["near_dup_group_size"]["counts"]) == 1  # brulee + bread: one group of 2
    assert hist["near_dup_group_size"]["counts"][0] == 1
    assert sum(stats["distributions"]["categories"]["text_lang"].values()) == kept
    hosts = stats["top_hosts"]["kept"]
    assert hosts[0] == ["www.example.net", 4] and sum(n for _, n in hosts) == kept


def test_distributions_merge_in_any_order() -> None:
    parts = []
    for i in range(3):
        d = Distributions()
        d.observe("width", 100 * (i + 1))
        d.observe("nsfw_score", 0.1 * i)
        d.observe_category("text_lang", ["en", "de", None][i])
        parts.append(d)
    results = []
    for order in itertools.permutations(parts):
        acc = Distributions()
        for d in order:
            acc = acc.merge(d)
        results.append(acc)
    assert all(r == results[0] for r in results)
    a, b, c = parts
    assert a.merge(b).merge(c) == a.merge(b.merge(c))


def test_curate_report_prints_and_rebuilds(run_dir: Path, capsys) -> None:
    (run_dir / "report.html").unlink()
    assert main(["report", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "extracted candidates" in out and "near_duplicate" in out and "kept" in out
    assert (run_dir / "report.html").exists()


def test_curate_report_compares_two_runs(run_dir: Path, tmp_path, capsys) -> None:
    other = tmp_path / "strict"
    args = ["run", "--input", str(SAMPLE_WARC), "--output", str(other), "--images-from", "archive"]
    assert main([*args, "--min-unigrams", "8"]) == 0
    capsys.readouterr()
    assert main(["report", str(run_dir), str(other)]) == 0
    table = capsys.readouterr().out
    line = next(x for x in table.splitlines() if x.startswith("text: text_too_short"))
    counts = [int(tok) for tok in line.split() if tok.isdigit()]
    assert counts[0] < counts[1]


def test_tables_are_plain_text() -> None:
    stats = {
        "totals": {"extracted": 10, "kept": 6, "rejected": 4, "balanced": True},
        "rejected": {"image": {"nsfw": 1}, "text": {"text_too_short": 3}},
    }
    table = funnel_table(stats)
    assert table.index("rejected at text") < table.index("rejected at image")
    assert "60.0%" in table
    assert "text: text_too_short" in compare_table(stats, stats, ("a", "b"))


def test_html_is_self_contained(run_dir: Path) -> None:
    html = (run_dir / "report.html").read_text()
    assert "url(" not in html and "@import" not in html
    assert 'src="http' not in html and "href=" not in html and "<script" not in html
    assert "default-src 'none'" in html
    assert html.count("data:image/jpeg;base64,") >= 12  # the kept gallery
    # An alt-text is data: it is escaped, never markup.
    page = build_html(
        {"totals": {"extracted": 1, "kept": 1, "rejected": 0, "balanced": True}, "rejected": {}},
        [{"group": "kept", "uid": "u", "alt_text": "<script>x</script>", "thumbnail": None}],
    )
    assert "<script>x" not in page and "&lt;script&gt;" in page


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class _RecordingProxy:
    """A proxy on 127.0.0.1 that answers nothing: it records each request line and hangs up,
    so every request Chromium makes lands here and none leaves the machine."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.requests: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.sock.getsockname()[1]}"

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            conn.settimeout(1.0)
            try:
                self.requests.append(conn.recv(300).split(b"\r\n", 1)[0].decode("latin-1"))
            except OSError:
                self.requests.append("")
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


def _chromium(page: Path, shot: Path, profile: Path) -> list[str]:
    """Screenshot a page; return the request lines it (and the browser) sent."""
    proxy = _RecordingProxy()
    try:
        subprocess.run(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-quic",
                "--no-first-run",
                f"--user-data-dir={profile}",
                f"--proxy-server=http://{proxy.address}",
                "--proxy-bypass-list=<-loopback>",
                "--window-size=1200,3200",
                f"--screenshot={shot}",
                page.as_uri(),
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
    finally:
        proxy.close()
    return proxy.requests


def _host(request_line: str) -> str:
    # "CONNECT host:443 HTTP/1.1" or "GET http://host/path HTTP/1.1"
    target = request_line.split(" ")[1] if " " in request_line else ""
    return target.split("://", 1)[-1].split("/", 1)[0].rsplit(":", 1)[0]


@pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)"
)
def test_report_in_headless_chromium(run_dir: Path, tmp_path) -> None:
    blank = tmp_path / "blank.html"
    blank.write_text("<!DOCTYPE html><html><body>blank</body></html>")
    browser_own = _chromium(blank, tmp_path / "blank.png", tmp_path / "p1")
    shot = tmp_path / "report.png"
    requests = _chromium(run_dir / "report.html", shot, tmp_path / "p2")
    # Chromium phones its own services even with background networking off (time, accounts);
    # the page itself adds no request: every host seen is one the blank page also produced.
    assert {_host(r) for r in requests} <= {_host(r) for r in browser_own}
    im = Image.open(shot).convert("RGB")
    assert im.size == (1200, 3200)
    colours = im.getcolors(maxcolors=1 << 20)
    counts = {c: n for n, c in colours}
    assert counts.get((0x3B, 0x7D, 0xD8), 0) > 2000  # the funnel's bars
    assert counts.get((0xD0, 0x64, 0x3B), 0) > 2000  # the rejection bars
    assert len(colours) > 5000  # thumbnails: photographs have many colours
