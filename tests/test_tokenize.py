"""The tokenizer the length rules count with."""

from __future__ import annotations

import pytest

from filters.tokenize import bigrams, tokenize


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("A Red Fox!", ["a", "red", "fox"]),
        ("fish & chips, served—hot.", ["fish", "chips", "served", "hot"]),
        ("Tanworth-in-Arden", ["tanworth", "in", "arden"]),
        ("IMG_0042.JPG", ["img", "0042", "jpg"]),
        ("crème brûlée", ["crème", "brûlée"]),
        ("ＩＭＧ１２３", ["img123"]),  # full-width folded by NFKC
        ("富士山の桜", ["富", "士", "山", "の", "桜"]),
        ("カタカナ", ["カ", "タ", "カ", "ナ"]),
        ("東京 tower 2024", ["東", "京", "tower", "2024"]),
        ("한국어 문장", ["한국어", "문장"]),  # Hangul is written with spaces
        ("ภาษาไทย", ["ภาษาไทย"]),  # Thai: one run, no dictionary segmentation
        ("Straße", ["strasse"]),  # casefold
        ("", []),
        ("!!! ...", []),
    ],
)
def test_tokenize(text: str, tokens: list[str]) -> None:
    assert tokenize(text) == tokens


def test_bigrams() -> None:
    assert bigrams(["a", "b", "c"]) == ["a b", "b c"]
    assert bigrams(["a"]) == []
