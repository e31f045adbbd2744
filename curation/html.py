"""From HTML bytes to (image URL, alt-text) pairs: charset decoding, <img> reading, URL resolution.

Lexbor (through selectolax) parses; it was measured several times faster than
BeautifulSoup + lxml on the same pages (BENCHMARKS.md) and, being an HTML5 parser, it
decodes entities and survives broken markup the way browsers do.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit, urlunsplit

from resiliparse.parse.encoding import detect_encoding, map_encoding_to_html5
from selectolax.lexbor import LexborHTMLParser

from curation import reasons

HTML_MIME_TYPES = frozenset({"text/html", "application/xhtml+xml"})

# Lazy-loading scripts keep the real URL in these and put a placeholder (often a data: URI)
# in src; order is preference.
LAZY_SRC_ATTRS = ("data-src", "data-lazy-src", "data-original", "data-lazy", "data-url")
LAZY_SRCSET_ATTRS = ("data-srcset", "data-lazy-srcset")

_META_CHARSET_RE = re.compile(
    rb"""<meta[^>]+?charset\s*=\s*["']?\s*([a-zA-Z0-9_.:-]+)""", re.IGNORECASE
)
_BOMS = (
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)
# The HTML spec's prescan looks at the first 1024 bytes; real pages put long <script>s first.
_PRESCAN_BYTES = 4096
URL_STRIP = " \t\n\r\f"


def resolve_base(page_url: str, href: str | None) -> str:
    """The URL a page's relative links resolve against: its `<base href>` joined to the
    page's URL; an empty or unusable one is ignored, as browsers do."""
    href = (href or "").strip(URL_STRIP)
    if not href:
        return page_url
    try:
        return urljoin(page_url, href)
    except ValueError:
        return page_url


def judge_alt(raw_alt: str | None, max_alt_chars: int) -> tuple[str, str | None]:
    """(alt-text with its whitespace collapsed, None), or ("", reason): no alt attribute
    (None), one over max_alt_chars, or one empty once collapsed. The order and the reasons
    every reader of `<img>` tags uses (HTML pages here, WAT links in curation/wat.py)."""
    if raw_alt is None:
        return "", reasons.NO_ALT_TEXT
    if len(raw_alt) > max_alt_chars:
        return "", reasons.ALT_TEXT_OVERSIZED
    alt = " ".join(raw_alt.split())
    return (alt, None) if alt else ("", reasons.EMPTY_ALT_TEXT)


def _codec(label: str | None) -> str | None:
    """A Python codec name for a WHATWG charset label, or None if unknown."""
    if not label:
        return None
    # The HTML spec maps latin-1, ascii and friends to windows-1252, and UTF-16 declared in a
    # <meta> to UTF-8; resiliparse applies that table.
    name = map_encoding_to_html5(label.strip().lower()) or None
    if name is None:
        return None
    try:
        return codecs.lookup(name).name
    except LookupError:
        return None


def decode_html(body: bytes, declared: str | None) -> tuple[str, str]:
    """Decode an HTML body: BOM, then the HTTP charset, then <meta>, then detection."""
    for bom, name in _BOMS:
        if body.startswith(bom):
            return body[len(bom) :].decode(name, "replace"), name
    codec = _codec(declared)
    if codec is None:
        m = _META_CHARSET_RE.search(body, 0, _PRESCAN_BYTES)
        codec = _codec(m.group(1).decode("ascii")) if m else None
    if codec is None:
        codec = _codec(detect_encoding(body)) or "utf-8"
    return body.decode(codec, "replace"), codec


# Elements that never hold children, or whose end tag the parser implies: they add no depth.
_FLAT_TAGS = frozenset(
    [
        "area",
        "base",
        "br",
        "col",
        "embed",
        "hr",
        "img",
        "input",
        "link",
        "meta",
        "param",
        "source",
        "track",
        "wbr",
        "p",
        "li",
        "dt",
        "dd",
        "tr",
        "td",
        "th",
        "option",
        "optgroup",
        "thead",
        "tbody",
        "tfoot",
        "rb",
        "rt",
        "rp",
        "colgroup",
        "caption",
    ]
)
_TAG_RE = re.compile(r"<(/?)([a-zA-Z][a-zA-Z0-9-]*)[^>]*?(/?)>")


def nesting_depth(html: str, limit: int) -> int:
    """An estimate of the deepest element nesting, from tags alone; stops at `limit`.

    Lexbor's tree construction takes time that grows with the square of the depth
    (measured: 10,000 nested <div>s parse in 0.2 s, 100,000 in 25 s), so a hostile page is
    refused before parsing. Only pages with many tags are scanned at all.
    """
    if html.count("<") < limit:
        return 0
    depth = deepest = 0
    for m in _TAG_RE.finditer(html):
        name = m.group(2).lower()
        if name in _FLAT_TAGS or m.group(3):
            continue
        depth = max(0, depth - 1) if m.group(1) else depth + 1
        if depth > deepest:
            deepest = depth
            if deepest >= limit:
                break
    return deepest


def parse_srcset(srcset: str) -> str | None:
    """The URL of the largest candidate in a srcset (by width, else by density), or None."""
    best: tuple[float, float, int] | None = None
    best_url = None
    for index, part in enumerate(_split_srcset(srcset)):
        url, _, descriptor = part.partition(" ")
        descriptor = descriptor.strip().lower()
        width, density = 0.0, 1.0
        try:
            if descriptor.endswith("w"):
                width = float(descriptor[:-1])
            elif descriptor.endswith("x"):
                density = float(descriptor[:-1])
        except ValueError:
            continue
        # Ties keep the first listed candidate (negative index sorts earlier ones higher).
        key = (width, density, -index)
        if best is None or key > best:
            best, best_url = key, url
    return best_url


def _split_srcset(srcset: str) -> Iterator[str]:
    # A URL may itself hold commas; per the HTML spec a candidate's URL runs to the next
    # whitespace, and only commas after the descriptor (or trailing the URL) separate.
    pos, n = 0, len(srcset)
    while pos < n:
        while pos < n and (srcset[pos] in URL_STRIP or srcset[pos] == ","):
            pos += 1
        start = pos
        while pos < n and srcset[pos] not in URL_STRIP:
            pos += 1
        url = srcset[start:pos]
        if not url:
            break
        if url.endswith(","):
            yield url.rstrip(",")
            continue
        comma = srcset.find(",", pos)
        end = n if comma < 0 else comma
        descriptor = " ".join(srcset[pos:end].split())
        pos = end + 1
        yield f"{url} {descriptor}" if descriptor else url


def resolve_image_url(base_url: str, ref: str, max_chars: int) -> tuple[str | None, str | None]:
    """Resolve an image reference against the base URL: (absolute http(s) URL, None) or
    (None, reason)."""
    ref = ref.strip(URL_STRIP)
    if "\t" in ref or "\n" in ref or "\r" in ref:
        # The URL spec removes tab and newline characters anywhere in the input.
        ref = ref.replace("\t", "").replace("\n", "").replace("\r", "")
    if not ref:
        return None, reasons.NO_IMAGE_URL
    if ref[:5].lower() == "data:":
        return None, reasons.DATA_URI
    try:
        parts = urlsplit(urljoin(base_url, ref))
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            return None, (reasons.UNSUPPORTED_SCHEME if scheme else reasons.BAD_URL)
        if not parts.hostname or any(c in parts.netloc for c in ' <>"\\^`{|}'):
            return None, reasons.BAD_URL
        _ = parts.port  # raises ValueError for a non-numeric or out-of-range port
        # The fragment never reaches the server: two URLs that differ only there are one image.
        url = urlunsplit((scheme, parts.netloc.lower(), parts.path, parts.query, ""))
    except ValueError:
        return None, reasons.BAD_URL
    if len(url) > max_chars:
        return None, reasons.URL_OVERSIZED
    return url, None


def _image_ref(attrs: dict[str, str | None]) -> str:
    for name in ("srcset", *LAZY_SRCSET_ATTRS):
        value = attrs.get(name)
        if value:
            url = parse_srcset(value)
            if url:
                return url
    for name in LAZY_SRC_ATTRS:
        value = attrs.get(name)
        if value and value.strip(URL_STRIP):
            return value
    return attrs.get("src") or ""


@dataclass(frozen=True, slots=True)
class ImagePair:
    """An image URL with its alt-text, as found on a page."""

    image_url: str
    alt_text: str


@dataclass(frozen=True, slots=True)
class PageImages:
    """What a page yielded: its language, its pairs, and a count per non-candidate reason."""

    lang: str | None
    pairs: tuple[ImagePair, ...]
    img_tags: int
    skipped: dict[str, int]


def extract_images(
    html: str,
    page_url: str,
    *,
    max_images: int,
    max_alt_chars: int,
    max_url_chars: int,
) -> PageImages:
    """Find every <img> with an alt-text and a resolvable http(s) URL on one page."""
    tree = LexborHTMLParser(html)
    lang = None
    root = tree.css_first("html")
    if root is not None:
        attrs = root.attributes
        lang = attrs.get("lang") or attrs.get("xml:lang")
    base = tree.css_first("base[href]")
    base_url = resolve_base(page_url, base.attributes.get("href") if base is not None else None)
    skipped: dict[str, int] = {}
    pairs: list[ImagePair] = []
    seen: set[tuple[str, str]] = set()
    n_tags = 0
    for node in tree.css("img"):
        n_tags += 1
        if n_tags > max_images:
            reason = reasons.PAGE_IMAGE_CAP
        else:
            reason = None
            attrs = node.attributes
            raw_alt = attrs.get("alt", False)  # None: `alt` without a value, i.e. empty
            alt, reason = judge_alt(None if raw_alt is False else raw_alt or "", max_alt_chars)
            if reason is None:
                url, reason = resolve_image_url(base_url, _image_ref(attrs), max_url_chars)
                if url is not None:
                    key = (url, alt)
                    if key in seen:
                        reason = reasons.DUPLICATE_ON_PAGE
                    else:
                        seen.add(key)
                        pairs.append(ImagePair(url, alt))
        if reason is not None:
            skipped[reason] = skipped.get(reason, 0) + 1
    return PageImages(
        lang=normalize_lang(lang), pairs=tuple(pairs), img_tags=n_tags, skipped=skipped
    )


def normalize_lang(value: str | None) -> str | None:
    """A declared language tag, trimmed and lowercased; None when absent or not a tag."""
    if not value:
        return None
    tag = value.split(",", 1)[0].strip().lower().replace("_", "-")
    if not tag or len(tag) > 35 or not re.fullmatch(r"[a-z0-9-]+", tag):
        return None
    return tag
