"""Language of an alt-text: a detector behind one function, and the optional filter.

langdetect is seeded, so a text gets the same answer on every run and worker. The page's
declared language is a prior: alt-texts are short, and the page says what it is written in.
"""

from __future__ import annotations

from functools import lru_cache

import pycld2
from langdetect.detector_factory import PROFILES_DIRECTORY, DetectorFactory
from langdetect.lang_detect_exception import LangDetectException

from curation import reasons
from curation.config import CurationConfig
from curation.record import Rejection

_STAGE = reasons.STAGE_TEXT
# Weight of the page's declared language in langdetect's prior; the rest is spread evenly.
HINT_PRIOR = 0.5


@lru_cache(maxsize=1)
def _langdetect_factory() -> tuple[DetectorFactory, tuple[str, ...]]:
    # Loading the profiles takes ~0.5 s: once per process, on first use.
    factory = DetectorFactory()
    factory.load_profile(PROFILES_DIRECTORY)
    # Seeded: langdetect samples n-grams at random, so without a seed results vary by run.
    factory.set_seed(0)
    return factory, tuple(factory.get_lang_list())


def _primary(tag: str | None) -> str | None:
    return tag.split("-", 1)[0] if tag else None


def detect_langdetect(text: str, hint: str | None) -> str | None:
    """langdetect's answer for a text, with the page language as a prior; None if unsure."""
    factory, languages = _langdetect_factory()
    detector = factory.create()
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
