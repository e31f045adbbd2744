"""Shared fixtures: paths to the third-party data beside the checkout, and the bundled sample."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
WARC_DIR = SHARED_DATA / "warc"
SAMPLE_WARC = ROOT / "sample" / "crawl.warc.gz"
LAION_PARQUET = SHARED_DATA / "captions" / "img2dataset_laion_test_1000.parquet"


def require(path: Path) -> Path:
    """Skip the calling test when third-party data is absent (a clone without ../shared)."""
    if not path.exists():
        pytest.skip(f"test data not present: {path} (see ../shared/data/README.md)")
    return path


@pytest.fixture
def warc_dir() -> Path:
    return require(WARC_DIR)


@pytest.fixture
def laion_parquet() -> Path:
    return require(LAION_PARQUET)


def archive_files() -> list[Path]:
    """Every archive in ../shared/data/warc (empty when absent)."""
    if not WARC_DIR.exists():
        return []
    return sorted(p for p in WARC_DIR.iterdir() if p.suffix != ".md")
