"""The image stage: fetch each unique image once, measure it, apply ALIGN's image rules (§3).

Cheapest first: texts per URL are counted before anything is fetched; the header decides
size and aspect before any decode; hashing uses a draft decode; near-duplicates are found
by banding; the NSFW model runs last, on the survivors only, through RunInference.
Decisions are the pure functions of filters/; this module only composes them.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import traceback
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.utils.shared import Shared

from curation import reasons
from curation.archive import iter_responses, read_response_at
from curation.config import CurationConfig
from curation.extract import is_table_path
from curation.fetch import Fetcher, FetchResult, FetchSettings
from curation.files import is_image_path, read_image_file
from curation.record import BlobRef, Candidate, Rejected, Rejection
from curation.stats import Funnel
from filters.dataset import text_key
from filters.dedup import EvalIndex, bands, smaller_neighbours
from filters.image import image_phash, sniff_image
from filters.measure import ImageInfo, measure
from filters.nsfw import check_nsfw
from pipelines import progress
from pipelines.deadletter import BAD
from pipelines.joins import LookupJoin
from pipelines.measure_pool import DEFAULT_TARGET, MeasurePool, PoolUnavailable, take_pool
from pipelines.spool import SpoolWriter, image_bytes

KEPT = "kept"
REJECTED = "rejected"
URLS = "urls"
PRIOR = "!"
IMAGES = "images"
GOOD = "good"  # FetchImages' main output (Beam names with_exception_handling's main so)
# (sha256, image bytes or their BlobRef in the spool): apart from the metadata, joined once
BLOBS = "blobs"
MEASURE_BAD = "measure_bad"  # dead letters of measuring, which runs in the fetch threads
TO_SCORE = "to_score"
SCORE_CHUNK = 1000  # candidates per NSFW input; more is the rare hot image, scored again
_IMAGE = reasons.STAGE_IMAGE


def _reject(candidate: Candidate, rejection: Rejection) -> beam.pvalue.TaggedOutput:
    Metrics.counter(rejection.stage, rejection.reason).inc()
    return beam.pvalue.TaggedOutput(REJECTED, Rejected(candidate, rejection))


def fetch_settings(cfg: CurationConfig) -> FetchSettings:
    """The fetcher's view of the run configuration."""
    return FetchSettings(
        user_agent=cfg.user_agent,
        connect_timeout=cfg.connect_timeout,
        read_timeout=cfg.read_timeout,
        max_retries=cfg.max_retries,
        backoff_seconds=cfg.backoff_seconds,
        max_backoff_seconds=cfg.max_backoff_seconds,
        max_redirects=cfg.max_redirects,
        max_bytes=cfg.max_image_bytes,
        deadline_seconds=cfg.fetch_deadline_seconds,
        per_host_connections=cfg.per_host_connections,
        respect_robots=cfg.respect_robots,
        respect_opt_out=cfg.respect_opt_out,
        allow_private_network=cfg.allow_private_network,
    )


# --- Texts per image (ALIGN §3: images with more than 1000 alt-texts), by any key.


class RejectBusyImages(beam.PTransform):
    """(key, candidate) -> kept (key, candidate) or rejected, when the key (an image URL
    or content hash) carries more than max_texts_per_image distinct alt-texts in `texts`."""

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
            {"n": busy}, _apply_busy, self.by, outputs=(REJECTED, URLS), main=KEPT
        )


def _apply_busy(
    key: str, few: dict[str, list[int]], candidates: Iterator[Candidate], by: str
) -> Iterator[Any]:
    first = next(candidates, None)
    if first is None:
        return
    n = few["n"]
    if n:
        rejection = Rejection(_IMAGE, reasons.IMAGE_TOO_MANY_TEXTS, f"{n[0]} alt-texts by {by}")
        for c in itertools.chain([first], candidates):
            yield _reject(c, rejection)
        return
    yield beam.pvalue.TaggedOutput(URLS, key)
    for c in itertools.chain([first], candidates):
        yield key, c


# --- Fetching: the archive when it holds the image, else HTTP.


class IndexArchiveImagesFn(beam.DoFn):
    """An archive -> (image URL, (file, offset)) for every 2xx image record in it."""

    def process(self, path: str) -> Iterator[tuple[str, tuple[str, int]]]:
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as fh:
            for resp in iter_responses(fh, Funnel()):
                if 200 <= resp.status < 300 and (
                    resp.mime_type.startswith("image/") or sniff_image(resp.body[:16])
                ):
                    yield resp.url, (path, resp.offset)


# What the measuring processes run (tests swap in a faulty one; see pipelines/measure_pool.py).
MEASURE_TARGET = DEFAULT_TARGET


class FetchImagesFn(beam.DoFn):
    """A batch of (url, archive location or None) -> (url, FetchResult), concurrently.

    With `measured`, each image is also measured as soon as its fetch thread has it (header,
    size rule, draft decode, hashes): in cfg.measure_processes child processes, or in the
    fetch thread itself when that is 0. The outputs are then (url, ImageInfo | Rejection)
    plus BLOBS (sha256, bytes) for each image that passed, and MEASURE_BAD dead letters for
    a measurement that raised.
    """

    def __init__(
        self, cfg: CurationConfig, measured: bool = False, spool: str | None = None
    ) -> None:
        self.cfg = cfg
        self.measured = measured
        self.spool = spool  # with a folder, BLOBS carry BlobRefs to the bytes written there

    def setup(self) -> None:
        settings = fetch_settings(self.cfg)
        # One fetcher per worker process, shared by every fetching step: robots.txt is then
        # fetched once per host per worker, and the per-host limit holds across steps.
        self.fetcher = _FETCHERS.acquire(lambda: _SharedFetcher(settings), tag=repr(settings))
        self.pool = ThreadPoolExecutor(max_workers=max(1, self.cfg.fetch_threads))
        # Started with the first image, so that a run that fetches nothing starts none.
        self.measurer: MeasurePool | None = None
        self.pool_unavailable = False

    def teardown(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        if getattr(self, "spooled", None) is not None:
            self.spooled.close()  # a bundle that failed: its file is removed with the spool
        if self.measurer is not None:
            self.measurer.close()
            self.measurer = None

    def _measure_pool(self) -> MeasurePool | None:
        # -1 (auto) is settled at the entry point; a config that skipped it measures here.
        wanted = self.measured and self.cfg.measure_processes > 0
        if wanted and self.measurer is None and not self.pool_unavailable:
            try:
                self.measurer = take_pool(
                    self.cfg.measure_processes, self.cfg, self.cfg.measure_timeout, MEASURE_TARGET
                )
            except PoolUnavailable as e:
                self._without_pool(e)
        return self.measurer

    def _without_pool(self, why: PoolUnavailable) -> None:
        # The children are a speed-up, not a rule: without them every image is measured
        # the same way, here. Said once, loudly, rather than as a dead letter per image.
        if not self.pool_unavailable:
            self.pool_unavailable = True
            logging.getLogger(__name__).warning("%s", why)

    def start_bundle(self) -> None:
        # The bytes of one image under many URLs go to the join once per bundle, not once
        # per URL (an image on 500 pages would otherwise cross the shuffle 500 times).
        self.sent: set[str] = set()
        self.spooled = SpoolWriter(self.spool) if self.spool else None

    def process(self, batch: Sequence[tuple[str, tuple[str, int] | None]]) -> Iterator[Any]:
        # A hash counts as sent once its whole batch is out: a batch that raises becomes a
        # dead letter with none of its outputs (Beam drops them), and another URL of the same
        # image in a later batch must still send the bytes.
        self.batch_sent: set[str] = set()
        yield from self._process(batch)
        self.sent |= self.batch_sent

    def _process(self, batch: Sequence[tuple[str, tuple[str, int] | None]]) -> Iterator[Any]:
        self._measure_pool()
        from_archive = [(u, loc) for u, loc in batch if loc is not None]
        # Paths under file_roots (URL tables only) are read from their filesystem, in every
        # mode; the rest of what no archive holds is fetched over HTTP.
        from_web, from_files = [], []
        for url, loc in batch:
            if loc is None:
                (from_files if is_image_path(url) else from_web).append(url)
        read = list(self._read_archives(from_archive))
        for outputs in self.pool.map(lambda ur: self._outputs(*ur), read):
            yield from self._once(outputs)
        for ok, outputs in self.pool.map(self._read_file, from_files):
            progress.bump("images", int(ok))
            yield from self._once(outputs)
        if self.cfg.images_from == "archive":
            for url in from_web:
                yield from self._outputs(url, FetchResult(url, reason=reasons.NOT_IN_ARCHIVE))
            return
        for ok, outputs in self.pool.map(self._fetch, from_web):
            progress.bump("images", int(ok))
            yield from self._once(outputs)

    def _once(self, outputs: list[Any]) -> Iterator[Any]:
        for out in outputs:
            if isinstance(out, beam.pvalue.TaggedOutput) and out.tag == BLOBS:
                sha, data = out.value
                if sha in self.sent or sha in self.batch_sent:
                    continue
                if self.spooled is not None:
                    out = beam.pvalue.TaggedOutput(BLOBS, (sha, self.spooled.put(data)))
                self.batch_sent.add(sha)
            yield out

    def _read_file(self, path: str) -> tuple[bool, list[Any]]:
        result = read_image_file(
            path, self.cfg.file_roots, self.cfg.max_image_bytes, _open_uncompressed
        )
        return result.ok, self._outputs(path, _sniffed(result))

    def _fetch(self, url: str) -> tuple[bool, list[Any]]:
        result = self.fetcher.fetch(url)
        return result.ok, self._outputs(url, _sniffed(result))

    def _outputs(self, url: str, result: FetchResult) -> list[Any]:
        """What one fetched URL yields (run in a pool thread)."""
        if not self.measured:
            return [(url, result)]
        try:
            outcome = None
            pool = self.measurer
            if pool is not None and result.ok and not self.pool_unavailable:
                try:
                    outcome = pool.measure(url, result.data)  # type: ignore[arg-type]
                except PoolUnavailable as e:
                    self._without_pool(e)
            if outcome is None:
                outcome = measure(url, result, self.cfg)
        except Exception as exc:  # a dead letter with its traceback, as Beam would make
            failure = (type(exc), repr(exc), traceback.format_exception(exc))
            return [beam.pvalue.TaggedOutput(MEASURE_BAD, ((url, result), failure))]
        if isinstance(outcome, Rejection):
            return [(url, outcome)]
        info, data = outcome
        return [(url, info), beam.pvalue.TaggedOutput(BLOBS, (info.sha256, data))]

    def finish_bundle(self) -> None:
        # The spool file is complete before the runner commits the refs to it.
        if self.spooled is not None:
            self.spooled.close()
        progress.flush()

    def _read_archives(
        self, items: list[tuple[str, tuple[str, int]]]
    ) -> Iterator[tuple[str, FetchResult]]:
        by_file: dict[str, list[tuple[str, int]]] = {}
        for url, (path, offset) in items:
            by_file.setdefault(path, []).append((url, offset))
        for path, wanted in sorted(by_file.items()):
            with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as fh:
                for url, offset in sorted(wanted, key=lambda x: x[1]):
                    resp = read_response_at(fh, offset, self.cfg.max_image_bytes)
                    if resp is None:
                        yield url, FetchResult(url, reason=reasons.NOT_IN_ARCHIVE, detail=path)
                    else:
                        progress.bump("images")
                        yield url, _sniffed(FetchResult(url, data=resp.body))


def _open_uncompressed(path: str) -> Any:
    # Image files are read as stored: Beam would otherwise gunzip a name ending in .gz.
    return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)


class _SharedFetcher(Fetcher):
    """A Fetcher that Beam's Shared can hold (it needs a weak-referenceable object)."""


_FETCHERS = Shared()


def _sniffed(result: FetchResult) -> FetchResult:
    if result.ok and sniff_image(result.data[:32]) is None:
        return FetchResult(result.url, reason=reasons.NOT_AN_IMAGE, detail="magic bytes")
    return result


class FetchImages(beam.PTransform):
    """Unique image URLs -> `good`: (url, FetchResult), each URL fetched once; `bad`: the
    batches whose fetching raised (dead letters). With `measured`, `good` holds
    (url, ImageInfo | Rejection), plus BLOBS and MEASURE_BAD (see FetchImagesFn)."""

    def __init__(
        self,
        archives: list[str],
        cfg: CurationConfig,
        measured: bool = False,
        spool: str | None = None,
    ) -> None:
        super().__init__()
        self.archives = sorted(archives)
        self.cfg = cfg
        self.measured = measured
        self.spool = spool

    def expand(self, urls):
        if self.cfg.images_from == "http" or not self.archives:
            located = urls | "No archive" >> beam.Map(lambda u: (u, None))
        else:
            index = (
                urls.pipeline
                | "List archives" >> beam.Create(self.archives)
                | "Index image records" >> beam.ParDo(IndexArchiveImagesFn())
                # One capture per URL, the same on every runner.
                | "Earliest capture" >> beam.CombinePerKey(min)
            )
            located = (
                {"u": urls | "Key urls" >> beam.Map(lambda u: (u, None)), "loc": index}
                | "Join archive index" >> beam.CoGroupByKey()
                | "Wanted"
                >> beam.FlatMap(
                    lambda kv: (
                        [(kv[0], min(kv[1]["loc"]) if kv[1]["loc"] else None)] if kv[1]["u"] else []
                    )
                )
            )
        return (
            located
            # Spread the URLs so that each worker fetches from many hosts at once.
            | "Spread" >> beam.Reshuffle()
            | "Batch"
            >> beam.BatchElements(
                min_batch_size=self.cfg.fetch_threads, max_batch_size=8 * self.cfg.fetch_threads
            )
            | "Fetch"
            >> beam.ParDo(FetchImagesFn(self.cfg, self.measured, self.spool))
            .with_outputs(BLOBS, MEASURE_BAD, main=GOOD)
            .with_exception_handling()
        )


def _attach(_url: str, few: dict[str, list[Any]], candidates: Iterator[Candidate]) -> Iterator[Any]:
    """Join candidates to their URL's outcome: rejected, or (sha256, candidate) + image."""
    outcomes = few["o"]
    first = next(candidates, None)
    if first is None:
        return
    candidates = itertools.chain([first], candidates)
    # No outcome: fetching or measuring this URL raised; the dead letter has the traceback.
    outcome = outcomes[0] if outcomes else Rejection(_IMAGE, reasons.INTERNAL_ERROR, "no outcome")
    if isinstance(outcome, Rejection):
        for c in candidates:
            yield _reject(c, outcome)
        return
    yield beam.pvalue.TaggedOutput(IMAGES, (outcome.sha256, outcome))
    for c in candidates:
        yield outcome.sha256, c


# --- Near-duplicates and eval duplicates, on (representative uid, phash).


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


def _eval_entry(path: str) -> list[tuple[str, str]]:
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as fh:
        hashed = image_phash(fh.read())
    if isinstance(hashed, Rejection):
        return []  # an unreadable eval file cannot match anything; counted nowhere
    return [(path.rsplit("/", 1)[-1], hashed)]


class ImageStage(beam.PTransform):
    """Text survivors -> kept candidates carrying their image, and rejected ones."""

    def __init__(
        self, raw, inputs: list[str], cfg: CurationConfig, prior=None, spool: str | None = None
    ) -> None:
        super().__init__()
        self.raw = raw
        self.archives = [p for p in inputs if not is_table_path(p)]
        self.cfg = cfg
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
            self.archives, cfg, True, self.spool
        )
        outcomes = fetched[GOOD]
        attached = busy_url[KEPT] | "Join outcomes" >> LookupJoin(
            {"o": outcomes}, _attach, outputs=(REJECTED, IMAGES), main=KEPT
        )
        rejected.append(attached[REJECTED])
        by_sha = attached[KEPT]
        # 3. Alt-texts per content hash: the same image under many URLs.
        sha_texts = by_sha | "Hash texts" >> beam.Map(lambda kv: (kv[0], text_key(kv[1].alt_text)))
        busy_sha = by_sha | "Texts per hash" >> RejectBusyImages(sha_texts, cfg, "hash")
        rejected.append(busy_sha[REJECTED])
        by_sha = busy_sha[KEPT]
        images = attached[IMAGES] | "One per hash" >> beam.CombinePerKey(
            lambda infos: min(infos, key=lambda i: i.url)
        )
        # Each image is known by the smallest uid among its candidates.
        rep_uid = (
            by_sha
            | "Uids" >> beam.Map(lambda kv: (kv[0], kv[1].uid))
            | ("Representative" >> beam.CombinePerKey(min))
        )
        entries = (
            {"img": images, "uid": rep_uid}
            | "Join images" >> beam.CoGroupByKey()
            | "Entries"
            >> beam.FlatMap(
                lambda kv: (
                    [(kv[0], (kv[1]["uid"][0], kv[1]["img"][0]))]
                    if kv[1]["uid"] and kv[1]["img"]
                    else []
                )
            )
        )
        verdicts = entries | "Image rules" >> _ImageRules(cfg, self.prior)
        # 4. The one join that moves image bytes (or only their refs, with a spool):
        # verdicts, candidates and bytes by hash.
        final = by_sha | "Join verdicts" >> LookupJoin(
            {"v": verdicts, "b": fetched[BLOBS]},
            _apply_verdict,
            cfg.nsfw,
            outputs=(REJECTED, TO_SCORE),
            main=KEPT,
        )
        rejected.append(final[REJECTED])
        kept = [final[KEPT]]
        # 5. NSFW last: the dearest step, on the survivors of every other rule only. The
        # survivors' candidates ride in the key, so no join follows the model.
        if cfg.nsfw:
            from pipelines.nsfw import score_nsfw  # Beam's ML modules: ~1 s, only here

            scored = (
                final[TO_SCORE]
                | "Image for the model" >> beam.Map(_for_model)
                | "Score NSFW" >> score_nsfw(cfg.nsfw_threads)
                | "Apply NSFW" >> beam.FlatMap(_apply_nsfw, cfg).with_outputs(REJECTED, main=KEPT)
            )
            rejected.append(scored[REJECTED])
            kept.append(scored[KEPT])
        return {
            KEPT: tuple(kept) | "All image kept" >> beam.Flatten(),
            REJECTED: tuple(rejected) | "All image rejects" >> beam.Flatten(),
            BAD: {"fetch": fetched[BAD], "measure": fetched[MEASURE_BAD]},
        }


class _ImageRules(beam.PTransform):
    """(sha, (rep uid, ImageInfo)) -> (sha, Rejection | ImageInfo): eval and near-duplicates."""

    def __init__(self, cfg: CurationConfig, prior=None) -> None:
        super().__init__()
        self.cfg = cfg
        self.prior = prior

    def expand(self, entries):
        cfg = self.cfg
        p = entries.pipeline
        verdicts = []
        survivors = entries
        # Eval-set duplicates: the eval hashes are a fixed, small reference set.
        if cfg.eval_images:
            eval_paths = _expand_globs(cfg.eval_images)
            index = (
                p
                | "Eval images" >> beam.Create(eval_paths)
                | "Hash eval images" >> beam.FlatMap(_eval_entry)
                | "Eval list" >> beam.combiners.ToList()
                | "Eval index" >> beam.Map(EvalIndex)
            )
            checked = survivors | "Eval duplicates" >> beam.FlatMap(
                _check_eval, cfg.eval_dup_distance, index=beam.pvalue.AsSingleton(index)
            ).with_outputs(REJECTED, main=KEPT)
            verdicts.append(checked[REJECTED])
            survivors = checked[KEPT]
        # Near-duplicates within the run.
        if cfg.near_dup_distance >= 0:
            hashes = survivors | "Uid and hash" >> beam.Map(lambda kv: (kv[1][0], kv[1][1].phash))
            if self.prior is not None:
                # Images kept by an earlier run sort first ("!" precedes every hex digit), so
                # they win every comparison and are never rejected here.
                prior = self.prior | "Prior first" >> beam.Map(lambda kh: (PRIOR + kh[0], kh[1]))
                hashes = (hashes, prior) | "With prior" >> beam.Flatten()
            losers = (
                hashes
                | "Near duplicates" >> FindNearDuplicates(cfg.near_dup_distance)
                | "Only new" >> beam.Filter(lambda kv: not kv[0].startswith(PRIOR))
                | "Kept uid" >> beam.Map(lambda kv: (kv[0], kv[1].removeprefix(PRIOR)))
            )
            by_uid = survivors | "Key by rep uid" >> beam.Map(lambda kv: (kv[1][0], kv))
            checked = (
                {"loser": losers, "e": by_uid}
                | "Join near dups" >> beam.CoGroupByKey()
                | "Drop near dups" >> beam.FlatMap(_drop_near).with_outputs(REJECTED, main=KEPT)
            )
            verdicts.append(checked[REJECTED])
            survivors = checked[KEPT]
        kept = survivors | "Survivor" >> beam.Map(lambda kv: (kv[0], kv[1][1]))
        return (*verdicts, kept) | "All verdicts" >> beam.Flatten()


def _expand_globs(patterns: Iterable[str]) -> list[str]:
    found = []
    for pattern in patterns:
        for match in FileSystems.match([pattern])[0].metadata_list:
            found.append(match.path)
    return sorted(set(found))


def _check_eval(entry, k: int, index: EvalIndex) -> Iterator[Any]:
    sha, (_, info) = entry
    hit = index.closest(info.phash, k)
    if hit is None:
        yield entry
    else:
        yield beam.pvalue.TaggedOutput(
            REJECTED,
            (sha, Rejection(_IMAGE, reasons.EVAL_DUPLICATE, f"{hit[0]} (distance {hit[1]})")),
        )


def _drop_near(item) -> Iterator[Any]:
    _, joined = item
    for sha, entry in joined["e"]:
        if joined["loser"]:
            yield beam.pvalue.TaggedOutput(
                REJECTED, (sha, Rejection(_IMAGE, reasons.NEAR_DUPLICATE, joined["loser"][0]))
            )
        else:
            yield sha, entry


def _apply_verdict(
    _sha: str, few: dict[str, list[Any]], candidates: Iterator[Candidate], nsfw: bool
) -> Iterator[Any]:
    """Candidates of one hash + its verdict + its bytes -> rejected, kept, or TO_SCORE."""
    verdict = few["v"][0] if few["v"] else None
    if verdict is None:
        verdict = Rejection(_IMAGE, reasons.FETCH_FAILED, "no verdict")
    elif not isinstance(verdict, Rejection) and not few["b"]:
        verdict = Rejection(_IMAGE, reasons.INTERNAL_ERROR, "image bytes missing")
    if isinstance(verdict, Rejection):
        for candidate in candidates:
            yield _reject(candidate, verdict)
    elif nsfw:
        # The candidates ride to the model in chunks: an image on millions of pages is
        # scored once per chunk (the same score each time) rather than held whole.
        while chunk := list(itertools.islice(candidates, SCORE_CHUNK)):
            yield beam.pvalue.TaggedOutput(TO_SCORE, ((verdict, chunk), few["b"][0]))
    else:
        for candidate in candidates:
            yield _with_image(candidate, verdict, few["b"][0], None)


def _for_model(item: tuple[tuple[ImageInfo, list[Candidate]], bytes | BlobRef]) -> tuple:
    """((info, candidates), image) -> ((info, candidates, ref), bytes): the model reads
    bytes; a spooled image's ref rides in the key, so the bytes do not travel on."""
    (info, candidates), image = item
    if isinstance(image, BlobRef):
        return (info, candidates, image), image_bytes(image)
    return (info, candidates, None), image


def _apply_nsfw(item, cfg: CurationConfig) -> Iterator[Any]:
    (info, candidates, ref), result = item
    score = float(result.inference)
    rejection = check_nsfw(score, cfg)
    stored = result.example if ref is None else ref
    for candidate in candidates:
        if rejection is not None:
            yield _reject(candidate, rejection)
        else:
            yield _with_image(candidate, info, stored, score)


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
        sha256=info.sha256,
        phash=info.phash,
        nsfw_score=score,
        image=data,
    )
