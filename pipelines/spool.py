"""The image spool: fetched image bytes wait in files for the shard writer, and only a
BlobRef (file, offset, length) travels through the pipeline's joins and shuffles.

Why: on the local runner every shuffle copies each element's bytes several times (encode,
the in-memory data plane, the grouping table, decode). Profiled on 2,000 images of ~65 KB
(bench/bench_images.py's corpus), the image bytes through the three shuffles between the
fetch and the writer took ~2 s of a 12 s run and 1.1 GB of its 1.5 GB peak memory. Beam
gives the same advice for large elements: keep blobs in storage, pass their metadata.

A fetch bundle appends the images it measured to one spool file of its own, closed when the
bundle finishes (before the runner commits its outputs). A retried bundle writes a new file,
so a ref never points at a half-written one. The spool is a folder under the run's output,
on any filesystem Beam writes (local, gs://); the pipeline deletes it once every reader
(the shard writer, the report's previews, the NSFW model) is done.
"""

from __future__ import annotations

import contextlib
import mmap
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.localfilesystem import LocalFileSystem

from curation.record import BlobRef

SPOOL_PREFIX = "_spool-"
_SUFFIX = ".blobs"


def new_spool_directory(output: str) -> str:
    """A fresh spool folder under `output`, unique to this run."""
    return FileSystems.join(output, f"{SPOOL_PREFIX}{uuid.uuid4().hex[:12]}")


class SpoolWriter:
    """Appends image bytes to one file in `directory`, created with the first image."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._fh: Any = None
        self._path = ""
        self._offset = 0

    def put(self, data: bytes) -> BlobRef:
        """Append `data`; where it lies, readable once close() has returned."""
        if self._fh is None:
            self._path = FileSystems.join(self.directory, uuid.uuid4().hex + _SUFFIX)
            self._fh = FileSystems.create(
                self._path, compression_type=CompressionTypes.UNCOMPRESSED
            )
            self._offset = 0
        try:
            self._fh.write(data)
        except BaseException:
            # Part of `data` may be in the file: no later ref may count from this offset.
            # The file is left as it is (refs before it stay good) and the next put starts
            # a new one; the caller's batch fails and becomes a dead letter.
            self._abandon()
            raise
        ref = BlobRef(self._path, self._offset, len(data))
        self._offset += len(data)
        return ref

    def _abandon(self) -> None:
        fh, self._fh = self._fh, None
        with contextlib.suppress(Exception):
            fh.close()

    def close(self) -> None:
        """Finish the current file (a later put() starts another)."""
        if self._fh is not None:
            fh, self._fh = self._fh, None
            fh.close()


def read_blobs(refs: Iterable[BlobRef]) -> dict[BlobRef, bytes]:
    """The bytes of every ref: each spool file opened once, read in offset order."""
    out: dict[BlobRef, bytes] = {}
    for path, wanted in _by_file(refs):
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as fh:
            for ref in wanted:
                fh.seek(ref.offset)
                data = fh.read(ref.length)
                if len(data) != ref.length:
                    raise OSError(
                        f"spool file {path} ends before byte {ref.offset + ref.length} "
                        f"(read {len(data)} of {ref.length} at {ref.offset})"
                    )
                out[ref] = data
    return out


def _by_file(refs: Iterable[BlobRef]) -> list[tuple[str, list[BlobRef]]]:
    """The distinct refs grouped by spool file, files by path, refs by offset."""
    by_path: dict[str, set[BlobRef]] = {}
    for ref in refs:
        by_path.setdefault(ref.path, set()).add(ref)
    return [(p, sorted(w, key=lambda r: r.offset)) for p, w in sorted(by_path.items())]


def image_bytes(image: bytes | BlobRef | None) -> bytes | None:
    """A record's image as bytes, read from the spool when it holds a ref."""
    if isinstance(image, BlobRef):
        return read_blobs([image])[image]
    return image


def with_image_bytes(rows: list[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Rows whose "image" is a BlobRef get its bytes (one read pass for all of them).

    From a spool on local disk the bytes come as read-only memoryviews of the mapped spool
    file, not as copies: the shard writers copy them once, into their own buffers (copies
    were most of the single-core shard step: BENCHMARKS.md, bench/bench_spool.py). A
    mapping, and its file descriptor, live as long as a view of it: nothing to close.
    """
    refs = [r["image"] for r in rows if isinstance(r.get("image"), BlobRef)]
    if not refs:
        return rows
    found = read_blob_views(refs)
    return [
        {**r, "image": found[r["image"]]} if isinstance(r.get("image"), BlobRef) else r
        for r in rows
    ]


# A mapping holds a file descriptor while it lives (Python < 3.13 duplicates it), and a
# shard's rows point into every spool file of the run: past this many files, the rest are
# copied as before, so that a run of many small bundles stays far below `ulimit -n` (1024).
MAX_MAPPED_FILES = 64


def read_blob_views(refs: Iterable[BlobRef]) -> dict[BlobRef, bytes | memoryview]:
    """read_blobs, except that refs into local spool files come as views of the mapped file
    (the first MAX_MAPPED_FILES files of the call; the others as copies).

    A spool file is written once and never changed: a view checks its range against the
    file's size when mapped, but a file truncated later by something else would end the
    process with SIGBUS where a read raised OSError.
    """
    out: dict[BlobRef, bytes | memoryview] = {}
    mapped = 0
    for path, wanted in _by_file(refs):
        view = _mapped(path) if mapped < MAX_MAPPED_FILES else None
        mapped += view is not None
        if view is None:  # object stores, empty files, files past the cap: read as before
            out.update(read_blobs(wanted))
            continue
        for ref in wanted:
            if ref.offset + ref.length > len(view):
                raise OSError(
                    f"spool file {path} ends before byte {ref.offset + ref.length} "
                    f"(it holds {len(view)})"
                )
            out[ref] = view[ref.offset : ref.offset + ref.length]
    return out


def _mapped(path: str) -> memoryview | None:
    """A read-only view of a whole local file, or None where it cannot be mapped."""
    if "://" in path or not isinstance(FileSystems.get_filesystem(path), LocalFileSystem):
        return None
    with open(path, "rb") as fh:  # the mapping keeps a duplicate of the descriptor
        if not fh.seek(0, 2):
            return None  # mmap refuses empty files
        return memoryview(mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ))


def remove_spool(directory: str) -> int:
    """Delete the spool folder and its files; returns how many files there were."""
    pattern = FileSystems.join(directory, "*" + _SUFFIX)
    found = [m.path for r in FileSystems.match([pattern]) for m in r.metadata_list]
    if found:
        FileSystems.delete(found)
    if FileSystems.exists(directory):  # local folders; object stores have none left
        FileSystems.delete([directory])
    return len(found)
