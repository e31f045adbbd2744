"""WAT input (curation/wat.py) and the WAT generator (scripts/make_wat.py).

The WAT of a page must give the candidates its WARC gives, except where the WAT lacks what
the WARC reading uses (curation/wat.py's docstring lists it): these tests hold the
differences to exactly that list, on the real Common Crawl page and on WATs generated from
every shared WARC.
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastwarc.warc import ArchiveIterator
from selectolax.lexbor import LexborHTMLParser

from curation import html as html_module
from curation import reasons
from curation.archive import iter_responses
from curation.config import CurationConfig
from curation.extract import candidates_from_archive
from curation.html import HTML_MIME_TYPES, LAZY_SRC_ATTRS, LAZY_SRCSET_ATTRS, decode_html
from curation.inputs import input_kind
from curation.stats import Funnel
from curation.wat import SOURCE_WAT, candidates_from_wat
from tests.conftest import WARC_DIR, archive_files, make_wat, require, serve

CFG = CurationConfig()
REAL_WARC = WARC_DIR / "cc-whirlwind_whirlwind.warc.gz"
REAL_WAT = WARC_DIR / "cc-whirlwind_whirlwind.warc.wat.gz"
DATE = "2024-01-01T00:00:00Z"


# --- Helpers: a WAT written by hand, record by record.


def _member(record: bytes) -> bytes:
    return gzip.compress(record, mtime=0)


def warc_record(headers: dict[str, str], block: bytes) -> bytes:
    """One WARC/1.0 record, gzipped as a member."""
    head = "WARC/1.0\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    head += f"Content-Length: {len(block)}\r\n\r\n"
    return _member(head.encode() + block + b"\r\n\r\n")


def wat_page(
    url: str,
    links: list[dict[str, str]],
    *,
    status: str = "200",
    ctype: str = "text/html; charset=UTF-8",
    head: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    date: str = "2024-05-18T01:58:10Z",
) -> dict[str, Any]:
    """A WAT metadata document for one HTML response, in ia-web-commons' layout."""
    html: dict[str, Any] = {"Links": links}
    if head:
        html["Head"] = head
    return {
        "Container": {"Filename": "x.warc.gz", "Compressed": True, "Offset": "0"},
        "Envelope": {
            "Format": "WARC/1.0",
            "WARC-Header-Metadata": {
                "WARC-Type": "response",
                "WARC-Target-URI": url,
                "WARC-Date": date,
            },
            "Payload-Metadata": {
                "Actual-Content-Type": "application/http; msgtype=response",
                "HTTP-Response-Metadata": {
                    "Response-Message": {"Version": "HTTP/1.1", "Status": status, "Reason": ""},
                    "Headers": {"Content-Type": ctype, **(headers or {})},
                    "HTML-Metadata": html,
                },
            },
        },
    }


def wat_file(*docs: dict[str, Any] | bytes) -> bytes:
    """A WAT file: a warcinfo record, then one metadata record per document (bytes as is)."""
    out = [warc_record({"WARC-Type": "warcinfo"}, b"software: test\r\n")]
    for doc in docs:
        body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
        target = "" if isinstance(doc, bytes) else doc["Envelope"]["WARC-Header-Metadata"]
        uri = target["WARC-Target-URI"] if target else "https://x.example/"
        out.append(
            warc_record(
                {
                    "WARC-Type": "metadata",
                    "WARC-Target-URI": uri,
                    "Content-Type": "application/json",
                },
                body,
            )
        )
    return b"".join(out)


def read_wat(data: bytes, cfg: CurationConfig = CFG) -> tuple[list, Funnel]:
    funnel = Funnel()
    found = list(candidates_from_wat(io.BytesIO(data), "t.warc.wat.gz", cfg, funnel))
    return found, funnel


def img(url: str, alt: str | None = None, **extra: str) -> dict[str, str]:
    link = {"path": "IMG@/src", "url": url, **extra}
    if alt is not None:
        link["alt"] = alt
    return link


PAGE = "https://www.example.org/a/page.html"


# --- The registry.


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("crawl-data/x/wat/CC-MAIN-1-00000.warc.wat.gz", "wat"),
        ("gs://b/x.WAT.GZ", "wat"),
        ("x.wat", "wat"),
        ("x.warc.gz", "archive"),
        ("x.warc.wet.gz", "archive"),
        ("x.parquet", "table"),
    ],
)
def test_wat_files_have_their_own_kind_without_images(path: str, kind: str) -> None:
    assert input_kind(path).name == kind
    assert input_kind(path).holds_images is (kind == "archive")


# --- Reading: one behaviour per row, each with the reason the WARC reading gives.


@pytest.mark.parametrize(
    ("links", "expected", "reason"),
    [
        ([img("i/fox.jpg", "a red fox")], "https://www.example.org/a/i/fox.jpg", None),
        ([img("/fox.jpg", " a\n red\t fox ")], "https://www.example.org/fox.jpg", None),
        ([img("fox.jpg#frag", "a red fox")], "https://www.example.org/a/fox.jpg", None),
        ([img("fox.jpg")], None, reasons.NO_ALT_TEXT),
        ([img("fox.jpg", "  ")], None, reasons.EMPTY_ALT_TEXT),
        ([img("fox.jpg", "x" * 1001)], None, reasons.ALT_TEXT_OVERSIZED),
        ([img("data:image/gif;base64,R0lGOD", "a red fox")], None, reasons.DATA_URI),
        ([img("javascript:void(0)", "a red fox")], None, reasons.UNSUPPORTED_SCHEME),
        ([img("http://[::1", "a red fox")], None, reasons.BAD_URL),
        ([img("", "a red fox")], None, reasons.NO_IMAGE_URL),
        ([img("/" + "a" * 3000, "a red fox")], None, reasons.URL_OVERSIZED),
    ],
)
def test_each_image_link_is_a_candidate_or_a_named_reason(links, expected, reason) -> None:
    found, funnel = read_wat(wat_file(wat_page(PAGE, links)))
    assert [c.image_url for c in found] == ([expected] if expected else [])
    assert funnel.get(reasons.STAGE_EXTRACT, reasons.IMG_TAGS) == 1
    if reason:
        assert funnel.get(reasons.STAGE_EXTRACT, reason) == 1


def test_candidate_fields_match_what_the_warc_reading_fills() -> None:
    head = {"Metas": [{"name": "HTML@/lang", "content": "EN-gb"}], "Base": "/static/"}
    found, funnel = read_wat(wat_file(wat_page(PAGE, [img("fox.jpg", "a red fox")], head=head)))
    (c,) = found
    assert (c.page_url, c.image_url, c.alt_text) == (
        PAGE,
        "https://www.example.org/static/fox.jpg",
        "a red fox",
    )
    assert (c.page_lang, c.crawl_date, c.source_kind) == ("en-gb", "2024-05-18T01:58:10Z", "wat")
    assert c.source_file == "t.warc.wat.gz"
    # The metadata record's offset in the WAT: after the warcinfo member.
    assert c.source_offset == len(warc_record({"WARC-Type": "warcinfo"}, b"software: test\r\n"))
    assert funnel.stage(reasons.STAGE_READ) == {
        reasons.FILES: 1,
        reasons.RECORDS: 2,
        reasons.RECORD_NOT_RESPONSE: 1,  # the WAT's own warcinfo
        reasons.HTML_PAGES: 1,
    }


@pytest.mark.parametrize(
    ("head", "headers", "lang"),
    [
        ({"Metas": [{"name": "HTML@/xml:lang", "content": "fr"}]}, {}, "fr"),
        (
            {
                "Metas": [
                    {"name": "HTML@/xml:lang", "content": "fr"},
                    {"name": "HTML@/lang", "content": "de"},
                ]
            },
            {},
            "de",
        ),
        ({}, {"Content-Language": "pt-BR, en"}, "pt-br"),
        (
            {"Metas": [{"name": "HTML@/lang", "content": "not a tag!"}]},
            {"content-language": "it"},
            "it",
        ),
        ({"Base": "  "}, {}, None),
    ],
)
def test_page_language_from_html_lang_then_content_language(head, headers, lang) -> None:
    (c,) = read_wat(wat_file(wat_page(PAGE, [img("f.jpg", "a fox")], head=head, headers=headers)))[
        0
    ]
    assert c.page_lang == lang
    assert c.image_url == "https://www.example.org/a/f.jpg"  # a blank <base> is ignored


def test_duplicates_on_a_page_and_the_page_cap() -> None:
    links = [img("a.jpg", "a fox"), img("a.jpg#x", "a  fox"), img("a.jpg", "another fox")]
    links += [{"path": "A@/href", "url": "/next"}, img("b.jpg", "a fox")]
    cfg = CurationConfig(max_images_per_page=3)
    found, funnel = read_wat(wat_file(wat_page(PAGE, links)), cfg)
    assert [(c.image_url.rsplit("/", 1)[1], c.alt_text) for c in found] == [
        ("a.jpg", "a fox"),
        ("a.jpg", "another fox"),
    ]
    assert funnel.stage(reasons.STAGE_EXTRACT) == {
        reasons.IMG_TAGS: 4,  # the <a> link is not an image
        reasons.CANDIDATES: 2,
        reasons.DUPLICATE_ON_PAGE: 1,
        reasons.PAGE_IMAGE_CAP: 1,
    }


@pytest.mark.parametrize(
    ("page", "reason"),
    [
        (wat_page(PAGE, [img("a.jpg", "a fox")], status="404"), reasons.HTTP_STATUS_NOT_2XX),
        (wat_page(PAGE, [img("a.jpg", "a fox")], ctype="application/pdf"), reasons.NOT_HTML),
        (wat_page(PAGE, [img("a.jpg", "a fox")], status="abc"), reasons.RECORD_NOT_HTTP),
    ],
)
def test_pages_the_warc_reading_would_skip_are_skipped_for_the_same_reason(page, reason) -> None:
    found, funnel = read_wat(wat_file(page))
    assert found == []
    assert funnel.get(reasons.STAGE_READ, reason) == 1


def test_a_damaged_record_costs_that_record_and_a_cut_file_keeps_what_came_before() -> None:
    good = wat_page(PAGE, [img("a.jpg", "a fox")])
    data = wat_file(good, b'{"Envelope": {"WARC-Header', good)
    found, funnel = read_wat(data)
    assert len(found) == 2
    assert funnel.get(reasons.STAGE_READ, reasons.ARCHIVE_CORRUPT) == 1
    found, funnel = read_wat(data + b"\x1f\x8b\x08\x00garbage")
    assert len(found) == 2
    found, funnel = read_wat(b"<html>not a WAT</html>")
    assert found == [] and funnel.get(reasons.STAGE_READ, reasons.NOT_AN_ARCHIVE) == 1


# --- The real Common Crawl page, and WATs generated from every shared WARC.


def _records(data: bytes) -> list[tuple[dict[str, str], bytes]]:
    return [
        (dict(r.headers), r.reader.read())
        for r in ArchiveIterator(io.BytesIO(data), parse_http=False)
    ]


def _leaves(doc: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in doc.items():
        if isinstance(value, dict):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def test_the_real_whirlwind_wat_is_read_and_holds_no_page() -> None:
    # cc-whirlwind's WAT keeps the warcinfo and the request's metadata only: two records,
    # neither a response, so no candidate (its WARC's response gives 7).
    found, funnel = read_wat(require(REAL_WAT).read_bytes())
    assert found == []
    assert funnel.stage(reasons.STAGE_READ) == {
        reasons.FILES: 1,
        reasons.RECORDS: 2,
        reasons.RECORD_NOT_RESPONSE: 2,
    }


def test_the_generator_writes_the_real_wats_layout_field_for_field() -> None:
    real = _records(require(REAL_WAT).read_bytes())
    ours = _records(make_wat(REAL_WARC.read_bytes(), REAL_WARC.name, DATE))
    # Ours: warcinfo, then the metadata of the WARC's warcinfo, request, response, metadata.
    assert [h["WARC-Type"] for h, _ in ours] == ["warcinfo"] + ["metadata"] * 4
    assert list(real[1][0]) == list(ours[2][0])  # the same WARC headers in the same order
    real_doc, our_doc = json.loads(real[1][1]), json.loads(ours[2][1])
    real_leaves, our_leaves = dict(_leaves(real_doc)), dict(_leaves(our_doc))
    # The whirlwind WARC is the crawl's record repacked, with two digest headers added: the
    # container differs, and the WARC header block by exactly those two lines.
    added = {"WARC-Payload-Digest", "WARC-Block-Digest"}
    extra = {k for k in our_leaves if k not in real_leaves}
    assert extra == {f"Envelope.WARC-Header-Metadata.{h}" for h in added}
    added_bytes = sum(
        len(f"{h}: {our_doc['Envelope']['WARC-Header-Metadata'][h]}\r\n") for h in added
    )
    differ = {k for k in real_leaves if real_leaves[k] != our_leaves[k]}
    assert differ == {
        "Container.Filename",
        "Container.Offset",
        "Container.Gzip-Metadata.Deflate-Length",
        "Container.Gzip-Metadata.Inflated-CRC",
        "Container.Gzip-Metadata.Inflated-Length",
        "Envelope.WARC-Header-Length",
    }
    for key in ("Envelope.WARC-Header-Length", "Container.Gzip-Metadata.Inflated-Length"):
        assert int(our_leaves[key]) - int(real_leaves[key]) == added_bytes
    # Key order too, at every level of the envelope.
    assert list(real_doc["Envelope"]) == list(our_doc["Envelope"])
    assert list(real_doc["Envelope"]["Payload-Metadata"]) == list(
        our_doc["Envelope"]["Payload-Metadata"]
    )


def test_the_generator_is_deterministic() -> None:
    data = require(REAL_WARC).read_bytes()
    assert make_wat(data, REAL_WARC.name, DATE) == make_wat(data, REAL_WARC.name, DATE)


def _key(c) -> tuple:
    return (c.page_url, c.image_url, c.alt_text, c.page_lang, c.crawl_date)


def _src_less_images(data: bytes) -> int:
    """<img> tags without a src attribute on the 2xx HTML pages of an archive."""
    n = 0
    for resp in iter_responses(io.BytesIO(data), Funnel(), CFG.max_html_bytes):
        if 200 <= resp.status < 300 and resp.mime_type in HTML_MIME_TYPES:
            tree = LexborHTMLParser(decode_html(resp.body, resp.charset)[0])
            n += sum("src" not in node.attributes for node in tree.css("img"))
    return n


def _uses_more_than_src(data: bytes, page_url: str, image_url: str) -> bool:
    """Whether an <img> on the page gives image_url from srcset or a lazy-load attribute."""
    for resp in iter_responses(io.BytesIO(data), Funnel(), CFG.max_html_bytes):
        if resp.url != page_url or resp.mime_type not in HTML_MIME_TYPES:
            continue
        tree = LexborHTMLParser(decode_html(resp.body, resp.charset)[0])
        for node in tree.css("img"):
            attrs = node.attributes
            others = ("srcset", *LAZY_SRCSET_ATTRS, *LAZY_SRC_ATTRS)
            if any(attrs.get(a) for a in others) and (
                image_url.rsplit("/", 1)[-1].split("?")[0]
                in " ".join(str(attrs.get(a)) for a in others)
            ):
                return True
    return False


# Every shared WARC (the generator reads WARC, not legacy ARC; WAT and WET are derivatives).
WITH_PAGES = [p for p in archive_files() if not any(s in p.name for s in (".wat", ".wet", ".arc"))]

# What the WAT does not hold: which <img>s lack a src, and which the WARC reading resolves
# from srcset / lazy-load attributes. Every other extract-stage count must agree.
SRC_LESS_REASONS = {
    reasons.IMG_TAGS,
    reasons.NO_ALT_TEXT,
    reasons.EMPTY_ALT_TEXT,
    reasons.NO_IMAGE_URL,
    reasons.ALT_TEXT_OVERSIZED,
}


@pytest.mark.parametrize("path", WITH_PAGES, ids=lambda p: p.name)
def test_wat_and_warc_agree_except_where_the_wat_lacks_the_attributes(
    path: Path, monkeypatch
) -> None:
    data = path.read_bytes()
    wat = make_wat(data, path.name, DATE)
    found, wat_funnel = read_wat(wat)
    assert {c.source_kind for c in found} <= {SOURCE_WAT}
    warc_funnel = Funnel()
    warc = list(candidates_from_archive(io.BytesIO(data), path.name, CFG, warc_funnel))
    # 1. The pages are the same pages.
    for name in (reasons.HTML_PAGES, reasons.HTTP_STATUS_NOT_2XX, reasons.NOT_HTML):
        assert wat_funnel.get("read", name) == warc_funnel.get("read", name), name
    # 2. Every candidate only one side has comes from an <img> whose srcset or lazy-load
    # attribute the WARC reading used and the WAT does not hold.
    only_warc = {_key(c) for c in warc} - {_key(c) for c in found}
    for page, image, *_ in only_warc:
        assert _uses_more_than_src(data, page, image), (page, image)
    # 3. Read the WARC as the WAT does, from src alone: then the candidates are equal, and the
    # extract counts differ only by the <img>s without a src, which the WAT never lists.
    monkeypatch.setattr(html_module, "_image_ref", lambda attrs: attrs.get("src") or "")
    src_funnel = Funnel()
    src_only = list(candidates_from_archive(io.BytesIO(data), path.name, CFG, src_funnel))
    assert sorted(map(_key, src_only)) == sorted(map(_key, found))
    warc_extract, wat_extract = src_funnel.stage("extract"), wat_funnel.stage("extract")
    for name in set(warc_extract) | set(wat_extract):
        if name not in SRC_LESS_REASONS:
            assert warc_extract.get(name, 0) == wat_extract.get(name, 0), name
    assert warc_extract.get(reasons.IMG_TAGS, 0) - wat_extract.get(
        reasons.IMG_TAGS, 0
    ) == _src_less_images(data)


def test_on_the_real_page_the_wat_misses_exactly_the_srcset_urls() -> None:
    data = require(REAL_WARC).read_bytes()
    found, _ = read_wat(make_wat(data, REAL_WARC.name, DATE))
    warc = list(candidates_from_archive(io.BytesIO(data), REAL_WARC.name, CFG, Funnel()))
    assert len(found) == len(warc) == 7
    by_alt = {c.alt_text: c.image_url for c in found}
    # Wikipedia gives src at 1x and srcset at 1.5x and 2x: the WARC reading takes the 2x,
    # the WAT holds the 1x (the file names below, WARC's then WAT's).
    differ = {
        c.alt_text: (c.image_url.rsplit("/", 1)[1], by_alt[c.alt_text].rsplit("/", 1)[1])
        for c in warc
        if by_alt[c.alt_text] != c.image_url
    }
    assert differ == {
        "Escudo d'armas": (
            "140px-Escudo_de_Escopete_%28Guadalajara%29.svg.png",
            "70px-Escudo_de_Escopete_%28Guadalajara%29.svg.png",
        ),
        "Escopete ubicada en Castiella-La Mancha": (
            "500px-Castilla-La_Mancha-loc.svg.png",
            "250px-Castilla-La_Mancha-loc.svg.png",
        ),
        "Escopete": ("24px-Map_pointer.svg.png", "12px-Map_pointer.svg.png"),
        "Wikimedia Foundation": ("wikimedia-button-2x.png", "wikimedia-button.png"),
        "Powered by MediaWiki": (
            "poweredby_mediawiki_176x62.png",
            "poweredby_mediawiki_88x31.png",
        ),
    }
    assert {(c.page_url, c.alt_text, c.page_lang) for c in warc} == {
        (c.page_url, c.alt_text, c.page_lang) for c in found
    }


# --- End to end through `curate run`.


def _warc_of(url: str, html: str) -> bytes:
    body = html.encode()
    http = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    return warc_record(
        {
            "WARC-Type": "response",
            "WARC-Target-URI": url,
            "WARC-Date": "2024-05-18T01:58:10Z",
            "WARC-Record-ID": "<urn:uuid:00000000-0000-0000-0000-000000000001>",
            "Content-Type": "application/http; msgtype=response",
        },
        http,
    )


def test_a_wat_input_runs_end_to_end_with_images_over_http(tmp_path) -> None:
    from pipelines.cli import main
    from tests.test_cli import check_invariant

    with serve() as server:
        html = (
            f'<html lang="en"><body><img src="{server.base}/ok.jpg" '
            'alt="a small blue test card with white stripes">'
            f'<img src="{server.base}/404.jpg" alt="a photo that is not there any more">'
            '<img src="/x.jpg" alt="one"></body></html>'
        )
        warc = _warc_of("http://pages.example/p.html", html)
        wat = tmp_path / "CC-MAIN-1-00000.warc.wat.gz"
        wat.write_bytes(make_wat(warc, "CC-MAIN-1-00000.warc.gz", DATE))
        out = tmp_path / "out"
        args = ["run", "--input", str(wat), "--output", str(out), "--images-from", "http"]
        flags = ["--allow-private-network", "--no-respect-robots", "--no-nsfw"]
        assert main([*args, *flags]) == 0
    kept, rejected, stats = check_invariant(out)
    assert [(r["alt_text"], r["width"], r["source_kind"]) for r in kept] == [
        ("a small blue test card with white stripes", 320, "wat")
    ]
    assert {r["alt_text"]: r["reason"] for r in rejected} == {
        "a photo that is not there any more": "http_404",
        "one": reasons.TEXT_TOO_SHORT,
    }
    assert stats["read"][reasons.HTML_PAGES] == 1
