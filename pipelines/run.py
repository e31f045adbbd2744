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
        texts = kept | "Filter texts" >> FilterTexts(cfg)
        kept = texts[KEPT]
        rejected_parts.append(texts[REJECTED])
    # Seam for later stages (dataset-wide text rules, images): each adds its rejected output.
    rejected = tuple(rejected_parts) | "All rejected" >> beam.Flatten(pipeline=p)

    _ = kept | "Write shards" >> WriteShards(
        join(output, SHARDS_DIR), CANDIDATE_SCHEMA, cfg.shard_size
    )
    _ = rejected | "Write rejects ledger" >> WriteShards(
        join(output, REJECTS_DIR), REJECT_SCHEMA, cfg.shard_size
    )
    funnel = (
        tuple(tallies)
        | "All tallies" >> beam.Flatten()
        | "Count funnel" >> CountFunnel(kept, rejected)
    )
    _ = funnel | "Write stats" >> beam.Map(write_stats, join(output, STATS_FILE))


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
