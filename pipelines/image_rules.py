"""The image rules that compare images with one another or with a reference set.

Three places hold image rules, cheapest first: header rules on each image's bytes
(filters/measure.py `HEADER_RULES`, in the fetch threads), the cross-image rules here,
on every measured image at once, and the model rule (NSFW, pipelines/images.py), on the
survivors only. A cross-image rule is an entry of `CROSS_IMAGE_RULES`: whether the config
turns it on, and a PTransform from (sha, ImageEntry) to KEPT entries and REJECTED
(sha, Rejection) verdicts.
"""

from __future__ import annotations

import io
import itertools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.utils.shared import Shared

from curation import reasons
from curation.config import CurationConfig
from curation.record import Candidate, Rejection
from filters.dedup import bands, smaller_neighbours
from filters.eval_index import eval_features
from filters.evaldup import EvalMatchIndex
from filters.measure import ImageInfo
from pipelines.joins import LookupJoin
from pipelines.tags import KEPT, REJECTED, reject

URLS = "urls"
PRIOR = "!"  # prefixes the uids of an earlier run's images: "!" sorts before every hex digit
_IMAGE = reasons.STAGE_IMAGE
COUNT = "count"  # the join tag of a key's number of distinct alt-texts


class ImageEntry(NamedTuple):
    """One measured image as the cross-image rules see it (keyed by its sha256)."""

    uid: str  # the smallest uid among its candidates: how the image is known
    info: ImageInfo


# --- Texts per image (ALIGN §3: images with more than 1000 alt-texts), by any key.


class RejectBusyImages(beam.PTransform):
    """(key, candidate) -> KEPT (key, candidate) and URLS (each kept key once), or REJECTED
    when the key (an image URL or content hash) carries more than max_texts_per_image
    distinct alt-texts in `texts`."""

    def __init__(self, texts, cfg: CurationConfig, by: str) -> None:
        super().__init__()
        self.texts = texts  # PCollection of (key, text_key)
        self.cfg = cfg
        self.by = by

    def expand(self, keyed):
        limit = self.cfg.max_texts_per_image
        busy = (
            self.texts
            | "Distinct texts" >> beam.Distinct()
            | "One per text" >> beam.Map(lambda kv: (kv[0], 1))
            | "Texts per image" >> beam.CombinePerKey(sum)
            | "Over the limit" >> beam.Filter(lambda kv: kv[1] > limit)
        )
        # A logo may sit on millions of pages: its candidates are streamed.
        return keyed | "Join text counts" >> LookupJoin(
            {COUNT: busy}, _apply_busy, self.by, outputs=(REJECTED, URLS), main=KEPT
        )


def _apply_busy(
    key: str, few: dict[str, list[int]], candidates: Iterator[Candidate], by: str
) -> Iterator[Any]:
    first = next(candidates, None)
    if first is None:
        return
    count = few[COUNT]
    if count:
        rejection = Rejection(_IMAGE, reasons.IMAGE_TOO_MANY_TEXTS, f"{count[0]} alt-texts by {by}")
        for c in itertools.chain([first], candidates):
            yield reject(c, rejection)
        return
    yield beam.pvalue.TaggedOutput(URLS, key)
    for c in itertools.chain([first], candidates):
        yield key, c


# --- The cross-image rules.


@dataclass(frozen=True)
class CrossImageRule:
    """One rule over all measured images."""

    name: str
    enabled: Callable[[CurationConfig], bool]
    # (cfg, images kept by an earlier run as (uid, phash), or None) -> the rule's PTransform
    make: Callable[[CurationConfig, Any], beam.PTransform]


def _verdict(sha: str, reason: str, detail: str) -> beam.pvalue.TaggedOutput:
    return beam.pvalue.TaggedOutput(REJECTED, (sha, Rejection(_IMAGE, reason, detail)))


class RejectEvalDuplicates(beam.PTransform):
    """Images that copy an evaluation image (ALIGN §3 removed duplicates and near-duplicates
    of its downstream test images): the two-stage matcher of filters/evaldup.py against the
    index of cfg.eval_index, or of the cfg.eval_images, which each worker loads once."""

    def __init__(self, cfg: CurationConfig, prior: Any = None) -> None:
        super().__init__()
        self.cfg = cfg

    def expand(self, entries):
        source = EvalIndexSource(self.cfg.eval_index, self.cfg.eval_images)
        return entries | "Eval duplicates" >> beam.ParDo(
            CheckEvalDuplicatesFn(source)
        ).with_outputs(REJECTED, main=KEPT)


@dataclass(frozen=True)
class EvalIndexSource:
    """Where a worker gets the eval index: a file written by `curate eval-index`, or
    evaluation images (paths or globs) indexed when first needed, named by file name."""

    index_file: str
    images: tuple[str, ...]

    def load(self) -> EvalMatchIndex:
        """The index (built from the images, or read from the file)."""
        if self.index_file:
            return load_eval_index(self.index_file)
        entries = []
        for path in _expand_globs(self.images):
            with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as fh:
                features = eval_features(fh.read())
            if not isinstance(features, Rejection):  # an unreadable eval file matches nothing
                entries.append((path.rsplit("/", 1)[-1], features))
        return EvalMatchIndex(entries)

    def shared(self) -> EvalMatchIndex:
        """This process's index, loaded once for every step that uses it."""
        return _EVAL_INDEXES.acquire(lambda: _Held(self.load()), tag=repr(self)).index


def load_eval_index(path: str) -> EvalMatchIndex:
    """An index file from any filesystem Beam reads (local, gs://, ...)."""
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as fh:
        return EvalMatchIndex.load(io.BytesIO(fh.read()))


class _Held:
    """An index that Beam's Shared can hold (it needs a weak-referenceable object)."""

    def __init__(self, index: EvalMatchIndex) -> None:
        self.index = index


_EVAL_INDEXES = Shared()


def _expand_globs(patterns: Iterable[str]) -> list[str]:
    found = []
    for pattern in patterns:
        for match in FileSystems.match([pattern])[0].metadata_list:
            found.append(match.path)
    return sorted(set(found))


class CheckEvalDuplicatesFn(beam.DoFn):
    """(sha, ImageEntry) -> itself, or a REJECTED verdict naming the eval image matched."""

    def __init__(self, source: EvalIndexSource) -> None:
        self.source = source

    def setup(self) -> None:
        self.index = self.source.shared()

    def process(self, entry: tuple[str, ImageEntry]) -> Iterator[Any]:
        sha, image = entry
        features = image.info.eval_features
        if features is None:
            raise ValueError(f"image {sha} was measured without eval features")
        match = self.index.match(features)
        if match is None:
            yield entry
        else:
            yield _verdict(sha, reasons.EVAL_DUPLICATE, eval_detail(match.name, match.score))


_SCORE = " (score "


def eval_detail(name: str, score: float) -> str:
    """The ledger's detail of an eval duplicate: the eval image and the match's score."""
    return f"{name}{_SCORE}{score:.3f})"


def eval_name(detail: str) -> str:
    """The eval image an eval duplicate's detail names (see eval_detail)."""
    return detail.rsplit(_SCORE, 1)[0]


class FindNearDuplicates(beam.PTransform):
    """(key, phash) -> (key, kept key) for each image with a smaller-keyed neighbour within k."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k

    def expand(self, hashes):
        k = self.k
        return (
            hashes
            | "Bands" >> beam.FlatMap(lambda kh: [(b, kh) for b in bands(kh[1], k)])
            | "Group by band" >> beam.GroupByKey()
            | "Verify" >> beam.FlatMap(lambda kv: smaller_neighbours(list(kv[1]), k).items())
            | "Smallest kept" >> beam.CombinePerKey(min)
        )


class RejectNearDuplicates(beam.PTransform):
    """Images within near_dup_distance (pHash) of another kept image, the smaller uid kept;
    images an earlier run kept (`prior`, (uid, phash)) always win and are never rejected."""

    def __init__(self, cfg: CurationConfig, prior: Any = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.prior = prior

    def expand(self, entries):
        hashes = entries | "Uid and hash" >> beam.Map(lambda kv: (kv[1].uid, kv[1].info.phash))
        if self.prior is not None:
            prior = self.prior | "Prior first" >> beam.Map(lambda kh: (PRIOR + kh[0], kh[1]))
            hashes = (hashes, prior) | "With prior" >> beam.Flatten()
        losers = (
            hashes
            | "Near duplicates" >> FindNearDuplicates(self.cfg.near_dup_distance)
            | "Only new" >> beam.Filter(lambda kv: not kv[0].startswith(PRIOR))
            | "Kept uid" >> beam.Map(lambda kv: (kv[0], kv[1].removeprefix(PRIOR)))
        )
        by_uid = entries | "Key by rep uid" >> beam.Map(lambda kv: (kv[1].uid, kv))
        return (
            {"duplicate_of": losers, "entry": by_uid}
            | "Join near dups" >> beam.CoGroupByKey()
            | "Drop near dups" >> beam.FlatMap(_drop_near).with_outputs(REJECTED, main=KEPT)
        )


def _drop_near(item: tuple[str, dict[str, list[Any]]]) -> Iterator[Any]:
    _, joined = item
    for sha, entry in joined["entry"]:
        if joined["duplicate_of"]:
            yield _verdict(sha, reasons.NEAR_DUPLICATE, joined["duplicate_of"][0])
        else:
            yield sha, entry


# In order: each rule sees the survivors of the ones before it.
CROSS_IMAGE_RULES: tuple[CrossImageRule, ...] = (
    CrossImageRule(
        "eval_duplicates", lambda cfg: bool(cfg.eval_images or cfg.eval_index), RejectEvalDuplicates
    ),
    CrossImageRule("near_duplicates", lambda cfg: cfg.near_dup_distance >= 0, RejectNearDuplicates),
)


class ApplyCrossImageRules(beam.PTransform):
    """(sha, ImageEntry) -> (sha, Rejection | ImageInfo): each image's verdict."""

    def __init__(self, cfg: CurationConfig, prior: Any = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.prior = prior

    def expand(self, entries):
        verdicts = []
        survivors = entries
        for rule in CROSS_IMAGE_RULES:
            if rule.enabled(self.cfg):
                checked = survivors | rule.name >> rule.make(self.cfg, self.prior)
                verdicts.append(checked[REJECTED])
                survivors = checked[KEPT]
        kept = survivors | "Survivor" >> beam.Map(lambda kv: (kv[0], kv[1].info))
        return (*verdicts, kept) | "All verdicts" >> beam.Flatten()
