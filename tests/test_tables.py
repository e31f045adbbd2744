"""URL-table input: Parquet, CSV, TSV, JSONL, with configurable and img2dataset column names."""

from __future__ import annotations

import dataclasses
import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation import reasons
from curation.config import CurationConfig
from curation.extract import candidates_from_table
from curation.inputs import input_kind
from curation.stats import Funnel
from curation.tables import TableError, table_columns

CFG = CurationConfig()
ROWS = [
    ("https://a.example/1.jpg", "a dog running on the beach"),
    ("https://a.example/2.jpg", None),
    ("https://a.example/3.jpg", "   "),
    (None, "a caption without a url"),
    ("relative/4.jpg", "a relative url is not usable"),
    ("data:image/png;base64,AAAA", "an inline image is not fetchable"),
    ("https://a.example/5.jpg", "jpg"),
]


def read(path, cfg=CFG):
    funnel = Funnel()
    with open(path, "rb") as fh:
        found = list(candidates_from_table(fh, str(path), cfg, funnel))
    return found, funnel


def write(tmp_path, fmt: str, url_col="url", caption_col="caption", rows=ROWS):
    if fmt == "parquet":
        path = tmp_path / "t.parquet"
        pq.write_table(
            pa.table({url_col: [r[0] for r in rows], caption_col: [r[1] for r in rows]}), path
        )
    elif fmt in ("csv", "tsv"):
        sep = "," if fmt == "csv" else "\t"
        lines = [f"{url_col}{sep}{caption_col}{sep}extra"]
        for url, cap in rows:
            cap_cell = "" if cap is None else (f'"{cap}"' if fmt == "csv" else cap)
            lines.append(f"{url or ''}{sep}{cap_cell}{sep}x")
        path = tmp_path / f"t.{fmt}"
        path.write_text("\n".join(lines) + "\n")
    else:
        path = tmp_path / "t.jsonl.gz"
        with gzip.open(path, "wt") as fh:
            for url, cap in rows:
                fh.write(json.dumps({url_col: url, caption_col: cap, "other": 1}) + "\n")
    return path


@pytest.mark.parametrize("fmt", ["parquet", "csv", "tsv", "jsonl"])
def test_every_row_is_a_candidate_or_a_reason(tmp_path, fmt: str) -> None:
    found, funnel = read(write(tmp_path, fmt))
    assert [(c.image_url, c.alt_text) for c in found] == [
        ("https://a.example/1.jpg", "a dog running on the beach"),
        ("https://a.example/5.jpg", "jpg"),
    ]
    assert [c.source_offset for c in found] == [0, 6]
    assert all(c.source_kind == "table" and c.page_url == "" for c in found)
    extract = funnel.stage(reasons.STAGE_EXTRACT)
    assert extract[reasons.TABLE_ROWS] == len(ROWS)
    # CSV cannot tell a missing caption from an empty one.
    if fmt in ("csv", "tsv"):
        no_caption = {reasons.EMPTY_ALT_TEXT: 2}
    else:
        no_caption = {reasons.NO_ALT_TEXT: 1, reasons.EMPTY_ALT_TEXT: 1}
    assert extract == {
        reasons.TABLE_ROWS: 7,
        reasons.CANDIDATES: 2,
        **no_caption,
        reasons.NO_IMAGE_URL: 1,
        reasons.BAD_URL: 1,
        reasons.DATA_URI: 1,
    }


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
def test_img2dataset_column_names_are_understood(tmp_path, fmt: str) -> None:
    found, _ = read(write(tmp_path, fmt, url_col="URL", caption_col="TEXT"))
    assert len(found) == 2


def test_configured_column_names(tmp_path) -> None:
    cfg = dataclasses.replace(CFG, url_column="image", caption_column="alt")
    found, _ = read(write(tmp_path, "parquet", url_col="image", caption_col="alt"), cfg)
    assert len(found) == 2


def test_missing_column_is_a_clear_error(tmp_path) -> None:
    path = write(tmp_path, "csv", url_col="link", caption_col="caption")
    with pytest.raises(TableError, match="no column 'url'"):
        read(path)
    with open(path, "rb") as fh:
        assert table_columns(fh, str(path)) == ["link", "caption", "extra"]


def test_laion_sample(laion_parquet) -> None:
    found, funnel = read(laion_parquet)
    extract = funnel.stage(reasons.STAGE_EXTRACT)
    assert extract[reasons.TABLE_ROWS] == 1000
    assert len(found) == extract[reasons.CANDIDATES]
    assert (
        len(found)
        + sum(n for k, n in extract.items() if k not in (reasons.TABLE_ROWS, reasons.CANDIDATES))
        == 1000
    )
    assert len(found) > 950
    assert all(c.image_url.startswith(("http://", "https://")) for c in found)


@pytest.mark.parametrize(
    ("path", "is_table"),
    [
        ("x.parquet", True),
        ("x.CSV", True),
        ("x.tsv.gz", True),
        ("x.jsonl", True),
        ("x.warc.gz", False),
        ("x.arc", False),
    ],
)
def test_is_table_path(path: str, is_table: bool) -> None:
    assert (input_kind(path).name == "table") is is_table
