"""Pure pieces of ALIGN's dataset-wide text rules (§3): keys, tokens, the vocabulary cut-off.

The Beam side (pipelines/dataset_rules.py) does the counting and joining; everything that
decides is here, so it is unit-tested without a runner.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from curation import reasons
from curation.config import CurationConfig
from curation.record import Rejection
from filters.tokenize import bigrams, tokenize

_STAGE = reasons.STAGE_TEXT


def text_key(alt_text: str) -> str:
    """The form under which alt-texts count as 'the same': its unigrams joined by spaces."""
    # "Alt_Img", "alt img" and "ALT-IMG!" are one text; a text without any word keeps its
    # case-folded self so that it still counts as itself.
    tokens = tokenize(alt_text)
    return " ".join(tokens) if tokens else alt_text.casefold()


def text_ngrams(alt_text: str, ngrams: int) -> list[str]:
    """Every unigram (and bigram when ngrams == 2) occurrence of a text, in order."""
    tokens = tokenize(alt_text)
    return tokens + bigrams(tokens) if ngrams == 2 else tokens


def check_shared(n_images: int, cfg: CurationConfig) -> Rejection | None:
    """ALIGN §3: an alt-text attached to more than max_images_per_text images is generic."""
    if cfg.max_images_per_text and n_images > cfg.max_images_per_text:
        return Rejection(_STAGE, reasons.TEXT_ON_MANY_IMAGES, f"{n_images} images")
    return None


def check_rare(rare_tokens: Iterable[str]) -> Rejection | None:
    """ALIGN §3: a text holding any token outside the vocabulary is dropped."""
    rare = sorted(rare_tokens)
    if rare:
        return Rejection(_STAGE, reasons.TEXT_RARE_TOKEN, rare[0])
    return None


def token_key(token: str) -> int:
    """A 64-bit key that orders tokens tied at the vocabulary boundary, the same everywhere."""
    return int.from_bytes(hashlib.blake2b(token.encode("utf-8", "replace"), digest_size=8).digest())


@dataclass(frozen=True)
class VocabBoundary:
    """Where the top-N vocabulary ends: tokens above `cutoff` are in, below are out, and of
    the `tied` tokens whose count equals `cutoff`, the `keep` with the smallest keys are in."""

    cutoff: int
    tied: int
    keep: int
    all_in: bool = False  # every token of the run is in the vocabulary: nothing is rare

    def decided(self, count: int) -> bool | None:
        """In (True), out (False), or None when the tie-break must decide."""
        if count > self.cutoff:
            return True
        if count < self.cutoff:
            return False
        if self.keep >= self.tied:
            return True
        if self.keep == 0:
            return False
        return None


def vocab_boundary(histogram: Mapping[int, int], size: int, min_count: int) -> VocabBoundary:
    """The boundary of the `size` most frequent tokens, from {count: number of tokens}."""
    kept = 0
    last = min_count
    for count in sorted((c for c in histogram if c >= min_count), reverse=True):
        n = histogram[count]
        if kept + n > size:
            return VocabBoundary(cutoff=count, tied=n, keep=size - kept)
        kept += n
        last = count
    # Everything at or above min_count fits; nothing is rare unless some count is below it.
    all_in = all(c >= min_count for c in histogram)
    n = histogram.get(last, 0)
    return VocabBoundary(cutoff=last, tied=n, keep=n, all_in=all_in)


KEY_BITS = 64
LEVEL_BITS = 16


def key_bucket(key: int, level: int) -> int:
    """The `level`-th 16-bit digit of a token key, most significant first."""
    return (key >> (KEY_BITS - LEVEL_BITS * (level + 1))) & ((1 << LEVEL_BITS) - 1)


def select_bucket(histogram: Mapping[int, int], keep: int) -> tuple[int, int]:
    """Radix select: the bucket where the `keep` smallest keys end, and how many of that
    bucket are kept. Buckets below it are wholly kept, buckets above wholly dropped."""
    seen = 0
    for bucket in sorted(histogram):
        n = histogram[bucket]
        if seen + n >= keep:
            return bucket, keep - seen
        seen += n
    return (1 << LEVEL_BITS), 0  # keep exceeds everything: every bucket is below
