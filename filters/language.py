"""Language of an alt-text: a detector behind one function, and the optional filter.

langdetect is seeded, so a text gets the same answer on every run and worker. The page's
declared language is a prior: alt-texts are short, and the page says what it is written in.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pycld2
from langdetect.detector import Detector
from langdetect.detector_factory import PROFILES_DIRECTORY, DetectorFactory
from langdetect.lang_detect_exception import ErrorCode, LangDetectException

from curation import reasons
from curation.config import CurationConfig
from curation.record import Rejection

_STAGE = reasons.STAGE_TEXT
# Weight of the page's declared language in langdetect's prior; the rest is spread evenly.
HINT_PRIOR = 0.5


_largest = np.maximum.reduce  # ndarray.max() without its Python wrapper: ~200k calls a run


class _ArrayDetector(Detector):
    """langdetect's Detector with its inner loop on numpy, the same arithmetic bit for bit.

    langdetect multiplies 55 probabilities in a Python loop for every sampled n-gram, ~500
    times a text: 2.8 ms an alt-text, the dearest text step. Here each n-gram's row is one
    numpy multiply. Every float operation is the one langdetect does, in the same order
    (elementwise products and quotients are exact IEEE operations; the sum that normalizes
    is Python's own `sum` over the same list), and the random generator is drawn exactly as
    langdetect draws it, so the probabilities, not just the answers, are identical:
    tests/test_dataset_rules.py compares them with langdetect's on real alt-texts.
    """

    table: np.ndarray  # one row per n-gram of the profiles, one column per language
    rows: dict[str, int]  # n-gram -> its row (the factory's map, values replaced)

    def _detect_block(self) -> None:
        self.cleaning_text()
        ngrams = self._extract_ngrams()
        if not ngrams:
            raise LangDetectException(ErrorCode.CantDetectError, "No features in text.")
        features = self.table[[self.rows[w] for w in ngrams]]
        positions = range(len(ngrams))  # choice() draws from a range as from the list
        n_lang = len(self.langlist)
        start = np.array(self.prior_map if self.prior_map is not None else [1.0 / n_lang] * n_lang)
        langprob = np.zeros(n_lang)
        rng = self.random
        rng.seed(self.seed)
        for _ in range(self.n_trial):
            prob = start.copy()
            alpha = self.alpha + rng.gauss(0.0, 1.0) * self.ALPHA_WIDTH
            weighted = alpha / self.BASE_FREQ + features  # langdetect's weight + p, per row
            i = 0
            while True:
                prob *= weighted[rng.choice(positions)]
                if i % 5 == 0:
                    prob /= sum(prob.tolist())
                    if _largest(prob) > self.CONV_THRESHOLD or i >= self.ITERATION_LIMIT:
                        break
                i += 1
            langprob += prob / self.n_trial
        self.langprob = langprob.tolist()


@lru_cache(maxsize=1)
def _langdetect_factory() -> tuple[DetectorFactory, tuple[str, ...]]:
    # Loading the profiles takes ~0.5 s: once per process, on first use.
    factory = DetectorFactory()
    factory.load_profile(PROFILES_DIRECTORY)
    # Seeded: langdetect samples n-grams at random, so without a seed results vary by run.
    factory.set_seed(0)
    # The profiles as one float64 matrix (87,598 x 55, 38 MB); the map keeps only row ids,
    # which is all that n-gram extraction (a membership test) needs.
    words = factory.word_lang_prob_map
    _ArrayDetector.table = np.array(list(words.values()), dtype=np.float64)
    _ArrayDetector.rows = dict(zip(words, range(len(words)), strict=True))
    factory.word_lang_prob_map = _ArrayDetector.rows
    return factory, tuple(factory.get_lang_list())


def _primary(tag: str | None) -> str | None:
    return tag.split("-", 1)[0] if tag else None


@lru_cache(maxsize=1 << 16)  # an alt-text may recur on up to 10 images (ALIGN's rule)
def detect_langdetect(text: str, hint: str | None) -> str | None:
    """langdetect's answer for a text, with the page language as a prior; None if unsure."""
    factory, languages = _langdetect_factory()
    detector = _ArrayDetector(factory)  # alpha: langdetect's default, 0.5
    hinted = _primary(hint)
    if hinted in languages or (hinted == "zh"):
        targets = [x for x in languages if _primary(x) == hinted]
        rest = (1.0 - HINT_PRIOR) / len(languages)
        prior = {x: rest for x in languages}
        for x in targets:
            prior[x] = rest + HINT_PRIOR / len(targets)
        detector.set_prior_map(prior)
    detector.append(text)
    try:
        lang = detector.detect()
    except LangDetectException:
        return None
    return None if lang == "unknown" else lang


def detect_cld2(text: str, hint: str | None) -> str | None:
    """CLD2's best guess (pycld2, model compiled in); None when it has none."""
    try:
        # CLD2 calls most alt-texts unreliable (they are short); its best guess is still
        # what langdetect would give, so the flag is not used.
        _, _, details = pycld2.detect(text, **_cld2_hint(hint))
    except pycld2.error:
        return None
    code = details[0][1] if details else "un"
    if code in ("un", "xxx"):
        return None
    return code.lower()


def _cld2_hint(hint: str | None) -> dict[str, str]:
    code = _primary(hint)
    # pycld2 refuses hints it does not know, and an empty one.
    return {"hintLanguage": code} if code and code in _cld2_codes() else {}


@lru_cache(maxsize=1)
def _cld2_codes() -> frozenset[str]:
    return frozenset(code for _, code in pycld2.LANGUAGES)


DETECTORS = {"langdetect": detect_langdetect, "cld2": detect_cld2}


def detect_language(text: str, hint: str | None, detector: str = "langdetect") -> str | None:
    """The language of an alt-text as a lowercase tag, or None when undetermined."""
    return DETECTORS[detector](text, hint)


def check_language(lang: str | None, cfg: CurationConfig) -> Rejection | None:
    """Reject a text outside the configured languages (none configured: keep all)."""
    if not cfg.languages:
        return None
    if lang is not None and any(lang == x or lang.startswith(x + "-") for x in cfg.languages):
        return None
    return Rejection(_STAGE, reasons.LANGUAGE_NOT_SELECTED, lang or "unknown")
