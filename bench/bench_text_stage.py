"""Benchmark: does the text stage scale linearly in time, and flat-ish in memory?

Per size a seeded synthetic URL table (`bench/gen_candidates.py`) is generated once, then
`curate run --input TABLE --output OUT --overwrite --stop-after text --detect-language false`
runs on the DirectRunner (FnApiRunner, in memory) in a fresh subprocess per run: wall and CPU
time (user + sys, `/usr/bin/time`), peak RSS of the process tree (/proc sampled every 0.2 s),
of the runner process and of its largest SDK worker. Sizes interleaved round by round, medians
over rounds; the same at 10^5 and 10^6 with `--direct_running_mode=multi_processing
--direct_num_workers=2`, where SDK worker processes run the DoFns and the runner process holds
the shuffles (the part Dataflow's shuffle service holds): per-worker memory is read there.
The load average after each run and a hash of the pipeline's source at start and end are
recorded: on a shared machine a busy neighbour or a code change mid-run shows in the output.

    python bench/bench_text_stage.py --repeats 3 --repeats-large 1 --write

"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import json
import os
import shutil
import signal
import statistics as st
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # bench/common.py, beside this script
from gen_candidates import write_table

REPO = Path(__file__).resolve().parents[1]
START, END = "<!-- bench_text_stage:start -->", "<!-- bench_text_stage:end -->"
CURATE = shutil.which("curate", path=Path(sys.executable).parent) or "curate"
MP_FLAGS = ("--direct_running_mode=multi_processing", "--direct_num_workers=2")
PAGE = os.sysconf("SC_PAGE_SIZE")
NOISY = 1.3  # max/min wall of one size above this: the machine was too busy to judge time


@dataclass
class Config:
    label: str
    rows: int
    repeats: int
    flags: tuple[str, ...] = ()
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)  # user + sys of the waited process tree
    rss: list[float] = field(default_factory=list)  # MB, sampled sum over the tree
    max_rss: list[float] = field(default_factory=list)  # MB, largest process
    runner_rss: list[float] = field(default_factory=list)  # MB, the curate process
    worker_rss: list[float] = field(default_factory=list)  # MB, largest SDK worker process
    loads: list[float] = field(default_factory=list)  # 1-min load average after each run
    stats: dict | None = None
    failure: str | None = None


def _tree_rss(root: int) -> tuple[list[int], dict[int, tuple[int, int]]]:
    """`root` and its descendants (from the parent pids in /proc, parents first), and the
    RSS and depth below `root` of each."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            ppid = int(Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    pids, todo, rss = [], [(root, 0)], {}
    while todo:
        pid, depth = todo.pop()
        pids.append(pid)
        todo.extend((c, depth + 1) for c in children.get(pid, ()))
        with contextlib.suppress(OSError):
            rss[pid] = (int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE, depth)
    return pids, rss


def run_once(cfg: Config, table: Path, out: Path, timeout: float, max_rss_gb: float) -> None:
    """One `curate run` under /usr/bin/time; appends its figures to cfg, or sets failure."""
    timefile, errfile = out.with_suffix(".time"), out.with_suffix(".err")
    cmd = ["/usr/bin/time", "-f", "%e %M %U %S", "-o", str(timefile), CURATE, "run"]
    cmd += ["--input", str(table), "--output", str(out), "--overwrite"]
    cmd += ["--stop-after", "text", "--detect-language", "false", *cfg.flags]
    t0, peak, pids = time.perf_counter(), 0, []
    runner = worker = 0  # peak RSS of /usr/bin/time's child (curate), of its children
    with errfile.open("w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
    try:
        while proc.poll() is None:
            pids, each = _tree_rss(proc.pid)
            peak, elapsed = max(peak, sum(r for r, _ in each.values())), time.perf_counter() - t0
            runner = max([runner] + [r for r, d in each.values() if d == 1])
            worker = max([worker] + [r for r, d in each.values() if d >= 2])
            if elapsed > timeout or peak > max_rss_gb * 2**30:
                cfg.failure = f"stopped after {elapsed:.0f} s at {peak / 2**20:,.0f} MB tree RSS"
                return
            time.sleep(0.2)
    finally:
        if proc.poll() is None:  # stopped, or interrupted: the whole tree, by id
            for pid in reversed(pids or [proc.pid]):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            proc.wait()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        cfg.failure = f"exit {proc.returncode}: {errfile.read_text().strip()[-300:]}"
        return
    _, max_kb, user, system = (float(x) for x in timefile.read_text().split()[-4:])
    cfg.wall.append(wall)
    cfg.cpu.append(user + system)
    cfg.rss.append(max(peak, max_kb * 1024) / 2**20)
    cfg.max_rss.append(max_kb / 1024)
    cfg.runner_rss.append(runner / 2**20)
    cfg.worker_rss.append(worker / 2**20)
    cfg.loads.append(os.getloadavg()[0])
    cfg.stats = json.loads((out / "stats.json").read_text())
    shutil.rmtree(out, ignore_errors=True)


def _size(n: int) -> str:
    e = len(str(n)) - 1
    return f"10^{e}" if n == 10**e else f"{n:,}"


def results_table(cfgs: Sequence[Config]) -> str:
    """Per configuration: wall and CPU time per row, their linearity, and peak RSS."""
    base = next(c for c in cfgs if c.wall)
    ref = next((c for c in cfgs if c.rows == 10**5 and c.rss and not c.flags), None)
    lines = [
        "| configuration | rows | runs | median wall s (min–max) | µs/row "
        f"| × µs/row of {_size(base.rows)} | marginal µs/row | CPU µs/row (marginal) "
        "| peak RSS MB, tree (largest process) | × peak RSS of 10^5 "
        "| runner process MB | largest SDK worker MB |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    prevs: dict[tuple[str, ...], Config] = {}  # the previous size of the same runner mode
    for c in cfgs:
        if not c.wall:
            lines.append(f"| {c.label} | {c.rows:,} | 0 | {c.failure} | | | | | | | | |")
            continue
        prev = prevs.get(c.flags)
        wall, cpu, rss = st.median(c.wall), st.median(c.cpu), st.median(c.rss)
        us, ratio = wall / c.rows * 1e6, wall / c.rows / (st.median(base.wall) / base.rows)
        marginal = cpu_marginal = ""
        if prev is not None:
            dn = c.rows - prev.rows
            marginal = f"{(wall - st.median(prev.wall)) / dn * 1e6:.0f}"
            cpu_marginal = f" ({(cpu - st.median(prev.cpu)) / dn * 1e6:.0f})"
        rss_ratio = f"{rss / st.median(ref.rss):.2f}" if ref else "–"
        worker = f"{st.median(c.worker_rss):,.0f}" if c.flags else "– (none: in process)"
        lines.append(
            f"| {c.label} | {c.rows:,} | {len(c.wall)} | {wall:.1f} ({min(c.wall):.1f}–"
            f"{max(c.wall):.1f}) | {us:.0f} | {ratio:.2f} | {marginal} "
            f"| {cpu / c.rows * 1e6:.0f}{cpu_marginal} "
            f"| {rss:,.0f} ({st.median(c.max_rss):,.0f}) | {rss_ratio} "
            f"| {st.median(c.runner_rss):,.0f} | {worker} |"
        )
        prevs[c.flags] = c
    return "\n".join(lines)


def funnel_table(cfgs: Sequence[Config]) -> str:
    """Extraction drops, kept and rejected per reason, one column per configuration."""
    done = [c for c in cfgs if c.stats]
    rows: dict[str, list[str]] = {}
    for i, c in enumerate(done):
        s = c.stats or {}
        items = [(f"extract: {k}", v) for k, v in s["extract"].items()]
        items += [(f"rejected: {k}", v) for k, v in s["rejected"].get("text", {}).items()]
        for name, v in [*items, *s["totals"].items()]:
            rows.setdefault(name, [""] * len(done))[i] = f"{v:,}" if type(v) is int else str(v)
    lines = ["| | " + " | ".join(c.label for c in done) + " |", "|---|" + "--:|" * len(done)]
    lines += [f"| {name} | " + " | ".join(vals) + " |" for name, vals in rows.items()]
    return "\n".join(lines)


def verdict(cfgs: Sequence[Config], code_changed: bool) -> str:
    """The targets on the in-memory runs: CPU time per row flat, RSS 10^5 -> 10^6 <= 1.5x."""
    done = {c.rows: c for c in cfgs if c.wall and not c.flags}
    if not {10**4, 10**5, 10**6} <= done.keys():
        return "**Targets:** not checked (needs 10^4, 10^5 and 10^6 in-memory runs)."
    cpu = {n: st.median(c.cpu) for n, c in done.items()}
    m1, m2 = (cpu[10**5] - cpu[10**4]) / 9e4 * 1e6, (cpu[10**6] - cpu[10**5]) / 9e5 * 1e6
    spread = max(max(c.wall) / min(c.wall) for c in done.values())
    linear = lean = "met" if m2 <= 1.25 * m1 else "not met"
    if spread > NOISY or code_changed:
        linear = f"inconclusive (runs of one size differ up to {spread:.2f}×, source changed: "
        linear += f"{'yes' if code_changed else 'no'}; leaning '{lean}')"
    r = st.median(done[10**6].rss) / st.median(done[10**5].rss)
    text = (
        f"**Targets.** Linear time: {linear}: marginal CPU {m1:.0f} µs/row from 10^4 to "
        f"10^5, {m2:.0f} from 10^5 to 10^6 ({m2 / m1:.2f}×). Peak RSS 10^5 → 10^6 within "
        f"1.5×: on the in-memory runner, one process that is runner, shuffle and worker at "
        f"once, {'met' if r <= 1.5 else 'not met'} ({st.median(done[10**5].rss):,.0f} → "
        f"{st.median(done[10**6].rss):,.0f} MB, {r:.1f}×)"
    )
    mp = {c.rows: c for c in cfgs if c.wall and c.flags}
    if {10**5, 10**6} <= mp.keys():
        w5, w6 = (st.median(mp[n].worker_rss) for n in (10**5, 10**6))
        r5, r6 = (st.median(mp[n].runner_rss) for n in (10**5, 10**6))
        text += (
            f"; per SDK worker (multi_processing), {'met' if w6 <= 1.5 * w5 else 'not met'}: "
            f"{w5:,.0f} → {w6:,.0f} MB ({w6 / w5:.2f}×), while the runner process, which "
            f"holds every shuffle, goes {r5:,.0f} → {r6:,.0f} MB ({r6 / r5:.1f}×)"
        )
    return text + "."


def code_hash() -> str:
    """A short hash of the pipeline's source (curation/, filters/, pipelines/)."""
    h = hashlib.sha1()
    for path in sorted(
        p for d in ("curation", "filters", "pipelines") for p in (REPO / d).rglob("*.py")
    ):
        h.update(path.read_bytes())
    return h.hexdigest()[:10]


def machine() -> str:
    """This machine and the packages measured."""
    return common.machine(("apache-beam", "pyarrow"))


def main(argv: Sequence[str] | None = None) -> None:
    """Generate tables, time the runs, print the markdown; with --write update BENCHMARKS.md."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--sizes", default="10000,100000,1000000", help="comma-separated rows")
    ap.add_argument("--repeats", type=int, default=3, help="runs per size (median)")
    ap.add_argument("--repeats-large", type=int, default=None, help="runs at >= 10^6 rows")
    ap.add_argument("--mp-sizes", default="100000,1000000", help="multi_processing runs ('': none)")
    ap.add_argument("--timeout", type=float, default=900, help="stop a run after this many s")
    ap.add_argument("--max-rss-gb", type=float, default=16, help="stop a run above this RSS")
    ap.add_argument("--write", action="store_true", help="rewrite the section in BENCHMARKS.md")
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up children and temp dir
    large = args.repeats if args.repeats_large is None else args.repeats_large
    cfgs = [
        Config(f"in memory, {_size(n)}", n, large if n >= 10**6 else args.repeats)
        for n in map(int, args.sizes.split(","))
    ]
    for n in (int(x) for x in args.mp_sizes.split(",") if x):
        repeats = large if n >= 10**6 else args.repeats
        cfgs.append(Config(f"multi_processing ×2, {_size(n)}", n, repeats, MP_FLAGS))
    code, t_start = code_hash(), time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_text_stage_") as tmp:
        tables = {n: Path(tmp, f"candidates_{n}.parquet") for n in {c.rows for c in cfgs}}
        for n, path in sorted(tables.items()):
            write_table(n, path, seed=0)
        for r in range(max(c.repeats for c in cfgs)):
            for i, c in enumerate(cfgs):
                if r < c.repeats and c.failure is None:
                    run_once(
                        c, tables[c.rows], Path(tmp, f"out_{i}"), args.timeout, args.max_rss_gb
                    )
                    last = f"{c.wall[-1]:.1f} s, {c.rss[-1]:,.0f} MB" if c.wall else c.failure
                    print(f"round {r + 1}: {c.label}: {last}", file=sys.stderr)
    total_min, code_end = (time.perf_counter() - t_start) / 60, code_hash()
    loads = [x for c in cfgs for x in c.loads] or [0.0]

    command = "python bench/bench_text_stage.py" + "".join(
        f" --{k.replace('_', '-')} {getattr(args, k)}"
        for k in ("sizes", "repeats", "repeats_large", "mp_sizes", "timeout", "max_rss_gb")
        if getattr(args, k) != ap.get_default(k)
    )
    runs = "; ".join(f"{c.label}: {c.repeats}" for c in cfgs)
    if args.repeats_large is not None:
        runs += f"; `--repeats-large {args.repeats_large}`: a 10^6 run takes minutes"
    notes = "".join(f" **{c.label}: {c.failure}.**" for c in cfgs if c.failure)
    if code_end != code:
        notes += f" **The pipeline's source changed during the run ({code} → {code_end}).**"
    section = f"""## Text stage scaling on the DirectRunner (`bench/bench_text_stage.py`)

{datetime.date.today().isoformat()}, `{command} --write` ({total_min:.0f} min; source
{code}; load average after each run {min(loads):.1f}–{max(loads):.1f} on {os.cpu_count()}
cores). Machine: {machine()}.

Synthetic URL tables from `bench/gen_candidates.py` (seed 0; LAION caption lengths, Zipf
words, boilerplate captions on many images, repeated URLs, 1% rows the per-record rules
reject), each run `curate run --input TABLE --output OUT --overwrite --stop-after text
--detect-language false` (language ID off: measured elsewhere), a fresh process per run,
sizes interleaved round by round, medians over runs (runs: {runs}).{notes}

{verdict(cfgs, code_end != code)}

{results_table(cfgs)}

µs/row (median wall / rows) includes the fixed start-up, which flatters large sizes;
marginal µs/row (extra time per extra row over the previous size) is the fairer figure, and
CPU time (user + sys) is less sensitive than wall time to a busy neighbour on a shared box.

The funnel of the last run of each configuration (`OUT/stats.json`). `text_rare_token` is 0
with the defaults (the top 100M unigrams and bigrams keep every token at these sizes), but
the vocabulary is still counted (its boundary shows every token is in, so candidates skip
the token join).

{funnel_table(cfgs)}

Where the memory goes (one profile at 10^5: `FnApiRunner._execute_bundle` hooked to read RSS
and the runner's buffers after each bundle): the FnApiRunner keeps every shuffle in memory,
each GroupByKey buffer holding its whole input as decoded Python objects. RSS climbs stage by
stage: ~280 MB after reading, ~510 MB in `Drop duplicate captures` (every candidate by uid),
~650 MB at `Reject shared texts/Join counts`, peak ~770 MB in `Reject rare tokens/Join tokens`
(one (token, uid) value per distinct unigram and bigram of every candidate: 1.3 M at 10^5).
All grow with the rows: on this runner peak memory is O(rows) by construction. With
multi_processing the runner process still holds every shuffle, and each SDK worker grows
too (the last two columns): the FnApiRunner partitions a stage's whole input among the
workers, one bundle each per stage, so what a worker buffers or groups follows its bundle
(CoGroupByKey, for one, hands each key's values to the DoFn as lists: a boilerplate text
on 1% of the rows is a list of ~10,000 candidates at 10^6; the joins now stream instead,
`pipelines/joins.py`). Traced per bundle (RSS before and after each bundle in the workers:
`python bench/trace_worker_memory.py --rows 100000`, then `--rows 1000000`, one run each):
nearly every stage's growth scales with its
bundle, e.g. reading and extracting +164 MB at 10^5 and +290 MB at 10^6, the text rules
+166 and +502 MB, assigning shards +48 and +310 MB, and CPython keeps the peak. Capping
Beam's combiner tables at 10,000 keys (they allow 100,000, or 1,000,000 for sum/min/max;
`--cap-precombine 10000`) changed nothing (599 -> 1,580 MB). What we hold ourselves is
bounded: a shard holds at most `shard_size` rows, a join holds one key's few values.
Flat memory per worker needs a runner with small bundles and a shuffle service (Dataflow);
none runs here (Prism downloads its binary at run time; Flink and Spark need job-server
jars from Maven), so it is not shown."""
    common.publish(common.unwrap(section), START, END, args.write)


if __name__ == "__main__":
    main()
