"""Resolving `--input` to files, and checking them before the run (curation/inputs.py
says what each kind of file is)."""

from __future__ import annotations

import os

from curation.config import CurationConfig
from curation.inputs import input_kind
from curation.tables import TableError
from pipelines.errors import CurateError


def expand_inputs(patterns: list[str]) -> list[str]:
    """Every file named by the patterns (globs, folders, gs:// paths), each matched once."""
    from apache_beam.io.filesystems import FileSystems

    found: list[str] = []
    for pattern in patterns:
        if "://" not in pattern and os.path.isdir(pattern):
            pattern = os.path.join(pattern, "*")
        try:
            matched = FileSystems.match([pattern])[0].metadata_list
        except Exception as e:  # Beam raises BeamIOError subclasses per filesystem
            raise CurateError(f"--input {pattern!r}: cannot list ({e})") from e
        files = sorted(
            m.path
            for m in matched
            if not os.path.basename(m.path).startswith(".") and not m.path.endswith(".md")
        )
        if not files:
            raise CurateError(f"--input {pattern!r} matches no file")
        found.extend(files)
    return sorted(set(found))


def check_inputs(paths: list[str], cfg: CurationConfig) -> None:
    """Fail before the run on an input its kind can tell is unusable (a URL table without
    the configured columns)."""
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    for path in paths:
        kind = input_kind(path)
        if kind.preflight is None:
            continue
        try:
            with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as fh:
                kind.preflight(fh, path, cfg)
        except TableError as e:
            raise CurateError(str(e)) from e
        except Exception as e:
            raise CurateError(f"{path}: cannot read as a {kind.name} ({e})") from e
