"""HTML decoding, <img> reading and URL resolution, on small pages written for each case."""

from __future__ import annotations

import pytest

from curation import reasons
from curation.html import decode_html, extract_images, parse_srcset, resolve_image_url

LIMITS = {"max_images": 100, "max_alt_chars": 1000, "max_url_chars": 2048}
PAGE = "https://www.example.org/dir/page.html"


def pairs(html: str, page: str = PAGE, **limits):
    result = extract_images(html, page, **{**LIMITS, **limits})
    return [(p.image_url, p.alt_text) for p in result.pairs], result


@pytest.mark.parametrize(
    ("srcset", "expected"),
    [
        ("a-320.jpg 320w, a-1280.jpg 1280w, a-640.jpg 640w", "a-1280.jpg"),
        ("a.jpg, a@2x.jpg 2x, a@1.5x.jpg 1.5x", "a@2x.jpg"),
        ("only.jpg", "only.jpg"),
        ("x.jpg?a=1,2 100w, y.jpg 200w", "y.jpg"),  # a comma inside a URL
        ("first.jpg 1x, second.jpg 1x", "first.jpg"),  # ties keep the first
        ("bad.jpg 12q, good.jpg 2x", "good.jpg"),
        ("", None),
        (" , ,", None),
    ],
)
def test_parse_srcset(srcset: str, expected: str | None) -> None:
    assert parse_srcset(srcset) == expected


@pytest.mark.parametrize(
    ("base", "ref", "url", "reason"),
    [
        (PAGE, "img/a.jpg", "https://www.example.org/dir/img/a.jpg", None),
        (PAGE, "../b.png", "https://www.example.org/b.png", None),
        (PAGE, "/c.jpg", "https://www.example.org/c.jpg", None),
        (PAGE, "//cdn.example.net/d.jpg", "https://cdn.example.net/d.jpg", None),
        (PAGE, "../../../../x.gif", "https://www.example.org/x.gif", None),
        (PAGE, "  \n e.jpg\t ", "https://www.example.org/dir/e.jpg", None),
        (PAGE, "f.jpg#frag", "https://www.example.org/dir/f.jpg", None),
        (PAGE, "HTTP://WWW.EXAMPLE.ORG/G.jpg", "http://www.example.org/G.jpg", None),
        (PAGE, "h.jpg?x=1&y=2", "https://www.example.org/dir/h.jpg?x=1&y=2", None),
        (PAGE, "", None, reasons.NO_IMAGE_URL),
        (PAGE, "   ", None, reasons.NO_IMAGE_URL),
        (PAGE, "data:image/png;base64,iVBORw0KGgo=", None, reasons.DATA_URI),
        (PAGE, "DATA:image/gif;base64,R0lGOD", None, reasons.DATA_URI),
        (PAGE, "javascript:void(0)", None, reasons.UNSUPPORTED_SCHEME),
        (PAGE, "ftp://ftp.example.org/a.jpg", None, reasons.UNSUPPORTED_SCHEME),
        (PAGE, "file:///etc/passwd", None, reasons.UNSUPPORTED_SCHEME),
        (PAGE, "http://[::1/a.jpg", None, reasons.BAD_URL),
        (PAGE, "http://host:99999/a.jpg", None, reasons.BAD_URL),
        (PAGE, "http:///a.jpg", None, reasons.BAD_URL),
        ("", "relative/only.jpg", None, reasons.BAD_URL),  # a table row with no base
        (PAGE, "/" + "a" * 3000, None, reasons.URL_OVERSIZED),
    ],
)
def test_resolve_image_url(base: str, ref: str, url: str | None, reason: str | None) -> None:
    assert resolve_image_url(base, ref, 2048) == (url, reason)


def test_base_href_and_lang() -> None:
    html = (
        '<html lang="DE-ch"><head><base href="https://static.example.com/assets/"></head>'
        '<body><img src="a.jpg" alt="ein Bild mit Bergen"><img src="/b.jpg" alt="x y z">'
    )
    found, result = pairs(html)
    assert found == [
        ("https://static.example.com/assets/a.jpg", "ein Bild mit Bergen"),
        ("https://static.example.com/b.jpg", "x y z"),
    ]
    assert result.lang == "de-ch"


def test_alt_text_is_decoded_and_collapsed() -> None:
    html = '<img src="a.jpg" alt="  fish &amp; chips\n\t with&nbsp;cr&egrave;me  &#233; ">'
    found, _ = pairs(html)
    assert found == [("https://www.example.org/dir/a.jpg", "fish & chips with crème é")]


def test_lazy_loading_beats_placeholder_src() -> None:
    html = (
        '<img src="data:image/gif;base64,R0lGOD" data-src="real.jpg" alt="a lazy image here">'
        '<img src="placeholder.gif" data-srcset="s.jpg 100w, l.jpg 900w" alt="lazy srcset one">'
    )
    found, _ = pairs(html)
    assert found == [
        ("https://www.example.org/dir/real.jpg", "a lazy image here"),
        ("https://www.example.org/dir/l.jpg", "lazy srcset one"),
    ]


def test_every_tag_gets_a_reason_or_becomes_a_pair() -> None:
    html = """
    <img src="a.jpg">
    <img src="b.jpg" alt>
    <img src="c.jpg" alt="   ">
    <img alt="no source at all">
    <img src="data:image/png;base64,AAAA" alt="inline image">
    <img src="javascript:alert(1)" alt="script source">
    <img src="d.jpg" alt="twice on the page">
    <IMG SRC="d.jpg" ALT="twice on the page">
    <img src="d.jpg" alt="same image other text">
    <!-- <img src="commented.jpg" alt="in a comment"> -->
    <script>document.write('<img src="s.jpg" alt="in a script">')</script>
    """
    found, result = pairs(html)
    assert found == [
        ("https://www.example.org/dir/d.jpg", "twice on the page"),
        ("https://www.example.org/dir/d.jpg", "same image other text"),
    ]
    assert result.img_tags == 9
    assert result.skipped == {
        reasons.NO_ALT_TEXT: 1,
        reasons.EMPTY_ALT_TEXT: 2,
        reasons.NO_IMAGE_URL: 1,
        reasons.DATA_URI: 1,
        reasons.UNSUPPORTED_SCHEME: 1,
        reasons.DUPLICATE_ON_PAGE: 1,
    }


def test_caps_are_counted_not_silent() -> None:
    html = "".join(f'<img src="{i}.jpg" alt="picture number {i} here">' for i in range(10))
    html += f'<img src="long.jpg" alt="{"word " * 500}">'
    found, result = pairs(html, max_images=5, max_alt_chars=200)
    assert len(found) == 5
    assert result.img_tags == 11
    assert result.skipped == {reasons.PAGE_IMAGE_CAP: 6}
    found, result = pairs(html, max_alt_chars=200)
    assert len(found) == 10
    assert result.skipped == {reasons.ALT_TEXT_OVERSIZED: 1}


def test_unusable_base_is_ignored() -> None:
    found, _ = pairs('<base href="http://[bad"><img src="a.jpg" alt="still resolves fine">')
    assert found == [("https://www.example.org/dir/a.jpg", "still resolves fine")]


@pytest.mark.parametrize(
    ("body", "declared", "text", "codec"),
    [
        ("café crème".encode("latin-1"), "iso-8859-1", "café crème", "cp1252"),
        ("„Große“".encode("cp1252"), None, None, "cp1252"),  # via <meta>, see below
        ("Стратегия".encode("cp1251"), "windows-1251", "Стратегия", "cp1251"),
        ("用心专注".encode("gbk"), "gb2312", "用心专注", "gbk"),
        ("\ufeffhello".encode(), "iso-8859-1", "hello", "utf-8"),  # BOM wins
        (b"plain ascii", "no-such-charset", "plain ascii", None),
    ],
)
def test_decode_html(body: bytes, declared: str | None, text: str | None, codec) -> None:
    if text is None:
        body = b'<meta charset="windows-1252">' + body
        text = "„Große“"
    decoded, used = decode_html(body, declared)
    assert text in decoded
    if codec:
        assert used == codec


def test_meta_http_equiv_charset() -> None:
    body = (
        b'<meta http-equiv="Content-Type" content="text/html; charset=windows-1251">'
        + "Москва".encode("cp1251")
    )
    assert "Москва" in decode_html(body, None)[0]


def test_undeclared_charset_is_detected() -> None:
    body = ("<p>" + "Красная площадь в Москве зимним вечером. " * 20 + "</p>").encode("cp1251")
    decoded, _ = decode_html(body, None)
    assert "Красная площадь" in decoded
