"""A portable runner's own options (Flink's --max_bundle_size, ...) pass the CLI's check of
unknown options when the job server named by --job_endpoint defines them, as Beam's portable
runner would pass them; anything else stays an error that names it.

The job server here is a gRPC server on 127.0.0.1 that answers DescribePipelineOptions with
options named as Flink's job server names them."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from apache_beam.portability.api import beam_job_api_pb2, beam_job_api_pb2_grpc

from pipelines.errors import CurateError
from pipelines.runtime import (
    ENVIRONMENT_CACHE_MS,
    check_beam_args,
    fuse_in_python,
    job_server_options,
)

_TYPE = beam_job_api_pb2.PipelineOptionType
# Named and typed as Flink's job server describes them.
FLINK_OPTIONS = (
    ("max_bundle_size", _TYPE.INTEGER, ""),
    ("max_bundle_time_mills", _TYPE.INTEGER, ""),
    ("object_reuse", _TYPE.BOOLEAN, "false"),
    ("files_to_stage", _TYPE.ARRAY, ""),
)


class _Describer(beam_job_api_pb2_grpc.JobServiceServicer):
    def __init__(self) -> None:
        self.calls = 0

    def DescribePipelineOptions(self, request, context):  # gRPC names the method
        self.calls += 1
        return beam_job_api_pb2.DescribePipelineOptionsResponse(
            options=[
                beam_job_api_pb2.PipelineOptionDescriptor(
                    name=name, type=kind, default_value=default
                )
                for name, kind, default in FLINK_OPTIONS
            ]
        )


@pytest.fixture
def job_server() -> Iterator[tuple[str, _Describer]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    describer = _Describer()
    beam_job_api_pb2_grpc.add_JobServiceServicer_to_server(describer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}", describer
    finally:
        server.stop(grace=None)


def test_the_job_servers_options_are_read(job_server) -> None:
    endpoint, _ = job_server
    assert [o.name for o in job_server_options(endpoint)] == [o[0] for o in FLINK_OPTIONS]


def test_runner_options_pass_on_a_portable_runner_with_a_job_endpoint(job_server) -> None:
    endpoint, describer = job_server
    base = ["--runner=FlinkRunner", f"--job_endpoint={endpoint}"]
    check_beam_args([*base, "--max_bundle_size=100", "--object_reuse"], [])
    check_beam_args([*base, "--max_bundle_time_mills", "50"], [])
    assert describer.calls == 2
    # Only arguments Python's Beam does not know ask the job server.
    check_beam_args([*base, "--parallelism=2"], [])
    assert describer.calls == 2


def test_runner_options_parse_as_beam_parses_them(job_server) -> None:
    """A switch takes no value: `--object_reuse false` would turn it on and Beam would drop
    'false' with a log line; an integer option takes integers only."""
    endpoint, _ = job_server
    base = ["--runner=FlinkRunner", f"--job_endpoint={endpoint}"]
    check_beam_args([*base, "--files_to_stage=a.jar", "--files_to_stage=b.jar"], [])
    with pytest.raises(CurateError, match="unexpected argument 'false'"):
        check_beam_args([*base, "--object_reuse", "false"], [])
    with pytest.raises(CurateError):
        check_beam_args([*base, "--max_bundle_size=lots"], [])


def test_a_typo_of_a_runner_option_is_still_an_error(job_server) -> None:
    endpoint, _ = job_server
    with pytest.raises(CurateError, match=r"--max_bundel_size \(did you mean --max_bundle_size"):
        check_beam_args(
            ["--runner=FlinkRunner", f"--job_endpoint={endpoint}", "--max_bundel_size=100"], []
        )


def test_runner_options_need_a_portable_runner(job_server) -> None:
    endpoint, describer = job_server
    with pytest.raises(CurateError, match="unknown option --max_bundle_size"):
        check_beam_args([f"--job_endpoint={endpoint}", "--max_bundle_size=100"], [])
    assert describer.calls == 0


def test_a_job_server_that_does_not_answer_is_named() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(CurateError, match=f"job server at --job_endpoint 127.0.0.1:{port}"):
        job_server_options(f"127.0.0.1:{port}", timeout=1.0)


@pytest.mark.parametrize(
    ("typed", "experiments", "cache_ms"),
    [
        (["--runner=FlinkRunner"], ["pre_optimize=all"], ENVIRONMENT_CACHE_MS),
        (["--runner=PortableRunner"], ["pre_optimize=all"], ENVIRONMENT_CACHE_MS),
        # What the user chose stays, 0 included.
        (["--runner=FlinkRunner", "--environment_cache_millis=0"], ["pre_optimize=all"], 0),
        (
            ["--runner=FlinkRunner", "--experiments=pre_optimize=default"],
            ["pre_optimize=default"],
            ENVIRONMENT_CACHE_MS,
        ),
        # Not a portable runner: nothing added.
        (["--runner=DirectRunner"], None, 0),
    ],
)
def test_portable_runners_fuse_in_python_and_keep_harnesses(typed, experiments, cache_ms):
    from apache_beam.options.pipeline_options import (
        DebugOptions,
        PipelineOptions,
        PortableOptions,
    )

    options = PipelineOptions(typed)
    fuse_in_python(options)
    assert options.view_as(DebugOptions).experiments == experiments
    assert int(options.view_as(PortableOptions).environment_cache_millis or 0) == cache_ms


@pytest.mark.parametrize(
    "staged",
    [
        ["--requirements_file=req.txt"],
        ["--extra_package=dist/x.tar.gz"],
        ["--setup_file=./setup.py"],
    ],
)
def test_packages_to_stage_are_refused_where_the_harness_installs_nothing(staged) -> None:
    from pipelines.runtime import pipeline_options

    flink = ["--runner=FlinkRunner", "--environment_type=EXTERNAL", "--environment_config=h:1"]
    with pytest.raises(CurateError, match="installs nothing"):
        pipeline_options([*flink, *staged])
    # Docker's boot installs them.
    pipeline_options(["--runner=FlinkRunner", "--environment_type=DOCKER", *staged])
