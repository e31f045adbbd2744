"""The image rules that compare images with one another or with a reference set.

Three places hold image rules, cheapest first: header rules on each image's bytes
(filters/measure.py `HEADER_RULES`, in the fetch threads), the cross-image rules here,
on every measured image at once, and the model rule (NSFW, pipelines/images.py), on the
survivors only. A cross-image rule is an entry of `CROSS_IMAGE_RULES`: whether the config
turns it on, and a PTransform from (sha, ImageEntry) to KEPT entries and REJECTED
(sha, Rejection) verdicts.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from curation import reasons
from curation.config import CurationConfig
from curation.record import Candidate, Rejection
from filters.dedup import EvalIndex, bands, smaller_neighbours
from filters.image import image_phash
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
    """Images within eval_dup_distance (pHash) of an evaluation image (ALIGN §3 removed
    duplicates and near-duplicates of its downstream test images)."""

    def __init__(self, cfg: CurationConfig, prior: Any = None) -> None:
        super().__init__()
        self.cfg = cfg

    def expand(self, entries):
        # The eval hashes are a fixed, small reference set: a side input.
        index = (
            entries.pipeline
            | "Eval images" >> beam.Create(_expand_globs(self.cfg.eval_images))
            | "Hash eval images" >> beam.FlatMap(_eval_entry)
            | "Eval list" >> beam.combiners.ToList()
            | "Eval index" >> beam.Map(EvalIndex)
        )
        return entries | "Eval duplicates" >> beam.FlatMap(
            _check_eval, self.cfg.eval_dup_distance, index=beam.pvalue.AsSingleton(index)
        ).with_outputs(REJECTED, main=KEPT)


def _expand_globs(patterns: Iterable[str]) -> list[str]:
    found = []
    for pattern in patterns:
        for match in FileSystems.match([pattern])[0].metadata_list:
            found.append(match.path)
    return sorted(set(found))


def _eval_entry(path: str) -> list[tuple[str, str]]:
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as fh:
        hashed = image_phash(fh.read())
    if isinstance(hashed, Rejection):
        return []  # an unreadable eval file cannot match anything; counted nowhere
    return [(path.rsplit("/", 1)[-1], hashed)]


def _check_eval(entry: tuple[str, ImageEntry], k: int, index: EvalIndex) -> Iterator[Any]:
    sha, image = entry
    hit = index.closest(image.info.phash, k)
    if hit is None:
        yield entry
    else:
        yield _verdict(sha, reasons.EVAL_DUPLICATE, f"{hit[0]} (distance {hit[1]})")


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
    CrossImageRule("eval_duplicates", lambda cfg: bool(cfg.eval_images), RejectEvalDuplicates),
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
