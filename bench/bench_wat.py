"""Benchmark: WAT against WARC input on the same pages: candidates found, bytes read, pages/s.

Every shared WARC with HTML pages (../shared/data/warc) is read as it is and as the WAT that
scripts/make_wat.py writes from it, both held in memory (the disk out of the picture), by
the pipeline's own readers (`candidates_from_archive`, `candidates_from_wat`). The machine
is shared and noisy: the two are interleaved round by round (order alternated), times are
medians over rounds, and the ratio is the median of per-round ratios.

    python bench/bench_wat.py --repeats 5

It prints a markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import common  # bench/common.py, beside this script

from curation import reasons
from curation.config import CurationConfig
from curation.extract import candidates_from_archive
from curation.stats import Funnel
from curation.wat import candidates_from_wat

ROOT = Path(__file__).resolve().parents[1]
WARC_DIR = ROOT.parent / "shared" / "data" / "warc"

_spec = importlib.util.spec_from_file_location("make_wat", ROOT / "scripts" / "make_wat.py")
make_wat_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_wat_module)

Reader = Callable[..., object]


def _read(reader: Reader, blobs: list[tuple[str, bytes]], cfg: CurationConfig) -> Funnel:
    funnel = Funnel()
    for name, data in blobs:
        for _ in reader(io.BytesIO(data), name, cfg, funnel):
            pass
    return funnel


def main() -> None:
    """Time both readers over the shared WARCs and their generated WATs; print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    cfg = CurationConfig()
    warcs: list[tuple[str, bytes]] = []
    wats: list[tuple[str, bytes]] = []
    for path in sorted(WARC_DIR.iterdir()):
        if any(s in path.name for s in (".wat", ".wet", ".arc", ".md")):
            continue
        data = path.read_bytes()
        warcs.append((path.name, data))
        wats.append((path.name + ".wat.gz", make_wat_module.make_wat(data, path.name, "x")))
    readers = {"WARC": (candidates_from_archive, warcs), "WAT": (candidates_from_wat, wats)}
    times: dict[str, list[float]] = {k: [] for k in readers}
    funnels: dict[str, Funnel] = {}
    for round_ in range(args.repeats):
        order = list(readers) if round_ % 2 == 0 else list(reversed(readers))
        for name in order:
            reader, blobs = readers[name]
            start = time.perf_counter()
            funnels[name] = _read(reader, blobs, cfg)
            times[name].append(time.perf_counter() - start)
    ratios = [w / a for w, a in zip(times["WAT"], times["WARC"], strict=True)]
    rows = [
        "| input | files | MB (gzip) | HTML pages | `<img>` seen | candidates | "
        "pages/s (median) | time vs WARC |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, (_, blobs) in readers.items():
        f = funnels[name]
        pages = f.get(reasons.STAGE_READ, reasons.HTML_PAGES)
        median = statistics.median(times[name])
        ratio = "1.00" if name == "WARC" else f"{statistics.median(ratios):.3f}"
        rows.append(
            f"| {name} | {len(blobs)} | {sum(len(d) for _, d in blobs) / 1e6:.2f} | {pages:,} | "
            f"{f.get(reasons.STAGE_EXTRACT, reasons.IMG_TAGS):,} | "
            f"{f.get(reasons.STAGE_EXTRACT, reasons.CANDIDATES):,} | {pages / median:,.0f} | "
            f"{ratio} |"
        )
    print("\n".join(rows))
    print(
        f"\n{args.repeats} rounds, medians; WATs from scripts/make_wat.py over the same "
        f"WARCs. {common.machine(['fastwarc', 'selectolax'])}"
    )


if __name__ == "__main__":
    main()
