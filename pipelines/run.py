"""The curation pipeline: composition of the stages, and running it on any Beam runner."""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import os
from collections.abc import Callable
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from curation import reasons
from curation.config import CurationConfig
from curation.inputs import image_holders
from curation.record import CANDIDATE_SCHEMA, REJECT_SCHEMA, Candidate, Rejected, Rejection
from curation.stats import Funnel
from pipelines.dataset_rules import DetectLanguage, RejectRareTokens, RejectSharedTexts
from pipelines.deadletter import DEAD_LETTER_SCHEMA, CollectDeadLetters
from pipelines.images import ImageStage
from pipelines.io import join, write_json
from pipelines.outputs import (
    DEAD_LETTER_DIR,
    REJECTS_DIR,
    SHARDS_DIR,
    STATS_FILE,
    shard_directories,
)
from pipelines.report import CollectStatistics, stats_document, write_report
from pipelines.report_samples import ReportSamples, TextSamples
from pipelines.runtime import RunPlan, make_runner, plan_run
from pipelines.spool import new_spool_directory, remove_spool
from pipelines.tags import BAD, KEPT, REJECTED, TALLY
from pipelines.transforms import (
    CountFunnel,
    DropDuplicateCaptures,
    ExtractCandidates,
    FilterTexts,
    WriteShards,
)


def build_pipeline(
    p: beam.Pipeline,
    inputs: list[str],
    output: str,
    cfg: CurationConfig,
    stop_after: str = reasons.STAGES[-1],
    plan: RunPlan | None = None,
) -> None:
    """Add every stage up to `stop_after` to pipeline `p`, reading `inputs`, writing `output`,
    as `plan` says (by default, as settled for the local runner)."""
    plan = plan or plan_run(cfg, PipelineOptions([]))
    extracted = p | "Extract candidates" >> ExtractCandidates(inputs, cfg)
    bad = {"extract": extracted[BAD]}
    unique = extracted[KEPT] | "Drop duplicate captures" >> DropDuplicateCaptures()
    tallies = [extracted[TALLY], unique[TALLY]]
    kept = unique[KEPT]
    rejected_parts: list = []
    spool = None
    if reasons.STAGES.index(stop_after) >= reasons.STAGES.index(reasons.STAGE_TEXT):
        kept, text_rejected, text_bad = _text_stage(kept, unique[KEPT], cfg, plan)
        rejected_parts.extend(text_rejected)
        bad.update(text_bad)
    if reasons.STAGES.index(stop_after) >= reasons.STAGES.index(reasons.STAGE_IMAGE):
        spool = spool_directory(output, plan)
        images = kept | "Images" >> ImageStage(
            unique[KEPT], inputs, cfg, plan.workers, plan.nsfw_threads, spool=spool
        )
        kept = images[KEPT]
        rejected_parts.append(images[REJECTED])
        bad.update(images[BAD])
    file_failures = extracted[BAD] | "Failed files" >> beam.Map(
        lambda _: (reasons.STAGE_READ, reasons.FILE_FAILED, 1)
    )
    tallies.append(file_failures)
    archives = image_holders(inputs)
    _write_outputs(p, kept, rejected_parts, tallies, bad, output, cfg, archives, stop_after, spool)


def _write_outputs(
    p: beam.Pipeline,
    kept,
    rejected_parts: list,
    tallies: list,
    bad: dict,
    output: str,
    cfg: CurationConfig,
    archives: list[str],
    stop_after: str = reasons.STAGES[-1],
    spool: str | None = None,
) -> None:
    """Shards, the rejects ledger, dead letters, stats.json and the report; then the image
    spool, if any, is removed."""
    # Exceptions that escaped a step: a dead-letter row each; candidates also get a
    # rejection (internal_error), so the accounting still balances.
    dead_rows, dead_rejected, dead_tallies = p | "Dead letters" >> CollectDeadLetters(bad)
    _ = dead_rows | "Write dead letters" >> WriteShards(
        {"parquet": join(output, DEAD_LETTER_DIR)}, DEAD_LETTER_SCHEMA, cfg.shard_size
    )
    rejected = (*rejected_parts, dead_rejected) | "All rejected" >> beam.Flatten(pipeline=p)
    tallies = [*tallies, dead_tallies]
    shards_done = kept | "Write shards" >> WriteShards(
        shard_directories(output, cfg.formats),
        CANDIDATE_SCHEMA,
        cfg.shard_size,
        cfg.shard_max_bytes,
    )
    _ = rejected | "Write rejects ledger" >> WriteShards(
        {"parquet": join(output, REJECTS_DIR)}, REJECT_SCHEMA, cfg.shard_size
    )
    funnel = (
        tuple(tallies)
        | "All tallies" >> beam.Flatten()
        | "Count funnel" >> CountFunnel(kept, rejected)
    )
    dist, tables = kept | "Statistics" >> CollectStatistics(rejected)
    doc = funnel | "Stats document" >> beam.Map(
        stats_document,
        dist=beam.pvalue.AsSingleton(dist),
        tables=beam.pvalue.AsSingleton(tables),
    )
    _ = doc | "Write stats" >> beam.Map(write_json, join(output, STATS_FILE))
    if reasons.STAGES.index(stop_after) >= reasons.STAGES.index(reasons.STAGE_IMAGE):
        samples = kept | "Report samples" >> ReportSamples(rejected, archives, cfg)
    else:
        # Before the images: the text rules' samples only.
        samples = (
            rejected | "Report samples" >> TextSamples() | "Sample list" >> beam.combiners.ToList()
        )
    report_done = doc | "Write report" >> beam.Map(
        write_report, samples=beam.pvalue.AsSingleton(samples), output=output
    )
    if spool:
        # Its readers are the shard writer, the report's previews and the NSFW model, all
        # upstream of these two: a global count of both fires after the last of them.
        _ = (
            (shards_done, report_done)
            | "Spool readers done" >> beam.Flatten()
            | "After both" >> beam.combiners.Count.Globally()
            | "Remove spool" >> beam.Map(lambda _, folder: remove_spool(folder), spool)
        )


def spool_directory(output: str, plan: RunPlan) -> str | None:
    """The run's image spool folder when the plan's image transport is spool
    (pipelines/spool.py), else None: the bytes ride in the records."""
    if plan.image_transport != "spool":
        return None
    if "://" not in output:
        # Local workers of other processes (multi_processing) may not share our directory.
        output = os.path.abspath(output)
    return new_spool_directory(output)


def retry_fetch_config(cfg: CurationConfig) -> CurationConfig:
    """The config the retry's image stage runs with."""
    # Transient failures are network failures: the retry fetches over HTTP.
    return dataclasses.replace(cfg, images_from="http")


def build_retry_pipeline(
    p: beam.Pipeline,
    previous: str,
    output: str,
    cfg: CurationConfig,
    funnel: Funnel,
    plan: RunPlan | None = None,
) -> None:
    """Re-run only the candidates whose fetch failed for a transient reason, and write a new,
    complete output: the earlier kept records, its other rejections, and the new outcomes."""
    kept_prev = (
        p
        | "Earlier kept" >> beam.Create(_parquet_files(join(previous, SHARDS_DIR)))
        | "Read kept" >> beam.FlatMap(_read_kept)
    )
    rejected_prev = (
        p
        | "Earlier rejects" >> beam.Create(_parquet_files(join(previous, REJECTS_DIR)))
        | "Read rejects" >> beam.FlatMap(_read_rejected)
        | "Split transient" >> beam.Partition(lambda r, _: int(is_retryable(r.rejection)), 2)
    )
    retry = rejected_prev[1] | "Retry candidates" >> beam.Map(lambda r: r.candidate)
    prior = kept_prev | "Prior hashes" >> beam.Map(lambda c: (c.uid, c.phash))
    plan = plan or plan_run(cfg, PipelineOptions([]), languages=False)
    http = retry_fetch_config(cfg)
    spool = spool_directory(output, plan)
    images = retry | "Images" >> ImageStage(
        retry, [], http, plan.workers, plan.nsfw_threads, prior=prior, spool=spool
    )
    kept = (kept_prev, images[KEPT]) | "All kept" >> beam.Flatten()
    rejected_parts = [rejected_prev[0], images[REJECTED]]
    # Read and extract counts are the earlier run's; kept and rejected are counted anew.
    earlier = [(s, n, c) for (s, n), c in sorted(funnel.counts.items()) if s in ("read", "extract")]
    tallies = p | "Earlier tallies" >> beam.Create(earlier)
    _write_outputs(
        p, kept, rejected_parts, [tallies], images[BAD], output, cfg, archives=[], spool=spool
    )


def is_retryable(rejection: Rejection) -> bool:
    """A fetch failure that may succeed on another try: timeouts, 429/5xx, DNS, connection."""
    return rejection.stage == reasons.STAGE_FETCH and reasons.is_transient(rejection.reason)


def _parquet_files(folder: str) -> list[str]:
    from apache_beam.io.filesystems import FileSystems

    pattern = join(folder, "*.parquet")
    return sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)


def _rows(path: str) -> list[dict]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines.io import read_bytes

    return pq.read_table(pa.BufferReader(read_bytes(path))).to_pylist()


_CANDIDATE_FIELDS = frozenset(CANDIDATE_SCHEMA.names)


def _read_kept(path: str) -> list[Candidate]:
    return [
        Candidate(**{k: v for k, v in r.items() if k in _CANDIDATE_FIELDS}) for r in _rows(path)
    ]


def _read_rejected(path: str) -> list[Rejected]:
    out = []
    for r in _rows(path):
        fields = {k: v for k, v in r.items() if k in _CANDIDATE_FIELDS}
        rejection = Rejection(r["stage"], r["reason"], r["detail"])
        out.append(Rejected(Candidate(**fields), rejection))
    return out


def _text_stage(candidates, raw, cfg: CurationConfig, plan: RunPlan):
    """Per-record rules first (cheap), then the dataset-wide ones, language ID last (dear).

    The dataset-wide counts run over `raw`, every candidate of the run, as ALIGN counted
    over its raw data; the rules apply to the survivors of the per-record rules.
    """
    rejected = []
    per_record = candidates | "Filter texts" >> FilterTexts(cfg)
    rejected.append(per_record[REJECTED])
    bad = {"text": per_record[BAD]}
    kept = per_record[KEPT]
    if cfg.max_images_per_text:
        shared = kept | "Reject shared texts" >> RejectSharedTexts(raw, cfg)
        rejected.append(shared[REJECTED])
        kept = shared[KEPT]
    rare = kept | "Reject rare tokens" >> RejectRareTokens(raw, cfg)
    rejected.append(rare[REJECTED])
    kept = rare[KEPT]
    if cfg.detect_language:
        lang = kept | "Language" >> DetectLanguage(cfg, plan.workers)
        rejected.append(lang[REJECTED])
        bad["language"] = lang[BAD]
        kept = lang[KEPT]
    return kept, rejected, bad


def run(
    inputs: list[str],
    output: str,
    cfg: CurationConfig,
    options: PipelineOptions | None = None,
    stop_after: str = reasons.STAGES[-1],
    plan: RunPlan | None = None,
) -> None:
    """Build and run the pipeline to completion (as `plan` says, by default as settled
    for the runner in `options`)."""
    options = options or PipelineOptions([])
    runner = make_runner(options)  # first: it settles the running mode the plan reads
    plan = plan or plan_run(cfg, options)
    build = lambda p: build_pipeline(p, inputs, output, cfg, stop_after, plan)  # noqa: E731
    _execute(runner, options, _warm(plan, stop_after == reasons.STAGE_IMAGE), build)


def run_retry(
    previous: str,
    output: str,
    cfg: CurationConfig,
    funnel: Funnel,
    options: PipelineOptions | None = None,
    plan: RunPlan | None = None,
) -> None:
    """Build and run the --retry-failed pipeline to completion."""
    options = options or PipelineOptions([])
    runner = make_runner(options)
    # A retry runs no text rules: its measuring processes detect no languages.
    plan = plan or plan_run(cfg, options, languages=False)
    build = lambda p: build_retry_pipeline(p, previous, output, cfg, funnel, plan)  # noqa: E731
    _execute(runner, options, _warm(plan, True), build)


def _execute(
    runner: Any,
    options: PipelineOptions,
    warm: contextlib.AbstractContextManager[None],
    build: Callable[[beam.Pipeline], None],
) -> None:
    """Build the pipeline with `build` and run it, inside `warm`."""
    try:
        # The pipeline runs as its `with` ends, inside the warm pool's.
        with warm, beam.Pipeline(runner=runner, options=options) as p:
            build(p)
            # In memory, the modules and the built graph live as long as the run; frozen,
            # garbage collections never walk them (BENCHMARKS.md, "GC freeze").
            gc.freeze()
    finally:
        gc.unfreeze()


def _warm(plan: RunPlan, fetches: bool) -> contextlib.AbstractContextManager[None]:
    """On the in-memory runner, start the measuring processes while the pipeline is built
    and its text rules run: its fetch step, in this process, takes them warm."""
    if not (fetches and plan.in_memory and plan.workers is not None):
        return contextlib.nullcontext()
    return plan.workers.warm()
