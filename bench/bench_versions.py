"""Benchmark: the same `curate run`s on two versions of the code, side by side.

A git revision (checked out once into a worktree under --cache) against the working tree
(or a second revision, --new),
on (1) the image path: N distinct JPEGs served by a local server on ports of 127.0.0.1
(bench_images' corpus), `--images-from http`, NSFW off and on; (2) the text stage: a
seeded synthetic URL table of R rows (bench/gen_candidates.py), `--stop-after text`. Each
run is a fresh process; the versions alternate round by round (order rotated), so load on
this shared machine falls on both. Reported: median wall per version and the ratio
(working tree / revision) per round, its median and range. A refactor should show ~1.00.

    python bench/bench_versions.py --base 80d81ef --n 2000 --rows 100000 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gen_candidates import write_table
from images_corpus import LocalServer, captions, real_images, source_photos, write_url_list
from images_e2e import Tool, corpus, free_ports, run_rounds

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"


def worktree(rev: str, cache: Path) -> Path:
    """The code at `rev`, checked out once (detached) under `cache`."""
    sha = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", rev],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    tree = cache / f"tree-{sha}"
    if not tree.exists():
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "add", "--detach", "-f", str(tree), sha],
            check=True,
            capture_output=True,
        )
    return tree


def curate(tree: Path, extra: list[str]):
    """`curate run` of the code in `tree` (its folder first on the path; its measuring
    processes find it the same way, from their module's location)."""
    boot = f"import sys; sys.path.insert(0, {str(tree)!r}); from pipelines.cli import main; "
    boot += "sys.exit(main())"
    return lambda lst, out: [
        sys.executable,
        "-c",
        boot,
        "run",
        "--input",
        str(lst),
        "--output",
        str(out),
        *extra,
    ]


def kept(out: Path) -> int:
    return int(json.loads((out / "stats.json").read_text())["totals"]["kept"])


def compare(name: str, tools: list[Tool], lst: Path, rounds: int, work: Path) -> str:
    """Both versions `rounds` times on one input; a markdown row."""
    walls, counts = run_rounds([(t, 0) for t in tools], {0: lst}, rounds, 1800, work)
    base, new = (walls[(t.name, 0)] for t in tools)
    if counts[(tools[0].name, 0)] != counts[(tools[1].name, 0)]:
        raise SystemExit(f"{name}: the versions kept different counts: {counts}")
    ratios = sorted(b / a for a, b in zip(base, new, strict=True))
    return (
        f"| {name} | {counts[(tools[0].name, 0)][0]:,} | {statistics.median(base):.1f} | "
        f"{statistics.median(new):.1f} | **{statistics.median(ratios):.2f}** "
        f"({ratios[0]:.2f}–{ratios[-1]:.2f}) |"
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--base", required=True, help="the git revision to compare against")
    ap.add_argument("--new", default="", help="a git revision in place of the working tree")
    ap.add_argument("--n", type=int, default=2000, help="images served (0: no image runs)")
    ap.add_argument("--rows", type=int, default=100_000, help="text-stage rows (0: none)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--nsfw", default="false,true", help="image runs with NSFW false, true or both")
    ap.add_argument("--hosts", type=int, default=16, help="ports of 127.0.0.1 = hosts")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "bench_images")
    args = ap.parse_args(argv)
    args.cache.mkdir(parents=True, exist_ok=True)
    base = worktree(args.base, args.cache)
    new, new_name = (worktree(args.new, args.cache), args.new) if args.new else (REPO, "tree")
    work = Path(tempfile.mkdtemp(prefix="bench_versions-"))
    rows = []
    if args.n:
        named, _ = real_images([DATA / "images", DATA / "evalsets"])
        folder, _ = corpus(args.n, lambda: source_photos(named), args.cache)
        ports = free_ports(args.hosts)
        urls = [f"http://127.0.0.1:{ports[i % len(ports)]}/{i:05d}.jpg" for i in range(args.n)]
        lst = work / "urls.parquet"
        write_url_list(lst, urls, captions(args.n, 1))
        server = LocalServer(folder, ports)
        try:
            for nsfw in args.nsfw.split(","):
                flags = ["--images-from", "http", "--allow-private-network", "true"]
                flags += ["--nsfw", nsfw]
                tools = [
                    Tool(f"{args.base} {nsfw}", curate(base, flags), kept),
                    Tool(f"{new_name} {nsfw}", curate(new, flags), kept),
                ]
                label = f"images, {args.n:,} URLs, NSFW {'on' if nsfw == 'true' else 'off'}"
                rows.append(compare(label, tools, lst, args.rounds, work))
        finally:
            server.close()
    if args.rows:
        table = write_table(args.rows, args.cache / f"candidates-{args.rows}.parquet")
        flags = ["--stop-after", "text"]
        tools = [
            Tool(f"{args.base} text", curate(base, flags), kept),
            Tool(f"{new_name} text", curate(new, flags), kept),
        ]
        rows.append(compare(f"text stage, {args.rows:,} rows", tools, table, args.rounds, work))
    print(
        f"| run | kept | {args.base} s (median) | {new_name} s | ratio {new_name}/{args.base} "
        "(median, range) |\n|---|--:|--:|--:|--:|"
    )
    print("\n".join(rows))


if __name__ == "__main__":
    main()
