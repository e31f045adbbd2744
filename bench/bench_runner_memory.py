"""Is per-worker memory growth ours or the local runner's? A floor from a trivial pipeline.

The text-stage benchmark finds the largest SDK worker of the FnApiRunner's multi_processing
mode growing 2.5x from 10^5 to 10^6 rows. This runs a pipeline with none of our code on
the same runner and options: one element expands into N rows of ~300 bytes (as one input
file does), a Map keys them (10 rows a key), a GroupByKey, and a DoFn that reads the
groups and records its worker's RSS at its first element, every 10,000 elements, and its
peak. If the workers grow here too, the growth belongs to the runner, not to our stages.

    python bench/bench_runner_memory.py --repeats 2 --write
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import apache_beam as beam
import common  # bench/common.py, beside this script

START, END = "<!-- bench_runner_memory:start -->", "<!-- bench_runner_memory:end -->"
MP_FLAGS = ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]


def _rss_mb() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") >> 20


class Rows(beam.DoFn):
    """n -> n rows of ~300 bytes, in one bundle: what reading one input file does."""

    def process(self, n: int) -> Iterator[str]:
        for i in range(n):
            yield f"{i:08d}" + "x" * 290


class Record(beam.DoFn):
    """Reads the groups; writes this worker's RSS trace and peak to OUT_DIR/<pid>.json."""

    def setup(self) -> None:
        self.seen, self.trace = 0, []

    def process(self, group: tuple[str, list[str]]) -> None:
        if self.seen % 10_000 == 0:
            self.trace.append(_rss_mb())
        self.seen += 1

    def finish_bundle(self) -> None:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss >> 10
        doc = {"groups": self.seen, "trace_mb": self.trace, "peak_mb": peak}
        (Path(os.environ["OUT_DIR"]) / f"{os.getpid()}.json").write_text(json.dumps(doc))


def child(n: int) -> None:
    """Run the pipeline on n rows (this process is the runner); print the runner's peak."""
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.runners.portability.fn_api_runner import fn_runner

    with beam.Pipeline(fn_runner.FnApiRunner(), options=PipelineOptions(MP_FLAGS)) as p:
        _ = (
            p
            | beam.Create([n])
            | "Rows" >> beam.ParDo(Rows())
            | "Key" >> beam.Map(lambda row: (row[:7], row))
            | "Group" >> beam.GroupByKey()
            | "Read groups" >> beam.ParDo(Record())
        )
    print(json.dumps({"runner_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss >> 10}))


def one_run(n: int) -> dict:
    with tempfile.TemporaryDirectory() as out:
        env = {**os.environ, "OUT_DIR": out}
        cmd = [sys.executable, __file__, "--child", str(n)]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
        if done.returncode:
            raise RuntimeError(done.stderr[-2000:])
        workers = [json.loads(p.read_text()) for p in Path(out).glob("*.json")]
    runner = json.loads(done.stdout.strip().splitlines()[-1])["runner_peak_mb"]
    biggest = max(workers, key=lambda w: w["peak_mb"])
    return {"runner": runner, "peak": biggest["peak_mb"], "first": biggest["trace_mb"][0]}


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--sizes", default="100000,1000000", help="rows, comma-separated")
    ap.add_argument("--repeats", type=int, default=2, help="fresh processes per size")
    ap.add_argument("--write", action="store_true", help="rewrite the section in BENCHMARKS.md")
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args.child)
        return
    sizes = [int(x) for x in args.sizes.split(",")]
    runs: dict[int, list[dict]] = {n: [] for n in sizes}
    for r in range(args.repeats):  # sizes interleaved, round by round
        for n in sizes:
            runs[n].append(one_run(n))
            print(f"round {r}, {n:,} rows: {runs[n][-1]}", file=sys.stderr)
    med = {n: {k: statistics.median(x[k] for x in runs[n]) for k in runs[n][0]} for n in sizes}
    base = med[sizes[0]]
    lines = [
        "| rows | runs | largest SDK worker peak MB | × | its RSS at its first group MB "
        "| runner process peak MB | × |",
        "|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for n in sizes:
        m = med[n]
        lines.append(
            f"| {n:,} | {len(runs[n])} | {m['peak']:,.0f} | {m['peak'] / base['peak']:.2f} "
            f"| {m['first']:,.0f} | {m['runner']:,.0f} | {m['runner'] / base['runner']:.2f} |"
        )
    last = med[sizes[-1]]
    held = last["first"] / last["peak"]
    verdict = (
        f"At {sizes[-1]:,} rows the worker that reads the groups is at {held:.0%} of its peak "
        "before its first group: the runner hands each worker its share of the stage's input "
        "as one bundle, and the worker holds it before processing starts. Its peak grows "
        f"{last['peak'] / base['peak']:.2f}× from {sizes[0]:,} to {sizes[-1]:,} rows with no "
        "code of ours in the pipeline; compare the text stage's largest SDK worker in the "
        "section above."
    )
    section = f"""## Local runner memory without our code (`bench/bench_runner_memory.py`)

{datetime.date.today().isoformat()}, `python bench/bench_runner_memory.py --repeats
{args.repeats} --write`. Machine: {common.machine(["apache-beam"])}. The FnApiRunner with
`{" ".join(MP_FLAGS)}`, as in the text-stage benchmark; the pipeline holds none of our code:
one element expands into N rows of ~300 bytes, a Map keys them 10 rows a key, a
GroupByKey, and a DoFn reads the groups, recording its worker's RSS at its first group and
its peak. Medians over {args.repeats} fresh processes per size, sizes interleaved; × = over
the {sizes[0]:,}-row figure.

{chr(10).join(lines)}

{verdict}"""
    common.publish(common.unwrap(section), START, END, args.write)


if __name__ == "__main__":
    main()
