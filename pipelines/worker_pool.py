"""A Beam worker pool (the EXTERNAL environment) that several TaskManagers can share.

`--environment_type EXTERNAL --environment_config HOST:PORT` makes each TaskManager ask a pool
at that address to start SDK harnesses (StartWorker) and, when a stage's environment closes,
to stop one (StopWorker), naming it by worker id alone. Each TaskManager numbers its harnesses
from 1, so with two TaskManagers on one pool two harnesses share an id; Beam's
`worker_pool_main` keeps one process per id and, asked to stop one, stops whichever holds the
id now, often the other TaskManager's, whose task then waits for ever (docs/flink.md).

This pool keeps every harness it starts, never stops one by id, and lets each end as a harness
ends when its runner closes its control stream (the runner closes it before it sends
StopWorker); what is still running when the pool stops is stopped with it. Each harness runs
`pipelines.sdk_boot` (Beam's container contract), so it gets the job's pipeline options and
logs to the runner.

    python -m pipelines.worker_pool --port 50000
"""

from __future__ import annotations

import argparse
import logging
import signal
import subprocess
import sys
import threading
from concurrent import futures

import grpc
from apache_beam.portability.api import beam_fn_api_pb2, beam_fn_api_pb2_grpc

_LOGGER = logging.getLogger("curate.worker_pool")
# How long a stopping pool waits for its harnesses after SIGTERM before it kills them.
_STOP_GRACE_S = 10


class SharedWorkerPool(beam_fn_api_pb2_grpc.BeamFnExternalWorkerPoolServicer):
    """Starts a harness process per StartWorker; StopWorker ends nothing (see the module)."""

    def __init__(self, python: str = sys.executable) -> None:
        self._python = python
        self._lock = threading.Lock()
        self._harnesses: list[tuple[str, subprocess.Popen]] = []

    def StartWorker(self, request, context):  # gRPC names the methods
        command = [
            self._python,
            "-m",
            "pipelines.sdk_boot",
            f"--id={request.worker_id}",
            f"--provision_endpoint={request.provision_endpoint.url}",
            f"--control_endpoint={request.control_endpoint.url}",
            f"--logging_endpoint={request.logging_endpoint.url}",
            f"--artifact_endpoint={request.artifact_endpoint.url}",
        ]
        try:
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL)
        except OSError as e:
            return beam_fn_api_pb2.StartWorkerResponse(error=f"cannot start a harness: {e}")
        with self._lock:
            self._reap()
            self._harnesses.append((request.worker_id, process))
        _LOGGER.info(
            "started harness %s (pid %d) for %s",
            request.worker_id,
            process.pid,
            request.control_endpoint.url,
        )
        return beam_fn_api_pb2.StartWorkerResponse()

    def StopWorker(self, request, context):
        with self._lock:
            self._reap()
        return beam_fn_api_pb2.StopWorkerResponse()

    def running(self) -> list[tuple[str, int]]:
        """(worker id, pid) of the harnesses still running."""
        with self._lock:
            self._reap()
            return [(worker_id, p.pid) for worker_id, p in self._harnesses]

    def stop_all(self) -> None:
        """End every harness still running: SIGTERM, then SIGKILL after a grace period."""
        with self._lock:
            harnesses, self._harnesses = self._harnesses, []
        for _, p in harnesses:
            if p.poll() is None:
                p.terminate()
        for _, p in harnesses:
            try:
                p.wait(_STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def _reap(self) -> None:
        self._harnesses = [(i, p) for i, p in self._harnesses if p.poll() is None]


def serve(port: int, host: str = "127.0.0.1") -> tuple[grpc.Server, SharedWorkerPool, int]:
    """Start the pool's gRPC server; returns it, the pool and the port it listens on."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    pool = SharedWorkerPool()
    beam_fn_api_pb2_grpc.add_BeamFnExternalWorkerPoolServicer_to_server(pool, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if not bound:
        raise OSError(f"cannot listen on {host}:{port}")
    server.start()
    return server, pool, bound


def main(argv: list[str] | None = None) -> None:
    """Serve until SIGTERM or SIGINT, then stop the harnesses still running."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--port", type=int, default=50000)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    # A tag on the command line by which a process manager recognises this process.
    parser.add_argument("--label", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    server, pool, port = serve(args.port, args.host)
    _LOGGER.info("listening on %s:%d", args.host, port)
    done = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: done.set())
    done.wait()
    server.stop(grace=None)
    pool.stop_all()
    _LOGGER.info("stopped")


if __name__ == "__main__":
    main()
