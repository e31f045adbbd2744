"""The output folder: what a run writes where, making room for a run, and the end-of-run
summary with the invariant extracted = kept + rejected, counted from the files written.

Every module that reads or writes a run's files takes the names from here.
"""

from __future__ import annotations

import glob
import json
import os
import re
from collections.abc import Iterable

from curation import reasons
from curation.report import REPORT_FILE, SAMPLES_FILE
from pipelines.errors import CurateError
from pipelines.io import join, read_bytes
from pipelines.spool import SPOOL_PREFIX

CONFIG_FILE = "config.yaml"
STATS_FILE = "stats.json"
SHARDS_DIR = "shards"  # Parquet shards; the other formats go to OUTPUT/<format>/
REJECTS_DIR = "rejects"
DEAD_LETTER_DIR = "dead_letter"
FORMAT_DIRS = {"parquet": SHARDS_DIR, "tfrecord": "tfrecord", "webdataset": "webdataset"}
MANIFEST_FILE = "_manifest.json"  # in each shard folder, written once its shards are
# Everything a run may leave in its folder (a spool of a run that died aside).
RUN_NAMES = (
    CONFIG_FILE,
    STATS_FILE,
    *FORMAT_DIRS.values(),
    REJECTS_DIR,
    REPORT_FILE,
    SAMPLES_FILE,
    DEAD_LETTER_DIR,
)
_GLOB_CHARS = "*?["


def shard_directories(output: str, formats: tuple[str, ...]) -> dict[str, str]:
    """Where each format's shards go: Parquet in shards/, the others in a folder named after
    the format, so that a Parquet reader pointed at shards/ meets only Parquet."""
    return {f: join(output, FORMAT_DIRS[f]) for f in formats}


def prepare_output(output: str, overwrite: bool) -> None:
    """Refuse an output folder holding a run, unless overwriting; then clear our files."""
    from apache_beam.io.filesystems import FileSystems

    bad = sorted(set(_GLOB_CHARS) & set(output))
    if bad:
        # Beam's filesystems read these as a pattern wherever the path is listed or
        # deleted: files written there could not be found again.
        raise CurateError(
            f"--output {output!r}: the characters {' '.join(bad)} are not allowed in an "
            "output path (Beam takes them for a file pattern)"
        )
    existing = []
    for name in RUN_NAMES:
        path = FileSystems.join(output, name)
        # Object stores have no folders: a folder of ours is whatever lies under its prefix.
        patterns = [path] if "://" not in output else [path, path + "/**"]
        for result in FileSystems.match(patterns):
            existing.extend(m.path for m in result.metadata_list)
        if "://" not in output and os.path.isdir(path):
            existing.append(path)
    existing.extend(leftover_spools(output))
    if existing and not overwrite:
        raise CurateError(
            f"--output {output!r} already holds a run ({existing[0]}); "
            "pass --overwrite to replace it"
        )
    if existing:
        FileSystems.delete(sorted(set(existing)))


def leftover_spools(output: str) -> list[str]:
    """Image spools of runs that died (a finished run removes its own): folders named as
    pipelines/spool.py names them, or on an object store, the objects under one."""
    from apache_beam.io.filesystems import FileSystems

    named = re.compile(re.escape(SPOOL_PREFIX) + "[0-9a-f]{12}")
    pattern = FileSystems.join(output, SPOOL_PREFIX + "*")
    if "://" not in output:
        return sorted(
            p
            for p in glob.glob(pattern)
            if os.path.isdir(p) and named.fullmatch(os.path.basename(p))
        )
    found = []
    for result in FileSystems.match([pattern + "/**"]):
        for m in result.metadata_list:
            folder = m.path[len(output) :].lstrip("/").split("/", 1)[0]
            if named.fullmatch(folder):
                found.append(m.path)
    return sorted(found)


def record_count(folder: str, fmt: str = "parquet") -> int:
    """The records in a folder's shards of one format, counted from the files themselves."""
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    from curation.shards import SUFFIX, count_records

    total = 0
    pattern = FileSystems.join(folder, "*" + SUFFIX[fmt])
    for m in FileSystems.match([pattern])[0].metadata_list:
        with FileSystems.open(m.path, compression_type=CompressionTypes.UNCOMPRESSED) as fh:
            total += count_records(fmt, fh)
    return total


def written_formats(output: str) -> list[str]:
    """The shard formats a finished run wrote (each folder has its _manifest.json)."""
    from apache_beam.io.filesystems import FileSystems

    return [
        fmt
        for fmt, folder in FORMAT_DIRS.items()
        if FileSystems.exists(join(output, folder, MANIFEST_FILE))
    ]


def summarize(output: str, formats: Iterable[str] = ()) -> tuple[str, bool, str | None]:
    """The end-of-run summary, whether the files satisfy extracted = kept + rejected (and
    every format in `formats`, those the run was asked for, is written), and why the run
    has no candidate at all (None when it has some).

    Kept records are counted from the files of one format written (Parquet's footers when
    there is Parquet: a read of each footer, where a tar or a TFRecord file is walked record
    by record, slow on an object store); every other format's manifest must agree."""
    stats = json.loads(read_bytes(join(output, STATS_FILE)))
    totals = stats["totals"]
    written = written_formats(output)
    missing = [fmt for fmt in formats if fmt not in written]
    formats = written
    kept_by_format = {}
    if formats:
        counted = "parquet" if "parquet" in formats else formats[0]
        kept_by_format[counted] = record_count(join(output, FORMAT_DIRS[counted]), counted)
        for fmt in formats:
            if fmt != counted:
                manifest = read_bytes(join(output, FORMAT_DIRS[fmt], MANIFEST_FILE))
                kept_by_format[fmt] = json.loads(manifest)["total"]
    kept = next(iter(kept_by_format.values()), 0)
    rejected = record_count(join(output, REJECTS_DIR))
    ok = (
        not missing
        and bool(kept_by_format)
        and len(set(kept_by_format.values())) == 1
        and totals["extracted"] == kept + rejected
        and kept == totals["kept"]
    )
    lines = [
        f"read: {_fmt(stats['read'])}",
        f"extract: {_fmt(stats['extract'])}",
    ]
    for stage, by_reason in stats["rejected"].items():
        lines.append(f"rejected at {stage}: {_fmt(by_reason)}")
    if stats.get("dead_letter"):
        lines.append(
            f"DEAD LETTERS (exceptions, see {output}/{DEAD_LETTER_DIR}/): "
            f"{_fmt(stats['dead_letter'])}"
        )
    if missing:
        lines.append(f"formats asked for but not written (no {MANIFEST_FILE}): {missing}")
    if len(set(kept_by_format.values())) > 1:
        lines.append(f"the formats disagree on the kept records: {_fmt(kept_by_format)}")
    mark = "OK" if ok else "MISMATCH"
    lines.append(
        f"invariant {mark}: extracted {totals['extracted']} = kept {kept} + rejected {rejected}"
        f"  (from the files in {output})"
    )
    return "\n".join(lines), ok, why_no_candidates(stats)


def _fmt(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items()) or "-"


def why_no_candidates(stats: dict) -> str | None:
    """When a run extracted no candidate: one line saying why, from its funnel counts;
    None when it extracted some."""
    if stats["totals"]["extracted"]:
        return None
    read, extract = stats.get("read", {}), stats.get("extract", {})
    files = read.get(reasons.FILES, 0)
    not_archives = read.get(reasons.NOT_AN_ARCHIVE, 0)
    if files and not_archives + read.get(reasons.FILE_FAILED, 0) >= files:
        why = (
            f"none of the {files} input file(s) is a WARC/ARC archive or a URL table "
            f"(not_an_archive {not_archives}, file_failed {read.get(reasons.FILE_FAILED, 0)})"
        )
    elif not read.get(reasons.HTML_PAGES, 0) and not extract.get(reasons.TABLE_ROWS, 0):
        why = f"the inputs hold no 2xx HTML page and no table row (read: {_fmt(read)})"
    elif not extract.get(reasons.IMG_TAGS, 0) and not extract.get(reasons.TABLE_ROWS, 0):
        pages = read.get(reasons.HTML_PAGES, 0)
        why = f"the {pages} HTML page(s) hold no <img> tag"
    else:
        skipped = {k: v for k, v in extract.items() if k not in (reasons.IMG_TAGS,)}
        why = f"no <img> tag or table row became a candidate (extract: {_fmt(skipped)})"
    return f"no candidate: {why}"
