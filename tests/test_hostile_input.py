"""Hostile pages and archives: bounded work, every removal counted, nothing crashes."""

from __future__ import annotations

import gzip
import io
import time
from pathlib import Path

from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from curation import reasons
from curation.config import CurationConfig
from curation.extract import candidates_from_archive
from curation.stats import Funnel
from pipelines.cli import main
from tests.test_cli import check_invariant

CFG = CurationConfig()


def warc(pages: list[tuple[str, bytes, str]]) -> bytes:
    """A gzipped WARC of HTML responses: (url, body, content type)."""
    buf = io.BytesIO()
    writer = WARCWriter(buf, gzip=True)
    for url, body, ctype in pages:
        http = StatusAndHeaders("200 OK", [("Content-Type", ctype)], protocol="HTTP/1.1")
        writer.write_record(
            writer.create_warc_record(url, "response", payload=io.BytesIO(body), http_headers=http)
        )
    return buf.getvalue()


def extract(data: bytes) -> tuple[list, Funnel]:
    funnel = Funnel()
    return list(candidates_from_archive(io.BytesIO(data), "mem", CFG, funnel)), funnel


HTML = "text/html; charset=utf-8"
GOOD = b'<img src="good.jpg" alt="a red fox sitting in the snow">'


def test_deeply_nested_markup_is_refused_before_parsing() -> None:
    deep = b"<div>" * 100_000 + GOOD + b"</div>" * 100_000
    start = time.monotonic()
    found, funnel = extract(
        warc([("http://a.example/deep", deep, HTML), ("http://a.example/ok", GOOD, HTML)])
    )
    assert time.monotonic() - start < 5  # parsing it would take ~25 s
    assert funnel.get(reasons.STAGE_READ, reasons.HTML_TOO_DEEP) == 1
    assert [c.page_url for c in found] == ["http://a.example/ok"]


def test_moderate_nesting_is_parsed() -> None:
    nested = b"<div><span>" * 500 + GOOD + b"</span></div>" * 500
    found, _ = extract(warc([("http://a.example/n", nested, HTML)]))
    assert len(found) == 1


def test_a_million_img_tags_are_capped_and_counted() -> None:
    page = b"<img src=x alt=a>" * 1_000_000  # 17 MB: under max_html_bytes
    start = time.monotonic()
    found, funnel = extract(warc([("http://a.example/m", page, HTML)]))
    assert time.monotonic() - start < 30
    extract_counts = funnel.stage(reasons.STAGE_EXTRACT)
    assert extract_counts[reasons.IMG_TAGS] == 1_000_000
    assert extract_counts[reasons.PAGE_IMAGE_CAP] == 1_000_000 - CFG.max_images_per_page
    assert len(found) == 1  # the same pair 5000 times: one candidate, the rest on-page dups
    assert extract_counts[reasons.DUPLICATE_ON_PAGE] == CFG.max_images_per_page - 1


def test_gigantic_attributes_are_counted_not_kept() -> None:
    huge_alt = b'<img src="a.jpg" alt="' + b"word " * 2_000_000 + b'">'
    huge_src = b'<img src="/' + b"a" * 5_000_000 + b'.jpg" alt="a long address here">'
    found, funnel = extract(warc([("http://a.example/g", huge_alt + huge_src + GOOD, HTML)]))
    assert len(found) == 1
    assert funnel.get(reasons.STAGE_EXTRACT, reasons.ALT_TEXT_OVERSIZED) == 1
    assert funnel.get(reasons.STAGE_EXTRACT, reasons.URL_OVERSIZED) == 1


def test_invalid_and_mixed_encodings_and_nul_bytes() -> None:
    pages = [
        ("http://a.example/nul", b'<img src="n.jpg" alt="a red\x00fox in\x00the snow">', HTML),
        (
            "http://a.example/bad",
            b'<img src="b.jpg" alt="caf\xe9 cr\xe8me \xff\xfe on a table">',
            HTML,
        ),
        ("http://a.example/mix", "<img src='m.jpg' alt='Москва'>".encode("cp1251") + GOOD, HTML),
        ("http://a.example/bin", bytes(range(256)) * 100, HTML),
        (
            "http://a.example/u16",
            "<img src='u.jpg' alt='utf sixteen page here'>".encode("utf-16"),
            "text/html",
        ),
    ]
    found, funnel = extract(warc(pages))
    assert funnel.get(reasons.STAGE_READ, reasons.HTML_PAGES) == 5
    for c in found:
        assert "\x00" not in c.alt_text and c.image_url.startswith("http")
    assert {c.page_url for c in found} >= {
        "http://a.example/nul",
        "http://a.example/bad",
        "http://a.example/u16",
    }


def _record(url: str, body: bytes, declared: int) -> bytes:
    http = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n" + body
    head = (
        f"WARC/1.0\r\nWARC-Type: response\r\nWARC-Target-URI: {url}\r\n"
        f"WARC-Date: 2024-01-01T00:00:00Z\r\nContent-Type: application/http; msgtype=response\r\n"
        f"Content-Length: {declared}\r\n\r\n"
    ).encode()
    return head + http + b"\r\n\r\n"


def test_warc_records_that_lie_about_their_length() -> None:
    good = _record("http://a.example/1", GOOD, len(GOOD) + 45)
    shorter = _record("http://a.example/2", GOOD * 3, 60)  # says less than it holds
    longer = _record("http://a.example/3", GOOD, 10_000)  # says more than the file has
    for data in (
        good + shorter + good,
        good + longer,
        gzip.compress(good) + gzip.compress(shorter),
    ):
        found, funnel = extract(data)
        read = funnel.stage(reasons.STAGE_READ)
        assert found and found[0].page_url == "http://a.example/1"
        # What went wrong is counted, never raised.
        assert set(read) <= {
            reasons.FILES,
            reasons.RECORDS,
            reasons.HTML_PAGES,
            reasons.ARCHIVE_CORRUPT,
            reasons.ARCHIVE_TRUNCATED,
            reasons.RECORD_NOT_HTTP,
            reasons.NOT_HTML,
        }


def test_the_whole_hostile_crawl_balances(tmp_path: Path) -> None:
    crawl = tmp_path / "hostile.warc.gz"
    crawl.write_bytes(
        warc(
            [
                ("http://a.example/deep", b"<div>" * 50_000 + GOOD + b"</div>" * 50_000, HTML),
                ("http://a.example/many", b'<img src="x.jpg" alt="a thing">' * 20_000, HTML),
                (
                    "http://a.example/nul",
                    b'<img src="n.jpg" alt="a red\x00fox in\x00the snow">',
                    HTML,
                ),
                ("http://a.example/ok", GOOD, HTML),
            ]
        )
        + b"\x1f\x8b\x08\x00garbage that is not a gzip member"
    )
    junk = tmp_path / "not-a-warc.warc"
    junk.write_bytes(b"\x89PNG\r\n\x1a\nthis is an image, not an archive")
    out = tmp_path / "out"
    assert (
        main(
            ["run", "--input", str(crawl), str(junk), "--output", str(out), "--stop-after", "text"]
        )
        == 0
    )
    kept, _, stats = check_invariant(out)
    assert stats["read"][reasons.HTML_TOO_DEEP] == 1
    assert stats["read"][reasons.NOT_AN_ARCHIVE] == 1
    assert stats["read"][reasons.ARCHIVE_CORRUPT] == 1
    assert stats["extract"][reasons.PAGE_IMAGE_CAP] == 15_000
    assert len(kept) >= 1
