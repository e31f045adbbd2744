"""The shard step's reading of the image spool: copies of the bytes, or views of the mapped
spool file.

One shard of N kept records whose images wait in a local spool file (pipelines/spool.py),
written as WriteShardFn writes it: the rows in uid order get their images, then one Parquet
shard is written atomically with its sha256 (pipelines/io.py write_shard_file). Two ways to
get the images: `read_blobs` copies every image into a bytes object (before session 8), and
`with_image_bytes` hands out read-only views of the mapped file (now). Each measurement in a
fresh process, the two interleaved (order rotated); ratio = time over the copies' time in the
same round.

    python bench/bench_spool.py --n 10000 --rounds 7 --write
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common  # bench/common.py, beside this script

from curation.record import CANDIDATE_SCHEMA
from pipelines.io import write_shard_file
from pipelines.spool import SpoolWriter, read_blobs, with_image_bytes

START, END = "<!-- bench_spool:start -->", "<!-- bench_spool:end -->"
WAYS = {
    "copies: `read_blobs`, one bytes object per image (before)": "copies",
    "views of the mapped spool file: `with_image_bytes` (now)": "views",
}
# bench_images.py's corpus: JPEGs of 18/57/141 KB (p5/median/p95).
SIZE_MEDIAN, SIZE_SIGMA = 57_000, 0.62


def make_spool(folder: Path, n: int, seed: int) -> Path:
    """n images of the corpus's sizes (random bytes: the writer stores them uncompressed) in
    one spool file, as one fetch bundle leaves them; the rows, with refs, as JSON."""
    rnd = random.Random(seed)
    pool = os.urandom(400_000)
    writer = SpoolWriter(str(folder / "spool"))
    rows = []
    for _ in range(n):
        size = min(len(pool), int(rnd.lognormvariate(0, SIZE_SIGMA) * SIZE_MEDIAN))
        ref = writer.put(pool[:size])
        uid = f"{rnd.getrandbits(128):032x}"  # uid order is not the spool's order
        rows.append({"uid": uid, "path": ref.path, "offset": ref.offset, "length": ref.length})
    writer.close()
    spec = folder / "rows.json"
    spec.write_text(json.dumps(rows))
    return spec


def child(way: str, spec: Path, out: Path) -> tuple[float, float]:
    """Wall and CPU seconds for the shard step, in this (fresh) process."""
    from curation.record import BlobRef

    base = {f.name: None for f in CANDIDATE_SCHEMA}
    rows = [
        {
            **base,
            "uid": r["uid"],
            "page_url": "",
            "image_url": f"http://127.0.0.1/{i}.jpg",
            "alt_text": f"a photo numbered {i}",
            "source_kind": "table",
            "source_file": "urls.parquet",
            "source_offset": i,
            "image_format": "JPEG",
            "image": BlobRef(r["path"], r["offset"], r["length"]),
        }
        for i, r in enumerate(json.loads(spec.read_text()))
    ]
    start, cpu = time.perf_counter(), time.process_time()
    ordered = sorted(rows, key=lambda r: r["uid"])
    if way == "copies":
        found = read_blobs(r["image"] for r in ordered)
        ordered = [{**r, "image": found[r["image"]]} for r in ordered]
    else:
        ordered = with_image_bytes(ordered)
    write_shard_file(str(out), 0, "parquet", ordered, CANDIDATE_SCHEMA)
    return time.perf_counter() - start, time.process_time() - cpu


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000, help="images in the shard")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument(
        "--dir",
        default="/dev/shm" if Path("/dev/shm").is_dir() else None,
        help="where the spool and shards go (default: memory, so that the disk's writeback "
        "does not time the copies)",
    )
    ap.add_argument("--write", action="store_true")
    ap.add_argument("--child", nargs=3, metavar=("WAY", "SPEC", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        way, spec, out = args.child
        print(*child(way, Path(spec), Path(out)))
        return 0
    names = list(WAYS)
    seconds: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    ratios: dict[str, list[float]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory(prefix="bench_spool-", dir=args.dir) as tmp:
        spec = make_spool(Path(tmp), args.n, seed=1)
        mb = sum(r["length"] for r in json.loads(spec.read_text())) / 1e6
        for r in range(args.rounds):
            k = r % len(names)
            for n in names[k:] + names[:k]:
                out = Path(tmp) / f"out-{WAYS[n]}-{r}"
                out.mkdir()
                argv = [sys.executable, __file__, "--child", WAYS[n], str(spec), str(out)]
                got = subprocess.run(argv, check=True, capture_output=True, text=True)
                wall, used = map(float, got.stdout.split()[-2:])
                seconds[n].append(wall)
                cpu[n].append(used)
            for n in names:
                ratios[n].append(seconds[n][-1] / seconds[names[0]][-1])
            outs = [Path(tmp) / f"out-{w}-{r}" for w in WAYS.values()]
            shards = [(o / "00000.parquet").read_bytes() for o in outs]
            assert shards[0] == shards[1], "the two ways wrote different shards"
            for o in outs:  # a 10,000-image shard is ~0.7 GB: keep the disk's cache steady
                shutil.rmtree(o)
    rows = "".join(
        f"| {n} | {statistics.median(seconds[n]):.2f} ({min(seconds[n]):.2f}–"
        f"{max(seconds[n]):.2f}) | {statistics.median(cpu[n]):.2f} | "
        f"{statistics.median(ratios[n]):.2f} ({min(ratios[n]):.2f}–{max(ratios[n]):.2f}) |\n"
        for n in names
    )
    where = args.dir or "the temporary folder"
    section = (
        "## The shard step: images from the spool as copies or as views (`bench/bench_spool.py`)"
        f"\n\n{datetime.date.today()}, `python bench/bench_spool.py --n {args.n} --rounds "
        f"{args.rounds} --write`. Machine: {common.machine(['pyarrow'])}; load average "
        f"{os.getloadavg()[0]:.1f} when written.\n\n"
        f"One shard of {args.n:,} kept records ({mb:.0f} MB of images, sized like "
        f"bench_images.py's corpus) whose images wait in one spool file in {where}, written as "
        "WriteShardFn writes it: rows sorted by uid, images fetched, one Parquet shard "
        "written atomically with its sha256. Each measurement in a fresh process; rounds "
        "interleaved, order rotated; ratio = time over the copies' time in the same round. "
        "Both ways write the same bytes.\n\n"
        "| images as | seconds (median, min–max) | CPU seconds (median) | × copies "
        "(median of per-round ratios of seconds, min–max) |\n|---|--:|--:|--:|\n" + rows + "\n"
        "Inside `curate run` on bench_images.py's 10,000 URLs (one shard), the same change took "
        "the shard stage from 3.95–4.15 s to 1.95–2.77 s and the whole run from 27.3–28.6 s to "
        "24.9–27.1 s (3 runs each, interleaved, the earlier commit from a worktree on "
        "PYTHONPATH; stage times from `bench/stage_times.py`)."
    )
    common.publish(common.unwrap(section), START, END, args.write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
