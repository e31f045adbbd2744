"""Reading URL tables (image URL + caption) as img2dataset users hold them.

Parquet, CSV, TSV and JSONL, optionally gzip-compressed, streamed row by row so that a
table of any size reads in flat memory.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections.abc import Iterator
from typing import Any, BinaryIO

import pyarrow.parquet as pq

# img2dataset's own column names, understood when the configured defaults are absent.
FALLBACK_COLUMNS = {"url": "URL", "caption": "TEXT"}


class TableError(ValueError):
    """A table that cannot be read as configured (for example a missing column)."""


def _format(path: str) -> str:
    name = path.lower().removesuffix(".gz")
    for ext in ("parquet", "csv", "tsv", "jsonl", "json"):
        if name.endswith("." + ext):
            return "jsonl" if ext == "json" else ext
    raise TableError(f"{path}: not a table (expected .parquet, .csv, .tsv or .jsonl)")


def _text_stream(stream: BinaryIO, path: str) -> io.TextIOWrapper:
    raw: Any = gzip.GzipFile(fileobj=stream) if path.lower().endswith(".gz") else stream
    return io.TextIOWrapper(raw, encoding="utf-8", errors="replace", newline="")


def resolve_columns(
    columns: list[str], url_col: str, caption_col: str, path: str
) -> tuple[str, str]:
    """Pick the URL and caption columns, falling back to img2dataset's URL/TEXT names."""
    picked = []
    for wanted in (url_col, caption_col):
        if wanted in columns:
            picked.append(wanted)
        elif FALLBACK_COLUMNS.get(wanted) in columns:
            picked.append(FALLBACK_COLUMNS[wanted])
        else:
            raise TableError(
                f"{path}: no column '{wanted}' (columns: {', '.join(columns) or 'none'}); "
                f"set url_column / caption_column"
            )
    return picked[0], picked[1]


def table_columns(stream: BinaryIO, path: str) -> list[str]:
    """The column names of a table, read from its header or schema only."""
    fmt = _format(path)
    if fmt == "parquet":
        return list(pq.ParquetFile(stream).schema_arrow.names)
    text = _text_stream(stream, path)
    if fmt == "jsonl":
        for line in text:
            if line.strip():
                obj = json.loads(line)
                return list(obj) if isinstance(obj, dict) else []
        return []
    reader = csv.reader(text, delimiter="\t" if fmt == "tsv" else ",")
    return next(reader, [])


def _cell(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, float) and value != value:  # NaN, as pandas writes missing values
        return None
    return value if isinstance(value, str) else str(value)


def iter_table_rows(
    stream: BinaryIO, path: str, url_col: str, caption_col: str
) -> Iterator[tuple[int, str | None, str | None]]:
    """Yield (row number, url, caption) for every row; missing cells are None."""
    fmt = _format(path)
    if fmt == "parquet":
        pf = pq.ParquetFile(stream)
        ucol, ccol = resolve_columns(pf.schema_arrow.names, url_col, caption_col, path)
        row = 0
        for batch in pf.iter_batches(batch_size=8192, columns=[ucol, ccol]):
            for url, caption in zip(
                batch.column(0).to_pylist(), batch.column(1).to_pylist(), strict=True
            ):
                yield row, _cell(url), _cell(caption)
                row += 1
        return
    text = _text_stream(stream, path)
    if fmt == "jsonl":
        columns: list[str] | None = None
        for row, line in enumerate(text):
            if not line.strip():
                yield row, None, None
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                obj = None
            if not isinstance(obj, dict):
                yield row, None, None
                continue
            if columns is None:
                columns = list(resolve_columns(list(obj), url_col, caption_col, path))
            yield row, _cell(obj.get(columns[0])), _cell(obj.get(columns[1]))
        return
    csv.field_size_limit(16 * 1024 * 1024)
    reader = csv.reader(text, delimiter="\t" if fmt == "tsv" else ",")
    header = next(reader, None)
    if header is None:
        return
    ucol, ccol = resolve_columns(header, url_col, caption_col, path)
    ui, ci = header.index(ucol), header.index(ccol)
    for row, cells in enumerate(reader):
        url = cells[ui] if ui < len(cells) else None
        caption = cells[ci] if ci < len(cells) else None
        yield row, url or None, caption
