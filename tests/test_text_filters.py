"""The per-record text rules: table-driven, each case naming the reason it must get."""

from __future__ import annotations

import dataclasses

import pytest

from curation import reasons
from curation.config import CurationConfig
from curation.record import Candidate
from filters.text import TEXT_RULES, check_candidate, check_text

CFG = CurationConfig()

CASES = [
    # --- kept: descriptive texts of 3..20 unigrams, any script
    ("a red fox sitting in the snow at dawn", None),
    ("Ein alter Leuchtturm an der stürmischen Nordseeküste", None),
    ("富士山と桜の花が咲く春の風景", None),
    ("Красная площадь в Москве зимним вечером", None),
    ("the quick brown fox.jpg is great", None),  # an extension inside a sentence is fine
    ("three word text", None),  # exactly the minimum
    (" ".join(["word"] * 20), None),  # exactly the maximum
    ("Nick Drake's grave in Tanworth-in-Arden", None),
    # --- too short / too long (ALIGN §3)
    ("a cat", reasons.TEXT_TOO_SHORT),
    ("Biquipedia", reasons.TEXT_TOO_SHORT),
    ("café crème", reasons.TEXT_TOO_SHORT),
    (" ".join(["word"] * 21), reasons.TEXT_TOO_LONG),
    ("中国新闻", None),  # 4 Han characters are 4 unigrams
    ("中国", reasons.TEXT_TOO_SHORT),
    # --- file names and extensions
    ("jpg", reasons.TEXT_FILENAME),
    (".PNG", reasons.TEXT_FILENAME),
    ("IMG_0042.JPG", reasons.TEXT_FILENAME),
    ("photo.png", reasons.TEXT_FILENAME),
    ("my holiday pic 2.jpeg", reasons.TEXT_FILENAME),
    ("kyle_lo_profile.jpg", reasons.TEXT_FILENAME),
    ("DSC01234", reasons.TEXT_FILENAME),
    ("PXL_20210101_123456", reasons.TEXT_FILENAME),
    # An extension's letters at the end of a word are not a file name (no dot).
    ("a bale of straw", None),
    ("Beautiful Mexico in the spring", None),
    ("two friends face to face on RAW", None),
    ("my holiday photo.RAW", reasons.TEXT_FILENAME),
    # --- dimension strings (ALIGN §3's "1920x1080")
    ("224x224", reasons.TEXT_DIMENSIONS),
    ("1920 x 1080", reasons.TEXT_DIMENSIONS),
    ("800×600px", reasons.TEXT_DIMENSIONS),
    ("300 * 250 pixels", reasons.TEXT_DIMENSIONS),
    # --- bare URLs
    ("https://example.com/a.jpg", reasons.TEXT_URL),
    ("www.example.org/path?x=1", reasons.TEXT_URL),
    ("see https://example.com for more photos", None),  # a URL inside a sentence
    # --- placeholders (whole-text match after normalization)
    ("image", reasons.TEXT_PLACEHOLDER),
    ("alt img", reasons.TEXT_PLACEHOLDER),
    ("alt_img", reasons.TEXT_PLACEHOLDER),
    ("Untitled", reasons.TEXT_PLACEHOLDER),
    ("thumbnail", reasons.TEXT_PLACEHOLDER),
    ("spacer", reasons.TEXT_PLACEHOLDER),
    ("No Image Available", reasons.TEXT_PLACEHOLDER),
    ("image of a dog running on the beach", None),
]


@pytest.mark.parametrize(("text", "expected"), CASES)
def test_text_rule_table(text: str, expected: str | None) -> None:
    rejection = check_text(text, CFG)
    assert (rejection.reason if rejection else None) == expected
    if rejection:
        assert rejection.stage == reasons.STAGE_TEXT


def test_every_reason_has_a_rule_and_every_rule_a_reason() -> None:
    assert set(TEXT_RULES) == set(reasons.TEXT_REASONS)


def test_thresholds_are_configurable() -> None:
    loose = dataclasses.replace(CFG, min_unigrams=1, max_unigrams=3)
    assert check_text("a cat", loose) is None
    assert check_text("one two three four", loose).reason == reasons.TEXT_TOO_LONG


def test_rules_can_be_disabled_and_reordered() -> None:
    only_length = dataclasses.replace(CFG, text_rules=(reasons.TEXT_TOO_SHORT,))
    assert check_text("jpg", only_length).reason == reasons.TEXT_TOO_SHORT
    assert check_text("https://a.example/b/c/d", only_length) is None


def test_placeholder_list_is_configurable() -> None:
    custom = dataclasses.replace(CFG, placeholder_alt_texts=("product photo here",))
    assert check_text("Product-Photo  here", custom).reason == reasons.TEXT_PLACEHOLDER
    assert check_text("untitled", custom).reason == reasons.TEXT_TOO_SHORT


def test_rejection_detail_says_the_count() -> None:
    assert check_text("a cat", CFG).detail == "2 unigrams"


def test_check_candidate_uses_the_alt_text() -> None:
    c = Candidate.create(
        page_url="https://a.example/",
        image_url="https://a.example/x.jpg",
        alt_text="224x224",
        page_lang=None,
        source_kind="warc",
        source_file="f",
        source_offset=0,
        crawl_date=None,
    )
    assert check_candidate(c, CFG).reason == reasons.TEXT_DIMENSIONS
