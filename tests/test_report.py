"""stats.json's distributions, `curate report`, and report.html opened in headless Chromium."""

from __future__ import annotations

import io
import itertools
import json
import random
import shutil
import socket
import subprocess
import threading
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from curation import reasons
from curation.report import build_html, compare_table, flat_colour, funnel_table, preview
from curation.stats import Distributions, TopTable
from pipelines.cli import main
from pipelines.report import BEFORE_LANGUAGE_ID
from pipelines.report_samples import _with_kept_match
from tests.conftest import SAMPLE_WARC

RUN_PAGE = "run-report.html"  # the run's own page, kept beside OUT before any test rebuilds it


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report") / "out"
    args = ["run", "--input", str(SAMPLE_WARC), "--output", str(out), "--images-from", "archive"]
    # The opt-in near-duplicate rule on, so that its histogram and gallery show.
    assert main([*args, "--near-dup-distance", "4"]) == 0
    shutil.copy(out / "report.html", out.parent / RUN_PAGE)
    return out


def _samples(out: Path) -> list[dict]:
    return pq.read_table(out / "report_samples.parquet").to_pylist()


def _ledger(out: Path) -> list[dict]:
    return [
        r for f in sorted((out / "rejects").glob("*.parquet")) for r in pq.read_table(f).to_pylist()
    ]


# A table of local images whose texts meet every dataset-wide text rule and several
# per-record ones: (alt-text, images it sits on).
TEXT_ROWS = [
    ("click here to enlarge the photo", 3),  # > --max-images-per-text 2
    ("a red fox in the snow", 2),  # kept: every token occurs twice or more
    ("a red fox in the zqxjk", 1),  # zqxjk occurs once: rare with --vocab-min-count 2
    ("a red fox <script>alert</script> in the snow", 1),  # rare 'alert', and markup
    ("ein roter Fuchs im tiefen Schnee", 1),  # German: not selected by --languages en
    ("im tiefen Schnee ein roter Fuchs", 1),
    ("a cat", 1),
    ("IMG_0042.JPG", 1),
    ("https://x.example/a.jpg", 1),
    ("spacer", 1),
    ("1920 x 1080", 1),
    (" ".join(["word"] * 30), 1),
]


@pytest.fixture(scope="module")
def texts_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("texts")
    (root / "images").mkdir()
    lines = ["url\tcaption"]
    n = 0
    for text, images in TEXT_ROWS:
        for _ in range(images):
            n += 1
            rnd = random.Random(n)
            noise = bytes(rnd.randrange(256) for _ in range(320 * 240 * 3))
            Image.frombytes("RGB", (320, 240), noise).save(root / "images" / f"{n}.jpg")
            lines.append(f"images/{n}.jpg\t{text}")
    (root / "urls.tsv").write_text("\n".join(lines) + "\n")
    out = root / "out"
    args = ["run", "--input", str(root / "urls.tsv"), "--output", str(out), "--nsfw", "false"]
    args += ["--file-roots", str(root / "images"), "--max-images-per-text", "2"]
    args += ["--vocab-min-count", "2", "--vocab-ngrams", "1", "--languages", "en"]
    assert main(args) == 0
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


def test_curate_report_rebuilds_the_same_bytes(run_dir: Path) -> None:
    assert main(["report", str(run_dir)]) == 0
    assert (run_dir / "report.html").read_bytes() == (run_dir.parent / RUN_PAGE).read_bytes()


def test_page_does_not_depend_on_key_or_sample_order(run_dir: Path) -> None:
    # stats.json is written with sorted keys: the histograms came back in another order.
    stats = json.loads((run_dir / "stats.json").read_text())
    hists = stats["distributions"]["histograms"]
    stats["distributions"]["histograms"] = dict(reversed(list(hists.items())))
    samples = _samples(run_dir)
    assert build_html(stats, samples[::-1]) == build_html(json.loads(json.dumps(stats)), samples)


@pytest.mark.parametrize("out_fixture", ["run_dir", "texts_dir"])
def test_every_text_reason_has_a_table_of_its_smallest_uids(out_fixture: str, request) -> None:
    out = request.getfixturevalue(out_fixture)
    stats = json.loads((out / "stats.json").read_text())
    page = (out / "report.html").read_text()
    samples = _samples(out)
    ledger = _ledger(out)
    text_reasons = stats["rejected"]["text"]
    assert len(text_reasons) >= 6
    for reason in text_reasons:
        smallest = sorted(r["uid"] for r in ledger if r["reason"] == reason)[:12]
        assert sorted(s["uid"] for s in samples if s["group"] == reason) == smallest, reason
        assert f"<h3>{reason} ({text_reasons[reason]:,} rejected)</h3>" in page
    # Text reasons get tables, not galleries of missing previews.
    assert "rejected: text_" not in page and "no preview" not in page


# What a dataset-wide text rule's section shows beyond its sample (from texts_dir).
DATASET_WIDE = [
    (reasons.TEXT_ON_MANY_IMAGES, "<tr><td>click here to enlarge the photo</td><td>3</td></tr>"),
    (reasons.TEXT_RARE_TOKEN, "<tr><td>zqxjk</td><td>1</td></tr>"),
    (reasons.TEXT_RARE_TOKEN, "<tr><td>alert</td><td>1</td></tr>"),
    (reasons.LANGUAGE_NOT_SELECTED, "<td>ein roter Fuchs im tiefen Schnee</td><td>de</td>"),
    (reasons.TEXT_TOO_SHORT, "<td>a cat</td><td>2 unigrams</td>"),
]


@pytest.mark.parametrize(("reason", "row"), DATASET_WIDE)
def test_text_reason_sections(texts_dir: Path, reason: str, row: str) -> None:
    page = (texts_dir / "report.html").read_text()
    section = page.split(f"<h3>{reason} (", 1)[1].split("</section>", 1)[0]
    assert row in section


def test_text_tables_escape_alt_texts_and_stats_hold_the_top_texts(texts_dir: Path) -> None:
    page = (texts_dir / "report.html").read_text()
    assert "<script>alert" not in page
    assert "a red fox &lt;script&gt;alert&lt;/script&gt; in the snow" in page
    stats = json.loads((texts_dir / "stats.json").read_text())
    top = stats["text_rejects"]
    assert top[reasons.TEXT_ON_MANY_IMAGES]["rows"] == [["click here to enlarge the photo", 3]]
    assert top[reasons.TEXT_RARE_TOKEN]["rows"] == [["alert", 1], ["zqxjk", 1]]


@pytest.mark.parametrize("out_fixture", ["run_dir", "texts_dir"])
def test_yield_by_language_and_host_adds_up(out_fixture: str, request) -> None:
    out = request.getfixturevalue(out_fixture)
    stats = json.loads((out / "stats.json").read_text())
    totals = stats["totals"]
    for name in ("language", "host"):
        table = stats["yield"][name]
        kept = sum(r[1] for r in table["rows"]) + table["rest"]["counts"][0]
        rejected = sum(r[2] for r in table["rows"]) + table["rest"]["counts"][1]
        assert (kept, rejected) == (totals["kept"], totals["rejected"]), name
        ranks = [(-(r[1] + r[2]), r[0]) for r in table["rows"]]
        assert ranks == sorted(ranks)
    by_lang = {r[0]: r[1:] for r in stats["yield"]["language"]["rows"]}
    text = stats["rejected"]["text"]
    before = sum(text.values()) - text.get(reasons.LANGUAGE_NOT_SELECTED, 0)
    assert by_lang[BEFORE_LANGUAGE_ID] == [0, before]
    page = (out / "report.html").read_text()
    assert "<h3>by alt-text language</h3><table class=yield>" in page
    assert "<h3>by image host</h3><table class=yield>" in page


def test_yield_tables_of_the_sample(run_dir: Path, texts_dir: Path) -> None:
    hosts = {
        r[0]: r[1:]
        for r in json.loads((run_dir / "stats.json").read_text())["yield"]["host"]["rows"]
    }
    assert hosts["www.example.net"] == [4, 4]  # the top kept host: four kept, four rejected
    langs = json.loads((texts_dir / "stats.json").read_text())["yield"]["language"]["rows"]
    assert ["de", 0, 2] in langs and ["en", 2, 0] in langs


def test_top_table_keeps_the_largest_rows_in_any_merge_order() -> None:
    rows = [(f"k{i}", (i % 5, i % 3)) for i in range(12)]
    expected = sorted(rows, key=lambda r: (-sum(r[1]), r[0]))
    results = []
    for order in itertools.permutations(range(3)):
        parts = [TopTable(4, 2) for _ in range(3)]
        for i, (key, counts) in enumerate(rows):
            parts[order[i % 3]].add(key, counts)
        results.append(parts[0].merge(parts[1]).merge(parts[2]))
        results.append(parts[2].merge(parts[0].merge(parts[1])))
    doc = results[0].to_json_dict()
    assert all(r == results[0] for r in results)
    assert doc["rows"] == [[k, *c] for k, c in expected[:4]]
    rest = expected[4:]
    assert doc["rest"] == {
        "keys": 8,
        "counts": [sum(c[0] for _, c in rest), sum(c[1] for _, c in rest)],
    }


def test_near_duplicate_card_shows_the_kept_image(run_dir: Path) -> None:
    samples = _samples(run_dir)
    dup = next(s for s in samples if s["group"] == reasons.NEAR_DUPLICATE)
    kept = {s["uid"]: s for s in samples if s["group"] == "kept"}
    assert dup["detail"] in kept  # brulee, kept; bread is its near-duplicate
    assert dup["match_thumbnail"] == kept[dup["detail"]]["thumbnail"]
    assert dup["thumbnail"] and dup["thumbnail"] != dup["match_thumbnail"]
    page = (run_dir / "report.html").read_text()
    assert "<small>kept image</small>" in page


def test_near_duplicate_without_its_kept_image_says_so() -> None:
    row = {
        "group": reasons.NEAR_DUPLICATE,
        "uid": "b",
        "alt_text": "bread",
        "detail": "a",
        "thumbnail": None,
        "note": None,
    }
    found = _with_kept_match(row, {"a": b"jpeg"})
    assert found["match_thumbnail"] == b"jpeg" and found["note"] is None
    missing = _with_kept_match(row, {})
    assert "match_thumbnail" not in missing
    assert "not among this run's kept records" in missing["note"]
    stats = {
        "totals": {"extracted": 1, "kept": 0, "rejected": 1, "balanced": True},
        "rejected": {"image": {reasons.NEAR_DUPLICATE: 1}},
    }
    assert "not among this run&#x27;s kept records" in build_html(stats, [missing])


def _encoded(im: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt)
    return buf.getvalue()


_GRADIENT16 = Image.fromarray(np.tile(np.linspace(0, 65535, 300).astype(np.uint16), (200, 1)))
_RED_ON_CLEAR = np.zeros((200, 300, 4), np.uint8)
_RED_ON_CLEAR[50:150, 50:250] = (255, 0, 0, 255)

# (image bytes, a flat colour expected or None, the note's words or "")
PREVIEWS = [
    (_encoded(Image.new("L", (300, 250), 200), "JPEG"), "#c8c8c8", ""),  # the sample's fox
    (_encoded(_GRADIENT16), None, ""),  # 16-bit: was clipped to a near-white square
    (_encoded(Image.fromarray(_RED_ON_CLEAR)), None, ""),  # alpha: on a checkerboard
    (_encoded(Image.new("RGBA", (300, 250))), None, "fully transparent"),
    (b"<html>not an image</html>", None, "does not decode"),
]


@pytest.mark.parametrize(("data", "colour", "note"), PREVIEWS)
def test_previews_say_what_they_cannot_show(data: bytes, colour: str | None, note: str) -> None:
    thumb, said = preview(data)
    assert note in said and bool(note) == bool(said)
    if thumb is None:
        assert note
        return
    assert flat_colour(thumb) == colour
    if colour:
        stats = {
            "totals": {"extracted": 1, "kept": 1, "rejected": 0, "balanced": True},
            "rejected": {},
        }
        page = build_html(
            stats, [{"group": "kept", "uid": "u", "alt_text": "x", "thumbnail": thumb}]
        )
        assert f"<span class=flag>one colour throughout ({colour})" in page


def test_the_samples_grey_fox_has_its_reason_on_it(run_dir: Path) -> None:
    page = (run_dir / "report.html").read_text()
    assert page.count("<span class=flag>one colour throughout (#c8c8c8)") == 1
    fox = page.split("a red fox sitting in the snow at dawn", 1)[0].rsplit("<figure>", 1)[1]
    assert "one colour throughout" in fox


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
                "--window-size=1200,6000",
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
    assert im.size == (1200, 6000)
    colours = im.getcolors(maxcolors=1 << 20)
    counts = {c: n for n, c in colours}
    assert counts.get((0x3B, 0x7D, 0xD8), 0) > 2000  # the funnel's bars
    assert counts.get((0xD0, 0x64, 0x3B), 0) > 2000  # the rejection bars
    assert len(colours) > 5000  # thumbnails: photographs have many colours
    assert counts.get((0x6A, 0x9F, 0x58), 0) > 5000  # histograms and the yield's kept shares
    # The grey fox's flag: #b00020 at 85% over its grey (#c8c8c8).
    assert sum(n for c, n in counts.items() if abs(c[0] - 180) < 6 and c[1] < 40) > 300
