"""ALIGN's dataset-wide text rules (§3): pure pieces, then the composites on a TestPipeline."""

from __future__ import annotations

import dataclasses
import random

import apache_beam as beam
import numpy as np
import pyarrow.parquet as pq
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to
from langdetect.lang_detect_exception import LangDetectException

from curation import reasons
from curation.config import CurationConfig
from curation.record import Candidate
from filters.dataset import (
    VocabBoundary,
    check_rare,
    check_shared,
    select_bucket,
    text_key,
    text_ngrams,
    token_key,
    vocab_boundary,
)
from filters.language import check_language, detect_language, detect_languages
from filters.text import check_text
from pipelines import dataset_rules
from pipelines.dataset_rules import (
    KEPT,
    REJECTED,
    BuildVocabulary,
    DetectLanguage,
    RejectRareTokens,
    RejectSharedTexts,
)
from pipelines.run import make_runner
from tests.conftest import LAION_PARQUET, ROOT

CFG = CurationConfig()


def pipeline() -> BeamTestPipeline:
    return BeamTestPipeline(runner=make_runner(PipelineOptions([])), options=PipelineOptions([]))


def cand(alt: str, image: str, page: str = "https://p.example/", lang: str | None = None):
    return Candidate.create(
        page_url=page,
        image_url=image,
        alt_text=alt,
        page_lang=lang,
        source_kind="warc",
        source_file="f",
        source_offset=0,
        crawl_date=None,
    )


# --- The paper's own examples, classified as the paper says.


def test_paper_examples() -> None:
    # "1920x1080", "alt img", "cristina": alt-texts shared by more than 10 images. The first two
    # are caught earlier by the per-record boilerplate rules, the last by the count alone.
    assert check_text("1920x1080", CFG).reason == reasons.TEXT_DIMENSIONS
    assert check_text("alt img", CFG).reason == reasons.TEXT_PLACEHOLDER
    assert check_shared(11, CFG).reason == reasons.TEXT_ON_MANY_IMAGES
    assert check_shared(10, CFG) is None
    # "image tid 25&id mggqpuwe-qdpd&cache 0&lan code 0": rare tokens.
    noise = "image tid 25&id mggqpuwe-qdpd&cache 0&lan code 0"
    assert "mggqpuwe" in text_ngrams(noise, 1)
    assert check_rare(["qdpd", "mggqpuwe"]).detail == "mggqpuwe"


def test_text_key_merges_spelling_variants() -> None:
    assert text_key("Alt_Img") == text_key("alt img") == text_key("ALT-IMG!")
    assert text_key("!!!") == "!!!"
    assert text_key("a cat") != text_key("a dog")


def test_ngrams() -> None:
    assert text_ngrams("A red fox", 1) == ["a", "red", "fox"]
    assert text_ngrams("A red fox", 2) == ["a", "red", "fox", "a red", "red fox"]


@pytest.mark.parametrize(
    ("hist", "size", "min_count", "expected"),
    [
        ({5: 2, 3: 4, 1: 10}, 100, 1, VocabBoundary(1, 10, 10, all_in=True)),  # all fit
        ({5: 2, 3: 4, 1: 10}, 6, 1, VocabBoundary(1, 10, 0)),  # cut exactly after count 3
        ({5: 2, 3: 4, 1: 10}, 4, 1, VocabBoundary(3, 4, 2)),  # 2 of the 4 tied at 3
        ({5: 2, 3: 4, 1: 10}, 1, 1, VocabBoundary(5, 2, 1)),
        ({5: 2, 3: 4, 1: 10}, 100, 2, VocabBoundary(3, 4, 4)),  # min count drops the 1s
        ({}, 100, 1, VocabBoundary(1, 0, 0, all_in=True)),
    ],
)
def test_vocab_boundary(hist, size, min_count, expected) -> None:
    assert vocab_boundary(hist, size, min_count) == expected


def test_boundary_decisions() -> None:
    b = VocabBoundary(cutoff=3, tied=4, keep=2)
    assert (b.decided(4), b.decided(2), b.decided(3)) == (True, False, None)
    assert VocabBoundary(3, 4, 4).decided(3) is True
    assert VocabBoundary(3, 4, 0).decided(3) is False


def test_select_bucket() -> None:
    assert select_bucket({1: 3, 4: 2, 9: 5}, 4) == (4, 1)
    assert select_bucket({1: 3, 4: 2, 9: 5}, 3) == (1, 3)
    assert select_bucket({1: 3}, 10) == (65536, 0)


# --- The composites.


def test_text_on_ten_images_is_kept_on_eleven_rejected() -> None:
    ten = [cand("a photo by cristina", f"https://i.example/{i}.jpg") for i in range(10)]
    # The same image twice does not count twice.
    ten.append(cand("a photo by cristina", "https://i.example/0.jpg", page="https://q.example/"))
    eleven = [cand("Cristina's holiday snapshot", f"https://j.example/{i}.jpg") for i in range(11)]
    everything = ten + eleven
    with pipeline() as p:
        c = p | beam.Create(everything)
        out = c | RejectSharedTexts(c, CFG)
        assert_that(
            out[KEPT] | beam.Map(lambda c: c.uid), equal_to([x.uid for x in ten]), label="kept"
        )
        assert_that(
            out[REJECTED] | beam.Map(lambda r: (r.rejection.reason, r.rejection.detail)),
            equal_to([(reasons.TEXT_ON_MANY_IMAGES, "11 images")] * 11),
            label="rejected",
        )


def _reference_vocabulary(texts: list[str], size: int, min_count: int) -> set[str]:
    counts: dict[str, int] = {}
    for t in texts:
        for tok in text_ngrams(t, 2):
            counts[tok] = counts.get(tok, 0) + 1
    eligible = [t for t, n in counts.items() if n >= min_count]
    eligible.sort(key=lambda t: (-counts[t], token_key(t)))
    return set(eligible[:size])


@pytest.mark.parametrize(("size", "min_count"), [(5, 1), (37, 1), (200, 1), (10**9, 2)])
def test_vocabulary_is_the_exact_top_n_with_hash_tie_breaks(size: int, min_count: int) -> None:
    rng = random.Random(7)
    words = [f"w{i}" for i in range(60)]
    texts = [
        " ".join(rng.choice(words[: rng.randint(3, 60)]) for _ in range(rng.randint(3, 8)))
        for _ in range(150)
    ]
    cfg = dataclasses.replace(CFG, vocab_size=size, vocab_min_count=min_count)
    expected = _reference_vocabulary(texts, size, min_count)
    candidates = [cand(t, f"https://i.example/{i}.jpg") for i, t in enumerate(texts)]
    with pipeline() as p:
        verdicts = p | beam.Create(candidates) | BuildVocabulary(cfg)
        assert_that(
            verdicts | beam.Filter(lambda tv: tv[1]) | beam.Map(lambda tv: tv[0]),
            equal_to(sorted(expected)),
        )


def test_token_counts_handed_on_mid_bundle_are_the_same(monkeypatch) -> None:
    """Tokens are counted per bundle, and handed on whenever the dict is full: with a
    3-token cap the verdicts equal the exact top-N all the same."""
    monkeypatch.setattr(dataset_rules, "_MAX_HELD_TOKENS", 3)
    test_vocabulary_is_the_exact_top_n_with_hash_tie_breaks(37, 1)


def test_rare_token_gets_its_candidate_rejected() -> None:
    common = [cand("a red fox in the snow", f"https://i.example/{i}.jpg") for i in range(3)] + [
        cand("a red fox in the garden", "https://i.example/g.jpg")
    ] * 1
    noise = cand("image tid 25&id mggqpuwe-qdpd&cache 0&lan code 0", "https://i.example/n.jpg")
    cfg = dataclasses.replace(CFG, vocab_min_count=2)
    everything = [*common, noise]
    with pipeline() as p:
        c = p | beam.Create(everything)
        out = c | RejectRareTokens(c, cfg)
        assert_that(
            out[KEPT] | beam.Map(lambda c: c.alt_text),
            equal_to(["a red fox in the snow"] * 3),
            label="kept",
        )
        assert_that(
            out[REJECTED] | beam.Map(lambda r: (r.candidate.alt_text[:14], r.rejection.reason)),
            equal_to(
                [
                    ("a red fox in t", reasons.TEXT_RARE_TOKEN),  # "garden" occurs once
                    ("image tid 25&i", reasons.TEXT_RARE_TOKEN),
                ]
            ),
            label="rejected",
        )


def test_everything_in_vocabulary_by_default() -> None:
    texts = [cand(f"a unique text number {i}", f"https://i.example/{i}.jpg") for i in range(5)]
    with pipeline() as p:
        c = p | beam.Create(texts)
        out = c | RejectRareTokens(c, CFG)
        assert_that(out[REJECTED], equal_to([]), label="none rejected")
        assert_that(out[KEPT] | beam.combiners.Count.Globally(), equal_to([5]), label="all kept")


# --- Language.


@pytest.mark.parametrize("detector", ["langdetect", "cld2"])
@pytest.mark.parametrize(
    ("text", "hint", "lang"),
    [
        ("a red fox sitting in the snow at dawn", None, "en"),
        ("Ein alter Leuchtturm an der stürmischen Nordseeküste", "de", "de"),
        ("富士山と桜の花が咲く春の風景", "ja", "ja"),
        ("Красная площадь в Москве зимним вечером", None, "ru"),
    ],
)
def test_detect_language(detector: str, text: str, hint: str | None, lang: str) -> None:
    assert detect_language(text, hint, detector) == lang


@pytest.mark.parametrize("detector", ["langdetect", "cld2"])
def test_detect_languages_in_a_batch_as_one_by_one(detector: str) -> None:
    """A batch (repeats, hints, a text with no features) answers as single calls do."""
    items = [
        ("Ein alter Leuchtturm an der stürmischen Nordseeküste", "de"),
        ("a red fox sitting in the snow at dawn", None),
        ("12345 ---", None),
        ("富士山と桜の花が咲く春の風景", "ja-JP"),
        ("a red fox sitting in the snow at dawn", "fr"),
        ("Ein alter Leuchtturm an der stürmischen Nordseeküste", "de"),
    ]
    batch = detect_languages(items, detector)
    assert batch == [detect_language(text, hint, detector) for text, hint in items]
    assert batch[:4] == ["de", "en", None, "ja"]


def _stock_probabilities(factory, text: str, prior: dict[str, float] | None) -> list | None:
    detector = factory.create()
    if prior:
        detector.set_prior_map(prior)
    detector.append(text)
    try:
        return [(x.lang, x.prob) for x in detector.get_probabilities()]
    except LangDetectException:
        return None


def test_batched_langdetect_equals_langdetect_bit_for_bit() -> None:
    """Our batched numpy langdetect gives langdetect's own probabilities, exactly, with and
    without a prior, on real alt-texts in many scripts (LAION and the language bench), for
    texts detected together and one at a time."""
    from langdetect.detector_factory import PROFILES_DIRECTORY, DetectorFactory

    from filters.language import _langdetect_model, langdetect_probabilities

    stock = DetectorFactory()
    stock.load_profile(PROFILES_DIRECTORY)
    stock.set_seed(0)
    languages = _langdetect_model().languages
    rows = (ROOT / "bench" / "language_samples.tsv").read_text().splitlines()[1:]
    texts = [r.split("\t")[2] for r in rows][::3]
    if LAION_PARQUET.exists():
        texts += pq.read_table(LAION_PARQUET).column("TEXT").to_pylist()[:150]
    texts += ["", "12345 ---", "a", "Credibility WG.004"]  # no features, one feature
    prior = {x: 0.5 / len(languages) for x in languages} | {"ja": 0.5 + 0.5 / len(languages)}
    items = [(t, prior if i % 2 else None) for i, t in enumerate(x for x in texts if x is not None)]
    # With the LAION captions of ../shared/data (absent: the language bench's texts alone).
    assert len(items) > (250 if LAION_PARQUET.exists() else 150)
    want = [_stock_probabilities(stock, text, p) for text, p in items]
    assert langdetect_probabilities(items) == want
    for item, expected in zip(items[:: len(items) // 15], want[:: len(items) // 15], strict=True):
        assert langdetect_probabilities([item]) == [expected], item[0]


def test_profiles_load_as_langdetect_loads_them() -> None:
    """The profile matrix read straight from langdetect's files holds what its own
    DetectorFactory builds: the same languages in the same order, the same n-grams, and
    bit-identical probabilities."""
    from langdetect.detector_factory import PROFILES_DIRECTORY, DetectorFactory

    from filters.language import _load_profiles

    stock = DetectorFactory()
    stock.load_profile(PROFILES_DIRECTORY)
    languages, rows, table = _load_profiles(PROFILES_DIRECTORY)
    assert languages == stock.langlist and len(languages) == 55
    assert list(rows) == list(stock.word_lang_prob_map)
    assert list(rows.values()) == list(range(len(rows)))
    expected = np.array(list(stock.word_lang_prob_map.values()), dtype=np.float64)
    assert table.shape == expected.shape and table.tobytes() == expected.tobytes()


def test_langdetect_is_deterministic() -> None:
    text = "Credibility WG.004"
    assert len({detect_language(text, None) for _ in range(20)}) == 1


def test_language_filter() -> None:
    cfg = dataclasses.replace(CFG, languages=("en", "zh"))
    assert check_language("en", cfg) is None
    assert check_language("zh-cn", cfg) is None
    assert check_language("de", cfg).reason == reasons.LANGUAGE_NOT_SELECTED
    assert check_language(None, cfg).detail == "unknown"
    assert check_language("de", CFG) is None  # no filter: every language is kept


def test_detect_language_composite() -> None:
    cfg = dataclasses.replace(CFG, languages=("de",))
    de = cand("Zwei Wanderer auf einem schmalen Pfad im Hochgebirge", "https://i.example/1.jpg")
    en = cand("two hikers on a narrow path in the high mountains", "https://i.example/2.jpg")
    with pipeline() as p:
        out = p | beam.Create([de, en]) | DetectLanguage(cfg)
        assert_that(
            out[KEPT] | beam.Map(lambda c: (c.uid, c.text_lang)),
            equal_to([(de.uid, "de")]),
            label="kept",
        )
        assert_that(
            out[REJECTED] | beam.Map(lambda r: (r.candidate.text_lang, r.rejection.detail)),
            equal_to([("en", "en")]),
            label="rejected",
        )
