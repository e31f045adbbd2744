"""The runner and the run's plan: which Beam runner runs the pipeline, and how the config's
`auto` speed settings settle on it, decided once at the entry point.

`CurationConfig` holds the user's decisions ('auto' included, as config.yaml records them);
`RunPlan` holds what they came to on this runner. Stages get the part of the plan they use.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import Any

from curation.config import CurationConfig
from filters.measure import MeasureSettings
from pipelines.errors import CurateError
from pipelines.measure_pool import DEFAULT_TARGET, WorkerPool

# The runner names that run the pipeline on this machine, compared in lower case; None is
# Beam's default (the DirectRunner).
_LOCAL_RUNNER_NAMES = frozenset({"directrunner", "direct", "fnapirunner"})

# The runners that submit to a Beam job server, which fuses the graph in Java (Beam's Flink
# and other portable runners), compared in lower case.
_PORTABLE_RUNNER_NAMES = frozenset({"flinkrunner", "portablerunner"})


def is_portable_runner(name: str | None) -> bool:
    """Whether a runner name submits to a Beam job server (Flink's, or any portable one)."""
    return (name or "").lower() in _PORTABLE_RUNNER_NAMES


def runner_name(options: Any) -> str | None:
    """The runner the options name, as typed (None: Beam's default)."""
    from apache_beam.options.pipeline_options import StandardOptions

    return options.view_as(StandardOptions).runner


def is_local_runner(name: str | None) -> bool:
    """Whether `name` is one of the runners that make_runner runs in this process."""
    return name is None or name.lower() in _LOCAL_RUNNER_NAMES


@dataclass(frozen=True)
class RunPlan:
    """How a run executes on its runner (the config's 'auto' values settled)."""

    local: bool  # the FnApiRunner on this machine, in any running mode
    in_memory: bool  # ... in its in_memory mode: one process runs every stage
    image_transport: str  # spool or shuffle (curation/config.py)
    nsfw_threads: int  # onnxruntime threads per model; 0 is one per core
    # The measuring processes of each worker; None: the fetch threads measure.
    workers: WorkerPool | None

    @property
    def measure_processes(self) -> int:
        """Measuring processes per worker (0: the fetch threads measure)."""
        return self.workers.processes if self.workers else 0

    def describe(self) -> str:
        """One line for the start of a run."""
        return (
            f"image transport {self.image_transport}, measuring processes "
            f"{self.measure_processes}, NSFW threads {self.nsfw_threads or 'all cores'}"
        )


def plan_run(cfg: CurationConfig, options: Any, languages: bool = True) -> RunPlan:
    """Settle cfg's 'auto' values for the runner in `options`. With `languages`, the
    measuring processes also load the language detector for the text rules."""
    from apache_beam.options.pipeline_options import DirectOptions

    local = is_local_runner(runner_name(options))
    in_memory = local and (options.view_as(DirectOptions).direct_running_mode or "in_memory") == (
        "in_memory"
    )
    # In memory, one bundle runs at a time in one process: the model and the measuring may
    # use every core. Elsewhere several SDK threads or processes share the cores, and one
    # thread each, measuring in the fetch threads, avoids oversubscription.
    nsfw_threads = cfg.nsfw_threads if cfg.nsfw_threads != -1 else (0 if in_memory else 1)
    processes = cfg.measure_processes
    if processes == -1:
        # More children than fetch threads would never all be busy.
        processes = min(usable_cpus(), max(1, cfg.fetch_threads)) if in_memory else 0
    transport = cfg.image_transport
    if transport == "auto":
        # Every local worker sees the spool (a folder under the output). Beam's Flink batch
        # runner hands a GroupByKey's values for a key to Flink's sorter as one record, so
        # the image bytes of one shard fail it ("The record exceeds the maximum size of a
        # sort buffer", 2,000 images): on portable runners only references may cross the
        # shuffles, and the spool is under the output, which every worker must reach anyway.
        # On Dataflow the shuffle service streams the bytes (a shared spool's ranged reads
        # are unmeasured there).
        transport = "spool" if local or is_portable_runner(runner_name(options)) else "shuffle"
    workers = None
    if processes > 0:
        detector = cfg.language_detector if languages and cfg.detect_language else None
        workers = WorkerPool(
            processes, MeasureSettings.of(cfg), cfg.measure_timeout, DEFAULT_TARGET, detector
        )
    return RunPlan(local, in_memory, transport, nsfw_threads, workers)


def usable_cpus() -> int:
    """The CPUs this process may run on (a container's or taskset's share), where known."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def make_runner(options: Any) -> Any:
    """The runner for these options; the DirectRunner becomes the FnApiRunner directly.

    Beam 2.77's DirectRunner first tries the Prism runner, which downloads a binary at run
    time (it fails offline, then falls back, with error noise). We go straight to the
    FnApiRunner the DirectRunner would fall back to; it honours direct_running_mode and
    direct_num_workers. None for any other runner: Beam resolves it by name.
    """
    from apache_beam.options.pipeline_options import DirectOptions, WorkerOptions

    if not is_local_runner(runner_name(options)):
        return None
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


def check_beam_args(beam_args: list[str], our_flags: list[str]) -> None:
    """Refuse every argument that neither we nor Beam define (Beam would drop it with a
    log line), naming the closest known flag."""
    import difflib

    from apache_beam.options.pipeline_options import PipelineOptions, _BeamArgumentParser

    parser = _BeamArgumentParser(allow_abbrev=False, exit_on_error=False)
    for cls in {str(c): c for c in _subclasses(PipelineOptions)}.values():
        cls._add_argparse_args(parser)
    try:
        known, unknown = parser.parse_known_args(beam_args)
    except argparse.ArgumentError as e:  # a value of the wrong type for one of Beam's options
        raise CurateError(str(e)) from None
    if not unknown:
        return
    endpoint = getattr(known, "job_endpoint", None)
    if endpoint and is_portable_runner(getattr(known, "runner", None)):
        # The job server's own options (Flink's --max_bundle_size, --object_reuse, ...): Beam
        # asks the job server for them when it submits, and parses those the user set.
        _add_job_server_options(parser, job_server_options(endpoint))
        try:
            _, unknown = parser.parse_known_args(beam_args)
        except argparse.ArgumentError as e:  # a value of the wrong type
            raise CurateError(f"{e}; see the job server's options") from None
        if not unknown:
            return
    beam_flags = [flag for action in parser._actions for flag in action.option_strings]
    arg = next((a for a in unknown if a.startswith("-")), unknown[0])
    if not arg.startswith("-"):
        raise CurateError(f"unexpected argument {arg!r}")
    name = arg.split("=", 1)[0]
    close = difflib.get_close_matches(name, [*our_flags, *beam_flags], n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]}?)" if close else ""
    raise CurateError(f"unknown option {name}{hint}; see curate run --help")


def job_server_options(endpoint: str, timeout: float = 10.0) -> list[Any]:
    """The pipeline options a Beam job server defines (PipelineOptionDescriptor), as Beam's
    portable runner reads them (DescribePipelineOptions). A server that does not answer is
    an error: the run could not be submitted to it either."""
    import grpc
    from apache_beam.portability.api import beam_job_api_pb2, beam_job_api_pb2_grpc

    try:
        with grpc.insecure_channel(endpoint) as channel:
            grpc.channel_ready_future(channel).result(timeout=timeout)
            response = beam_job_api_pb2_grpc.JobServiceStub(channel).DescribePipelineOptions(
                beam_job_api_pb2.DescribePipelineOptionsRequest(), timeout=timeout
            )
    except (grpc.RpcError, grpc.FutureTimeoutError) as e:
        raise CurateError(
            f"the job server at --job_endpoint {endpoint} did not answer within {timeout:.0f} s "
            f"({type(e).__name__}); is it running?"
        ) from None
    return list(response.options)


def _add_job_server_options(parser: Any, options: list[Any]) -> None:
    """Register the job server's options as Beam's portable runner does when it submits
    (switches, integers, repeatable arrays), so that what passes here parses there: a value
    Beam would drop (`--object_reuse false`) is refused instead."""
    from apache_beam.portability.api import beam_job_api_pb2

    kinds = beam_job_api_pb2.PipelineOptionType
    for option in options:
        kwargs: dict[str, Any] = {"action": "store"}
        if option.type == kinds.BOOLEAN:
            kwargs["action"] = "store_true" if option.default_value != "true" else "store_false"
        elif option.type == kinds.INTEGER:
            kwargs["type"] = int
        elif option.type == kinds.ARRAY:
            kwargs["action"] = "append"
        try:
            parser.add_argument(f"--{option.name}", **kwargs)
        except argparse.ArgumentError:  # already a Python option of Beam's
            continue


def _subclasses(cls: type) -> list[type]:
    found = []
    for sub in cls.__subclasses__():
        found.append(sub)
        found.extend(_subclasses(sub))
    return found


# How long a portable runner keeps a stage's SDK harnesses for the next stage (ms). The batch
# graph runs as ~20 waves one after another, and a harness takes ~4 s to start on 2 cores;
# kept, the bundled sample's run on the local Flink cluster went from 132 s to 37 s
# (BENCHMARKS.md, the Flink section).
ENVIRONMENT_CACHE_MS = 60_000


def fuse_in_python(options: Any) -> None:
    """On a portable runner, fuse the graph before submitting it, as the in-process runner
    does, unless the user chose a pre_optimize experiment; and keep SDK harnesses between
    stages unless the user set --environment_cache_millis.

    The Flink job server's own fusion (Beam 2.70, batch) leaves a side input out of the
    fused stage that reads it ("The broadcast variable with name
    'ref_PCollection_PCollection_50' has not been set", at Reject rare tokens/Route), and
    its graph needs more network buffers than a small TaskManager has (docs/flink.md).
    Flink honours the harness cache only where Beam's classes come from the TaskManagers'
    own classpath (scripts/flink-local.sh puts them there); elsewhere it is a no-op.
    """
    from apache_beam.options.pipeline_options import DebugOptions, PortableOptions

    if not is_portable_runner(runner_name(options)):
        return
    debug = options.view_as(DebugOptions)
    if debug.lookup_experiment("pre_optimize") is None:
        debug.add_experiment("pre_optimize=all")
    typed = getattr(options, "_flags", None) or []  # the argv as given; 0 is also the default
    if not any(str(f).startswith("--environment_cache_millis") for f in typed):
        options.view_as(PortableOptions).environment_cache_millis = ENVIRONMENT_CACHE_MS


def pipeline_options(beam_args: list[str], paths: list[str] = ()) -> Any:
    """Beam's options from the arguments that are not ours, checked for the runner."""
    from apache_beam.options.pipeline_options import PipelineOptions

    # Beam checks the graph's type hints as it is built (~0.45 s a run) for a graph that is
    # the same every run and that a test checks; the output is byte-identical either way
    # (BENCHMARKS.md, "start-up"). Beam has only the flag that turns it off; ours,
    # --pipeline_type_check, keeps it on.
    if "--pipeline_type_check" in beam_args:
        beam_args = [a for a in beam_args if a != "--pipeline_type_check"]
    elif "--no_pipeline_type_check" not in beam_args:
        beam_args = [*beam_args, "--no_pipeline_type_check"]
    try:
        options = PipelineOptions(beam_args)
        options.get_all_options(retain_unknown_options=False)
    except (SystemExit, ValueError) as e:
        raise CurateError(f"bad Beam pipeline options {beam_args}: {e}") from e
    check_dataflow_options(options, paths)
    check_s3_credentials(options, paths)
    check_portable_staging(options)
    fuse_in_python(options)
    # The launcher reads and writes through FileSystems before any Pipeline exists (input
    # globs and manifests, the output folder, config.yaml, the summary). Beam builds a
    # filesystem from the options FileSystems holds, which only Pipeline() and the SDK
    # workers set; unset, the S3 filesystem cannot build its client ("Must provide one of
    # client or options") and --s3_endpoint_url and the other S3 options would be ignored.
    from apache_beam.io.filesystems import FileSystems

    FileSystems.set_options(options)
    return options


def check_portable_staging(options: Any) -> None:
    """Refuse packages to stage on a portable runner whose harnesses run in an environment
    already installed (PROCESS, EXTERNAL): pipelines/sdk_boot.py starts the harness as it
    is and installs nothing, so they would be silently left out. Docker images install
    them (Beam's boot does)."""
    from apache_beam.options.pipeline_options import PortableOptions, SetupOptions

    if not is_portable_runner(runner_name(options)):
        return
    environment = (options.view_as(PortableOptions).environment_type or "").upper()
    if environment not in ("PROCESS", "EXTERNAL"):
        return
    setup = options.view_as(SetupOptions)
    staged = [
        flag
        for flag, value in (
            ("--requirements_file", setup.requirements_file),
            ("--extra_package", setup.extra_packages),
            ("--setup_file", setup.setup_file),
        )
        if value
    ]
    if staged:
        raise CurateError(
            f"{', '.join(staged)}: the {environment} environment's harnesses run in an "
            "environment already set up (pipelines/sdk_boot.py installs nothing); install "
            "the packages on every worker node (docs/flink.md), or use --environment_type DOCKER"
        )


def check_s3_credentials(options: Any, paths: list[str]) -> None:
    """With s3:// paths, fail at once when no AWS credentials can be found: Beam's S3 client
    would otherwise retry unsigned listings for minutes without a word."""
    if not any(p.startswith("s3://") for p in paths):
        return
    from apache_beam.options.pipeline_options import S3Options

    s3 = options.view_as(S3Options)
    if s3.s3_access_key_id and s3.s3_secret_access_key:
        return
    try:
        import boto3
    except ImportError as e:
        raise CurateError("s3:// paths need the aws extra: pip install '.[aws]'") from e
    if boto3.session.Session().get_credentials() is None:
        raise CurateError(
            "s3:// paths need AWS credentials: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
            "~/.aws/credentials, an instance role, or --s3_access_key_id and "
            "--s3_secret_access_key (docs/common-crawl.md)"
        )


def check_dataflow_options(options: Any, paths: list[str]) -> None:
    """Before submitting to Dataflow, name every missing or unusable option in one message."""
    from apache_beam.options.pipeline_options import (
        GoogleCloudOptions,
        SetupOptions,
        WorkerOptions,
    )

    if (runner_name(options) or "").lower() not in ("dataflowrunner", "dataflow"):
        return
    gcp = options.view_as(GoogleCloudOptions)
    setup = options.view_as(SetupOptions)
    problems = []
    if not gcp.project:
        problems.append("--project: the Google Cloud project to run in")
    if not gcp.region:
        problems.append("--region: where the workers run, e.g. us-central1")
    if not (gcp.temp_location or "").startswith("gs://"):
        problems.append("--temp_location gs://BUCKET/tmp: Dataflow stages files there")
    image = options.view_as(WorkerOptions).sdk_container_image
    if not image and not setup.setup_file:
        problems.append(
            "--sdk_container_image IMAGE (built from the Dockerfile, with the NSFW model "
            "inside), or --setup_file ./setup.py to install the package on each worker"
        )
    local = [p for p in paths if "://" not in p]
    if local:
        problems.append(f"inputs and --output must be gs:// paths workers can read: {local[0]}")
    if problems:
        raise CurateError("DataflowRunner needs: " + "; ".join(problems))


# glibc's malloc returns large freed blocks to the kernel, so every new buffer of the local
# runner's data plane is faulted in again, page by page; held by the allocator instead, a
# 2,000-image run took 0.3M minor faults instead of 0.9M (BENCHMARKS.md, "allocator").
MALLOC_MMAP_THRESHOLD = 256 << 20
MALLOC_TRIM_THRESHOLD = 512 << 20


def tune_allocator() -> bool:
    """Keep freed memory for reuse (see above), in this process and the worker processes
    it starts, and let Arrow allocate from it. Left alone where the user set glibc's
    variables, or CURATE_TUNE_MALLOC=0, and off glibc; Arrow's pool is left alone where
    ARROW_DEFAULT_MEMORY_POOL is set. True when applied."""
    if os.environ.get("CURATE_TUNE_MALLOC") == "0" or any(
        k in os.environ for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
    ):
        return False
    try:
        import ctypes

        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):  # not glibc: macOS, musl, Windows
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's malloc.h
    if not (
        mallopt(m_mmap_threshold, MALLOC_MMAP_THRESHOLD)
        and mallopt(m_trim_threshold, MALLOC_TRIM_THRESHOLD)
    ):
        return False
    os.environ["MALLOC_MMAP_THRESHOLD_"] = str(MALLOC_MMAP_THRESHOLD)
    os.environ["MALLOC_TRIM_THRESHOLD_"] = str(MALLOC_TRIM_THRESHOLD)
    if "ARROW_DEFAULT_MEMORY_POOL" not in os.environ:
        import pyarrow as pa

        os.environ["ARROW_DEFAULT_MEMORY_POOL"] = "system"  # read by worker processes
        pa.set_memory_pool(pa.system_memory_pool())
    return True
