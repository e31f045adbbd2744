"""The curation pipeline: composition of the stages, and running it on any Beam runner."""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import os
from collections.abc import Callable

import apache_beam as beam
from apache_beam.options.pipeline_options import (
    DirectOptions,
    PipelineOptions,
    StandardOptions,
)
from apache_beam.runners.runner import PipelineRunner

from curation import reasons
from curation.config import CurationConfig
from curation.extract import is_table_path
from curation.record import CANDIDATE_SCHEMA, REJECT_SCHEMA, Candidate, Rejected, Rejection
from curation.stats import Funnel
from pipelines.dataset_rules import DetectLanguage, RejectRareTokens, RejectSharedTexts
from pipelines.deadletter import BAD, DEAD_LETTER_DIR, DEAD_LETTER_SCHEMA, CollectDeadLetters
from pipelines.images import ImageStage
from pipelines.io import join, write_json
from pipelines.measure_pool import warm_pool
from pipelines.report import CollectStatistics, ReportSamples, stats_document, write_report
from pipelines.spool import new_spool_directory, remove_spool
from pipelines.transforms import (
    KEPT,
    REJECTED,
    TALLY,
    CountFunnel,
    DropDuplicateCaptures,
    ExtractCandidates,
    FilterTexts,
    WriteShards,
)

SHARDS_DIR = "shards"
# Other formats go to OUTPUT/<format>/: webdataset/, tfrecord/.
REJECTS_DIR = "rejects"
STATS_FILE = "stats.json"
CONFIG_FILE = "config.yaml"


def build_pipeline(
    p: beam.Pipeline,
    inputs: list[str],
    output: str,
    cfg: CurationConfig,
    stop_after: str = reasons.STAGES[-1],
) -> None:
    """Add every stage up to `stop_after` to pipeline `p`, reading `inputs`, writing `output`."""
    extracted = p | "Extract candidates" >> ExtractCandidates(inputs, cfg)
    bad = {"extract": extracted[BAD]}
    unique = extracted[KEPT] | "Drop duplicate captures" >> DropDuplicateCaptures()
    tallies = [extracted[TALLY], unique[TALLY]]
    kept = unique[KEPT]
    rejected_parts: list = []
    spool = None
    if reasons.STAGES.index(stop_after) >= reasons.STAGES.index(reasons.STAGE_TEXT):
        kept, text_rejected, text_bad = _text_stage(kept, raw=unique[KEPT], cfg=cfg)
        rejected_parts.extend(text_rejected)
        bad.update(text_bad)
    if reasons.STAGES.index(stop_after) >= reasons.STAGES.index(reasons.STAGE_IMAGE):
        spool = spool_directory(output, cfg)
        images = kept | "Images" >> ImageStage(unique[KEPT], inputs, cfg, spool=spool)
        kept = images[KEPT]
        rejected_parts.append(images[REJECTED])
        bad.update(images[BAD])
    file_failures = extracted[BAD] | "Failed files" >> beam.Map(
        lambda _: (reasons.STAGE_READ, reasons.FILE_FAILED, 1)
    )
    tallies.append(file_failures)
    archives = [x for x in inputs if not is_table_path(x)]
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
    dist, hosts = kept | "Statistics" >> CollectStatistics(rejected)
    doc = funnel | "Stats document" >> beam.Map(
        stats_document,
        dist=beam.pvalue.AsSingleton(dist),
        hosts=beam.pvalue.AsSingleton(hosts),
    )
    _ = doc | "Write stats" >> beam.Map(write_json, join(output, STATS_FILE))
    if reasons.STAGES.index(stop_after) >= reasons.STAGES.index(reasons.STAGE_IMAGE):
        samples = kept | "Report samples" >> ReportSamples(rejected, archives, cfg)
    else:
        samples = p | "No samples" >> beam.Create([[]])
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


def spool_directory(output: str, cfg: CurationConfig) -> str | None:
    """The run's image spool folder when cfg.image_transport is spool (pipelines/spool.py);
    an unresolved auto (a pipeline built without the CLI) keeps the bytes in the records."""
    if cfg.image_transport != "spool":
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
    p: beam.Pipeline, previous: str, output: str, cfg: CurationConfig, funnel: Funnel
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
    http = retry_fetch_config(cfg)
    spool = spool_directory(output, cfg)
    images = retry | "Images" >> ImageStage(retry, [], http, prior=prior, spool=spool)
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


def shard_directories(output: str, formats: tuple[str, ...]) -> dict[str, str]:
    """Where each format's shards go: Parquet in shards/, the others in a folder named after
    the format, so that a Parquet reader pointed at shards/ meets only Parquet."""
    return {f: join(output, SHARDS_DIR if f == "parquet" else f) for f in formats}


def _text_stage(candidates, raw, cfg: CurationConfig):
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
        lang = kept | "Language" >> DetectLanguage(cfg)
        rejected.append(lang[REJECTED])
        bad["language"] = lang[BAD]
        kept = lang[KEPT]
    return kept, rejected, bad


# _RUN_FROZEN: the local runner executes the pipeline in this process, where the modules
# (Beam's above all) and the built graph are hundreds of thousands of objects that live as
# long as the run. Every full garbage collection walks them all, and full collections come
# more often as the runner buffers the records. Frozen (gc.freeze) they are never walked:
# full collections took 1.02-1.09 s of a 10,000-URL run before, 0.24-0.26 s after (two runs
# each, bench/gc_time.py). They are unfrozen when the run ends, as garbage is collected again.

# The runner names that make_runner turns into the FnApiRunner, in this process.
LOCAL_RUNNERS = (None, "DirectRunner", "direct", "FnApiRunner")


def make_runner(options: PipelineOptions) -> PipelineRunner | None:
    """The runner for these options; the DirectRunner becomes the FnApiRunner directly.

    Beam 2.77's DirectRunner first tries the Prism runner, which downloads a binary at run
    time (it fails offline, then falls back, with error noise). We go straight to the
    FnApiRunner the DirectRunner would fall back to; it honours direct_running_mode and
    direct_num_workers.
    """
    runner = options.view_as(StandardOptions).runner
    if runner not in LOCAL_RUNNERS:
        return None  # Beam resolves it by name
    from apache_beam.options.pipeline_options import WorkerOptions
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    from apache_beam.runners.portability.portable_runner import JobServiceHandle

    worker = options.view_as(WorkerOptions)
    if worker.default_sdk_harness_log_level is None:
        # multi_processing workers otherwise log every gRPC channel at INFO to our stderr.
        worker.default_sdk_harness_log_level = "WARNING"
    encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
    provision = fn_runner.ExtendedProvisionInfo(
        beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded)
    )
    if options.view_as(DirectOptions).direct_running_mode is None:
        options.view_as(DirectOptions).direct_running_mode = "in_memory"
    return fn_runner.FnApiRunner(provision_info=provision)


def run(
    inputs: list[str],
    output: str,
    cfg: CurationConfig,
    options: PipelineOptions | None = None,
    stop_after: str = reasons.STAGES[-1],
) -> None:
    """Build and run the pipeline to completion."""
    options = options or PipelineOptions([])
    runner = make_runner(options)  # first: it settles the running mode _warm_measuring reads
    warm = _warm_measuring(cfg, options, stop_after == reasons.STAGE_IMAGE)
    build = lambda p: build_pipeline(p, inputs, output, cfg, stop_after)  # noqa: E731
    _execute(runner, options, warm, build)


def run_retry(
    previous: str,
    output: str,
    cfg: CurationConfig,
    funnel: Funnel,
    options: PipelineOptions | None = None,
) -> None:
    """Build and run the --retry-failed pipeline to completion."""
    options = options or PipelineOptions([])
    runner = make_runner(options)  # first: it settles the running mode _warm_measuring reads
    # The pool its image stage takes; a retry detects no languages (no text rules run).
    warm = _warm_measuring(retry_fetch_config(cfg), options, True, languages=False)
    build = lambda p: build_retry_pipeline(p, previous, output, cfg, funnel)  # noqa: E731
    _execute(runner, options, warm, build)


def _execute(
    runner: PipelineRunner | None,
    options: PipelineOptions,
    warm: contextlib.AbstractContextManager[None],
    build: Callable[[beam.Pipeline], None],
) -> None:
    """Build the pipeline with `build` and run it, inside `warm`."""
    try:
        # The pipeline runs as its `with` ends, inside the warm pool's.
        with warm, beam.Pipeline(runner=runner, options=options) as p:
            build(p)
            gc.freeze()  # see _RUN_FROZEN
    finally:
        gc.unfreeze()


def _warm_measuring(
    cfg: CurationConfig, options: PipelineOptions, fetches: bool, languages: bool = True
) -> contextlib.AbstractContextManager[None]:
    """On the in-memory runner, start the measuring processes while the pipeline is built
    and its text rules run: its fetch step, in this process, takes them warm."""
    runner = options.view_as(StandardOptions).runner
    in_memory = options.view_as(DirectOptions).direct_running_mode == "in_memory"
    if not (fetches and in_memory and cfg.measure_processes > 0) or runner not in LOCAL_RUNNERS:
        return contextlib.nullcontext()
    from pipelines import images  # its MEASURE_TARGET, which tests may swap

    languages = languages and cfg.detect_language
    target = images.MEASURE_TARGET
    return warm_pool(cfg.measure_processes, cfg, cfg.measure_timeout, target, languages)
