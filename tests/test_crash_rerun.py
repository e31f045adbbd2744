"""A run killed midway leaves no partial file that looks complete, and rerunning with
--overwrite gives exactly the output of an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq

from pipelines.cli import main
from tests.conftest import SAMPLE_WARC, WARC_DIR, require


def _files(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.suffix in (".parquet", ".json", ".yaml") and p.name != "config.yaml"
    }


def test_killed_run_then_overwrite(tmp_path: Path) -> None:
    inputs = [str(SAMPLE_WARC), str(require(WARC_DIR))]
    args = ["--images-from", "archive", "--shard-size", "50"]
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipelines.cli",
            "run",
            "--input",
            *inputs,
            "--output",
            str(killed),
            *args,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while not (killed / "config.yaml").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(2.0)  # into the pipeline
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)

    # Whatever was left: every file that looks like a shard is a complete Parquet file.
    for shard in killed.rglob("*.parquet"):
        assert not shard.name.startswith("."), shard
        pq.read_table(shard)
    assert not (killed / "stats.json").exists() or (killed / "shards" / "_manifest.json").exists()

    # The folder holds (part of) a run: refused without --overwrite, rebuilt with it.
    assert main(["run", "--input", *inputs, "--output", str(killed), *args]) == 2
    assert main(["run", "--input", *inputs, "--output", str(killed), *args, "--overwrite"]) == 0
    clean = tmp_path / "clean"
    assert main(["run", "--input", *inputs, "--output", str(clean), *args]) == 0
    assert _files(killed) == _files(clean)
    assert not list(killed.rglob(".tmp-*"))
