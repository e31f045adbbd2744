"""The image stage: fetch each unique image once, measure it, apply ALIGN's image rules (§3).

Cheapest first: texts per URL are counted before anything is fetched; header rules run
before any decode (filters/measure.py); cross-image rules run on each image's record, not
its bytes (pipelines/image_rules.py); the NSFW model runs last, on the survivors only,
through RunInference. Decisions are the pure functions of filters/; this module composes.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator
from typing import Any, NamedTuple

import apache_beam as beam

from curation import reasons
from curation.config import CurationConfig
from curation.inputs import image_holders
from curation.record import BlobRef, Candidate, Rejection
from filters.dataset import text_key
from filters.measure import ImageInfo
from filters.nsfw import check_nsfw
from pipelines.fetch_images import BLOBS, GOOD, MEASURE_BAD, FetchImages
from pipelines.image_rules import URLS, ApplyCrossImageRules, ImageEntry, RejectBusyImages
from pipelines.joins import LookupJoin
from pipelines.measure_pool import WorkerPool
from pipelines.spool import image_bytes
from pipelines.tags import BAD, KEPT, REJECTED, reject

IMAGES = "images"
TO_SCORE = "to_score"
SCORE_CHUNK = 1000  # candidates per NSFW input; more is the rare hot image, scored again
_IMAGE = reasons.STAGE_IMAGE
# Join tags: a URL's fetch outcome; an image's verdict and its bytes.
OUTCOME, VERDICT, BYTES = "outcome", "verdict", "bytes"


class ToScore(NamedTuple):
    """The key of an NSFW model input: the image's record and candidates it decides, and
    the spool ref of its bytes (None when the bytes ride in the records)."""

    info: ImageInfo
    candidates: list[Candidate]
    ref: BlobRef | None = None


class ImageStage(beam.PTransform):
    """Text survivors -> kept candidates carrying their image, and rejected ones."""

    def __init__(
        self,
        raw,
        inputs: list[str],
        cfg: CurationConfig,
        workers: WorkerPool | None = None,
        nsfw_threads: int = 1,
        prior=None,
        spool: str | None = None,
    ) -> None:
        super().__init__()
        self.raw = raw  # every candidate of the run: the texts per image are counted over it
        self.archives = image_holders(inputs)
        self.cfg = cfg
        self.workers = workers  # the run's measuring processes (pipelines/runtime.py)
        self.nsfw_threads = nsfw_threads
        self.prior = prior  # (uid, phash) of images an earlier run kept: they always stay
        # A folder for the image bytes (pipelines/spool.py): kept records then carry a
        # BlobRef, which the shard writer reads; None: the bytes ride in the records.
        self.spool = spool

    def expand(self, candidates):
        cfg = self.cfg
        rejected = []
        # 1. Alt-texts per image URL, counted over every candidate, before any fetch.
        by_url = candidates | "Key by url" >> beam.Map(lambda c: (c.image_url, c))
        url_texts = self.raw | "Url texts" >> beam.Map(
            lambda c: (c.image_url, text_key(c.alt_text))
        )
        busy_url = by_url | "Texts per url" >> RejectBusyImages(url_texts, cfg, "url")
        rejected.append(busy_url[REJECTED])
        # 2. Fetch each URL once and measure it, in the fetch threads.
        fetched = busy_url[URLS] | "Fetch images" >> FetchImages(
            self.archives, cfg, self.workers, self.spool
        )
        attached = busy_url[KEPT] | "Join outcomes" >> LookupJoin(
            {OUTCOME: fetched[GOOD]}, _attach, outputs=(REJECTED, IMAGES), main=KEPT
        )
        rejected.append(attached[REJECTED])
        by_sha = attached[KEPT]
        # 3. Alt-texts per content hash: the same image under many URLs.
        sha_texts = by_sha | "Hash texts" >> beam.Map(lambda kv: (kv[0], text_key(kv[1].alt_text)))
        busy_sha = by_sha | "Texts per hash" >> RejectBusyImages(sha_texts, cfg, "hash")
        rejected.append(busy_sha[REJECTED])
        by_sha = busy_sha[KEPT]
        # 4. The cross-image rules, on one entry per image.
        verdicts = _entries(attached[IMAGES], by_sha) | "Image rules" >> ApplyCrossImageRules(
            cfg, self.prior
        )
        # 5. The one join that moves image bytes (or only their refs, with a spool):
        # verdicts, candidates and bytes by hash.
        final = by_sha | "Join verdicts" >> LookupJoin(
            {VERDICT: verdicts, BYTES: fetched[BLOBS]},
            _apply_verdict,
            cfg.nsfw,
            outputs=(REJECTED, TO_SCORE),
            main=KEPT,
        )
        rejected.append(final[REJECTED])
        kept = [final[KEPT]]
        # 6. The model rule last: the dearest step, on the survivors of every other rule.
        if cfg.nsfw:
            scored = final[TO_SCORE] | "NSFW" >> RejectNsfw(cfg, self.nsfw_threads)
            rejected.append(scored[REJECTED])
            kept.append(scored[KEPT])
        return {
            KEPT: tuple(kept) | "All image kept" >> beam.Flatten(),
            REJECTED: tuple(rejected) | "All image rejects" >> beam.Flatten(),
            BAD: {"fetch": fetched[BAD], "measure": fetched[MEASURE_BAD]},
        }


def _attach(_url: str, few: dict[str, list[Any]], candidates: Iterator[Candidate]) -> Iterator[Any]:
    """Join candidates to their URL's outcome: rejected, or (sha256, candidate) + image."""
    outcomes = few[OUTCOME]
    first = next(candidates, None)
    if first is None:
        return
    candidates = itertools.chain([first], candidates)
    # No outcome: fetching or measuring this URL raised; the dead letter has the traceback.
    outcome = outcomes[0] if outcomes else Rejection(_IMAGE, reasons.INTERNAL_ERROR, "no outcome")
    if isinstance(outcome, Rejection):
        for c in candidates:
            yield reject(c, outcome)
        return
    yield beam.pvalue.TaggedOutput(IMAGES, (outcome.sha256, outcome))
    for c in candidates:
        yield outcome.sha256, c


def _entries(images, by_sha):
    """(sha, ImageInfo) of every fetched URL + (sha, candidate) -> (sha, ImageEntry): one
    record per image (its smallest URL's), known by the smallest uid among its candidates."""
    one = images | "One per hash" >> beam.CombinePerKey(
        lambda infos: min(infos, key=lambda i: i.url)
    )
    rep_uid = (
        by_sha
        | "Uids" >> beam.Map(lambda kv: (kv[0], kv[1].uid))
        | ("Representative" >> beam.CombinePerKey(min))
    )
    return (
        {"info": one, "uid": rep_uid}
        | "Join images" >> beam.CoGroupByKey()
        | "Entries" >> beam.FlatMap(_entry)
    )


def _entry(item: tuple[str, dict[str, list[Any]]]) -> list[tuple[str, ImageEntry]]:
    sha, joined = item
    if not (joined["uid"] and joined["info"]):
        return []  # every candidate of the image was rejected by its texts per hash
    return [(sha, ImageEntry(joined["uid"][0], joined["info"][0]))]


def _apply_verdict(
    _sha: str, few: dict[str, list[Any]], candidates: Iterator[Candidate], nsfw: bool
) -> Iterator[Any]:
    """Candidates of one hash + its verdict + its bytes -> rejected, kept, or TO_SCORE."""
    verdict = few[VERDICT][0] if few[VERDICT] else None
    if verdict is None:
        verdict = Rejection(_IMAGE, reasons.FETCH_FAILED, "no verdict")
    elif not isinstance(verdict, Rejection) and not few[BYTES]:
        verdict = Rejection(_IMAGE, reasons.INTERNAL_ERROR, "image bytes missing")
    if isinstance(verdict, Rejection):
        for candidate in candidates:
            yield reject(candidate, verdict)
    elif nsfw:
        # The candidates ride to the model in chunks: an image on millions of pages is
        # scored once per chunk (the same score each time) rather than held whole.
        while chunk := list(itertools.islice(candidates, SCORE_CHUNK)):
            yield beam.pvalue.TaggedOutput(TO_SCORE, (ToScore(verdict, chunk), few[BYTES][0]))
    else:
        for candidate in candidates:
            yield _with_image(candidate, verdict, few[BYTES][0], None)


class RejectNsfw(beam.PTransform):
    """(ToScore, image bytes or BlobRef) -> KEPT candidates with their score, or REJECTED
    (ALIGN §3: pornographic images removed). The candidates ride in the model's key, so no
    join follows the model."""

    def __init__(self, cfg: CurationConfig, threads: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.threads = threads

    def expand(self, to_score):
        from pipelines.nsfw import score_nsfw  # Beam's ML modules: ~1 s, only here

        return (
            to_score
            | "Image for the model" >> beam.Map(_for_model)
            | "Score NSFW" >> score_nsfw(self.threads)
            | "Apply NSFW" >> beam.FlatMap(_apply_nsfw, self.cfg).with_outputs(REJECTED, main=KEPT)
        )


def _for_model(item: tuple[ToScore, bytes | BlobRef]) -> tuple[ToScore, bytes]:
    """A spooled image's bytes are read for the model; its ref rides in the key, so the
    bytes do not travel on."""
    key, image = item
    if isinstance(image, BlobRef):
        return key._replace(ref=image), image_bytes(image)
    return key, image


def _apply_nsfw(item, cfg: CurationConfig) -> Iterator[Any]:
    key, result = item
    score = float(result.inference)
    rejection = check_nsfw(score, cfg)
    stored = result.example if key.ref is None else key.ref
    for candidate in key.candidates:
        if rejection is not None:
            yield reject(candidate, rejection)
        else:
            yield _with_image(candidate, key.info, stored, score)


def _with_image(
    candidate: Candidate, info: ImageInfo, data: bytes | BlobRef, score: float | None
) -> Candidate:
    return dataclasses.replace(
        candidate,
        width=info.width,
        height=info.height,
        original_width=info.original_width,
        original_height=info.original_height,
        image_format=info.image_format,
        original_format=info.original_format,
        sha256=info.sha256,
        phash=info.phash,
        nsfw_score=score,
        image=data,
    )
