"""Building the eval-duplicate index (filters/evaldup.py) from image folders, globs and tars.

Each source is a folder (read recursively), a glob, or a tar archive (read as a stream, so
ImageNet's validation tar of 50,000 JPEGs is never unpacked), optionally named `SET=SOURCE`.
Every entry is named `set/file`: the set is the given name, else the folder's, the glob's
folder's or the archive's name; the file is its path inside the folder or archive.
"""

from __future__ import annotations

import glob
import os
import tarfile
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from itertools import islice

from curation.record import Rejection
from filters.evaldup import EvalFeatures, EvalMatchIndex, compute_eval_features
from filters.image import read_header

# The pixel limit for eval images: evaluation sets are trusted, but a bomb in a folder given
# by mistake must not take the machine's memory (ImageNet's largest is ~ 2.5e7 pixels).
MAX_EVAL_PIXELS = 1 << 28
_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")


@dataclass(frozen=True, slots=True)
class EvalIndexSummary:
    """What building an index did: entries per set, and the files it could not use."""

    output: str
    entries: int
    per_set: dict[str, int]
    skipped: tuple[tuple[str, str], ...]  # (entry name, reason: detail)


def split_source(source: str) -> tuple[str | None, str]:
    """`SET=PATH` -> (SET, PATH); a plain path -> (None, PATH)."""
    name, sep, path = source.partition("=")
    if sep and name and "/" not in name and os.sep not in name:
        return name, path
    return None, source


def is_tar(path: str) -> bool:
    """Whether a source is a tar archive, by its name."""
    return path.lower().endswith(_TAR_SUFFIXES)


def read_source(source: str) -> Iterator[tuple[str, bytes]]:
    """(entry name, bytes) of every image file of one source, in name order for folders and
    globs, in archive order for tars."""
    set_name, path = split_source(source)
    if is_tar(path) and os.path.isfile(path):
        yield from _read_tar(set_name or _tar_stem(path), path)
    elif os.path.isdir(path):
        root = os.path.abspath(path)
        yield from _read_files(set_name or os.path.basename(root), root, _files_under(root))
    else:
        # A folder the glob matches is read as a folder (`evalsets/*` names the sets' folders).
        matches = glob.glob(path, recursive=True)
        files = [f for f in matches if os.path.isfile(f)]
        files += [f for d in matches if os.path.isdir(d) for f in _files_under(d)]
        if not files:
            raise FileNotFoundError(f"no eval images match {path!r}")
        root = _glob_root(path)
        yield from _read_files(set_name or os.path.basename(root), root, set(files))


def _files_under(folder: str) -> list[str]:
    """Every file under a folder at any depth but hidden ones: an image is known by its
    bytes, not its name (a .jfif or a name without a suffix is read too), and a file that
    is not one is reported as skipped, never passed over in silence."""
    return [
        os.path.join(parent, f)
        for parent, _, names in os.walk(folder)
        for f in names
        if not f.startswith(".")
    ]


def _glob_root(pattern: str) -> str:
    """The folder a glob starts from: its parts before the first wildcard."""
    parts = os.path.normpath(os.path.abspath(pattern)).split(os.sep)
    fixed = []
    for part in parts[:-1]:
        if glob.has_magic(part):
            break
        fixed.append(part)
    return os.sep.join(fixed) or os.sep


def _read_files(set_name: str, root: str, files: Iterable[str]) -> Iterator[tuple[str, bytes]]:
    for path in sorted(files, key=lambda f: os.path.relpath(os.path.abspath(f), root)):
        relative = os.path.relpath(os.path.abspath(path), root).replace(os.sep, "/")
        with open(path, "rb") as fh:
            yield f"{set_name}/{relative}", fh.read()


def _read_tar(set_name: str, path: str) -> Iterator[tuple[str, bytes]]:
    # "r|*": a stream, member after member, whatever the compression; no index is read first.
    with tarfile.open(path, "r|*") as archive:
        for member in archive:
            if not member.isfile() or os.path.basename(member.name).startswith("."):
                continue
            fh = archive.extractfile(member)
            if fh is None:
                continue
            name = member.name.removeprefix("./")
            yield f"{set_name}/{name}", fh.read()


def _tar_stem(path: str) -> str:
    base = os.path.basename(path)
    for suffix in _TAR_SUFFIXES:
        if base.lower().endswith(suffix):
            return base[: -len(suffix)]
    return base


def eval_features(data: bytes) -> EvalFeatures | Rejection:
    """An eval image's features, behind the same header guard as web images."""
    header = read_header(data, MAX_EVAL_PIXELS)
    return header if isinstance(header, Rejection) else compute_eval_features(data)


def _features(item: tuple[str, bytes]) -> tuple[str, EvalFeatures | Rejection]:
    return item[0], eval_features(item[1])


def build_eval_index(sources: list[str], output: str, processes: int = 1) -> EvalIndexSummary:
    """Read every source, compute each image's features (in `processes` processes) and write
    the index to `output`; the same images give the same bytes. Without a usable image
    nothing is written (the summary says 0 entries)."""
    items = (item for source in sources for item in read_source(source))
    features: dict[str, EvalFeatures] = {}
    skipped: dict[str, str] = {}
    for name, result in _computed(items, processes):
        if name in features or name in skipped:
            raise ValueError(f"two eval images are both named {name!r}: name the sets (SET=PATH)")
        if isinstance(result, Rejection):
            skipped[name] = f"{result.reason}: {result.detail}"
        else:
            features[name] = result
    if not features:  # nothing is written: an empty index would match nothing, silently
        return EvalIndexSummary(output, 0, {}, tuple(sorted(skipped.items())))
    index = EvalMatchIndex(features.items())
    index.save(output)
    per_set = Counter(name.split("/", 1)[0] for name in features)
    return EvalIndexSummary(
        output, len(index), dict(sorted(per_set.items())), tuple(sorted(skipped.items()))
    )


def _computed(
    items: Iterator[tuple[str, bytes]], processes: int
) -> Iterator[tuple[str, EvalFeatures | Rejection]]:
    if processes <= 1:
        yield from map(_features, items)
        return
    # In batches: Executor.map submits its whole input at once, which for a 6 GB tar would
    # hold every image's bytes in memory.
    with ProcessPoolExecutor(processes) as pool:
        while batch := list(islice(items, _BATCH)):
            yield from pool.map(_features, batch, chunksize=16)


_BATCH = 1024
