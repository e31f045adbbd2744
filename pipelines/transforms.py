"""The pipeline's composites: each stage one PTransform, each decision delegated to filters/.

Rejected records leave through a tagged output and end in the rejects ledger; funnel
counts leave as (stage, name, n) tallies and are combined into stats.json.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam
import pyarrow as pa
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from curation import reasons
from curation.config import CurationConfig
from curation.inputs import input_kind
from curation.record import Candidate, Rejected, Rejection, image_size
from curation.stats import Funnel
from filters.text import check_candidate

# Registers http(s):// with Beam's FileSystems in every process that runs our steps (the
# local multi-process workers import this module; Dataflow's get it as a Beam plugin too).
from pipelines import (
    http_filesystem,  # noqa: F401
    progress,
)
from pipelines.io import (
    WriteShardFn,
    join,
    manifest_json,
    remove_stale_temporaries,
    sizes_json,
    write_atomic,
    write_shard_file,
)
from pipelines.outputs import MANIFEST_FILE
from pipelines.tags import KEPT, REJECTED, TALLY, reject

Tally = tuple[str, str, int]  # (stage, name, n)


def _tallies(funnel: Funnel) -> Iterator[beam.pvalue.TaggedOutput]:
    for (stage, name), n in sorted(funnel.counts.items()):
        Metrics.counter(stage, name).inc(n)
        yield beam.pvalue.TaggedOutput(TALLY, (stage, name, n))


class ExtractCandidatesFn(beam.DoFn):
    """One input file (archive or URL table) -> its candidates, and the file's funnel counts."""

    def __init__(self, cfg: CurationConfig) -> None:
        self.cfg = cfg

    def process(self, path: str) -> Iterator[Any]:
        funnel = Funnel()
        read = input_kind(path).read_candidates
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as fh:
            yield from read(fh, path, self.cfg, funnel)
        progress.bump("candidates", funnel.get(reasons.STAGE_EXTRACT, reasons.CANDIDATES))
        yield from _tallies(funnel)

    def finish_bundle(self) -> None:
        progress.flush()


class ExtractCandidates(beam.PTransform):
    """Read archives and URL tables; outputs `kept` (candidates) and `tally`."""

    def __init__(self, paths: list[str], cfg: CurationConfig) -> None:
        super().__init__()
        self.paths = sorted(paths)
        self.cfg = cfg

    def expand(self, pbegin):
        return (
            pbegin
            | "List inputs" >> beam.Create(self.paths)
            # One file per element; the reshuffle spreads files over workers.
            | "Spread files" >> beam.Reshuffle()
            | "Extract pairs"
            >> beam.ParDo(ExtractCandidatesFn(self.cfg))
            .with_outputs(TALLY, main=KEPT)
            .with_exception_handling()
        )


class _EarliestCapture(beam.CombineFn):
    """Per uid: keep the capture with the smallest (file, offset), count the others."""

    def create_accumulator(self) -> tuple[Candidate | None, int]:
        return (None, 0)

    def add_input(self, acc, candidate: Candidate):
        best, n = acc
        if best is None or candidate.provenance_key() < best.provenance_key():
            best = candidate
        return (best, n + 1)

    def merge_accumulators(self, accs):
        best, n = None, 0
        for b, m in accs:
            n += m
            if b is not None and (best is None or b.provenance_key() < best.provenance_key()):
                best = b
        return (best, n)

    def extract_output(self, acc):
        return acc


def _split_duplicates(item: tuple[str, tuple[Candidate, int]]) -> Iterator[Any]:
    _, (best, n) = item
    yield best
    if n > 1:
        yield beam.pvalue.TaggedOutput(
            TALLY, (reasons.STAGE_EXTRACT, reasons.DUPLICATE_CAPTURE, n - 1)
        )


class DropDuplicateCaptures(beam.PTransform):
    """One candidate per uid: a page captured twice, or a table row repeated, counts once."""

    def expand(self, candidates):
        return (
            candidates
            | "Key by uid" >> beam.Map(lambda c: (c.uid, c))
            | "Pick earliest capture" >> beam.CombinePerKey(_EarliestCapture())
            | "Count duplicates" >> beam.FlatMap(_split_duplicates).with_outputs(TALLY, main=KEPT)
        )


class FilterTextsFn(beam.DoFn):
    """Apply the per-record text rules; a failing candidate goes to the `rejected` output."""

    def __init__(self, cfg: CurationConfig) -> None:
        self.cfg = cfg

    def process(self, candidate: Candidate) -> Iterator[Any]:
        rejection = check_candidate(candidate, self.cfg)
        yield candidate if rejection is None else reject(candidate, rejection)


class FilterTexts(beam.PTransform):
    """ALIGN's per-record text rules (§3); outputs `kept` and `rejected`."""

    def __init__(self, cfg: CurationConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def expand(self, candidates):
        rules = beam.ParDo(FilterTextsFn(self.cfg)).with_outputs(REJECTED, main=KEPT)
        return candidates | "Apply text rules" >> rules.with_exception_handling()


def _rejection_tally(r: Rejected) -> Tally:
    progress.bump("rejected")
    return (f"rejected:{r.rejection.stage}", r.rejection.reason, 1)


def _kept_tally(_: Candidate) -> Tally:
    progress.bump("kept")
    return ("kept", "kept", 1)


class CountFunnel(beam.PTransform):
    """Combine extraction tallies, kept and rejected records into one Funnel."""

    def __init__(self, kept, rejected) -> None:
        super().__init__()
        self.kept = kept
        self.rejected = rejected

    def expand(self, tallies):
        kept = self.kept | "Tally kept" >> beam.Map(_kept_tally)
        rejected = self.rejected | "Tally rejected" >> beam.Map(_rejection_tally)
        return (
            (tallies, kept, rejected)
            | "All tallies" >> beam.Flatten()
            | "Sum tallies" >> beam.CombineGlobally(FunnelCombineFn())
        )


class FunnelCombineFn(beam.CombineFn):
    """(stage, name, n) tallies -> Funnel; merging is addition, so any order agrees."""

    def create_accumulator(self) -> Funnel:
        return Funnel()

    def add_input(self, acc: Funnel, tally: Tally) -> Funnel:
        acc.add(*tally)
        return acc

    def merge_accumulators(self, accs: Iterable[Funnel]) -> Funnel:
        return Funnel.merge_all(accs)

    def extract_output(self, acc: Funnel) -> Funnel:
        return acc


class WriteShards(beam.PTransform):
    """Write records as `{shard:05d}.<format>` files sorted by uid, plus _manifest.json.

    Records go to shard hash(uid) mod n, with n = ceil(count / shard_size), raised to
    ceil(image bytes / shard_max_bytes) when that is set: the shard of a record depends on
    its uid and the totals alone, so every runner writes the same files.
    """

    def __init__(
        self,
        directories: dict[str, str],
        schema: pa.Schema,
        shard_size: int,
        shard_max_bytes: int = 0,
    ) -> None:
        super().__init__()
        self.directories = directories  # format -> folder; the same records in each
        self.schema = schema
        self.shard_size = shard_size
        self.shard_max_bytes = shard_max_bytes

    def expand(self, records):
        rows = records | "To rows" >> beam.Map(lambda r: r.to_row())
        totals = (
            rows
            | "Count and size" >> beam.Map(lambda r: (1, image_size(r.get("image")) or 0))
            | "Totals" >> beam.CombineGlobally(_sum_pairs)
            | "Shard count"
            >> beam.Map(lambda t: _shard_count(t[0], t[1], self.shard_size, self.shard_max_bytes))
        )
        shards = (
            rows
            | "Assign shard"
            >> beam.Map(
                lambda row, n: (int(row["uid"][:12], 16) % n, row),
                n=beam.pvalue.AsSingleton(totals),
            )
            | "Group shard" >> beam.GroupByKey()
            | "Write shard" >> beam.ParDo(WriteShardFn(self.directories, self.schema))
        )
        return (
            shards
            | "Collect manifest" >> beam.combiners.ToList()
            | "Write manifest" >> beam.Map(_finish_shards, self.directories, self.schema)
        )


def _sum_pairs(pairs: Iterable[tuple[int, int]]) -> tuple[int, int]:
    count = size = 0
    for c, s in pairs:
        count += c
        size += s
    return count, size


def _shard_count(count: int, size: int, shard_size: int, shard_max_bytes: int) -> int:
    n = math.ceil(count / shard_size)
    if shard_max_bytes:
        n = max(n, math.ceil(size / shard_max_bytes))
    return max(1, n)


def _finish_shards(
    entries: list[dict[str, Any]], directories: dict[str, str], schema: pa.Schema
) -> int:
    total = 0
    for fmt, directory in sorted(directories.items()):
        mine = [e for e in entries if e["format"] == fmt]
        if not mine:
            # An empty result still gets one (empty) shard, so readers find a file.
            mine = [write_shard_file(directory, 0, fmt, [], schema)]
        write_atomic(join(directory, MANIFEST_FILE), manifest_json(mine))
        if fmt == "webdataset":
            write_atomic(join(directory, "sizes.json"), sizes_json(mine))
        remove_stale_temporaries(directory)
        total = sum(e["count"] for e in mine)
    return total


__all__ = [
    "KEPT",
    "REJECTED",
    "TALLY",
    "CountFunnel",
    "DropDuplicateCaptures",
    "ExtractCandidates",
    "FilterTexts",
    "Rejection",
    "WriteShards",
]
