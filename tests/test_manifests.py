"""Common Crawl manifests in --input (pipelines/inputs.py): paths under their base, the
first N, a seeded sample, and the config keys that steer them."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from curation.config import ConfigError, CurationConfig
from pipelines.cli import build_parser
from pipelines.errors import CurateError
from pipelines.inputs import expand_inputs, join_base, manifest_base

CRAWL = "crawl-data/CC-MAIN-2024-22"


def paths(n: int) -> list[str]:
    """n manifest lines in Common Crawl's layout, in the manifest's (not sorted) order."""
    return [
        f"{CRAWL}/segments/17158{i % 3}/wat/CC-MAIN-20240517-{i:05d}.warc.wat.gz" for i in range(n)
    ]


def write_crawl(root: Path, lines: list[str], name: str = "wat.paths.gz") -> Path:
    """A local mirror of a crawl: the manifest under crawl-data/, and every file it lists."""
    for line in lines:
        (root / line).parent.mkdir(parents=True, exist_ok=True)
        (root / line).write_bytes(b"")
    manifest = root / CRAWL / name
    manifest.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(f"{line}\n" for line in lines).encode()
    manifest.write_bytes(gzip.compress(text, mtime=0) if name.endswith(".gz") else text)
    return manifest


def test_paths_are_found_under_the_manifests_bucket_root(tmp_path) -> None:
    lines = paths(5)
    manifest = write_crawl(tmp_path, lines)
    assert expand_inputs([str(manifest)]) == sorted(str(tmp_path / line) for line in lines)


def test_an_uncompressed_manifest_reads_the_same(tmp_path) -> None:
    lines = paths(3)
    manifest = write_crawl(tmp_path, lines, name="warc.paths")
    assert expand_inputs([str(manifest)]) == sorted(str(tmp_path / line) for line in lines)


def test_paths_base_puts_them_elsewhere(tmp_path) -> None:
    lines = paths(4)
    write_crawl(tmp_path / "mirror", lines)
    manifest = tmp_path / "Downloads" / "wat.paths.gz"  # no crawl-data/ in its location
    manifest.parent.mkdir()
    manifest.write_bytes(gzip.compress("\n".join(lines).encode()))
    with pytest.raises(CurateError, match="give --paths-base"):
        expand_inputs([str(manifest)])
    cfg = CurationConfig(paths_base=str(tmp_path / "mirror"))
    assert expand_inputs([str(manifest)], cfg) == sorted(
        str(tmp_path / "mirror" / line) for line in lines
    )
    with pytest.raises(CurateError, match=r"4 listed file\(s\) not found"):
        expand_inputs([str(manifest)], CurationConfig(paths_base=str(tmp_path)))


def test_max_input_files_takes_the_first_n_in_the_manifests_order(tmp_path) -> None:
    lines = paths(10)[::-1]  # a manifest need not be sorted: "first" is its own order
    manifest = write_crawl(tmp_path, lines)
    got = expand_inputs([str(manifest)], CurationConfig(max_input_files=3))
    assert got == sorted(str(tmp_path / line) for line in lines[:3])
    assert len(expand_inputs([str(manifest)], CurationConfig(max_input_files=99))) == 10


def test_a_sample_is_drawn_by_seed(tmp_path) -> None:
    lines = paths(40)
    manifest = write_crawl(tmp_path, lines)

    def sample(n: int, seed: int) -> list[str]:
        return expand_inputs([str(manifest)], CurationConfig(sample_input_files=n, seed=seed))

    first = sample(5, seed=7)
    assert len(first) == 5 and set(first) <= {str(tmp_path / line) for line in lines}
    assert sample(5, seed=7) == first  # deterministic
    assert sample(5, seed=8) != first  # and the seed matters
    assert len(sample(100, seed=7)) == 40  # more than listed: all of them


@pytest.mark.parametrize(
    ("manifest", "base"),
    [
        (
            "https://data.commoncrawl.org/crawl-data/CC-MAIN-2024-22/wat.paths.gz",
            "https://data.commoncrawl.org/",
        ),
        ("s3://commoncrawl/crawl-data/CC-MAIN-2024-22/warc.paths.gz", "s3://commoncrawl/"),
        ("/data/cc/crawl-data/CC-MAIN-2024-22/wat.paths.gz", "/data/cc/"),
        ("crawl-data/CC-MAIN-2024-22/wat.paths.gz", ""),
    ],
)
def test_the_default_base_is_the_manifests_location_up_to_crawl_data(manifest, base) -> None:
    assert manifest_base(manifest) == base


@pytest.mark.parametrize(
    ("base", "path", "joined"),
    [
        (
            "https://data.commoncrawl.org/",
            "crawl-data/a.gz",
            "https://data.commoncrawl.org/crawl-data/a.gz",
        ),
        (
            "https://data.commoncrawl.org",
            "/crawl-data/a.gz",
            "https://data.commoncrawl.org/crawl-data/a.gz",
        ),
        ("s3://commoncrawl", "crawl-data/a.gz", "s3://commoncrawl/crawl-data/a.gz"),
        ("/mirror", "crawl-data/a.gz", "/mirror/crawl-data/a.gz"),
        ("", "crawl-data/a.gz", "crawl-data/a.gz"),
    ],
)
def test_join_base(base, path, joined) -> None:
    assert join_base(base, path) == joined


def test_absolute_lines_and_other_inputs_mix(tmp_path) -> None:
    lines = paths(2)
    manifest = write_crawl(tmp_path, lines)
    other = tmp_path / "extra.warc.gz"
    other.write_bytes(b"")
    got = expand_inputs([str(manifest), str(other)])
    assert got == sorted([str(other), *(str(tmp_path / line) for line in lines)])


def test_an_empty_or_unreadable_manifest_is_a_usage_error(tmp_path) -> None:
    empty = tmp_path / CRAWL / "wat.paths.gz"
    empty.parent.mkdir(parents=True)
    empty.write_bytes(gzip.compress(b"\n\n"))
    with pytest.raises(CurateError, match="lists no file"):
        expand_inputs([str(empty)])
    with pytest.raises(CurateError, match="matches no file"):
        expand_inputs([str(tmp_path / CRAWL / "warc.paths.gz")])
    broken = tmp_path / CRAWL / "wet.paths.gz"
    broken.write_bytes(b"not gzip at all")
    with pytest.raises(CurateError, match="cannot read the manifest"):
        expand_inputs([str(broken)])


def test_a_glob_or_a_folder_may_name_a_manifest(tmp_path) -> None:
    lines = paths(2)
    manifest = write_crawl(tmp_path, lines)
    want = sorted(str(tmp_path / line) for line in lines)
    assert expand_inputs([str(manifest.parent / "*.paths.gz")]) == want
    assert set(want) <= set(expand_inputs([str(manifest.parent)]))
    assert str(manifest) not in expand_inputs([str(manifest.parent)])  # read, not an archive


def test_manifest_keys_without_a_manifest_are_refused(tmp_path) -> None:
    archive = tmp_path / "one.warc.gz"
    archive.write_bytes(b"")
    for key in ("max_input_files", "sample_input_files"):
        with pytest.raises(CurateError, match="applies to Common Crawl manifests"):
            expand_inputs([str(archive)], CurationConfig(**{key: 3}))
    with pytest.raises(CurateError, match="--paths-base applies"):
        expand_inputs([str(archive)], CurationConfig(paths_base="s3://commoncrawl/"))
    with pytest.raises(ConfigError, match="'seed'"):
        CurationConfig(seed=7)


def test_the_config_keys_and_their_flags() -> None:
    with pytest.raises(ConfigError, match="give one"):
        CurationConfig(max_input_files=2, sample_input_files=2)
    with pytest.raises(ConfigError, match="max_input_files"):
        CurationConfig.from_mapping({"max_input_files": -1})
    cfg = CurationConfig.from_mapping(
        {"paths-base": "s3://commoncrawl/", "sample_input_files": "10", "seed": 3}
    )
    assert (cfg.paths_base, cfg.sample_input_files, cfg.seed) == ("s3://commoncrawl/", 10, 3)
    args, _ = build_parser().parse_known_args(
        ["run", "--input", "x", "--output", "o", "--max-input-files", "4", "--paths-base", "/m"]
    )
    assert (args.cfg_max_input_files, args.cfg_paths_base) == ("4", "/m")  # coerced by config
