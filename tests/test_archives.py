"""Extraction from every real archive in ../shared/data/warc.

The expected pairs were found by reading each page's raw HTML and resolving the URLs by
hand; the per-file <img> counts come from an independent parser (BeautifulSoup with
html.parser), and <img> tags inside comments and <script> must not count.
"""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import pytest

from curation import reasons
from curation.archive import iter_responses, sniff_format
from curation.config import CurationConfig
from curation.extract import candidates_from_archive
from curation.record import Candidate
from curation.stats import Funnel
from tests.conftest import WARC_DIR, archive_files, require

CFG = CurationConfig()
NOT_CANDIDATE = (
    reasons.NO_ALT_TEXT,
    reasons.EMPTY_ALT_TEXT,
    reasons.ALT_TEXT_OVERSIZED,
    reasons.NO_IMAGE_URL,
    reasons.DATA_URI,
    reasons.UNSUPPORTED_SCHEME,
    reasons.BAD_URL,
    reasons.URL_OVERSIZED,
    reasons.DUPLICATE_ON_PAGE,
    reasons.PAGE_IMAGE_CAP,
)


def extract(path: Path, cfg: CurationConfig = CFG) -> tuple[list[Candidate], Funnel]:
    funnel = Funnel()
    with open(path, "rb") as fh:
        found = list(candidates_from_archive(fh, str(path), cfg, funnel))
    return found, funnel


@pytest.mark.parametrize("path", archive_files(), ids=lambda p: p.name)
def test_every_archive_reads_and_the_funnel_adds_up(path: Path) -> None:
    found, funnel = extract(path)
    extract_counts = funnel.stage(reasons.STAGE_EXTRACT)
    assert funnel.get(reasons.STAGE_READ, reasons.FILES) == 1
    assert extract_counts.get(reasons.CANDIDATES, 0) == len(found)
    # Every <img> tag is a candidate or is counted under exactly one reason.
    assert extract_counts.get(reasons.IMG_TAGS, 0) == len(found) + sum(
        extract_counts.get(r, 0) for r in NOT_CANDIDATE
    )
    for c in found:
        assert c.image_url.startswith(("http://", "https://"))
        assert c.alt_text and c.alt_text == " ".join(c.alt_text.split())
        assert c.page_url.startswith(("http://", "https://"))
        assert not c.page_url.startswith("<")
        assert c.source_file == str(path)


# (archive, html 2xx pages, <img> tags, candidates): tags counted independently.
COUNTS = [
    ("aut_example.warc.gz", 94, 788, 307),
    ("aut_issue-514.warc", 1, 3, 3),
    ("cc-whirlwind_whirlwind.warc.gz", 1, 13, 7),
    ("cc-whirlwind_whirlwind.warc.wat.gz", 0, 0, 0),
    ("cc-whirlwind_whirlwind.warc.wet.gz", 0, 0, 0),
    ("dolma_sample-0000.warc.gz", 22, 240, 57),
    ("iawc_IAH-urls-wget.warc.gz", 2, 50, 20),
    ("iawc_link-extraction-test.warc", 9, 4, 4),
    ("resiliparse_clipped.warc.gz", 1, 7, 6),
    ("resiliparse_warcfile.warc.gz", 16, 153, 30),
    ("servo_Reddit.warc.gz", 4, 25, 0),
    ("servo_Wikipedia.warc.gz", 1, 1, 1),
    ("ukwa_wikipedia_main-page.warc.gz", 1, 17, 17),
    ("warcio_example-iana.org-chunked.warc", 1, 0, 0),
    ("warcio_example-trunc.warc", 1, 0, 0),
    ("warcio_example.arc.gz", 1, 0, 0),
    ("warcio_example.warc.gz", 1, 0, 0),
]


@pytest.mark.parametrize(("name", "pages", "tags", "candidates"), COUNTS)
def test_counts_per_archive(name: str, pages: int, tags: int, candidates: int) -> None:
    found, funnel = extract(require(WARC_DIR / name))
    assert funnel.get(reasons.STAGE_READ, reasons.HTML_PAGES) == pages
    assert funnel.get(reasons.STAGE_EXTRACT, reasons.IMG_TAGS) == tags
    assert len(found) == candidates


# (archive, page URL, absolute image URL, alt-text, page_lang): verified by reading the HTML.
PAIRS = [
    # Relative path against the page URL; WARC/0.17 (Heritrix 2008).
    (
        "aut_example.warc.gz",
        "http://www.archive.org/index.php",
        "http://www.archive.org/images/wayback_logo-sm.gif",
        "(wayback logo)",
        "en",
    ),
    # &amp; in src decoded once.
    (
        "aut_example.warc.gz",
        "http://www.archive.org/index.php",
        "http://www.archive.org/services/get-item-image.php?identifier=a_few_good_gmen"
        "&collection=machinima&mediatype=movies",
        "(movies pick)",
        "en",
    ),
    # srcset with density descriptors: the 2x candidate wins; chunked transfer encoding.
    (
        "aut_issue-514.warc",
        "https://wiki.archiveteam.org/",
        "https://wiki.archiveteam.org/images/thumb/e/e6/Archiveteam.jpg/400px-Archiveteam.jpg",
        "Archiveteam.jpg",
        "en",
    ),
    # Protocol-relative srcset; &#39; entity in alt; <html lang="an">.
    (
        "cc-whirlwind_whirlwind.warc.gz",
        "https://an.wikipedia.org/wiki/Escopete",
        "https://upload.wikimedia.org/wikipedia/commons/thumb/0/0a/"
        "Escudo_de_Escopete_%28Guadalajara%29.svg/140px-Escudo_de_Escopete_%28Guadalajara%29.svg.png",
        "Escudo d'armas",
        "an",
    ),
    # WARC-Target-URI wrapped in <...> by wget; unquoted <base href=...> and src.
    (
        "dolma_sample-0000.warc.gz",
        "https://soldaini.net/",
        "https://soldaini.net/personal-me/me-512.webp",
        "Luca Soldaini",
        "en",
    ),
    # srcset with width descriptors: the 1024w candidate wins over src's ?w=555.
    (
        "dolma_sample-0000.warc.gz",
        "https://amyxzhang.wordpress.com/",
        "https://amyxzhang.wordpress.com/wp-content/uploads/2017/06/credibility-wg-004.jpeg",
        "Credibility WG.004",
        "en",
    ),
    # Attributes over two lines.
    (
        "iawc_IAH-urls-wget.warc.gz",
        "https://archive.org/",
        "https://archive.org/images/glogo2.png",
        "Internet Archive",
        None,
    ),
    # XHTML with <base href>; not well-formed XML, so an XML parser would fail here.
    (
        "iawc_link-extraction-test.warc",
        "http://www.example.com/html4.html",
        "http://www.example.com/image.png",
        "IMG@/src",
        None,
    ),
    # Entities decoded exactly once in both src and alt.
    (
        "iawc_link-extraction-test.warc",
        "http://www.example.com/link-extraction-test-unescaped-entities.xhtml",
        "https://img.example.org/view?id=867&res=10x16",
        'image URL containing escaped ampersand ("&amp;")',
        None,
    ),
    # A clipped record still yields what it holds.
    (
        "resiliparse_clipped.warc.gz",
        "http://www.houstonpress.com/music/"
        "a-humble-chance-the-rapper-leads-a-spiritual-awakening-at-revention-8866723",
        "http://www.houstonpress.com/theme/hou/img/logo-150.png",
        "Houston Press, LP",
        None,
    ),
    # windows-1251 declared in HTTP and <meta>.
    (
        "resiliparse_warcfile.warc.gz",
        "http://01spb.ru/company/",
        "http://01spb.ru/logo.png",
        "Стратегия пожарной безопасности",
        None,
    ),
    # gb2312, decoded as GBK per the HTML spec.
    (
        "resiliparse_warcfile.warc.gz",
        "http://0760.jxtdw.com/area/sanxiang/",
        "http://img3.jxtdw.com/im_a/logo_area_l.gif",
        "用心专注，服务专业",
        None,
    ),
    # <base target="_blank"> without href must not change the base URL.
    (
        "resiliparse_warcfile.warc.gz",
        "http://003338.cn/l41/481397.html",
        "http://www.chinanews.com/images/banner11.gif",
        "中国新闻网",
        None,
    ),
    # iso-8859-1 declared only in <meta>.
    (
        "resiliparse_warcfile.warc.gz",
        "http://06.live-radsport.ch/fahrerstatistik_801/Anthony_Ravard.html",
        "http://06.live-radsport.ch/datein/banner/radsport-twitter-520.gif",
        "Radsportnews auf Twitter - Radsport, Cycling, Radrennen live",
        None,
    ),
    # Content-Encoding gzip kept in the archive; srcset 2x.
    (
        "servo_Wikipedia.warc.gz",
        "https://www.wikipedia.org/",
        "https://www.wikipedia.org/portal/wikipedia.org/assets/img/Wikipedia-logo-v2@2x.png",
        "Wikipedia",
        "mul",
    ),
    # Protocol-relative src on an http page.
    (
        "ukwa_wikipedia_main-page.warc.gz",
        "http://en.wikipedia.org/wiki/Main_Page",
        "http://upload.wikimedia.org/wikipedia/commons/thumb/2/28/Nick_Drake_Grave.jpg/"
        "100px-Nick_Drake_Grave.jpg",
        "Nick Drake's grave in Tanworth-in-Arden",
        "en",
    ),
]


@pytest.mark.parametrize(("name", "page", "image", "alt", "lang"), PAIRS)
def test_verified_pairs_are_found(name, page, image, alt, lang) -> None:
    found, _ = extract(require(WARC_DIR / name))
    matches = [c for c in found if (c.page_url, c.image_url, c.alt_text) == (page, image, alt)]
    # A page captured twice yields the pair twice, with one uid (the pipeline keeps one).
    assert matches, [(c.image_url, c.alt_text) for c in found if c.page_url == page]
    assert len({c.uid for c in matches}) == 1
    assert matches[0].page_lang == lang
    assert matches[0].crawl_date


def test_img_in_script_and_comments_is_not_extracted() -> None:
    found, _ = extract(require(WARC_DIR / "servo_Reddit.warc.gz"))
    assert not any(c.alt_text == "archived" for c in found)
    found, _ = extract(require(WARC_DIR / "dolma_sample-0000.warc.gz"))
    assert not any(c.alt_text == "default" for c in found)


def test_truncated_and_clipped_archives_are_counted() -> None:
    _, funnel = extract(require(WARC_DIR / "warcio_example-trunc.warc"))
    assert funnel.get(reasons.STAGE_READ, reasons.ARCHIVE_CORRUPT) == 1
    assert funnel.get(reasons.STAGE_READ, reasons.HTML_PAGES) == 1
    _, funnel = extract(require(WARC_DIR / "resiliparse_clipped.warc.gz"))
    assert funnel.get(reasons.STAGE_READ, reasons.ARCHIVE_TRUNCATED) == 1


def test_arc_file_is_read() -> None:
    path = require(WARC_DIR / "warcio_example.arc.gz")
    with open(path, "rb") as fh:
        assert sniff_format(fh.read(4096)) == "arc"
        fh.seek(0)
        responses = list(iter_responses(fh, Funnel()))
    assert [(r.url, r.status, r.mime_type) for r in responses] == [
        ("http://example.com/", 200, "text/html")
    ]
    assert b"Example Domain" in responses[0].body
    assert responses[0].source_kind == "arc"


def test_chunked_body_is_dechunked() -> None:
    path = require(WARC_DIR / "warcio_example-iana.org-chunked.warc")
    with open(path, "rb") as fh:
        (resp,) = [r for r in iter_responses(fh, Funnel()) if r.mime_type == "text/html"]
    assert resp.body.lstrip().startswith(b"<!doctype html>")
    assert resp.body.rstrip().endswith(b"</html>")


def test_gzip_cut_in_half_yields_what_it_holds(tmp_path) -> None:
    data = require(WARC_DIR / "aut_example.warc.gz").read_bytes()
    cut = tmp_path / "cut.warc.gz"
    cut.write_bytes(data[: len(data) // 2])
    found, funnel = extract(cut)
    assert found
    read = funnel.stage(reasons.STAGE_READ)
    assert read.get(reasons.ARCHIVE_CORRUPT, 0) + read.get(reasons.ARCHIVE_TRUNCATED, 0) >= 1


@pytest.mark.parametrize(
    "content",
    [b"", b"hello, this is not an archive\n", gzip.compress(b"<html>not a warc</html>")],
    ids=["empty", "text", "gzip-text"],
)
def test_non_archive_input_is_counted_not_raised(tmp_path, content: bytes) -> None:
    path = tmp_path / "x.warc.gz"
    path.write_bytes(content)
    found, funnel = extract(path)
    assert found == []
    assert funnel.get(reasons.STAGE_READ, reasons.NOT_AN_ARCHIVE) == 1


def test_stream_need_not_be_a_real_file() -> None:
    data = require(WARC_DIR / "ukwa_wikipedia_main-page.warc.gz").read_bytes()
    funnel = Funnel()
    found = list(candidates_from_archive(io.BytesIO(data), "mem", CFG, funnel))
    assert len(found) == 17


# --- Content-Encoding of archived responses (browser crawls store br and zstd bodies).

PAGE = (
    b"<html><body><img src='/harbour.jpg' alt='fishing boats in a small harbour at dawn'>"
    b"</body></html>"
)


def _warc_response(body: bytes, encoding: str) -> bytes:
    """One gzipped WARC response record of an HTML page with this Content-Encoding."""
    http = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n"
        + f"Content-Encoding: {encoding}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    head = (
        "WARC/1.0\r\nWARC-Type: response\r\nWARC-Target-URI: http://example.org/page\r\n"
        "WARC-Date: 2026-01-01T00:00:00Z\r\nWARC-Record-ID: <urn:uuid:0>\r\n"
        f"Content-Type: application/http; msgtype=response\r\nContent-Length: {len(http)}\r\n\r\n"
    ).encode()
    return gzip.compress(head + http + b"\r\n\r\n")


def _encoded(coding: str, data: bytes) -> bytes:
    import brotli
    import zstandard

    return {
        "br": brotli.compress,
        "zstd": zstandard.ZstdCompressor().compress,
        "gzip": gzip.compress,
        "gzip, br": lambda d: brotli.compress(gzip.compress(d)),
    }[coding](data)


@pytest.mark.parametrize("coding", ["br", "zstd", "gzip", "gzip, br"])
def test_compressed_bodies_are_decoded(coding: str) -> None:
    record = _warc_response(_encoded(coding, PAGE), coding)
    funnel = Funnel()
    found = list(candidates_from_archive(io.BytesIO(record), "mem", CFG, funnel))
    assert [c.alt_text for c in found] == ["fishing boats in a small harbour at dawn"]
    assert funnel.get(reasons.STAGE_READ, reasons.CONTENT_ENCODING_UNSUPPORTED) == 0


@pytest.mark.parametrize("coding", ["br", "zstd"])
def test_a_compression_bomb_stops_at_the_body_limit(coding: str) -> None:
    bomb = _encoded(coding, b"\0" * (64 << 20))  # 64 MB of zeros in a few KB
    funnel = Funnel()
    record = _warc_response(bomb, coding)
    assert list(candidates_from_archive(io.BytesIO(record), "mem", CFG, funnel)) == []
    assert funnel.get(reasons.STAGE_READ, reasons.BODY_TOO_LARGE) == 1


def test_a_body_stored_decoded_under_its_header_is_read_as_stored() -> None:
    record = _warc_response(PAGE, "br")  # the header kept, the body already decoded
    found = list(candidates_from_archive(io.BytesIO(record), "mem", CFG, Funnel()))
    assert len(found) == 1


def test_an_unknown_coding_is_counted() -> None:
    funnel = Funnel()
    record = _warc_response(PAGE, "compress")
    assert list(candidates_from_archive(io.BytesIO(record), "mem", CFG, funnel)) == []
    assert funnel.get(reasons.STAGE_READ, reasons.CONTENT_ENCODING_UNSUPPORTED) == 1
