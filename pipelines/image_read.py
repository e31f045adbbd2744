"""Reading image bytes: from the input archives that hold them, from files under
file_roots, or over HTTP; each URL's bytes or a named reason as a `FetchResult`.

`ImageReader` is the per-worker reader (a fetcher shared by every step of the process and
a pool of threads); `ReadImages` applies it alone, for steps that need the bytes but not
the image rules (the report's previews). The image stage's `FetchImages` adds measuring.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.utils.shared import Shared

from curation import reasons
from curation.archive import iter_responses, read_response_at
from curation.config import CurationConfig
from curation.fetch import Fetcher, FetchResult, FetchSettings
from curation.files import is_image_path, read_image_file
from curation.stats import Funnel
from filters.image import sniff_image
from pipelines import progress

GOOD = "good"  # the main output's tag where Beam's with_exception_handling names it
Location = tuple[str, int] | None  # (archive file, record offset), or None: not archived
T = TypeVar("T")


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


class IndexArchiveImagesFn(beam.DoFn):
    """An archive -> (image URL, (file, offset)) for every 2xx image record in it."""

    def process(self, path: str) -> Iterator[tuple[str, tuple[str, int]]]:
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as fh:
            for resp in iter_responses(fh, Funnel()):
                if 200 <= resp.status < 300 and (
                    resp.mime_type.startswith("image/") or sniff_image(resp.body[:16])
                ):
                    yield resp.url, (path, resp.offset)


class LocateImages(beam.PTransform):
    """Unique image URLs -> (url, Location): where an input archive holds the image."""

    def __init__(self, archives: list[str], cfg: CurationConfig) -> None:
        super().__init__()
        self.archives = sorted(archives)
        self.cfg = cfg

    def expand(self, urls):
        if self.cfg.images_from == "http" or not self.archives:
            return urls | "No archive" >> beam.Map(lambda u: (u, None))
        index = (
            urls.pipeline
            | "List archives" >> beam.Create(self.archives)
            | "Index image records" >> beam.ParDo(IndexArchiveImagesFn())
            # One capture per URL, the same on every runner.
            | "Earliest capture" >> beam.CombinePerKey(min)
        )
        return (
            {"url": urls | "Key urls" >> beam.Map(lambda u: (u, None)), "location": index}
            | "Join archive index" >> beam.CoGroupByKey()
            | "Wanted" >> beam.FlatMap(_wanted)
        )


def _wanted(item: tuple[str, dict[str, list[Any]]]) -> list[tuple[str, Location]]:
    url, joined = item
    if not joined["url"]:
        return []  # an archived image no candidate asks for
    return [(url, min(joined["location"]) if joined["location"] else None)]


class ImageReader:
    """Reads a batch of image URLs in threads: archived ones from their archive, paths under
    file_roots from their filesystem, the rest over HTTP (unless images_from is archive).
    Made in a DoFn's setup: one per worker thread of Beam's."""

    def __init__(self, cfg: CurationConfig) -> None:
        settings = fetch_settings(cfg)
        self.cfg = cfg
        # One fetcher per worker process, shared by every reading step: robots.txt is then
        # fetched once per host per worker, and the per-host limit holds across steps.
        self.fetcher = _FETCHERS.acquire(lambda: _SharedFetcher(settings), tag=repr(settings))
        self.threads = ThreadPoolExecutor(max_workers=max(1, cfg.fetch_threads))

    def close(self) -> None:
        """Stop the threads (queued reads are dropped)."""
        self.threads.shutdown(wait=False, cancel_futures=True)

    def read(
        self, batch: Sequence[tuple[str, Location]], then: Callable[[str, FetchResult], T]
    ) -> Iterator[T]:
        """then(url, result) for every URL of the batch, run in the reading thread (so that
        what follows a read, measuring, overlaps the other reads)."""
        archived = [(u, loc) for u, loc in batch if loc is not None]
        files = [u for u, loc in batch if loc is None and is_image_path(u)]
        web = [u for u, loc in batch if loc is None and not is_image_path(u)]
        results = list(self._read_archives(archived))
        yield from self.threads.map(lambda ur: then(*ur), results)
        yield from self.threads.map(lambda path: self._counted(path, self._file, then), files)
        if self.cfg.images_from == "archive":
            for url in web:
                yield then(url, FetchResult(url, reason=reasons.NOT_IN_ARCHIVE))
            return
        yield from self.threads.map(lambda url: self._counted(url, self._fetch, then), web)

    def _counted(
        self, url: str, read: Callable[[str], FetchResult], then: Callable[[str, FetchResult], T]
    ) -> T:
        result = read(url)
        progress.bump("images", int(result.ok))
        return then(url, result)

    def _file(self, path: str) -> FetchResult:
        result = read_image_file(
            path, self.cfg.file_roots, self.cfg.max_image_bytes, _open_uncompressed
        )
        return _sniffed(result)

    def _fetch(self, url: str) -> FetchResult:
        return _sniffed(self.fetcher.fetch(url))

    def _read_archives(self, items: list[tuple[str, tuple[str, int]]]) -> Iterator[tuple]:
        # Each archive opened once, its records read in file order.
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


def spread_in_batches(located, cfg: CurationConfig):
    """(url, Location) -> batches for a reading DoFn: spread so that each worker reads from
    many hosts at once, batched to keep its threads busy."""
    return (
        located
        | "Spread" >> beam.Reshuffle()
        | "Batch"
        >> beam.BatchElements(
            min_batch_size=cfg.fetch_threads, max_batch_size=8 * cfg.fetch_threads
        )
    )


class ReadImagesFn(beam.DoFn):
    """A batch of (url, Location) -> (url, FetchResult) for each."""

    def __init__(self, cfg: CurationConfig) -> None:
        self.cfg = cfg

    def setup(self) -> None:
        self.reader = ImageReader(self.cfg)

    def teardown(self) -> None:
        self.reader.close()

    def process(self, batch: Sequence[tuple[str, Location]]) -> Iterator[tuple[str, FetchResult]]:
        yield from self.reader.read(batch, lambda url, result: (url, result))

    def finish_bundle(self) -> None:
        progress.flush()


class ReadImages(beam.PTransform):
    """Unique image URLs -> `good`: (url, FetchResult), each read once; `bad`: the batches
    whose reading raised (dead letters)."""

    def __init__(self, archives: list[str], cfg: CurationConfig) -> None:
        super().__init__()
        self.archives = archives
        self.cfg = cfg

    def expand(self, urls):
        located = urls | "Locate" >> LocateImages(self.archives, self.cfg)
        return (
            spread_in_batches(located, self.cfg)
            | "Read" >> beam.ParDo(ReadImagesFn(self.cfg)).with_exception_handling()
        )
