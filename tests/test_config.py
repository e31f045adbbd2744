"""The run configuration: defaults with sources, YAML loading, clear errors naming the key."""

from __future__ import annotations

import dataclasses

import pytest

from curation.config import ConfigError, CurationConfig


def test_defaults_are_alignS() -> None:
    cfg = CurationConfig()
    assert (cfg.min_unigrams, cfg.max_unigrams) == (3, 20)


def test_every_default_names_its_source() -> None:
    for f in dataclasses.fields(CurationConfig):
        assert f.metadata.get("source"), f.name
        assert f.metadata.get("help"), f.name


def test_yaml_roundtrip(tmp_path) -> None:
    cfg = CurationConfig(min_unigrams=2, placeholder_alt_texts=("x", "y"))
    path = tmp_path / "c.yaml"
    path.write_text(cfg.to_yaml())
    assert CurationConfig.load(str(path)) == cfg


def test_overrides_win_over_file(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("min_unigrams: 2\nmax_unigrams: 30\n")
    cfg = CurationConfig.load(str(path), {"min_unigrams": "4"})
    assert (cfg.min_unigrams, cfg.max_unigrams) == (4, 30)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("min_unigram: 3\n", "unknown key 'min_unigram'"),
        ("min_unigrams: three\n", "key 'min_unigrams' expects int"),
        ("min_unigrams: -1\n", "'min_unigrams': expected an integer >= 0"),
        ("min_unigrams: 30\n", "'min_unigrams' (30) exceeds 'max_unigrams' (20)"),
        ("text_rules: [text_too_short, bogus]\n", "unknown rule 'bogus'"),
        ("- a\n- b\n", "expected a mapping"),
        ("min_unigrams: [1\n", "not valid YAML"),
        ("shard_size: 0\n", "'shard_size': must be at least 1"),
    ],
)
def test_bad_config_names_the_key(tmp_path, text: str, message: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=None) as err:
        CurationConfig.load(str(path))
    assert message in str(err.value)


def test_missing_file_is_a_config_error(tmp_path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        CurationConfig.load(str(tmp_path / "nope.yaml"))


def test_empty_file_gives_defaults(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("")
    assert CurationConfig.load(str(path)) == CurationConfig()


def test_comma_separated_tuple_from_flag() -> None:
    cfg = CurationConfig.from_mapping({"placeholder-alt-texts": "a, b ,c"})
    assert cfg.placeholder_alt_texts == ("a", "b", "c")
