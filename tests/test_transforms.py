"""The composites on a TestPipeline, with assert_that on both the kept and rejected outputs."""

from __future__ import annotations

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

from curation import reasons
from curation.config import CurationConfig
from curation.record import Candidate
from curation.stats import Funnel
from pipelines.run import make_runner
from pipelines.transforms import (
    KEPT,
    REJECTED,
    TALLY,
    CountFunnel,
    DropDuplicateCaptures,
    ExtractCandidates,
    FilterTexts,
)
from tests.conftest import SAMPLE_WARC

CFG = CurationConfig()


def pipeline() -> BeamTestPipeline:
    return BeamTestPipeline(runner=make_runner(PipelineOptions([])), options=PipelineOptions([]))


def cand(alt: str, image: str = "https://a.example/x.jpg", offset: int = 0, file: str = "f"):
    return Candidate.create(
        page_url="https://a.example/",
        image_url=image,
        alt_text=alt,
        page_lang="en",
        source_kind="warc",
        source_file=file,
        source_offset=offset,
        crawl_date=None,
    )


def test_filter_texts_routes_kept_and_rejected() -> None:
    good = cand("a red fox sitting in the snow")
    short = cand("a cat")
    dims = cand("224x224")
    with pipeline() as p:
        out = p | beam.Create([good, short, dims]) | FilterTexts(CFG)
        assert_that(out[KEPT], equal_to([good]), label="kept")
        assert_that(
            out[REJECTED] | beam.Map(lambda r: (r.candidate.uid, r.rejection.reason)),
            equal_to([(short.uid, reasons.TEXT_TOO_SHORT), (dims.uid, reasons.TEXT_DIMENSIONS)]),
            label="rejected",
        )


def test_drop_duplicate_captures_keeps_the_earliest() -> None:
    first = cand("a red fox in the snow", offset=10, file="a.warc")
    again = cand("a red fox in the snow", offset=5, file="b.warc")
    earliest = cand("a red fox in the snow", offset=99, file="a.warc")
    other = cand("a different description here")
    assert first.uid == again.uid == earliest.uid
    with pipeline() as p:
        out = p | beam.Create([again, first, earliest, other]) | DropDuplicateCaptures()
        assert_that(
            out[KEPT] | beam.Map(lambda c: (c.uid, c.provenance_key())),
            equal_to([(first.uid, ("a.warc", 10)), (other.uid, ("f", 0))]),
            label="kept",
        )
        assert_that(
            out[TALLY],
            equal_to([(reasons.STAGE_EXTRACT, reasons.DUPLICATE_CAPTURE, 2)]),
            label="tally",
        )


def test_extract_candidates_on_the_sample() -> None:
    with pipeline() as p:
        out = p | ExtractCandidates([str(SAMPLE_WARC)], CFG)
        assert_that(out[KEPT] | beam.combiners.Count.Globally(), equal_to([44]), label="candidates")
        tally = out[TALLY] | beam.combiners.ToList() | beam.Map(sum_tallies)
        assert_that(
            tally,
            equal_to([(44, 52, 9)]),
            label="tally",
        )


def sum_tallies(items) -> tuple[int, int, int]:
    f = Funnel()
    for t in items:
        f.add(*t)
    return (
        f.get(reasons.STAGE_EXTRACT, reasons.CANDIDATES),
        f.get(reasons.STAGE_EXTRACT, reasons.IMG_TAGS),
        f.get(reasons.STAGE_READ, reasons.HTML_PAGES),
    )


def test_count_funnel_balances() -> None:
    good, short = cand("a red fox sitting in the snow"), cand("a cat")
    with pipeline() as p:
        texts = p | "c" >> beam.Create([good, short]) | FilterTexts(CFG)
        tallies = p | "t" >> beam.Create([(reasons.STAGE_EXTRACT, reasons.CANDIDATES, 2)])
        funnel = tallies | CountFunnel(texts[KEPT], texts[REJECTED])
        assert_that(
            funnel | beam.Map(lambda f: f.to_json_dict()["totals"]),
            equal_to([{"extracted": 2, "kept": 1, "rejected": 1, "balanced": True}]),
        )


@pytest.mark.parametrize("mode", ["in_memory", "multi_threading"])
def test_runner_modes_accept_direct_options(mode: str) -> None:
    options = PipelineOptions([f"--direct_running_mode={mode}", "--direct_num_workers=2"])
    with BeamTestPipeline(runner=make_runner(options), options=options) as p:
        out = p | beam.Create([cand("a red fox sitting in the snow")]) | FilterTexts(CFG)
        assert_that(out[KEPT] | beam.combiners.Count.Globally(), equal_to([1]))


def test_records_survive_pickling_and_rows_match_asdict() -> None:
    """Records pickle as (class, field values) for speed (curation.record.fast_pickling):
    every field comes back, through pickle, copy and Beam's coder; to_row is asdict."""
    import copy
    import dataclasses
    import pickle

    from apache_beam.coders import registry

    from curation.record import Rejected, Rejection
    from filters.measure import ImageInfo

    c = dataclasses.replace(cand("a red fox"), image=b"\xff\xd8\xff", nsfw_score=0.25, width=3)
    info = ImageInfo(
        "http://a.example/x.jpg", "ab" * 32, "f" * 16, 640, 480, 640, 480, "JPEG", "GIF"
    )
    records = [c, Rejected(c, Rejection("text", "text_too_short", "2")), info]
    for record in records:
        for protocol in range(2, pickle.HIGHEST_PROTOCOL + 1):
            assert pickle.loads(pickle.dumps(record, protocol)) == record
        assert copy.copy(record) == record and copy.deepcopy(record) == record
        coder = registry.get_coder(type(record))
        assert coder.decode(coder.encode(record)) == record
    assert c.to_row() == dataclasses.asdict(c)
