"""ALIGN's dataset-wide text rules (§3) as keyed aggregations and joins.

Nothing here gathers the vocabulary or the per-text counts into one process: counts are
combined per key, rules are applied by joining keyed collections, and the only side
inputs are the vocabulary boundary and radix-select histograms, which are small
(a {count: tokens} histogram has at most ~sqrt(2 * token occurrences) entries, and each
radix level at most 65,536).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam
from apache_beam.transforms.window import GlobalWindows
from apache_beam.utils.windowed_value import WindowedValue

from curation.config import CurationConfig
from curation.record import Candidate
from filters.dataset import (
    LEVEL_BITS,
    VocabBoundary,
    check_rare,
    check_shared,
    key_bucket,
    select_bucket,
    text_key,
    text_ngrams,
    token_key,
    vocab_boundary,
)
from filters.language import check_language, detect_language, detect_languages
from pipelines.joins import LookupJoin
from pipelines.measure_pool import PoolUnavailable, WorkerPool
from pipelines.tags import BAD, KEPT, REJECTED, failure, reject

CHECK = "check"


class RejectSharedTexts(beam.PTransform):
    """Reject alt-texts attached to more than max_images_per_text distinct images.

    Counted over every candidate of the run (`raw`), applied to `candidates`.
    """

    def __init__(self, raw, cfg: CurationConfig) -> None:
        super().__init__()
        self.raw = raw
        self.cfg = cfg

    def expand(self, candidates):
        cfg = self.cfg
        shared = (
            self.raw
            | "Text and image" >> beam.Map(lambda c: (text_key(c.alt_text), c.image_url))
            | "Distinct pairs" >> beam.Distinct()
            | "One per image" >> beam.Map(lambda kv: (kv[0], 1))
            | "Images per text" >> beam.CombinePerKey(sum)
            | "Over the limit" >> beam.Filter(lambda kv: check_shared(kv[1], cfg) is not None)
        )
        keyed = candidates | "Key by text" >> beam.Map(lambda c: (text_key(c.alt_text), c))
        # A boilerplate text may sit on millions of images: its candidates are streamed.
        return keyed | "Join counts" >> LookupJoin(
            {"images": shared}, _apply_shared, cfg, outputs=(REJECTED,), main=KEPT
        )


def _apply_shared(
    _text: str, few: dict[str, list[int]], candidates: Iterable[Candidate], cfg: CurationConfig
) -> Iterator[Any]:
    counts = few["images"]
    rejection = check_shared(counts[0], cfg) if counts else None
    for candidate in candidates:
        yield candidate if rejection is None else reject(candidate, rejection)


# Distinct tokens a bundle counts before it hands them on: ~10 MB of counts at most.
_MAX_HELD_TOKENS = 100_000


class _CountTokensFn(beam.DoFn):
    """Candidates -> (token, occurrences in this bundle) for their unigrams and bigrams.

    Counted in a dict first, so that a token seen a thousand times in a bundle leaves as one
    element, not a thousand: a 10^5-row run sent ~2.5M (token, 1) elements through two Maps
    and Beam's combiner table. The dict is handed on whenever it holds _MAX_HELD_TOKENS
    tokens, so memory stays bounded whatever the bundle's size.
    """

    def __init__(self, ngrams: int) -> None:
        self.ngrams = ngrams

    def start_bundle(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()

    def process(self, candidate: Candidate) -> Iterator[tuple[str, int]]:
        self.counts.update(text_ngrams(candidate.alt_text, self.ngrams))
        if len(self.counts) >= _MAX_HELD_TOKENS:
            yield from self._handed_on()

    def finish_bundle(self) -> Iterator[WindowedValue]:
        # The text rules run in the global window (a batch pipeline).
        yield from (GlobalWindows.windowed_value(kv) for kv in self._handed_on())

    def _handed_on(self) -> Iterator[tuple[str, int]]:
        counts, self.counts = self.counts, collections.Counter()
        yield from counts.items()


class BuildVocabulary(beam.PTransform):
    """Token counts over every raw alt-text -> the (token, in_vocabulary) verdicts.

    The top-`vocab_size` cut falls at a count found from the {count: tokens} histogram;
    tokens tied at that count are ordered by a 64-bit hash of the token (never by arrival),
    selected by two 16-bit radix passes and an exact pass over the few left in the final
    bucket.
    """

    def __init__(self, cfg: CurationConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def expand(self, raw):
        cfg = self.cfg
        counts = (
            raw
            | "Count in bundle" >> beam.ParDo(_CountTokensFn(cfg.vocab_ngrams))
            | "Count tokens" >> beam.CombinePerKey(sum)
        )
        histogram = (
            counts
            | "Count of count" >> beam.Map(lambda kv: (kv[1], 1))
            | "Tokens per count" >> beam.CombinePerKey(sum)
            | "Histogram" >> beam.combiners.ToDict()
        )
        boundary = histogram | "Boundary" >> beam.Map(
            vocab_boundary, cfg.vocab_size, cfg.vocab_min_count
        )
        b = beam.pvalue.AsSingleton(boundary)
        tied = counts | "Tied at boundary" >> beam.Filter(
            lambda kv, bd: bd.decided(kv[1]) is None, bd=b
        )
        tied_keys = tied | "Key tied" >> beam.Map(lambda kv: (token_key(kv[0]), kv[0]))
        level0 = (
            tied_keys
            | "Level 0 digit" >> beam.Map(lambda kt: (key_bucket(kt[0], 0), 1))
            | "Level 0 count" >> beam.CombinePerKey(sum)
            | "Level 0 hist" >> beam.combiners.ToDict()
            | "Level 0 select" >> beam.Map(lambda h, bd: select_bucket(h, bd.keep), bd=b)
        )
        s0 = beam.pvalue.AsSingleton(level0)
        in_bucket0 = tied_keys | "In level 0 bucket" >> beam.Filter(
            lambda kt, sel: key_bucket(kt[0], 0) == sel[0], sel=s0
        )
        level1 = (
            in_bucket0
            | "Level 1 digit" >> beam.Map(lambda kt: (key_bucket(kt[0], 1), 1))
            | "Level 1 count" >> beam.CombinePerKey(sum)
            | "Level 1 hist" >> beam.combiners.ToDict()
            | "Level 1 select" >> beam.Map(lambda h, sel: select_bucket(h, sel[1]), sel=s0)
        )
        s1 = beam.pvalue.AsSingleton(level1)
        # Expected size: tied tokens / 2**32, so gathering this last bucket is safe.
        self.boundary = boundary  # read by RejectRareTokens to skip the join when all are in
        last = (
            in_bucket0
            | "In level 1 bucket"
            >> beam.Filter(lambda kt, sel: key_bucket(kt[0], 1) == sel[0], sel=s1)
            | "Last bucket" >> beam.combiners.ToList()
            | "Exact select"
            >> beam.Map(lambda kts, sel: {t for _, t in sorted(kts)[: sel[1]]}, sel=s1)
        )
        return counts | "Verdict" >> beam.Map(
            _verdict,
            bd=b,
            sel0=s0,
            sel1=s1,
            last=beam.pvalue.AsSingleton(last),
        )


def _verdict(
    kv: tuple[str, int],
    bd: VocabBoundary,
    sel0: tuple[int, int],
    sel1: tuple[int, int],
    last: set[str],
) -> tuple[str, bool]:
    token, count = kv
    decided = bd.decided(count)
    if decided is not None:
        return token, decided
    key = token_key(token)
    d0 = key_bucket(key, 0)
    if d0 != sel0[0]:
        return token, d0 < sel0[0]
    d1 = key_bucket(key, 1)
    if d1 != sel1[0]:
        return token, d1 < sel1[0]
    return token, token in last


assert LEVEL_BITS == 16  # the radix passes above assume two 16-bit levels before the exact one


class RejectRareTokens(beam.PTransform):
    """Reject candidates holding any unigram/bigram outside the run's vocabulary.

    Tokens are joined to their verdicts keyed by token, then regrouped by candidate uid.
    """

    def __init__(self, raw, cfg: CurationConfig) -> None:
        super().__init__()
        self.raw = raw
        self.cfg = cfg

    def expand(self, candidates):
        cfg = self.cfg
        build = BuildVocabulary(cfg)
        verdicts = self.raw | "Build vocabulary" >> build
        rare = verdicts | "Out of vocabulary" >> beam.Filter(lambda tv: not tv[1])
        # When every token of the run is in the vocabulary (the common case below 100M
        # distinct tokens), no candidate needs the join: they pass straight through.
        routed = candidates | "Route" >> beam.FlatMap(
            _route, bd=beam.pvalue.AsSingleton(build.boundary)
        ).with_outputs(CHECK, main=KEPT)
        candidates = routed[CHECK]
        uses = candidates | "Token uses" >> beam.FlatMap(
            lambda c: [(t, c.uid) for t in sorted(set(text_ngrams(c.alt_text, cfg.vocab_ngrams)))]
        )
        # A common token is in most alt-texts: its uses are streamed, and dropped unread
        # past the first pass when the token is in the vocabulary.
        rare_by_uid = uses | "Join tokens" >> LookupJoin({"rare": rare}, _rare_uses)
        keyed = candidates | "Key by uid" >> beam.Map(lambda c: (c.uid, c))
        checked = (
            {"rare": rare_by_uid, "candidate": keyed}
            | "Regroup by candidate" >> beam.CoGroupByKey()
            | "Apply vocabulary" >> beam.FlatMap(_apply_rare).with_outputs(REJECTED, main=KEPT)
        )
        kept = (routed[KEPT], checked[KEPT]) | "All in vocabulary" >> beam.Flatten()
        return {KEPT: kept, REJECTED: checked[REJECTED]}


def _route(candidate: Candidate, bd: VocabBoundary) -> Iterator[Any]:
    yield candidate if bd.all_in else beam.pvalue.TaggedOutput(CHECK, candidate)


def _rare_uses(
    token: str, few: dict[str, list[bool]], uids: Iterable[str]
) -> Iterator[tuple[str, str]]:
    if few["rare"]:
        for uid in uids:
            yield uid, token


def _apply_rare(item: tuple[str, dict[str, list[Any]]]) -> Iterator[Any]:
    _, joined = item
    rejection = check_rare(joined["rare"])
    for candidate in joined["candidate"]:
        yield candidate if rejection is None else reject(candidate, rejection)


# Texts detected together: langdetect costs 0.28x the time a text in one batch of the 470
# benchmark texts than one call each (bench/bench_language.py); 1,024 candidates hold well
# under a megabyte.
LANGUAGE_BATCH = 1024


class DetectLanguageFn(beam.DoFn):
    """Set text_lang on each candidate; with --languages, reject the others.

    Candidates are held until LANGUAGE_BATCH of them (or the bundle's end) and detected
    together. A batch that raises is detected again one candidate at a time, so an error
    is a dead letter (BAD) for the candidate that caused it only.
    """

    def __init__(self, cfg: CurationConfig, workers: WorkerPool | None = None) -> None:
        self.cfg = cfg
        self.workers = workers

    def setup(self) -> None:
        # On the in-memory runner the measuring processes, started before the run, detect
        # too: this stage otherwise runs on one core while the others idle.
        self.pool = self.workers.borrow() if self.workers is not None else None
        if self.pool is None:
            # Load the detector's profiles once per worker, not per element.
            detect_language("warm up", None, self.cfg.language_detector)

    def start_bundle(self) -> None:
        self.held: list[WindowedValue] = []

    def process(
        self,
        candidate: Candidate,
        timestamp: Any = beam.DoFn.TimestampParam,
        window: Any = beam.DoFn.WindowParam,
    ) -> Iterator[Any]:
        self.held.append(WindowedValue(candidate, timestamp, (window,)))
        if len(self.held) >= LANGUAGE_BATCH:
            yield from self._flush()

    def finish_bundle(self) -> Iterator[Any]:
        yield from self._flush()

    def _flush(self) -> Iterator[Any]:
        held, self.held = self.held, []
        if not held:
            return
        detector = self.cfg.language_detector
        texts = [(w.value.alt_text, w.value.page_lang) for w in held]
        langs = None
        if self.pool is not None:
            try:
                langs = self.pool.detect_languages(texts, detector)
            except PoolUnavailable:  # the fetch step, which needs them most, says so
                self.pool = None
            except Exception as e:  # detected here from now on, where an error is kept
                logging.getLogger(__name__).warning(
                    "language detection in the measuring processes failed (%s); "
                    "detecting in this process instead",
                    (str(e).splitlines() or [type(e).__name__])[0],
                )
                self.pool = None
        if langs is None:
            try:
                langs = detect_languages(texts, detector)
            except Exception:  # retried one by one below, where an error is kept
                langs = None
        for i, held_one in enumerate(held):
            candidate = held_one.value
            try:
                if langs is None:
                    lang = detect_language(candidate.alt_text, candidate.page_lang, detector)
                else:
                    lang = langs[i]
                rejection = check_language(lang, self.cfg)
                candidate = dataclasses.replace(candidate, text_lang=lang)
            except Exception as exc:  # a dead letter with its traceback, as Beam makes
                dead = (held_one.value, failure(exc))
                yield beam.pvalue.TaggedOutput(BAD, held_one.with_value(dead))
                continue
            if rejection is None:
                yield held_one.with_value(candidate)
            else:
                tagged = reject(candidate, rejection)
                yield beam.pvalue.TaggedOutput(tagged.tag, held_one.with_value(tagged.value))


class DetectLanguage(beam.PTransform):
    """Language ID on the survivors of the cheaper rules; outputs `kept` and `rejected`."""

    def __init__(self, cfg: CurationConfig, workers: WorkerPool | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.workers = workers  # the run's measuring processes, if they detect too

    def expand(self, candidates):
        detect = beam.ParDo(DetectLanguageFn(self.cfg, self.workers)).with_outputs(
            REJECTED, BAD, main=KEPT
        )
        return candidates | "Detect language" >> detect
