"""The progress line: printed every interval on local runs, never with an interval of 0 (which
once printed in a busy loop), and not printed as zeros where the workers cannot report."""

from __future__ import annotations

import os
import time

from pipelines import progress
from pipelines.progress import Reporter


def test_counts_from_the_workers_files_reach_the_line(capsys) -> None:
    progress._counts["candidates"] += 1000  # an earlier run in this process: not counted
    with Reporter(interval=0.05) as reporter:
        progress.bump("candidates", 7)
        progress.bump("kept", 5)
        progress.flush()
        deadline = time.monotonic() + 5
        while "7 candidates" not in capsys.readouterr().err and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "s: 7 candidates read, 5 kept" in reporter.line()
    assert progress.ENV not in os.environ


def test_an_interval_of_zero_prints_nothing_and_counts_nothing(capsys) -> None:
    with Reporter(interval=0) as reporter:
        assert progress.ENV not in os.environ  # the workers' bump() is a no-op
        progress.bump("candidates", 3)
        time.sleep(0.2)
    assert capsys.readouterr().err == ""
    assert reporter.folder is None


def test_a_run_off_the_local_runners_says_where_progress_is(tmp_path, capsys, monkeypatch):
    from pipelines import cli

    seen = {}

    class Plan:
        local = False

        def describe(self) -> str:
            return "a cluster"

    def execute() -> None:
        seen["env"] = os.environ.get(progress.ENV)

    monkeypatch.setattr("pipelines.outputs.summarize", lambda *args: ("", True, None))
    args = cli.build_parser().parse_args(
        ["run", "--input", "x", "--output", str(tmp_path / "out"), "--progress-interval", "1"]
    )
    from curation.config import CurationConfig

    assert cli._launch(args, CurationConfig(), Plan(), "running", execute) == 0
    err = capsys.readouterr().err
    assert "no progress lines off the local runners" in err
    assert "is a local path; on a cluster of several machines every worker must see it" in err
    assert seen["env"] is None
