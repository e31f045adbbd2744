"""The kinds of input file `--input` accepts, in one registry.

Each kind says which paths it takes, how a file of it yields candidates, and whether its
files can hold the image bytes themselves (an archive's image records do; a table names
URLs only). Every caller asks `input_kind(path)`; adding a kind (WAT files, a remote
manifest) is one entry here and the module that reads it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from curation.config import CurationConfig
from curation.extract import candidates_from_archive, candidates_from_table
from curation.record import Candidate
from curation.stats import Funnel
from curation.tables import resolve_columns, table_columns
from curation.wat import candidates_from_wat, is_wat_path

ReadCandidates = Callable[[BinaryIO, str, CurationConfig, Funnel], Iterator[Candidate]]
Preflight = Callable[[BinaryIO, str, CurationConfig], None]


@dataclass(frozen=True)
class InputKind:
    """One kind of input file."""

    name: str
    matches: Callable[[str], bool]  # the path (lowercased suffix checks and the like)
    read_candidates: ReadCandidates  # every candidate of a file, each read counted in Funnel
    holds_images: bool  # whether the image bytes may lie in the input files themselves
    # Checked on every file of the kind before the run starts (raises with a message);
    # None: nothing can be checked cheaply.
    preflight: Preflight | None = None


TABLE_SUFFIXES = (".parquet", ".csv", ".tsv", ".jsonl", ".json", ".csv.gz", ".tsv.gz", ".jsonl.gz")


def _check_table(stream: BinaryIO, path: str, cfg: CurationConfig) -> None:
    # A table without the configured columns fails before the run, not in a worker.
    resolve_columns(table_columns(stream, path), cfg.url_column, cfg.caption_column, path)


TABLE = InputKind(
    name="table",
    matches=lambda path: path.lower().endswith(TABLE_SUFFIXES),
    read_candidates=candidates_from_table,
    holds_images=False,
    preflight=_check_table,
)

# Common Crawl's WAT files: each page's links, already extracted (curation/wat.py). They hold
# no image bytes, so their images come over HTTP (or from archives given alongside). Before the
# archive kind, which would read them as WARC files of metadata records and find no page.
WAT = InputKind(
    name="wat",
    matches=is_wat_path,
    read_candidates=candidates_from_wat,
    holds_images=False,
)

# The catch-all, last: any other file is read as a WARC/ARC archive (gzipped or plain). A
# file that is not one yields no candidate, and what was read of it is counted.
ARCHIVE = InputKind(
    name="archive",
    matches=lambda path: True,
    read_candidates=candidates_from_archive,
    holds_images=True,
)

# First match wins.
INPUT_KINDS: tuple[InputKind, ...] = (TABLE, WAT, ARCHIVE)


def input_kind(path: str) -> InputKind:
    """The kind of input file `path` is."""
    return next(kind for kind in INPUT_KINDS if kind.matches(path))


def image_holders(paths: list[str]) -> list[str]:
    """The inputs whose files may hold image bytes (the archives), sorted."""
    return sorted(p for p in paths if input_kind(p).holds_images)
