"""Side by side: `extract_images` of an earlier commit against the working tree's, on the
decoded HTML pages of ../shared/data/warc (five times over), one core, rounds alternated;
the outputs must be identical.

    taskset -c 1 python bench/ab_extract_images.py --base REV --rounds 9
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import bench_extract  # bench/bench_extract.py, beside this script

import curation.html as current

REPO = Path(__file__).resolve().parents[1]
KW = {"max_images": 5000, "max_alt_chars": 1000, "max_url_chars": 2048}


def load_base(rev: str):
    """curation/html.py as it was at `rev`, as a module of its own."""
    source = subprocess.run(
        ["git", "show", f"{rev}:curation/html.py"], cwd=REPO, check=True, capture_output=True
    ).stdout
    path = Path(tempfile.mkdtemp()) / "html_base.py"
    path.write_bytes(source)
    spec = importlib.util.spec_from_file_location("html_base", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["html_base"] = module
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--base", required=True)
    ap.add_argument("--rounds", type=int, default=9)
    args = ap.parse_args(argv)
    base = load_base(args.base)
    archives = bench_extract.load_archives(REPO.parent / "shared" / "data" / "warc")
    pages = bench_extract.decoded_pages(archives) * 5

    def run(module) -> list:
        return [module.extract_images(html, url, **KW) for html, url in pages]

    def facts(results: list) -> list:
        return [
            (tuple((p.image_url, p.alt_text) for p in r.pairs), r.skipped, r.lang) for r in results
        ]

    assert facts(run(base)) == facts(run(current)), "the outputs differ"
    walls: dict[str, list[float]] = {"base": [], "new": []}
    for r in range(args.rounds):
        for name, module in (("base", base), ("new", current))[:: 1 if r % 2 == 0 else -1]:
            gc.collect()
            t0 = time.perf_counter()
            run(module)
            walls[name].append(time.perf_counter() - t0)
    ratios = [n / b for n, b in zip(walls["new"], walls["base"], strict=True)]
    print(
        f"{len(pages)} pages: base {statistics.median(walls['base']):.3f} s, new "
        f"{statistics.median(walls['new']):.3f} s (medians of {args.rounds}); new/base "
        f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f}); outputs identical"
    )


if __name__ == "__main__":
    main()
