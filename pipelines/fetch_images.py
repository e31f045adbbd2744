"""Fetching and measuring: each unique image URL read once (pipelines/image_read.py) and
measured as soon as its reading thread has it (filters/measure.py: the decode guard, the
size rules, the hashes), in the run's measuring processes or in the thread itself.

Outputs of `FetchImages`: `good`, (url, ImageInfo | Rejection) per URL; BLOBS, (sha256,
bytes or their BlobRef in the spool) once per image and bundle; MEASURE_BAD, dead letters
of measuring; `bad`, batches whose reading raised.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

import apache_beam as beam

from curation.config import CurationConfig
from curation.fetch import FetchResult
from curation.record import Rejection
from filters.measure import ImageInfo, Measured, MeasureSettings, measure
from pipelines import progress
from pipelines.image_read import GOOD, ImageReader, LocateImages, Location, spread_in_batches
from pipelines.measure_pool import MeasurePool, PoolUnavailable, WorkerPool
from pipelines.spool import SpoolWriter
from pipelines.tags import failure

BLOBS = "blobs"
MEASURE_BAD = "measure_bad"  # dead letters of measuring, which runs in the reading threads


class Measurer:
    """Measures fetched images in a worker: in the run's measuring processes when it has
    them, else (or once they cannot start) in the calling thread, the same way."""

    def __init__(self, settings: MeasureSettings, workers: WorkerPool | None) -> None:
        self.settings = settings
        self.workers = workers
        self.pool: MeasurePool | None = None
        self.unavailable = False

    def start(self) -> None:
        """Take the processes (the warm pool, if the run started one), once."""
        if self.workers is not None and self.pool is None and not self.unavailable:
            try:
                self.pool = self.workers.take()
            except PoolUnavailable as e:
                self._without_pool(e)

    def measure(self, url: str, result: FetchResult) -> Measured:
        """The image's record and stored bytes, or why it is rejected; raises on a bug."""
        pool = self.pool
        if pool is not None and result.ok and not self.unavailable:
            try:
                return pool.measure(url, result.data)  # type: ignore[arg-type]
            except PoolUnavailable as e:
                self._without_pool(e)
        return measure(url, result, self.settings)

    def _without_pool(self, why: PoolUnavailable) -> None:
        # The processes are a speed-up, not a rule: without them every image is measured
        # the same way, here. Said once, loudly, rather than as a dead letter per image.
        if not self.unavailable:
            self.unavailable = True
            logging.getLogger(__name__).warning("%s", why)

    def close(self) -> None:
        """Stop the processes this worker took."""
        if self.pool is not None:
            self.pool.close()
            self.pool = None


class FetchImagesFn(beam.DoFn):
    """A batch of (url, Location) -> (url, ImageInfo | Rejection), BLOBS and MEASURE_BAD
    (see the module's docstring)."""

    def __init__(
        self, cfg: CurationConfig, workers: WorkerPool | None, spool: str | None = None
    ) -> None:
        self.cfg = cfg
        self.workers = workers
        self.spool = spool  # with a folder, BLOBS carry BlobRefs to the bytes written there

    def setup(self) -> None:
        self.reader = ImageReader(self.cfg)
        # Its processes start with the first batch, so that a run that fetches nothing
        # starts none.
        self.measurer = Measurer(MeasureSettings.of(self.cfg), self.workers)

    def teardown(self) -> None:
        self.reader.close()
        if getattr(self, "spooled", None) is not None:
            self.spooled.close()  # a bundle that failed: its file is removed with the spool
        self.measurer.close()

    def start_bundle(self) -> None:
        # The bytes of one image under many URLs go to the join once per bundle, not once
        # per URL (an image on 500 pages would otherwise cross the shuffle 500 times).
        self.sent: set[str] = set()
        self.spooled = SpoolWriter(self.spool) if self.spool else None

    def process(self, batch: Sequence[tuple[str, Location]]) -> Iterator[Any]:
        # A hash counts as sent once its whole batch is out: a batch that raises becomes a
        # dead letter with none of its outputs (Beam drops them), and another URL of the same
        # image in a later batch must still send the bytes.
        self.measurer.start()
        batch_sent: set[str] = set()
        for outputs in self.reader.read(batch, self._measured):
            yield from self._once(outputs, batch_sent)
        self.sent |= batch_sent

    def _measured(self, url: str, result: FetchResult) -> list[Any]:
        """What one read URL yields (run in its reading thread)."""
        try:
            outcome = self.measurer.measure(url, result)
        except Exception as exc:  # a dead letter with its traceback, as Beam would make
            return [beam.pvalue.TaggedOutput(MEASURE_BAD, ((url, result), failure(exc)))]
        if isinstance(outcome, Rejection):
            return [(url, outcome)]
        info, data = outcome
        return [(url, info), beam.pvalue.TaggedOutput(BLOBS, (info.sha256, data))]

    def _once(self, outputs: list[Any], batch_sent: set[str]) -> Iterator[Any]:
        for out in outputs:
            if isinstance(out, beam.pvalue.TaggedOutput) and out.tag == BLOBS:
                sha, data = out.value
                if sha in self.sent or sha in batch_sent:
                    continue
                if self.spooled is not None:
                    out = beam.pvalue.TaggedOutput(BLOBS, (sha, self.spooled.put(data)))
                batch_sent.add(sha)
            yield out

    def finish_bundle(self) -> None:
        # The spool file is complete before the runner commits the refs to it.
        if self.spooled is not None:
            self.spooled.close()
        progress.flush()


class FetchImages(beam.PTransform):
    """Unique image URLs -> the outputs of the module's docstring."""

    def __init__(
        self,
        archives: list[str],
        cfg: CurationConfig,
        workers: WorkerPool | None,
        spool: str | None = None,
    ) -> None:
        super().__init__()
        self.archives = sorted(archives)
        self.cfg = cfg
        self.workers = workers
        self.spool = spool

    def expand(self, urls):
        located = urls | "Locate" >> LocateImages(self.archives, self.cfg)
        return (
            spread_in_batches(located, self.cfg)
            | "Fetch"
            >> beam.ParDo(FetchImagesFn(self.cfg, self.workers, self.spool))
            .with_outputs(BLOBS, MEASURE_BAD, main=GOOD)
            .with_exception_handling()
        )


__all__ = ["BLOBS", "GOOD", "MEASURE_BAD", "FetchImages", "FetchImagesFn", "ImageInfo"]
