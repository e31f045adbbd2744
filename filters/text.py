"""Per-record text rules (ALIGN, Jia et al. 2021, §3): pure functions with named reasons.

Each rule takes the alt-text and the config and returns None (pass) or a Rejection. `check_text`
applies the configured rules in order; the first failure names the reason.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from curation import reasons
from curation.config import CurationConfig
from curation.record import Candidate, Rejection
from filters.tokenize import tokenize

_STAGE = reasons.STAGE_TEXT

IMAGE_EXTENSIONS = (
    "jpg|jpeg|jpe|jfif|png|gif|webp|bmp|tif|tiff|svg|ico|heic|heif|avif|jp2|psd|raw|cr2|nef"
)
# "jpg", ".png", "IMG_0042.JPG", "photo.png", "my holiday pic 2.jpeg": a bare extension, or a
# text ending in a dot and an image extension ("a bale of straw" ends in "raw" but no dot).
_FILENAME_RE = re.compile(rf"^(?:[^/\\?#]{{0,200}}\.|\.)?(?:{IMAGE_EXTENSIONS})$", re.IGNORECASE)
# Camera and screenshot names without extension: "IMG_0042", "DSC01234", "PXL_20210101_1234".
_CAMERA_RE = re.compile(
    r"^(?:img|dsc[nf]?|dcim|pxl|mvimg|sam|gopr|p|pic|image|photo|screenshot|scan)"
    r"[\s_-]?\d[\d\s_-]*$",
    re.IGNORECASE,
)
# "224x224", "1920 x 1080", "800×600px", "300 * 250", "1024x768 pixels".
_DIMENSIONS_RE = re.compile(
    r"^\s*\d{1,5}\s*(?:x|×|\*|by)\s*\d{1,5}\s*(?:px|pixels?)?\s*$", re.IGNORECASE
)
_URL_RE = re.compile(r"^(?:(?:https?|ftp)://|www\.)\S+$", re.IGNORECASE)
_PLACEHOLDER_NORMALIZE_RE = re.compile(r"[\s_\-.:;,!?()\[\]\"']+")


def _normalize_placeholder(text: str) -> str:
    return _PLACEHOLDER_NORMALIZE_RE.sub(" ", text.casefold()).strip()


def rule_url(text: str, cfg: CurationConfig) -> Rejection | None:
    """A bare URL is an address, not a description."""
    if _URL_RE.match(text.strip()):
        return Rejection(_STAGE, reasons.TEXT_URL)
    return None


def rule_filename(text: str, cfg: CurationConfig) -> Rejection | None:
    """A file name or bare extension ("IMG_0042.JPG", "jpg") says nothing about the image."""
    t = text.strip()
    if _FILENAME_RE.match(t) or _CAMERA_RE.match(t):
        return Rejection(_STAGE, reasons.TEXT_FILENAME)
    return None


def rule_dimensions(text: str, cfg: CurationConfig) -> Rejection | None:
    """A dimension string ("224x224"), ALIGN §3's own example of a frequent useless text."""
    if _DIMENSIONS_RE.match(text):
        return Rejection(_STAGE, reasons.TEXT_DIMENSIONS)
    return None


def rule_placeholder(text: str, cfg: CurationConfig) -> Rejection | None:
    """A whole alt-text from the configured placeholder list ("alt img", "untitled")."""
    normalized = _normalize_placeholder(text)
    if normalized in _placeholder_set(cfg.placeholder_alt_texts):
        return Rejection(_STAGE, reasons.TEXT_PLACEHOLDER, normalized)
    return None


_PLACEHOLDER_CACHE: dict[tuple[str, ...], frozenset[str]] = {}


def _placeholder_set(items: tuple[str, ...]) -> frozenset[str]:
    cached = _PLACEHOLDER_CACHE.get(items)
    if cached is None:
        cached = frozenset(_normalize_placeholder(p) for p in items)
        _PLACEHOLDER_CACHE[items] = cached
    return cached


def rule_too_short(text: str, cfg: CurationConfig) -> Rejection | None:
    """ALIGN §3: fewer than 3 unigrams is too generic to learn from."""
    n = len(tokenize(text))
    if n < cfg.min_unigrams:
        return Rejection(_STAGE, reasons.TEXT_TOO_SHORT, f"{n} unigrams")
    return None


def rule_too_long(text: str, cfg: CurationConfig) -> Rejection | None:
    """ALIGN §3: more than 20 unigrams is rarely an image description."""
    n = len(tokenize(text))
    if n > cfg.max_unigrams:
        return Rejection(_STAGE, reasons.TEXT_TOO_LONG, f"{n} unigrams")
    return None


TextRule = Callable[[str, CurationConfig], Rejection | None]

TEXT_RULES: dict[str, TextRule] = {
    reasons.TEXT_URL: rule_url,
    reasons.TEXT_FILENAME: rule_filename,
    reasons.TEXT_DIMENSIONS: rule_dimensions,
    reasons.TEXT_PLACEHOLDER: rule_placeholder,
    reasons.TEXT_TOO_SHORT: rule_too_short,
    reasons.TEXT_TOO_LONG: rule_too_long,
}


def check_text(text: str, cfg: CurationConfig) -> Rejection | None:
    """Apply the configured text rules in order; the first failure, or None."""
    for name in cfg.text_rules:
        rejection = TEXT_RULES[name](text, cfg)
        if rejection is not None:
            return rejection
    return None


def check_candidate(candidate: Candidate, cfg: CurationConfig) -> Rejection | None:
    """The text rules applied to a candidate's alt-text."""
    return check_text(candidate.alt_text, cfg)
