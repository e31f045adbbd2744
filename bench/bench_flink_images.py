"""Benchmark: the 10,000-URL image run on the local Flink cluster against the in-memory runner.

The corpus, server and URL list of bench_images.py's whole runs (`--large`): N distinct JPEGs
served on 16 ports of 127.0.0.1, one Parquet URL list. Each round runs `curate run` on the
in-memory runner and on the cluster that `scripts/flink-local.sh start` runs (two
TaskManagers, parallelism 2), order rotated; ratio = Flink's wall over the in-memory run's
in the same round. Where Flink's time goes: each Flink job's own duration from the REST API
(the rest of the wall is the client: building and submitting the graph, staging, the job
server's translation), and the last job's tasks (Flink's vertices: fused stages, shuffles and
sinks) with when each started and how long it ran.

    scripts/flink-local.sh start
    python bench/bench_flink_images.py --n 10000 --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import FLINK_LOCAL as FLINK
from common import flink_rest
from images_corpus import real_images, source_photos
from images_e2e import Tool, corpus, ours, ours_kept, whole_runs

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
COMMON = ["--nsfw", "false", "--progress-interval", "0"]


def flink_jobs(but: set[str]) -> list[dict]:
    """The cluster's jobs but those named, oldest first."""
    jobs = [j for j in flink_rest("/jobs/overview")["jobs"] if j["jid"] not in but]
    return sorted(jobs, key=lambda j: j["start-time"])


def vertex_table(job_id: str) -> str:
    job = flink_rest(f"/jobs/{job_id}")
    start = job["start-time"]
    lines = [
        "| task (Flink vertex; Beam stages fused into it) | starts at s | runs s | records in |",
        "|---|--:|--:|--:|",
    ]
    for v in sorted(job["vertices"], key=lambda v: (v["start-time"], v["name"])):
        name = v["name"].replace("|", "/")
        if len(name) > 110:
            name = name[:107] + "..."
        lines.append(
            f"| {name} | {(v['start-time'] - start) / 1e3:.1f} | {v['duration'] / 1e3:.1f} | "
            f"{v['metrics'].get('read-records', 0):,} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--hosts", type=int, default=16)
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "bench_images")
    args, extra = ap.parse_known_args(argv)  # the rest: more Beam options for the Flink runs
    photos = lambda: source_photos(real_images([DATA / "images", DATA / "evalsets"])[0])  # noqa: E731
    folder, _ = corpus(args.n, photos, args.cache)
    work = Path(tempfile.mkdtemp(prefix="bench_flink_images-"))
    tools = [
        Tool("Flink (2 TaskManagers, parallelism 2)", ours([*COMMON, *FLINK, *extra]), ours_kept),
        Tool("in-memory runner", ours(COMMON), ours_kept),
    ]
    before = {j["jid"] for j in flink_rest("/jobs/overview")["jobs"]}
    res = whole_runs(args.n, args.hosts, args.rounds, args.timeout, work, folder, tools)
    jobs = flink_jobs(before)
    flink_name, local_name = tools[0].name, tools[1].name
    fw, lw = res["walls"][flink_name, args.n], res["walls"][local_name, args.n]
    ratios = [a / b for a, b in zip(fw, lw, strict=True)]
    job_s = [j["duration"] / 1e3 for j in jobs]
    print(f"| runner, {args.n:,} URLs, NSFW off | wall s, median (min–max) | kept | "
          "× in-memory wall (min–max) |")  # fmt: skip
    print("|---|--:|--:|--:|")
    for name, walls, rel in ((flink_name, fw, ratios), (local_name, lw, [1.0] * len(lw))):
        kept = res["kept"][name, args.n]
        print(
            f"| {name} | {statistics.median(walls):.1f} ({min(walls):.1f}–{max(walls):.1f}) | "
            f"{statistics.median(kept):,.0f} | {statistics.median(rel):.2f} "
            f"({min(rel):.2f}–{max(rel):.2f}) |"
        )
    if job_s:
        print(
            f"\nFlink jobs' own durations (REST API): median {statistics.median(job_s):.1f} s "
            f"({min(job_s):.1f}–{max(job_s):.1f}) of the median wall "
            f"{statistics.median(fw):.1f} s; the rest is the client (graph, submission, "
            "staging, translation) and the end-of-run summary.\n"
        )
        print(f"The last Flink job ({jobs[-1]['jid']}):\n")
        print(vertex_table(jobs[-1]["jid"]))
    print(f"(outputs and logs in {work})", file=sys.stderr)


if __name__ == "__main__":
    main()
