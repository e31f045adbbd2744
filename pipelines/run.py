"""The curation pipeline: composition of the stages, and running it on any Beam runner."""

from __future__ import annotations

import apache_beam as beam
from apache_beam.options.pipeline_options import (
    DirectOptions,
    PipelineOptions,
    StandardOptions,
)
from apache_beam.runners.runner import PipelineRunner

from curation import reasons
from curation.config import CurationConfig
from curation.record import CANDIDATE_SCHEMA, REJECT_SCHEMA
from pipelines.dataset_rules import DetectLanguage, RejectRareTokens, RejectSharedTexts
from pipelines.images import ImageStage
from pipelines.io import join
from pipelines.transforms import (
    KEPT,
    REJECTED,
    TALLY,
    CountFunnel,
    DropDuplicateCaptures,
    ExtractCandidates,
    FilterTexts,
    WriteShards,
    write_stats,
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
    unique = extracted[KEPT] | "Drop duplicate captures" >> DropDuplicateCaptures()
    tallies = [extracted[TALLY], unique[TALLY]]
    kept = unique[KEPT]
    rejected_parts = []
    if reasons.STAGES.index(stop_after) >= reasons.STAGES.index(reasons.STAGE_TEXT):
        kept, text_rejected = _text_stage(kept, raw=unique[KEPT], cfg=cfg)
        rejected_parts.extend(text_rejected)
    if reasons.STAGES.index(stop_after) >= reasons.STAGES.index(reasons.STAGE_IMAGE):
        images = kept | "Images" >> ImageStage(unique[KEPT], inputs, cfg)
        kept = images[KEPT]
        rejected_parts.append(images[REJECTED])
    rejected = tuple(rejected_parts) | "All rejected" >> beam.Flatten(pipeline=p)

    _ = kept | "Write shards" >> WriteShards(
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
    _ = funnel | "Write stats" >> beam.Map(write_stats, join(output, STATS_FILE))


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
        kept = lang[KEPT]
    return kept, rejected


def make_runner(options: PipelineOptions) -> PipelineRunner | None:
    """The runner for these options; the DirectRunner becomes the FnApiRunner directly.

    Beam 2.77's DirectRunner first tries the Prism runner, which downloads a binary at run
    time (it fails offline, then falls back, with error noise). We go straight to the
    FnApiRunner the DirectRunner would fall back to; it honours direct_running_mode and
    direct_num_workers.
    """
    runner = options.view_as(StandardOptions).runner
    if runner not in (None, "DirectRunner", "direct", "FnApiRunner"):
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
    runner = make_runner(options)
    with beam.Pipeline(runner=runner, options=options) as p:
        build_pipeline(p, inputs, output, cfg, stop_after)
