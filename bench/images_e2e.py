"""Helpers of bench/bench_images.py, part 2: the end-to-end runs of `curate run` and
img2dataset against the local server, each a subprocess with a hard timeout, and the work of
our stages timed one by one.
"""

from __future__ import annotations

import contextlib
import json
import os
import pstats
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from images_corpus import LocalServer, captions, make_corpus, write_url_list

import curation
from curation.config import CurationConfig
from filters.image import decode, phash, read_header
from filters.nsfw import OpenNsfwScorer

SEED = 1
# The corpus stays apart at the opt-in near-duplicate distance (README), so turning that
# rule on removes nothing from it.
NEAR_DUP_OPT_IN = 4
SRC = Path(curation.__file__).resolve().parents[1]  # the code measured


@dataclass(frozen=True)
class Tool:
    name: str
    argv: Callable[[Path, Path], list[str]]  # (url list, output folder) -> command
    kept: Callable[[Path], int]  # output folder -> images written


def ours(extra: Sequence[str] = ()) -> Callable[[Path, Path], list[str]]:
    curate = str(Path(sys.executable).with_name("curate"))
    base = ["--images-from", "http", "--allow-private-network", "true", *extra]
    return lambda lst, out: [curate, "run", "--input", str(lst), "--output", str(out), *base]


def ours_kept(out: Path) -> int:
    return int(json.loads((out / "stats.json").read_text())["totals"]["kept"])


def i2d(exe: str, per_shard: int | None) -> Callable[[Path, Path], list[str]]:
    opts = "--input_format parquet --url_col url --caption_col caption --output_format "
    opts += "webdataset --processes_count 2 --thread_count 32 --resize_mode no --timeout 10"
    if per_shard:
        opts += f" --number_sample_per_shard {per_shard}"
    return lambda lst, out: [
        exe,
        "--url_list",
        str(lst),
        "--output_folder",
        str(out),
        *opts.split(),
    ]


def i2d_kept(out: Path) -> int:
    return sum(json.loads(p.read_text())["successes"] for p in out.glob("*_stats.json"))


def timed_run(argv: list[str], env: dict[str, str], timeout: float, log: Path) -> float:
    """Wall seconds of a command in its own process group, killed (whole group) on timeout."""
    with log.open("w") as fh:
        t0 = time.perf_counter()
        out, cwd = subprocess.STDOUT, log.parent
        proc = subprocess.Popen(
            argv, stdout=fh, stderr=out, env=env, cwd=cwd, start_new_session=True
        )
        try:
            rc = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            rc = None
        wall = time.perf_counter() - t0
        with contextlib.suppress(ProcessLookupError):  # leftovers of ours only: its group
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    if rc != 0:
        tail = log.read_text()[-2000:]
        raise RuntimeError(f"{argv[0]} {'timed out' if rc is None else f'exit {rc}'}:\n{tail}")
    return wall


def stage_times(urls: list[str], texts: list[str], sample: int, work: Path) -> dict[str, float]:
    """Seconds of each stage's own work over all N, one after the other in this process."""
    from curation.fetch import Fetcher
    from filters.language import detect_language, detect_languages
    from filters.measure import measure
    from pipelines.dataset_rules import LANGUAGE_BATCH
    from pipelines.images import fetch_settings

    cfg = CurationConfig(allow_private_network=True)
    fetcher, out = Fetcher(fetch_settings(cfg)), {}
    t0 = time.perf_counter()
    with ThreadPoolExecutor(cfg.fetch_threads) as pool:
        results = list(pool.map(fetcher.fetch, urls))
    out[f"fetch ({cfg.fetch_threads} threads)"] = time.perf_counter() - t0
    fetcher.close()
    t0 = time.perf_counter()
    for r in results:
        measure(r.url, r, cfg)
    out["measure: header, size, decode for the hash, pHash, sha256"] = time.perf_counter() - t0
    scorer, some = OpenNsfwScorer(threads=1), [r.data for r in results[:sample]]
    t0 = time.perf_counter()
    for i in range(0, len(some), 16):  # RunInference decodes again, then scores
        scorer.score_batch([decode(d) for d in some[i : i + 16]])
    out["NSFW: thumbnail decode + open_nsfw"] = (time.perf_counter() - t0) * len(urls) / len(some)
    detect_language("warm up", None, cfg.language_detector)
    t0 = time.perf_counter()
    for i in range(0, len(texts), LANGUAGE_BATCH):  # in batches, as DetectLanguageFn does
        detect_languages([(t, None) for t in texts[i : i + LANGUAGE_BATCH]], cfg.language_detector)
    out[f"language ID ({cfg.language_detector})"] = time.perf_counter() - t0
    starts = []
    for _ in range(3):
        t0 = time.perf_counter()
        cmd = [sys.executable, "-c", "import pipelines.cli, pipelines.run"]
        subprocess.run(cmd, check=True, cwd=work, timeout=120)
        starts.append(time.perf_counter() - t0)
    out["start: Python + imports (Beam, pyarrow, ...)"] = statistics.median(starts)
    return out


_PROFILE = (
    "import cProfile, sys; from pipelines.cli import main; "
    "cProfile.run('main(sys.argv[2:])', sys.argv[1])"
)
_C_GROUPS = {
    "Imaging": "PIL",
    "onnxruntime": "onnxruntime",
    "pickle": "pickle",
    "acquire": "lock waits (fetch threads, queues)",
}


def _group(filename: str, func: str) -> str:
    if filename == "~":  # a C function: name it by what it is
        for key, group in _C_GROUPS.items():
            if key in func:
                return group
        return f"C: {func.strip('{}')}"[:70]
    if "site-packages/" in filename:
        return filename.split("site-packages/", 1)[1].split("/", 1)[0].removesuffix(".py")
    if filename.startswith(str(SRC)):
        return "ours (curation, filters, pipelines)"
    return f"stdlib {Path(filename).stem}"


def profile_by_package(argv: list[str], env: dict[str, str], timeout: float, work: Path) -> dict:
    """Self time of one in-process run under cProfile, summed by package."""
    prof = work / "run.prof"
    cmd = [sys.executable, "-c", _PROFILE, str(prof), *argv[1:]]
    timed_run(cmd, env, timeout, work / "profile.log")
    groups: Counter[str] = Counter()
    for (filename, _, func), (_, _, tottime, _, _) in pstats.Stats(str(prof)).stats.items():
        groups[_group(filename, func)] += tottime
    return dict(groups.most_common())


def free_ports(k: int) -> list[int]:
    socks = [socket.socket() for _ in range(k)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def corpus(n: int, photos: Callable[[], list], cache: Path) -> tuple[Path, list[str]]:
    """The folder of n distinct JPEGs (made once, cached) and their pHashes."""
    folder, hashes = cache / f"corpus-{n}-{SEED}", cache / f"corpus-{n}-{SEED}.phash"
    if not hashes.exists():
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        made = make_corpus(photos(), n, SEED, NEAR_DUP_OPT_IN)
        for i, data in enumerate(made):
            (folder / f"{i:05d}.jpg").write_bytes(data)
        hashes.write_text("\n".join(phash(decode(d)) for d in made))
    return folder, hashes.read_text().split()


def corpus_facts(folder: Path, hashes: list[str]) -> str:
    sizes = sorted(p.stat().st_size for p in folder.iterdir())
    heads = [read_header(p.read_bytes(), 1 << 40) for p in folder.iterdir()]
    sides = sorted(min(x.width, x.height) for x in heads)  # type: ignore[union-attr]
    h = np.array([int(x, 16) for x in hashes], dtype=np.uint64)
    mind = min(int(np.bitwise_count(h[i + 1 :] ^ h[i]).min()) for i in range(len(h) - 1))
    q = lambda xs, f: xs[int(f * (len(xs) - 1))]  # noqa: E731
    return (
        f"{len(sizes):,} JPEGs, {q(sizes, 0.05) / 1e3:.0f}/{q(sizes, 0.5) / 1e3:.0f}/"
        f"{q(sizes, 0.95) / 1e3:.0f} KB (p5/median/p95), shorter side {sides[0]}–{sides[-1]} px, "
        f"smallest pairwise pHash distance {mind} (near-dup threshold "
        f"{NEAR_DUP_OPT_IN}, opt-in)"
    )


_ENV = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}  # no update check from albumentations


def end_to_end(
    n: int,
    small: int,
    hosts: int,
    rounds: int,
    timeout: float,
    work: Path,
    folder: Path,
    tools: list[Tool],
) -> dict:
    """Serve the corpus on `hosts` ports of 127.0.0.1, run every tool `rounds` times on the
    n URLs and on the first `small` (interleaved, order rotated), then time our stages; the
    server stops in every case."""
    ports = free_ports(hosts)
    urls = [f"http://127.0.0.1:{ports[i % len(ports)]}/{i:05d}.jpg" for i in range(n)]
    texts = captions(n, SEED)
    lists = {n: work / "urls.parquet", small: work / "urls-small.parquet"}
    for size, lst in lists.items():
        write_url_list(lst, urls[:size], texts[:size])
    runs = [(t, size) for t in tools for size in (n, small)]
    server = LocalServer(folder, ports)
    try:
        walls, kept = run_rounds(runs, lists, rounds, timeout, work)
        stats = json.loads((work / "out-0" / "stats.json").read_text())
        stages = stage_times(urls, texts, min(n, 256), work)
        prof_out = work / "out-prof"
        profile = profile_by_package(tools[1].argv(lists[n], prof_out), _ENV, timeout, work)
    finally:
        server.close()
    return {"walls": walls, "kept": kept, "stats": stats, "stages": stages, "profile": profile}


def whole_runs(
    n: int, hosts: int, rounds: int, timeout: float, work: Path, folder: Path, tools: list[Tool]
) -> dict:
    """Every tool `rounds` times on the same n URLs, interleaved (order rotated): the whole
    run's wall and kept images, start-up included; the first tool (ours) writes stats.json."""
    ports = free_ports(hosts)
    urls = [f"http://127.0.0.1:{ports[i % len(ports)]}/{i:05d}.jpg" for i in range(n)]
    lists = {n: work / "urls.parquet"}
    write_url_list(lists[n], urls, captions(n, SEED))
    server = LocalServer(folder, ports)
    try:
        walls, kept = run_rounds([(t, n) for t in tools], lists, rounds, timeout, work)
    finally:
        server.close()
    stats = json.loads((work / "out-0" / "stats.json").read_text())  # the first tool's
    return {"walls": walls, "kept": kept, "stats": stats}


def run_rounds(
    runs: list[tuple[Tool, int]], lists: dict[int, Path], rounds: int, timeout: float, work: Path
) -> tuple[dict[tuple[str, int], list[float]], dict[tuple[str, int], list[int]]]:
    """Each (tool, list size) once a round, in a fresh process, the order rotated round by
    round; the walls and kept counts by (tool name, size)."""
    walls: dict[tuple[str, int], list[float]] = {(t.name, size): [] for t, size in runs}
    kept: dict[tuple[str, int], list[int]] = {(t.name, size): [] for t, size in runs}
    for r in range(rounds):
        k = r % len(runs)
        for t, size in [*runs[k:], *runs[:k]]:
            i, key = runs.index((t, size)), (t.name, size)
            out = work / f"out-{i}"
            shutil.rmtree(out, ignore_errors=True)
            walls[key].append(timed_run(t.argv(lists[size], out), _ENV, timeout, work / f"{i}.log"))
            kept[key].append(t.kept(out))
            print(f"round {r}: {t.name}, {size}: {walls[key][-1]:.1f} s", file=sys.stderr)
    return walls, kept


# --- Tables for the report.


def whole_table(tools: list[Tool], res: dict, n: int) -> tuple[str, dict[str, float]]:
    """The whole runs' table, and per tool the median of its per-round ratio of kept
    images/s to the baseline's (the last tool)."""
    walls, kept, base = res["walls"], res["kept"], tools[-1].name
    lines = [
        f"| run, {n:,} URLs | wall s, median (min–max) | kept | kept images/s "
        f"| images/s × {base} (min–max) |",
        "|---|--:|--:|--:|--:|",
    ]
    rel = {}
    for t in tools:
        w, k = walls[t.name, n], kept[t.name, n]
        rs = [(a / b) / (c / d) for a, b, c, d in
              zip(k, w, kept[base, n], walls[base, n], strict=True)]  # fmt: skip
        rel[t.name] = statistics.median(rs)
        lines.append(
            f"| {t.name} | {statistics.median(w):.1f} ({min(w):.1f}–{max(w):.1f}) | "
            f"{statistics.median(k):,.0f} | {statistics.median(k) / statistics.median(w):,.1f} | "
            f"{rel[t.name]:.2f} ({min(rs):.2f}–{max(rs):.2f}) |"
        )
    return "\n".join(lines), rel


def e2e_table(
    tools: list[Tool], res: dict, n: int, small: int
) -> tuple[str, dict[str, float], dict[str, float]]:
    """The runs' table, and per tool the median ratio of its kept images/s to the baseline's
    (the last tool) over the whole run and at scale (start-up excluded), round by round."""
    walls, kept, base = res["walls"], res["kept"], tools[-1].name
    lines = [
        "| run | wall s, median (min–max) | kept | kept images/s | URLs/s "
        f"| images/s × {base} (min–max) | wall s, {small:,} URLs | kept images/s at scale "
        f"| at scale × {base} (min–max) |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]

    def at_scale(name: str) -> list[float]:
        # The extra images kept per extra second from the small list to the full one.
        return [(kn - ks) / (wn - ws) for kn, ks, wn, ws in zip(
            kept[name, n], kept[name, small], walls[name, n], walls[name, small], strict=True
        )]  # fmt: skip

    rel, rel_scale = {}, {}
    for t in tools:
        w, k = walls[t.name, n], kept[t.name, n]
        rs = [(a / b) / (c / d) for a, b, c, d in
              zip(k, w, kept[base, n], walls[base, n], strict=True)]  # fmt: skip
        ss = [a / b for a, b in zip(at_scale(t.name), at_scale(base), strict=True)]
        rel[t.name], rel_scale[t.name] = statistics.median(rs), statistics.median(ss)
        lines.append(
            f"| {t.name} | {statistics.median(w):.1f} ({min(w):.1f}–{max(w):.1f}) | "
            f"{statistics.median(k):,.0f} | {statistics.median(k) / statistics.median(w):,.1f} | "
            f"{n / statistics.median(w):,.1f} | {rel[t.name]:.2f} ({min(rs):.2f}–{max(rs):.2f}) "
            f"| {statistics.median(walls[t.name, small]):.1f} "
            f"| {statistics.median(at_scale(t.name)):,.1f} "
            f"| {rel_scale[t.name]:.2f} ({min(ss):.2f}–{max(ss):.2f}) |"
        )
    return "\n".join(lines), rel, rel_scale


def funnel(stats: dict) -> str:
    parts = [f"kept {stats['totals']['kept']:,}"]
    for stage, by in stats.get("rejected", {}).items():
        parts += [f"{stage}/{reason} {count:,}" for reason, count in by.items()]
    return ", ".join(parts) if len(parts) > 1 else parts[0] + ", nothing rejected"


def stage_rows(stages: dict[str, float], core_s: float) -> list[tuple[str, float]]:
    """The stages' core-seconds, largest first, and what is left of `core_s` (wall × cores):
    Beam, writing, and cores left idle while one thread works."""
    rest = "the rest: Beam, writing, idle cores (wall × cores minus the rows above)"
    return sorted([*stages.items(), (rest, core_s - sum(stages.values()))], key=lambda kv: -kv[1])


def stage_table(rows: list[tuple[str, float]], core_s: float) -> str:
    lines = ["| stage (its own work, all N, one core) | core-s | % of our core-s |"]
    lines.append("|---|--:|--:|")
    lines += [f"| {name} | {s:.1f} | {100 * s / core_s:.0f} |" for name, s in rows]
    return "\n".join(lines)


def profile_table(groups: dict[str, float], top: int = 10) -> str:
    total, rows = sum(groups.values()), list(groups.items())
    rows = [*rows[:top], ("everything else", sum(t for _, t in rows[top:]))]
    lines = ["| package (self time) | s | % |", "|---|--:|--:|"]
    lines += [f"| {name} | {t:.1f} | {100 * t / total:.0f} |" for name, t in rows]
    return "\n".join(lines)
