"""Beam's SDK container contract for a Python SDK harness in this environment.

A runner that starts harnesses itself (Flink's PROCESS environment, or our worker pool for the
EXTERNAL one, pipelines/worker_pool.py) runs a boot executable with the flags of Beam's
container contract (--id, --provision_endpoint, --control_endpoint, ...). As Beam's container
boot does, this asks the runner's provision service for the pipeline options and the
endpoints, then becomes `apache_beam.runners.worker.sdk_worker_main`, so the harness runs
with the job's options and sends its log lines to the runner. (Beam's own worker pool runs
`SdkHarness(...).run()` instead: no options, and no log handler, so a harness's errors
reached no log at all.)

    python -m pipelines.sdk_boot --id=1 --provision_endpoint=localhost:PORT ...
"""

from __future__ import annotations

import argparse
import os
import sys

CONTRACT_FLAGS = (
    "id",
    "logging_endpoint",
    "artifact_endpoint",
    "provision_endpoint",
    "control_endpoint",
)


def harness_environment(args: argparse.Namespace) -> dict[str, str]:
    """The environment sdk_worker_main reads, from the provision service's answer."""
    import grpc
    from apache_beam.portability.api import beam_provision_api_pb2, beam_provision_api_pb2_grpc
    from google.protobuf import json_format

    with grpc.insecure_channel(args.provision_endpoint) as channel:
        stub = beam_provision_api_pb2_grpc.ProvisionServiceStub(channel)
        info = stub.GetProvisionInfo(
            beam_provision_api_pb2.GetProvisionInfoRequest(),
            metadata=[("worker_id", args.id)],
            timeout=60,
        ).info
    control = args.control_endpoint or info.control_endpoint.url
    logging_url = args.logging_endpoint or info.logging_endpoint.url
    env = {
        "WORKER_ID": args.id,
        "PIPELINE_OPTIONS": json_format.MessageToJson(info.pipeline_options),
        "CONTROL_API_SERVICE_DESCRIPTOR": f'url: "{control}"',
        "LOGGING_API_SERVICE_DESCRIPTOR": f'url: "{logging_url}"',
        "RUNNER_CAPABILITIES": " ".join(info.runner_capabilities),
    }
    if info.status_endpoint.url:
        env["STATUS_API_SERVICE_DESCRIPTOR"] = f'url: "{info.status_endpoint.url}"'
    return env


def main(argv: list[str] | None = None) -> None:
    """Parse the contract's flags, fetch the provision info, exec the harness."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    for flag in CONTRACT_FLAGS:
        parser.add_argument(f"--{flag}", default="")
    # Other flags of the contract (--semi_persist_dir, ...) mean nothing to a harness that
    # runs in this environment as it is.
    args, _ = parser.parse_known_args(argv)
    if not args.provision_endpoint:
        parser.error("--provision_endpoint is required (the runner passes it)")
    os.environ.update(harness_environment(args))
    os.execv(sys.executable, [sys.executable, "-m", "apache_beam.runners.worker.sdk_worker_main"])


if __name__ == "__main__":
    main()
