"""Inputs to candidates: web archives (pages → <img> pairs) and URL tables (rows → pairs).

Every record, tag and row read is counted in a Funnel, either as a candidate or under a
named reason, so the funnel accounts for everything that was not a candidate.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

from curation import reasons
from curation.archive import iter_responses
from curation.config import CurationConfig
from curation.files import image_path
from curation.html import (
    HTML_MIME_TYPES,
    decode_html,
    extract_images,
    nesting_depth,
    normalize_lang,
    resolve_image_url,
)
from curation.record import SOURCE_TABLE, Candidate
from curation.stats import Funnel
from curation.tables import iter_table_rows

_READ, _EXTRACT = reasons.STAGE_READ, reasons.STAGE_EXTRACT


def candidates_from_archive(
    stream: BinaryIO, source_file: str, cfg: CurationConfig, funnel: Funnel
) -> Iterator[Candidate]:
    """Yield the candidates of every 2xx HTML response in one archive."""
    funnel.add(_READ, reasons.FILES)
    for resp in iter_responses(stream, funnel, cfg.max_html_bytes):
        if not 200 <= resp.status < 300:
            funnel.add(_READ, reasons.HTTP_STATUS_NOT_2XX)
            continue
        if resp.mime_type not in HTML_MIME_TYPES:
            funnel.add(_READ, reasons.NOT_HTML)
            continue
        funnel.add(_READ, reasons.HTML_PAGES)
        html, _ = decode_html(resp.body, resp.charset)
        if nesting_depth(html, cfg.max_html_depth) >= cfg.max_html_depth:
            funnel.add(_READ, reasons.HTML_TOO_DEEP)
            continue
        page = extract_images(
            html,
            resp.url,
            max_images=cfg.max_images_per_page,
            max_alt_chars=cfg.max_alt_chars,
            max_url_chars=cfg.max_url_chars,
        )
        funnel.add(_EXTRACT, reasons.IMG_TAGS, page.img_tags)
        for reason, n in page.skipped.items():
            funnel.add(_EXTRACT, reason, n)
        lang = page.lang or normalize_lang(resp.header("content-language"))
        for pair in page.pairs:
            funnel.add(_EXTRACT, reasons.CANDIDATES)
            yield Candidate.create(
                page_url=resp.url,
                image_url=pair.image_url,
                alt_text=pair.alt_text,
                page_lang=lang,
                source_kind=resp.source_kind,
                source_file=source_file,
                source_offset=resp.offset,
                crawl_date=resp.date,
            )


def candidates_from_table(
    stream: BinaryIO, source_file: str, cfg: CurationConfig, funnel: Funnel
) -> Iterator[Candidate]:
    """Yield one candidate per usable row of a URL table (Parquet, CSV, TSV or JSONL)."""
    funnel.add(_READ, reasons.FILES)
    for row, url, caption in iter_table_rows(
        stream, source_file, cfg.url_column, cfg.caption_column
    ):
        funnel.add(_EXTRACT, reasons.TABLE_ROWS)
        reason = None
        if caption is None:
            reason = reasons.NO_ALT_TEXT
        elif len(caption) > cfg.max_alt_chars:
            reason = reasons.ALT_TEXT_OVERSIZED
        else:
            alt = " ".join(caption.split())
            if not alt:
                reason = reasons.EMPTY_ALT_TEXT
            elif url is None:
                reason = reasons.NO_IMAGE_URL
            else:
                image_url, reason = _table_image(url, source_file, cfg)
        if reason is not None:
            funnel.add(_EXTRACT, reason)
            continue
        funnel.add(_EXTRACT, reasons.CANDIDATES)
        yield Candidate.create(
            page_url="",
            image_url=image_url,
            alt_text=alt,
            page_lang=None,
            source_kind=SOURCE_TABLE,
            source_file=source_file,
            source_offset=row,
            crawl_date=None,
        )


def _table_image(url: str, table_path: str, cfg: CurationConfig) -> tuple[str | None, str | None]:
    """A table cell as (image URL or path, None) or (None, reason)."""
    max_chars = cfg.max_url_chars
    if cfg.file_roots:  # a path under file_roots, or a named reason for a path elsewhere
        path, reason = image_path(url, table_path, cfg.file_roots)
        if path is not None and len(path) > max_chars:
            return None, reasons.URL_OVERSIZED
        if path is not None or reason is not None:
            return path, reason
    # An empty base: a table's URLs must already be absolute.
    return resolve_image_url("", url, max_chars)
