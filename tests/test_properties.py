"""Property tests: the text rules, tokenizer, URL resolution, decoders and merges hold for
arbitrary input, not only for the cases we thought of."""

from __future__ import annotations

from collections import Counter

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from curation.config import CurationConfig
from curation.html import decode_html, extract_images, parse_srcset, resolve_image_url
from curation.record import Rejection
from curation.stats import Distributions, Funnel
from filters.dataset import text_key, text_ngrams
from filters.text import check_text
from filters.tokenize import tokenize

CFG = CurationConfig()
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(st.text())
def test_text_rules_and_tokenizer_never_crash_and_are_deterministic(text: str) -> None:
    first = check_text(text, CFG)
    assert first is None or isinstance(first, Rejection)
    assert check_text(text, CFG) == first
    tokens = tokenize(text)
    assert tokens == tokenize(text)
    assert all(t and t == t.casefold() for t in tokens)
    assert text_key(text) == text_key(text)
    assert len(text_ngrams(text, 2)) == max(0, 2 * len(tokens) - 1) if tokens else True


@SETTINGS
@given(st.text(), st.text())
def test_url_resolution_yields_only_http_urls(base: str, ref: str) -> None:
    for page in (base, "https://www.example.org/dir/page.html"):
        url, reason = resolve_image_url(page, ref, 2048)
        assert (url is None) != (reason is None)
        if url is not None:
            assert url.startswith(("http://", "https://"))
            assert "#" not in url and len(url) <= 2048


@SETTINGS
@given(st.text(alphabet=st.characters(), max_size=300))
def test_srcset_parser_never_crashes(srcset: str) -> None:
    result = parse_srcset(srcset)
    assert result is None or (result and " " not in result)


@SETTINGS
@given(st.binary(max_size=3000), st.sampled_from([None, "utf-8", "latin-1", "bogus", "gb2312"]))
def test_html_decoding_never_crashes(body: bytes, declared: str | None) -> None:
    text, codec = decode_html(body, declared)
    assert isinstance(text, str) and codec


@SETTINGS
@given(st.text(max_size=2000))
def test_img_extraction_never_crashes_and_accounts_for_every_tag(html: str) -> None:
    page = extract_images(
        "<img " + html, "https://a.example/", max_images=50, max_alt_chars=100, max_url_chars=300
    )
    assert page.img_tags == len(page.pairs) + sum(page.skipped.values())


_tallies = st.lists(
    st.tuples(
        st.sampled_from(["read", "extract", "rejected:text"]),
        st.sampled_from("abc"),
        st.integers(0, 50),
    ),
    max_size=20,
)


def _funnel(items) -> Funnel:
    f = Funnel()
    for stage, name, n in items:
        f.add(stage, name, n)
    return f


@SETTINGS
@given(_tallies, _tallies, _tallies)
def test_funnel_merge_is_associative_and_commutative(a, b, c) -> None:
    fa, fb, fc = _funnel(a), _funnel(b), _funnel(c)
    assert fa.merge(fb).merge(fc) == fa.merge(fb.merge(fc))
    assert fa.merge(fb) == fb.merge(fa)
    assert fa.merge(fb).to_json() == fb.merge(fa).to_json()


_observations = st.lists(
    st.tuples(st.sampled_from(["width", "aspect_ratio", "nsfw_score"]), st.floats(0, 5000)),
    max_size=20,
)


def _dist(items) -> Distributions:
    d = Distributions()
    for name, value in items:
        d.observe(name, value)
        d.observe_category("text_lang", str(int(value) % 3))
    return d


@SETTINGS
@given(_observations, _observations, _observations)
def test_distributions_merge_is_associative_and_commutative(a, b, c) -> None:
    da, db, dc = _dist(a), _dist(b), _dist(c)
    assert da.merge(db).merge(dc) == da.merge(db.merge(dc))
    assert da.merge(db) == db.merge(da)
    total = da.merge(db).merge(dc)
    assert sum(total.histograms["width"]) == Counter(n for n, _ in a + b + c)["width"]
