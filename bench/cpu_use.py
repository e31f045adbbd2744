"""Where the cores go in a whole run: ours and img2dataset on the same URL list, with the
machine's busy cores sampled from /proc/stat every 0.25 s.

bench_images.py times whole runs; this says why they differ: the CPU time each run spends
(all processes, the image server's included, then the server's own share), and how many
cores were busy on average and second by second. Serves bench_images.py's cached corpus
(made by `bench_images.py --large N` or `--n N`, under its --cache) on 16 ports of
127.0.0.1, as bench_images.py does; needs img2dataset in its own venv (see run_all.py).
Rounds interleaved (order rotated); the timeline is that of each tool's median-wall run.

    python bench/cpu_use.py --n 10000 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from images_corpus import LocalServer, captions, write_url_list  # bench/, beside this script
from images_e2e import _ENV, SEED, free_ports, i2d, ours

SAMPLE_S = 0.25


def _busy_cores() -> tuple[int, int]:
    fields = list(map(int, Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]))
    return sum(fields), fields[3] + fields[4]  # total jiffies, idle + iowait


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(argv: list[str], server_pid: int, work: Path) -> dict:
    """One run: wall, busy core-seconds (sampled), the server's CPU seconds, timeline."""
    cores = os.cpu_count() or 1
    samples: list[tuple[float, float]] = []
    done = threading.Event()

    def sample() -> None:
        t0, last = time.perf_counter(), _busy_cores()
        while not done.wait(SAMPLE_S):
            now = _busy_cores()
            total, idle = now[0] - last[0], now[1] - last[1]
            last = now
            samples.append((time.perf_counter() - t0, cores * (1 - idle / max(total, 1))))

    server0 = _cpu_seconds(server_pid)
    sampler = threading.Thread(target=sample)
    sampler.start()
    t0 = time.perf_counter()
    try:
        subprocess.run(argv, env=_ENV, cwd=work, check=True, capture_output=True, timeout=900)
    finally:
        wall = time.perf_counter() - t0
        done.set()
        sampler.join()
    busy = sum(b for _, b in samples) * SAMPLE_S
    per_second = []
    for sec in range(int(wall) + 1):
        got = [b for t, b in samples if sec <= t < sec + 1]
        per_second.append(sum(got) / max(len(got), 1))
    return {
        "wall": wall,
        "busy": busy,
        "server": _cpu_seconds(server_pid) - server0,
        "timeline": per_second,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000, help="URLs (a cached corpus of this size)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "bench_images")
    ap.add_argument("--img2dataset", default="/tmp/i2d/bin/img2dataset")
    args = ap.parse_args()
    folder = args.cache / f"corpus-{args.n}-{SEED}"
    if not folder.is_dir():
        ap.error(f"no corpus at {folder}: run bench_images.py --large {args.n} first")
    tools = {
        "ours: curate run --nsfw false": ours(["--nsfw", "false"]),
        f"img2dataset, --number_sample_per_shard {-(-args.n // 4)}": i2d(
            args.img2dataset, -(-args.n // 4)
        ),
        "img2dataset": i2d(args.img2dataset, None),
    }
    names = list(tools)
    runs: dict[str, list[dict]] = {n: [] for n in names}
    ports = free_ports(16)
    urls = [f"http://127.0.0.1:{ports[i % len(ports)]}/{i:05d}.jpg" for i in range(args.n)]
    with tempfile.TemporaryDirectory(prefix="cpu_use-") as tmp:
        work = Path(tmp)
        lst = work / "urls.parquet"
        write_url_list(lst, urls, captions(args.n, SEED))
        server = LocalServer(folder, ports)
        try:
            for r in range(args.rounds):
                k = r % len(names)
                for n in names[k:] + names[:k]:
                    out = work / f"out-{r}-{names.index(n)}"
                    runs[n].append(measure(tools[n](lst, out), server._proc.pid, work))
                    got = runs[n][-1]
                    print(f"round {r}: {n}: {got['wall']:.1f} s", flush=True)
        finally:
            server.close()
    print(
        f"\n{args.n:,} URLs, {args.rounds} rounds, {os.cpu_count()} cores, load average "
        f"{os.getloadavg()[0]:.1f}; medians (min–max)\n"
    )
    print(
        "| run | wall s | busy core-s, all processes | of which the image server "
        "| mean busy cores |"
    )
    print("|---|--:|--:|--:|--:|")

    def cell(xs: list[float]) -> str:
        return f"{statistics.median(xs):.1f} ({min(xs):.1f}–{max(xs):.1f})"

    for n in names:
        got = runs[n]
        walls = [g["wall"] for g in got]
        busy, server = [g["busy"] for g in got], [g["server"] for g in got]
        mean = [g["busy"] / g["wall"] for g in got]
        print(
            f"| {n} | {cell(walls)} | {cell(busy)} | {cell(server)} | "
            f"{statistics.median(mean):.2f} ({min(mean):.2f}–{max(mean):.2f}) |"
        )
    print("\nBusy cores second by second, median-wall run (digit = tenths of all cores busy):")
    cores = os.cpu_count() or 1
    for n in names:
        got = sorted(runs[n], key=lambda g: g["wall"])[len(runs[n]) // 2]
        digits = "".join(str(min(9, int(b / cores * 10))) for b in got["timeline"])
        print(f"{n}: {digits}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
