"""The README and docs/ stay true to the code: every config key and reason is documented, and
the README gives the two commands CI runs."""

from __future__ import annotations

import re

from curation import reasons
from curation.config import config_fields
from tests.conftest import ROOT

README = (ROOT / "README.md").read_text()
FILTERS = (ROOT / "docs" / "filters.md").read_text()  # the reference of every key and rule


def test_every_config_key_is_documented() -> None:
    for f in config_fields():
        assert f"`{f.name}`" in FILTERS, f.name


def test_every_text_reason_is_documented() -> None:
    for reason in reasons.TEXT_REASONS:
        assert f"`{reason}`" in FILTERS, reason


def test_readme_gives_the_two_commands() -> None:
    blocks = re.findall(r"```bash\n(.*?)\n```", README, re.S)
    assert len(blocks) == 2
    assert "curate run --input sample/crawl.warc.gz" in blocks[0]
    assert "pytest" in blocks[1]
    ci = (ROOT / ".ci" / "run").read_text()
    assert blocks[1] in ci


def test_the_readme_is_short_and_every_doc_it_links_exists() -> None:
    assert len(README.splitlines()) < 200
    for link in re.findall(r"\]\(((?:docs/)?[\w./-]+\.md)\)", README):
        assert (ROOT / link).exists(), link
