"""Benchmark: per-process peak memory of the text stage on the local Flink cluster.

For each size, a seeded synthetic URL table (bench/gen_candidates.py) goes through
`curate run --stop-after text` on the cluster that `scripts/flink-local.sh start` runs
(two TaskManagers, parallelism 2), and the same table on the in-memory runner in the same
invocation. /proc is sampled every 0.5 s: the peak RSS of each TaskManager JVM, of each SDK
harness process (the Python workers that run our DoFns), and of the in-memory run's process
tree. The target (issue #21): peak per worker within 1.5x from 10^5 to 10^6 candidates.

    scripts/flink-local.sh start
    python bench/bench_flink_memory.py --sizes 10000,100000
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import FLINK_LOCAL as FLINK
from common import flink_rest
from gen_candidates import write_table

PAGE = os.sysconf("SC_PAGE_SIZE")


def _processes() -> dict[int, tuple[str, int]]:
    """pid -> (kind, RSS bytes) of the cluster's TaskManagers and SDK harnesses."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            rss = int((entry / "statm").read_text().split()[1]) * PAGE
        except (OSError, IndexError, ValueError):
            continue
        if "TaskManagerRunner" in cmd:
            found[int(entry.name)] = ("taskmanager", rss)
        elif "apache_beam.runners.worker.sdk_worker_main" in cmd:
            # A harness after pipelines/sdk_boot.py has exec'd it (before, it is the boot).
            found[int(entry.name)] = ("sdk harness", rss)
    return found


def _tree_rss(root: int) -> int:
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except (OSError, IndexError, ValueError):
            continue
        stack.extend(int(c) for c in children)
    return total


def run(
    table: Path, out: Path, flags: list[str], timeline: list | None = None
) -> tuple[float, dict[str, int], int]:
    """Wall s, peak RSS by kind (largest single process) on the cluster, and the peak RSS
    of the curate process tree; `timeline` gets (epoch ms, largest harness RSS) samples."""
    curate = str(Path(sys.executable).with_name("curate"))
    argv = [curate, "run", "--input", str(table), "--output", str(out), "--overwrite"]
    argv += ["--stop-after", "text", "--progress-interval", "0", *flags]
    peaks: dict[str, int] = {}
    tree_peak = 0
    t0 = time.perf_counter()
    env = {**os.environ, "NO_GCE_CHECK": "true"}
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    done = threading.Event()

    def sample() -> None:
        nonlocal tree_peak
        while not done.is_set():
            harness = 0
            for kind, rss in _processes().values():
                peaks[kind] = max(peaks.get(kind, 0), rss)
                if kind == "sdk harness":
                    harness = max(harness, rss)
            if timeline is not None:
                timeline.append((time.time() * 1000, harness))
            tree_peak = max(tree_peak, _tree_rss(proc.pid))
            time.sleep(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    rc = proc.wait(timeout=3600)
    done.set()
    sampler.join(5)
    if rc != 0:
        raise SystemExit(f"curate exited {rc} on {table}")
    return time.perf_counter() - t0, peaks, tree_peak


def growth_by_task(timeline: list[tuple[float, int]], top: int = 8) -> str:
    """The Flink tasks of the cluster's newest job during which the largest harness grew
    most: RSS when the task started, and the most while it ran. Tasks overlap in time, so
    this points at stages rather than proving one."""
    jobs = flink_rest("/jobs/overview")["jobs"]
    job = flink_rest(f"/jobs/{max(jobs, key=lambda j: j['start-time'])['jid']}")
    rows = []
    for v in job["vertices"]:
        start, end = v["start-time"], v["start-time"] + v["duration"]
        before = [rss for t, rss in timeline if t <= start]
        during = [rss for t, rss in timeline if start <= t <= end]
        if before and during:
            rows.append((max(during) - before[-1], before[-1], max(during), v["name"]))
    rows.sort(reverse=True)
    lines = [
        "| task | harness MB at start | most MB while it ran | growth MB |",
        "|---|--:|--:|--:|",
    ]
    for grew, at_start, most, name in rows[:top]:
        name = name.replace("|", "/")[:100]
        lines.append(
            f"| {name} | {at_start / 2**20:,.0f} | {most / 2**20:,.0f} | {grew / 2**20:,.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument(
        "--no-local", action="store_true", help="skip the in-memory runs (see bench_text_stage)"
    )
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "bench_images")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench_flink-"))
    rows = []
    for n in (int(x) for x in args.sizes.split(",")):
        table = write_table(n, args.cache / f"candidates-{n}.parquet")
        timeline: list[tuple[float, int]] = []
        flink_s, peaks, _ = run(table, work / f"flink-{n}", FLINK, timeline)
        growth = growth_by_task(timeline)
        print(f"\nWhere the largest harness grew, {n:,} candidates:\n\n{growth}\n", file=sys.stderr)
        local_s, local_peak = float("nan"), 0
        if not args.no_local:
            local_s, _, local_peak = run(table, work / f"local-{n}", [])
        rows.append(
            f"| {n:,} | {flink_s:.0f} | {peaks.get('taskmanager', 0) / 2**20:,.0f} | "
            f"{peaks.get('sdk harness', 0) / 2**20:,.0f} | {local_s:.0f} | "
            f"{local_peak / 2**20:,.0f} |"
        )
        print(rows[-1], file=sys.stderr)
    print(
        "| candidates | Flink wall s | TaskManager peak MB (largest) | SDK harness peak MB "
        "(largest) | in-memory wall s | in-memory peak MB (whole tree) |"
    )
    print("|--:|--:|--:|--:|--:|--:|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
