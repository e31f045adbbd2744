"""Resolving `--input` to files, and checking them before the run (curation/inputs.py
says what each kind of file is)."""

from __future__ import annotations

import os
import random

from curation.config import CurationConfig
from curation.inputs import input_kind
from curation.tables import TableError
from pipelines.errors import CurateError

MANIFEST_SUFFIXES = (".paths.gz", ".paths")
# Where Common Crawl's manifest paths start: the bucket root is the text before it.
CRAWL_ROOT = "crawl-data/"


def is_manifest(path: str) -> bool:
    """Whether `--input` names a Common Crawl manifest (warc.paths.gz, wat.paths.gz, ...)."""
    return path.lower().endswith(MANIFEST_SUFFIXES)


def expand_inputs(patterns: list[str], cfg: CurationConfig | None = None) -> list[str]:
    """Every file named by the patterns (globs, folders, gs:// / http(s):// paths, Common
    Crawl manifests), each matched once; `cfg` says how manifests are read (paths_base,
    max_input_files, sample_input_files, seed)."""
    from apache_beam.io.filesystems import FileSystems

    # Registers http(s):// with FileSystems (a Beam plugin: Dataflow's workers import it too).
    from pipelines import http_filesystem  # noqa: F401

    cfg = cfg or CurationConfig()
    found: list[str] = []
    manifests = 0
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
        # A manifest is known by the file matched, so a glob or a folder may name one too.
        for path in files:
            if is_manifest(path):
                manifests += 1
                found.extend(manifest_files(path, cfg))
            else:
                found.append(path)
    if not manifests:
        given = [
            f"--{key.replace('_', '-')}"
            for key in ("paths_base", "max_input_files", "sample_input_files")
            if getattr(cfg, key)
        ]
        if given:  # they act on manifests only: without one they would do nothing
            raise CurateError(
                f"{', '.join(given)} applies to Common Crawl manifests (*.paths.gz), and no "
                "--input is one"
            )
    return sorted(set(found))


def manifest_files(manifest: str, cfg: CurationConfig) -> list[str]:
    """The files a manifest lists, under paths_base, cut to max_input_files or sampled."""
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    gz = manifest.lower().endswith(".gz")
    try:
        # Read whole: a crawl's manifest is ~100,000 lines, a few MB unpacked.
        with FileSystems.open(
            manifest,
            compression_type=CompressionTypes.GZIP if gz else CompressionTypes.UNCOMPRESSED,
        ) as fh:
            text = fh.read().decode("utf-8")
    except Exception as e:
        raise CurateError(f"--input {manifest!r}: cannot read the manifest ({e})") from e
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    if not lines:
        raise CurateError(f"--input {manifest!r}: the manifest lists no file")
    if cfg.max_input_files:
        lines = lines[: cfg.max_input_files]
    elif cfg.sample_input_files and cfg.sample_input_files < len(lines):
        # Drawn by index and kept in the manifest's order: the same seed, the same files.
        picked = random.Random(cfg.seed).sample(range(len(lines)), cfg.sample_input_files)
        lines = [lines[i] for i in sorted(picked)]
    base = cfg.paths_base or manifest_base(manifest)
    files = [line if "://" in line else join_base(base, line) for line in lines]
    # Local files are checked here, where the message can name them; remote ones (a crawl's
    # 90,000) are not asked for one by one: a missing one is a dead letter (file_failed).
    missing = [f for f in files if "://" not in f and not os.path.isfile(f)]
    if missing:
        raise CurateError(
            f"--input {manifest!r}: {len(missing)} listed file(s) not found under "
            f"{base or '.'!r}, the first {missing[0]!r} (set --paths-base)"
        )
    return files


def manifest_base(manifest: str) -> str:
    """The bucket root of a manifest: its location up to `crawl-data/`."""
    at = manifest.rfind(CRAWL_ROOT)
    if at < 0:
        raise CurateError(
            f"--input {manifest!r}: cannot tell where its paths start (no {CRAWL_ROOT} in its "
            "location): give --paths-base, e.g. https://data.commoncrawl.org/ or "
            "s3://commoncrawl/"
        )
    return manifest[:at]


def join_base(base: str, path: str) -> str:
    """A manifest path under its base (a folder or a URL prefix)."""
    if not base:
        return path
    if "://" in base:
        return base.rstrip("/") + "/" + path.lstrip("/")
    return os.path.join(base, path.lstrip("/"))


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
