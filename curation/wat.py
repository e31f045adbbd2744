"""WAT input: image/alt-text candidates from the link metadata Common Crawl extracts per page.

A WAT file is a WARC file of `metadata` records, one per record of the crawl's WARC file,
each holding JSON written by ia-web-commons. For an HTML response it lists the page's links
under `Envelope.Payload-Metadata.HTTP-Response-Metadata.HTML-Metadata.Links`; an `<img>` with
a `src` attribute becomes `{"path": "IMG@/src", "url": <src>, "alt": <alt>, "title": ...}`,
entities decoded, `alt` absent when the tag has none. `Head.Base` holds `<base href>` and
`Head.Metas` holds `<html lang>` as `{"name": "HTML@/lang", "content": ...}` (ia-web-commons
records it since 2018). cc2dataset and LAION-5B read these; a WAT is about a third of its WARC
and needs no HTML parsing.

What a WAT cannot give that the WARC does (docs/common-crawl.md, tests/test_wat.py):
- `srcset`, `data-src` and the other lazy-loading attributes: the WAT keeps `src` only, so the
  image URL is `src` even where the WARC reading prefers the largest `srcset` candidate or the
  real URL a lazy-loader keeps in `data-src` (its `src` often a `data:` placeholder).
- `<img>` tags without a `src` attribute: absent, so neither counted in `img_tags` nor under a
  reason (the WARC reading counts them as `no_image_url`, or uses their `srcset`).
- The image responses themselves (a WAT holds metadata only): images are fetched over HTTP.
- The HTML body: `max_html_bytes`, `max_html_depth`, charset and content-encoding checks do
  not apply (ia-web-commons parsed what it could), and a page's several `<base>` tags are one
  (the last; the HTML standard, and the WARC reading, take the first).
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterator, Mapping
from typing import Any, BinaryIO

from fastwarc.warc import ArchiveIterator

from curation import reasons
from curation.archive import clean_uri, sniff_format
from curation.config import CurationConfig
from curation.html import (
    HTML_MIME_TYPES,
    judge_alt,
    normalize_lang,
    resolve_base,
    resolve_image_url,
)
from curation.record import SOURCE_WARC, Candidate
from curation.stats import Funnel

# The candidates' source_kind: the WAT record's own offset is source_offset, so (file,
# offset) names the metadata record; Container.Offset in it points into the WARC.
SOURCE_WAT = "wat"

WAT_SUFFIXES = (".warc.wat.gz", ".wat.gz", ".wat")
IMG_SRC_PATH = "IMG@/src"
_LANG_METAS = ("HTML@/lang", "HTML@/xml:lang")  # in html.py's order of preference
_READ, _EXTRACT = reasons.STAGE_READ, reasons.STAGE_EXTRACT


def is_wat_path(path: str) -> bool:
    """Whether a path names a WAT file by Common Crawl's naming (`.warc.wat.gz`, `.wat.gz`)."""
    return path.lower().endswith(WAT_SUFFIXES)


def candidates_from_wat(
    stream: BinaryIO, source_file: str, cfg: CurationConfig, funnel: Funnel
) -> Iterator[Candidate]:
    """Yield the candidates of every 2xx HTML response described in one WAT file."""
    funnel.add(_READ, reasons.FILES)
    start = stream.tell()
    head = stream.read(4096)
    stream.seek(start)
    if sniff_format(head) != SOURCE_WARC:
        funnel.add(_READ, reasons.NOT_AN_ARCHIVE)
        return
    try:
        for record in ArchiveIterator(stream, parse_http=False):
            funnel.add(_READ, reasons.RECORDS)
            if str(record.record_type).rsplit(".", 1)[-1] != "metadata":
                funnel.add(_READ, reasons.RECORD_NOT_RESPONSE)  # the WAT's own warcinfo
                continue
            offset = int(record.stream_pos)
            try:
                doc = json.loads(record.reader.read())
            except ValueError:
                # A metadata record whose JSON is damaged: the next record may be whole.
                funnel.add(_READ, reasons.ARCHIVE_CORRUPT)
                continue
            yield from _page_candidates(doc, offset, source_file, cfg, funnel)
    except (OSError, EOFError, ValueError, zlib.error):
        # As curation/archive.py: a file cut short keeps what was read before the damage.
        funnel.add(_READ, reasons.ARCHIVE_CORRUPT)


def _page_candidates(
    doc: Any, offset: int, source_file: str, cfg: CurationConfig, funnel: Funnel
) -> Iterator[Candidate]:
    """The candidates of one WAT metadata record (the funnel counts it as the WARC reading
    counts the record it describes)."""
    envelope = _obj(_obj(doc).get("Envelope"))
    warc = _obj(envelope.get("WARC-Header-Metadata"))
    payload = _obj(envelope.get("Payload-Metadata"))
    rtype = warc.get("WARC-Type")
    if rtype == "response":
        http = payload.get("HTTP-Response-Metadata")
        if not isinstance(http, dict):
            funnel.add(_READ, reasons.RECORD_NOT_HTTP)
            return
        try:
            status = int(_obj(http.get("Response-Message")).get("Status", ""))
        except (TypeError, ValueError):
            funnel.add(_READ, reasons.RECORD_NOT_HTTP)
            return
        headers = _obj(http.get("Headers"))
        html = http.get("HTML-Metadata")
    elif rtype == "resource":
        # A resource record carries no HTTP: the WARC header's type is the payload's.
        status, headers = 200, {"Content-Type": warc.get("Content-Type", "")}
        html = payload.get("HTML-Metadata")
    else:
        funnel.add(_READ, reasons.RECORD_NOT_RESPONSE)
        return
    if not 200 <= status < 300:
        funnel.add(_READ, reasons.HTTP_STATUS_NOT_2XX)
        return
    mime = str(_header(headers, "content-type") or "").split(";", 1)[0].strip().lower()
    if mime not in HTML_MIME_TYPES:
        funnel.add(_READ, reasons.NOT_HTML)
        return
    funnel.add(_READ, reasons.HTML_PAGES)
    html = _obj(html)
    head = _obj(html.get("Head"))
    page_url = clean_uri(warc.get("WARC-Target-URI"))
    base = head.get("Base")
    base_url = resolve_base(page_url, base if isinstance(base, str) else None)
    lang = normalize_lang(_html_lang(head)) or normalize_lang(_header(headers, "content-language"))
    crawl_date = warc.get("WARC-Date")
    seen: set[tuple[str, str]] = set()
    n_tags = 0
    links = html.get("Links")
    for link in links if isinstance(links, list) else ():
        if not isinstance(link, dict) or link.get("path") != IMG_SRC_PATH:
            continue
        n_tags += 1
        funnel.add(_EXTRACT, reasons.IMG_TAGS)
        if n_tags > cfg.max_images_per_page:
            funnel.add(_EXTRACT, reasons.PAGE_IMAGE_CAP)
            continue
        raw_alt = link.get("alt")
        url, alt, reason = _judge_image(raw_alt, link.get("url"), base_url, cfg)
        if url is not None:
            if (url, alt) in seen:
                reason = reasons.DUPLICATE_ON_PAGE
            else:
                seen.add((url, alt))
        if reason is not None:
            funnel.add(_EXTRACT, reason)
            continue
        funnel.add(_EXTRACT, reasons.CANDIDATES)
        yield Candidate.create(
            page_url=page_url,
            image_url=url,
            alt_text=alt,
            page_lang=lang,
            source_kind=SOURCE_WAT,
            source_file=source_file,
            source_offset=offset,
            crawl_date=crawl_date if isinstance(crawl_date, str) else None,
        )


def _judge_image(
    raw_alt: Any, ref: Any, base_url: str, cfg: CurationConfig
) -> tuple[str | None, str, str | None]:
    """(image URL, alt-text, None) or (None, "", reason) for one IMG@/src link, decided in
    the order and with the reasons of curation/html.py's `extract_images`."""
    alt, reason = judge_alt(raw_alt if isinstance(raw_alt, str) else None, cfg.max_alt_chars)
    if reason is not None:
        return None, "", reason
    url, reason = resolve_image_url(
        base_url, ref if isinstance(ref, str) else "", cfg.max_url_chars
    )
    return url, alt, reason


def _html_lang(head: Mapping[str, Any]) -> str | None:
    """`<html lang>` (else `xml:lang`) as ia-web-commons records it among the metas."""
    found: dict[str, str] = {}
    metas = head.get("Metas")
    for meta in metas if isinstance(metas, list) else ():
        if isinstance(meta, dict) and meta.get("name") in _LANG_METAS:
            content = meta.get("content")
            if isinstance(content, str):
                found.setdefault(meta["name"], content)
    return next((found[name] for name in _LANG_METAS if found.get(name)), None)


def _header(headers: Mapping[str, Any], name: str) -> str | None:
    # WAT keeps header names as sent; HTTP names are case-insensitive.
    for key, value in headers.items():
        if key.lower() == name:
            return value if isinstance(value, str) else None
    return None


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}
