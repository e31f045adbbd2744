"""Output through Beam's FileSystems (local paths and gs:// alike), written atomically.

A file is written under a hidden temporary name in its folder and renamed into place, so a
reader globbing `*.parquet` never sees a partial file, and a killed run leaves no shard that
looks complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Iterable
from typing import Any

import apache_beam as beam
import pyarrow as pa
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from curation.shards import SUFFIX, encode_shard

TMP_PREFIX = ".tmp-"


def _anonymous_gcs_for_emulator() -> None:
    """Against a GCS emulator (STORAGE_EMULATOR_HOST), use anonymous access at once.

    Without credentials, Beam looks for Application Default Credentials with four retries
    and exponential backoff (~25 s per process) before falling back to anonymous access. An
    emulator needs none, so Beam's credential cache is primed with "none" here. This runs
    when this module is imported: in the launcher and in every worker process that
    unpickles our steps. Real GCS (no emulator variable) is untouched.
    """
    if not os.environ.get("STORAGE_EMULATOR_HOST"):
        return
    try:
        from apache_beam.internal.gcp import auth
    except ImportError:  # Beam without the gcp extra: gs:// is unavailable anyway
        return
    with auth._Credentials._credentials_lock:
        auth._Credentials._credentials = None
        auth._Credentials._credentials_init = True


_anonymous_gcs_for_emulator()


def join(*parts: str) -> str:
    """Join path parts for any filesystem (local or gs://)."""
    return FileSystems.join(*parts)


def write_atomic(path: str, data: bytes) -> None:
    """Write bytes to `path` through a temporary file and a rename."""
    folder, name = FileSystems.split(path)
    tmp = FileSystems.join(folder, f"{TMP_PREFIX}{uuid.uuid4().hex}-{name}")
    if not FileSystems.exists(folder):
        FileSystems.mkdirs(folder)
    with FileSystems.create(tmp, compression_type=CompressionTypes.UNCOMPRESSED) as fh:
        fh.write(data)
    if FileSystems.exists(path):
        FileSystems.delete([path])
    FileSystems.rename([tmp], [path])


def write_json(doc: Any, path: str) -> None:
    """A JSON document with sorted keys, so that equal documents give equal bytes."""
    write_atomic(path, (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode())


def read_bytes(path: str) -> bytes:
    """The whole content of a file on any filesystem."""
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as fh:
        return fh.read()


def shard_name(index: int, suffix: str) -> str:
    """The file name of shard `index`: 00000.parquet, 00001.parquet, ..."""
    return f"{index:05d}{suffix}"


class WriteShardFn(beam.DoFn):
    """(shard index, rows) -> one file per format, rows sorted by uid; yields manifest entries."""

    def __init__(self, directories: dict[str, str], schema: pa.Schema) -> None:
        self.directories = directories  # format -> folder
        self.schema = schema

    def process(self, element: tuple[int, Iterable[dict[str, Any]]]):
        index, rows = element
        # Sorting by uid makes the bytes independent of arrival order.
        ordered = sorted(rows, key=lambda r: r["uid"])
        for fmt, directory in sorted(self.directories.items()):
            data = encode_shard(fmt, ordered, self.schema)
            name = shard_name(index, SUFFIX[fmt])
            write_atomic(join(directory, name), data)
            yield {
                "shard": name,
                "format": fmt,
                "count": len(ordered),
                "bytes": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
            }


def manifest_json(entries: list[dict[str, Any]]) -> bytes:
    """_manifest.json: every shard file with its sample count and checksum, in name order."""
    ordered = sorted(entries, key=lambda e: e["shard"])
    doc = {"shards": ordered, "total": sum(e["count"] for e in ordered)}
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()


def remove_stale_temporaries(directory: str) -> None:
    """Delete temporary files that a retried or killed worker left behind."""
    pattern = join(directory, TMP_PREFIX + "*")
    found = [m.path for r in FileSystems.match([pattern]) for m in r.metadata_list]
    if found:
        FileSystems.delete(found)
