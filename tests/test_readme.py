"""The README stays true to the code: every config key and reason it promises exists."""

from __future__ import annotations

import re

from curation import reasons
from curation.config import config_fields
from tests.conftest import ROOT

README = (ROOT / "README.md").read_text()


def test_every_config_key_is_documented() -> None:
    for f in config_fields():
        assert f"`{f.name}`" in README, f.name


def test_every_text_reason_is_documented() -> None:
    for reason in reasons.TEXT_REASONS:
        assert f"`{reason}`" in README, reason


def test_readme_gives_the_two_commands() -> None:
    blocks = re.findall(r"```bash\n(.*?)\n```", README, re.S)
    assert len(blocks) == 2
    assert "curate run --input sample/crawl.warc.gz" in blocks[0]
    assert "pytest" in blocks[1]
    ci = (ROOT / ".ci" / "run").read_text()
    assert blocks[1] in ci
