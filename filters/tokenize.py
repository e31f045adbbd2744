"""The tokenizer the text rules count with: Unicode-aware, lowercased, punctuation split off.

Words are runs of letters, digits and marks (`\\w` less `_`), so punctuation, `_` and
symbols separate tokens and are not tokens themselves. Scripts written without spaces get
one token per character for Han, Hiragana and Katakana, as BERT's BasicTokenizer does for CJK
(`_tokenize_chinese_chars`): "富士山の桜" is 5 unigrams, and bigrams over them are character
bigrams. Thai, Lao, Khmer and Myanmar have no such simple split; a run of them stays one
token, which is why a Thai alt-text rarely trips the 3-unigram minimum or the 20 maximum.
"""

from __future__ import annotations

import itertools
import re
import unicodedata

# Han (CJK Unified Ideographs and extensions, compatibility ideographs), Hiragana, Katakana,
# half-width Katakana. Hangul is written with spaces and is left to \w.
_CJK = (
    "\u3040-\u309f\u30a0-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff"
    "\uf900-\ufaff\uff66-\uff9f\U00020000-\U0002fa1f"
)
_TOKEN_RE = re.compile(rf"[{_CJK}]|[^\W_{_CJK}]+")


def tokenize(text: str) -> list[str]:
    """Lowercased unigrams of a text."""
    # NFKC folds full-width Latin and digits ("ＩＭＧ１２３") into their plain forms.
    return _TOKEN_RE.findall(unicodedata.normalize("NFKC", text).casefold())


def bigrams(tokens: list[str]) -> list[str]:
    """Adjacent token pairs, joined by a space."""
    return [f"{a} {b}" for a, b in itertools.pairwise(tokens)]
