"""The SDK harness boot (pipelines/sdk_boot.py) and the worker pool that two TaskManagers can
share (pipelines/worker_pool.py), against real gRPC servers on 127.0.0.1; the pool on the Flink
cluster is in tests/test_flink.py."""

from __future__ import annotations

import json
import os
import stat
import time
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from apache_beam.portability.api import (
    beam_fn_api_pb2,
    beam_fn_api_pb2_grpc,
    beam_provision_api_pb2,
    beam_provision_api_pb2_grpc,
    endpoints_pb2,
)
from google.protobuf import struct_pb2

from pipelines import sdk_boot
from pipelines.worker_pool import SharedWorkerPool, serve


class _Provision(beam_provision_api_pb2_grpc.ProvisionServiceServicer):
    def __init__(self) -> None:
        self.worker_ids: list[str] = []

    def GetProvisionInfo(self, request, context):  # gRPC names the method
        self.worker_ids.append(dict(context.invocation_metadata()).get("worker_id", ""))
        options = struct_pb2.Struct()
        options.update({"beam:option:job_name:v1": "curate-test"})
        return beam_provision_api_pb2.GetProvisionInfoResponse(
            info=beam_provision_api_pb2.ProvisionInfo(
                pipeline_options=options,
                control_endpoint=endpoints_pb2.ApiServiceDescriptor(url="localhost:7001"),
                logging_endpoint=endpoints_pb2.ApiServiceDescriptor(url="localhost:7002"),
                runner_capabilities=["beam:protocol:control_response_elements_embedding:v1"],
            )
        )


def test_the_boot_runs_the_harness_with_the_jobs_options(monkeypatch) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    provision = _Provision()
    beam_provision_api_pb2_grpc.add_ProvisionServiceServicer_to_server(provision, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    seen = {}
    monkeypatch.setattr(os, "execv", lambda exe, argv: seen.update(argv=argv))
    monkeypatch.setattr(os, "environ", dict(os.environ))
    try:
        # The control endpoint given by the runner wins over the provision service's.
        sdk_boot.main(
            ["--id=3", f"--provision_endpoint=127.0.0.1:{port}", "--control_endpoint=h:9"]
        )
    finally:
        server.stop(grace=None)
    assert provision.worker_ids == ["3"]
    assert seen["argv"][1:] == ["-m", "apache_beam.runners.worker.sdk_worker_main"]
    env = os.environ
    assert env["WORKER_ID"] == "3"
    assert json.loads(env["PIPELINE_OPTIONS"]) == {"beam:option:job_name:v1": "curate-test"}
    assert env["CONTROL_API_SERVICE_DESCRIPTOR"] == 'url: "h:9"'
    assert env["LOGGING_API_SERVICE_DESCRIPTOR"] == 'url: "localhost:7002"'


def test_the_boot_needs_a_provision_endpoint() -> None:
    with pytest.raises(SystemExit):
        sdk_boot.main(["--id=1"])


@pytest.fixture
def pool(tmp_path: Path, monkeypatch):
    """A pool whose 'Python' is a stand-in harness that records its flags and sleeps."""
    fake = tmp_path / "python"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/started\nexec sleep 30\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    server, pool, port = serve(0)
    pool._python = str(fake)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = beam_fn_api_pb2_grpc.BeamFnExternalWorkerPoolStub(channel)
    try:
        yield stub, pool, tmp_path / "started"
    finally:
        channel.close()
        server.stop(grace=None)
        pool.stop_all()


def _start(stub, worker_id: str, control: str) -> None:
    request = beam_fn_api_pb2.StartWorkerRequest(
        worker_id=worker_id,
        control_endpoint=endpoints_pb2.ApiServiceDescriptor(url=control),
        provision_endpoint=endpoints_pb2.ApiServiceDescriptor(url="localhost:1"),
    )
    assert stub.StartWorker(request, timeout=10).error == ""


def test_two_taskmanagers_harnesses_of_the_same_id_both_run(pool) -> None:
    """Two TaskManagers both number their first harness 1; the first to end its stage sends
    StopWorker(1), which must not end the other's harness (Beam's pool ended it)."""
    stub, shared, started = pool
    _start(stub, "1", "localhost:6001")
    _start(stub, "1", "localhost:6002")
    assert [w for w, _ in shared.running()] == ["1", "1"]
    stub.StopWorker(beam_fn_api_pb2.StopWorkerRequest(worker_id="1"), timeout=10)
    assert [w for w, _ in shared.running()] == ["1", "1"]
    deadline = time.monotonic() + 10  # both stand-ins write their flags as they start
    while time.monotonic() < deadline:
        lines = started.read_text().splitlines() if started.exists() else []
        if len(lines) == 2:
            break
        time.sleep(0.05)
    assert all(line.startswith("-m pipelines.sdk_boot --id=1 ") for line in lines)
    assert {line.split("--control_endpoint=")[1].split()[0] for line in lines} == {
        "localhost:6001",
        "localhost:6002",
    }
    shared.stop_all()
    assert shared.running() == []


def test_harnesses_that_end_are_forgotten(tmp_path: Path) -> None:
    quick = tmp_path / "python"
    quick.write_text("#!/bin/sh\nexit 0\n")
    quick.chmod(quick.stat().st_mode | stat.S_IEXEC)
    shared = SharedWorkerPool(python=str(quick))
    request = beam_fn_api_pb2.StartWorkerRequest(worker_id="7")
    assert shared.StartWorker(request, None).error == ""
    deadline = time.monotonic() + 10
    while shared.running() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert shared.running() == []


def test_a_harness_that_cannot_start_is_an_error_to_the_runner(tmp_path: Path) -> None:
    shared = SharedWorkerPool(python=str(tmp_path / "no-such-python"))
    response = shared.StartWorker(beam_fn_api_pb2.StartWorkerRequest(worker_id="1"), None)
    assert "cannot start a harness" in response.error
