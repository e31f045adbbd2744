"""Benchmark: how many elements a runner hands the Python workers per bundle, and what sets it.

A small Beam pipeline of the text stage's shape (read, a per-element step, a GroupByKey,
a step on the groups) with a DoFn that counts the elements of every bundle it sees, per step,
and writes the count in finish_bundle to a folder shared by the workers (the local cluster's
processes all see /tmp). Run on the local Flink cluster (`scripts/flink-local.sh start`,
parallelism 2), with Flink's bundle options at their defaults and set small, and on the
in-memory runner, in the same invocation.

    scripts/flink-local.sh start
    python bench/bench_flink_bundles.py --sizes 10000,100000
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import uuid
from pathlib import Path

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from common import FLINK_LOCAL as FLINK  # bench/common.py, beside this script

from pipelines.runtime import fuse_in_python


class CountBundles(beam.DoFn):
    """Passes elements on; writes how many each bundle held, one file per bundle."""

    def __init__(self, folder: str, step: str) -> None:
        self.folder, self.step = folder, step

    def start_bundle(self) -> None:
        self.n = 0

    def process(self, element):
        self.n += 1
        yield element

    def finish_bundle(self) -> None:
        if self.n:
            name = f"{self.step}.{os.getpid()}.{uuid.uuid4().hex}"
            Path(self.folder, name).write_text(str(self.n))


def run(n: int, argv: list[str], folder: Path, runner=None) -> dict[str, list[int]]:
    """Bundle sizes per step of one run."""
    folder.mkdir(parents=True)
    options = PipelineOptions(argv)
    fuse_in_python(options)  # as curate runs it: fused in Python, harnesses kept
    with beam.Pipeline(runner=runner, options=options) as p:
        rows = p | "Read" >> beam.Create(range(n), reshuffle=True)
        counted = rows | "Per element" >> beam.ParDo(CountBundles(str(folder), "per element"))
        groups = counted | "Key" >> beam.Map(lambda x: (x % 997, x)) | "Group" >> beam.GroupByKey()
        _ = groups | "Per group" >> beam.ParDo(CountBundles(str(folder), "per group"))
    sizes: dict[str, list[int]] = {}
    for f in folder.iterdir():
        sizes.setdefault(f.name.split(".")[0], []).append(int(f.read_text()))
    return sizes


def describe(sizes: list[int]) -> str:
    return (
        f"{len(sizes)} | {sum(sizes):,} | {min(sizes):,} | "
        f"{statistics.median(sizes):,.0f} | {max(sizes):,}"
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--sizes", default="10000,100000")
    args = ap.parse_args(argv)
    os.environ.setdefault("NO_GCE_CHECK", "true")
    work = Path(tempfile.mkdtemp(prefix="bench_bundles-"))
    configs = [
        ("Flink, defaults", FLINK, None),
        (
            "Flink, --max_bundle_size=100 --max_bundle_time_mills=100",
            [
                *FLINK,
                "--max_bundle_size=100",
                "--max_bundle_time_mills=100",
            ],
            None,
        ),
        ("in-memory (FnApiRunner)", [], FnApiRunner()),
    ]
    print("| runner | elements | step | bundles | elements seen | min | median | max |")
    print("|---|--:|---|--:|--:|--:|--:|--:|")
    for n in (int(x) for x in args.sizes.split(",")):
        for i, (name, flags, runner) in enumerate(configs):
            sizes = run(n, flags, work / f"{n}-{i}", runner)
            for step in sorted(sizes):
                print(f"| {name} | {n:,} | {step} | {describe(sizes[step])} |", flush=True)
    print(f"(bundle files in {work})", file=sys.stderr)


if __name__ == "__main__":
    main()
