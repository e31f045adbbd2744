"""The pipeline on a two-TaskManager Flink cluster on 127.0.0.1 (scripts/flink-local.sh) writes
the same bytes as the in-process runner: Beam's Fn API across processes, Flink's shuffle, the
runner's bundles and parallelism, and the `auto` settings of a non-local runner.

Skipped, with the reason, where Java is absent or the cluster is not running; `.ci/run` starts
it around pytest and makes its absence a failure (CURATE_REQUIRE_FLINK). Each Flink run
takes 20-60 s on 2 cores.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import urllib.request
from pathlib import Path

import pytest

from curation import reasons
from pipelines.cli import main
from tests.conftest import SAMPLE_WARC, ImageServer, jpeg_bytes, serve
from tests.test_cli import check_invariant

CACHE = Path(
    os.environ.get("ALIGN_CURATION_CACHE")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "align-curation"
)
SDK_BOOT = CACHE / "flink" / "run" / "sdk-boot"  # written by scripts/flink-local.sh start
REST = "http://127.0.0.1:8081"
JOB_PORT = 8099
WORKER_POOL_PORT = 50000  # pipelines/worker_pool.py, started by scripts/flink-local.sh
# Every file a run writes whose bytes must not depend on the runner. report.html names the
# output folder, so it differs between any two folders by that line alone.
COMPARED = ("shards", "webdataset", "tfrecord", "rejects", "dead_letter")
COMPARED_FILES = ("stats.json", "report_samples.parquet", "config.yaml")


def _cluster_problem() -> str | None:
    if shutil.which("java") is None:
        return "Java is absent: the Flink tests need Java 11 or 17 (and Maven for the first start)"
    try:
        with urllib.request.urlopen(f"{REST}/taskmanagers", timeout=5) as response:
            managers = len(json.load(response)["taskmanagers"])
    except OSError as e:
        return f"no Flink cluster at {REST} ({e}); start it: scripts/flink-local.sh start"
    if managers < 2:
        return f"the Flink cluster at {REST} has {managers} TaskManager(s), not 2"
    try:
        socket.create_connection(("127.0.0.1", JOB_PORT), timeout=5).close()
    except OSError:
        return f"no Beam job server on {JOB_PORT}; start it: scripts/flink-local.sh start"
    if not SDK_BOOT.exists():
        return f"{SDK_BOOT} is missing; start the cluster with scripts/flink-local.sh start"
    try:
        socket.create_connection(("127.0.0.1", WORKER_POOL_PORT), timeout=5).close()
    except OSError:
        return f"no worker pool on {WORKER_POOL_PORT}; start it: scripts/flink-local.sh start"
    return None


@pytest.fixture(scope="module")
def flink() -> list[str]:
    """The Beam options that run a pipeline on the local cluster, each TaskManager starting
    its own harnesses (PROCESS; skips without a cluster)."""
    problem = _cluster_problem()
    if problem and os.environ.get("CURATE_REQUIRE_FLINK"):
        pytest.fail(f"CURATE_REQUIRE_FLINK is set (.ci/run, where Java is) but {problem}")
    if problem:
        pytest.skip(problem)
    return [
        "--runner=FlinkRunner",
        f"--job_endpoint=localhost:{JOB_PORT}",
        "--environment_type=PROCESS",
        "--environment_config=" + json.dumps({"command": str(SDK_BOOT)}),
        "--parallelism=2",
    ]


@pytest.fixture(scope="module")
def flink_pool(flink) -> list[str]:
    """The same, the harnesses started by the worker pool both TaskManagers share (EXTERNAL),
    as the issue's command line has it."""
    return [
        "--runner=FlinkRunner",
        f"--job_endpoint=localhost:{JOB_PORT}",
        "--environment_type=EXTERNAL",
        f"--environment_config=localhost:{WORKER_POOL_PORT}",
        "--parallelism=2",
    ]


def assert_same_outputs(local: Path, on_flink: Path) -> None:
    """Every shard, ledger and stats file of the two runs holds the same bytes."""
    for folder in COMPARED:
        names = sorted(p.name for p in (local / folder).glob("*"))
        assert names == sorted(p.name for p in (on_flink / folder).glob("*")), folder
        for name in names:
            expected = (local / folder / name).read_bytes()
            assert (on_flink / folder / name).read_bytes() == expected, f"{folder}/{name}"
    for name in COMPARED_FILES:
        assert (on_flink / name).read_bytes() == (local / name).read_bytes(), name


def test_archive_run_on_flink_matches_the_in_process_runner(tmp_path: Path, flink) -> None:
    """The bundled crawl, images read from the archive, every shard format; a small
    vocabulary so that the dataset-wide rare-token rule rejects (ties included)."""
    args = ["run", "--input", str(SAMPLE_WARC), "--images-from", "archive"]
    args += ["--vocab-size", "300", "--formats", "parquet,tfrecord,webdataset"]
    local, on_flink = tmp_path / "local", tmp_path / "flink"
    assert main([*args, "--output", str(local)]) == 0
    # A Flink job-server option (its default value) passes the check of unknown options.
    assert main([*args, "--output", str(on_flink), *flink, "--max_bundle_size=1000"]) == 0
    kept, rejected, _ = check_invariant(on_flink)
    stats = json.loads((on_flink / "stats.json").read_text())
    assert stats["rejected"]["text"][reasons.TEXT_RARE_TOKEN] > 0
    assert kept and rejected
    assert_same_outputs(local, on_flink)


def test_table_run_with_http_images_on_flink_matches_the_in_process_runner(
    tmp_path: Path, flink_pool
) -> None:
    """A URL table, images fetched over HTTP by harnesses of the shared worker pool (their
    bytes in the spool under the output, which `auto` picks on Flink), a shared caption
    rejected by the dataset-wide rule and a dead link."""
    server = ImageServer()
    for i in range(6):
        server.images[f"/photo-{i}.jpg"] = jpeg_bytes((320 + 16 * i, 240), colour=30 * i)
    rows = [(f"/photo-{i}.jpg", f"a striped wall painted in shade number {i}") for i in range(6)]
    rows += [("/photo-1.jpg", "the second striped wall seen from another page")]
    rows += [("/404.jpg", "a picture that is no longer there")]
    with serve(server):
        table = tmp_path / "urls.tsv"
        table.write_text("url\tcaption\n" + "".join(f"{server.base}{p}\t{t}\n" for p, t in rows))
        args = ["run", "--input", str(table), "--images-from", "http"]
        args += ["--allow-private-network", "true", "--max-retries", "0"]
        args += ["--formats", "parquet,webdataset"]
        local, on_flink = tmp_path / "local", tmp_path / "flink"
        assert main([*args, "--output", str(local)]) == 0
        assert main([*args, "--output", str(on_flink), *flink_pool]) == 0
    kept, rejected, _ = check_invariant(on_flink)
    assert len(kept) == 7
    assert [r["reason"] for r in rejected] == ["http_404"]
    assert_same_outputs(local, on_flink)
