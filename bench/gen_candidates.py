"""Synthetic URL tables (Parquet `url`, `caption`) with the shape of a real crawl, seeded.

For scaling benchmarks of the text stage: same seed and row count, same bytes. What it mimics:

- caption length in unigrams follows the empirical histogram of the 1,000 LAION captions in
  ../shared/data/captions/img2dataset_laion_test_1000.parquet (column TEXT, counted with
  `filters.tokenize`), held below as a constant: about 2% are too short, 5% too long;
- words are drawn with P(rank) ~ rank^-1.1 from a synthetic vocabulary that grows with the
  row count (Heaps' law, 25 * rows^0.75 words), frequent words shorter, plus 3% of captions
  with one junk token (`k3x9q...`) that occurs nowhere else;
- caption frequency is heavy-tailed: most captions unique, 5% copy an earlier row's caption
  (small repeats), 2% come from a pool of 50 boilerplate captions picked with P ~ rank^-1, so
  several are on more than 10 images at any size (the `text_on_too_many_images` rule);
- URLs `https://img{host}.example.com/{i}.jpg` over 1,000 hosts (P ~ rank^-0.8); 1% of rows
  reuse an earlier URL, half of those with its caption too (a `duplicate_capture`);
- 1% of rows hold what the per-record rules reject (file names, dimension strings, URLs,
  placeholders) and 0.1% have no caption.

    python bench/gen_candidates.py --rows 1000000 --output /tmp/candidates_1e6.parquet
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

# (unigram count, captions) over the 1,000 LAION captions; 204 is a real outlier.
LENGTH_HIST = (
    (2, 19), (3, 64), (4, 90), (5, 120), (6, 99), (7, 107), (8, 84), (9, 91), (10, 65),
    (11, 51), (12, 46), (13, 21), (14, 20), (15, 23), (16, 19), (17, 16), (18, 6), (19, 10),
    (20, 2), (21, 8), (22, 5), (23, 6), (24, 5), (25, 5), (27, 2), (28, 3), (29, 1), (30, 2),
    (36, 1), (40, 1), (41, 1), (46, 1), (48, 1), (50, 1), (51, 1), (57, 1), (87, 1), (204, 1),
)  # fmt: skip
ZIPF_WORDS = 1.1
ZIPF_BOILERPLATE = 1.0
ZIPF_HOSTS = 0.8
HOSTS = 1000
P_BOILERPLATE = 0.02
P_COPY_CAPTION = 0.05
P_REPEAT_URL = 0.01
P_REJECTABLE = 0.01
P_NO_CAPTION = 0.001
P_JUNK = 0.03
P_CAPITALIZED = 0.6

# Consonant-vowel syllables; no c/j/q/w/x/y, so no word ends in an image extension ("ico",
# "jpe") and the file-name rule only sees the rows meant for it.
_SYLLABLES = [c + v for c in "bdfghklmnprstvz" for v in "aeiou"]
_HEADS = (
    "click here to see", "view a larger version of", "high quality stock photo of",
    "free shipping on", "best price for", "shop the latest deals on",
    "official product image of", "download free wallpaper of", "see more details about",
    "new arrivals in",
)  # fmt: skip
_TAILS = ("this item", "our online store", "the product", "the whole collection", "today only")
BOILERPLATE = tuple(f"{h} {t}" for h in _HEADS for t in _TAILS)  # 50 captions


def vocabulary_size(rows: int) -> int:
    """Words in the synthetic vocabulary for a table of `rows` rows (Heaps' law)."""
    return max(1000, round(25 * rows**0.75))


def make_vocabulary(size: int) -> np.ndarray:
    """Distinct words, shortest first: rank r is r in bijective base-75 syllables."""
    n = len(_SYLLABLES)
    words = []
    for rank in range(size):
        parts, r = [], rank + 1
        while r:
            r, d = divmod(r - 1, n)
            parts.append(_SYLLABLES[d])
        words.append("".join(reversed(parts)))
    return np.array(words, dtype=object)


def zipf_sampler(n: int, s: float, rng: np.random.Generator) -> Callable[[int], np.ndarray]:
    """A function k -> k ranks in [0, n) drawn with P(rank) ~ (rank + 1)^-s."""
    cdf = np.cumsum(np.arange(1, n + 1, dtype=np.float64) ** -s)
    cdf /= cdf[-1]
    return lambda k: np.minimum(np.searchsorted(cdf, rng.random(k), side="right"), n - 1)


def _rejectable(rng: np.random.Generator, k: int) -> list[str]:
    """Captions the per-record rules reject: file names, dimensions, URLs, placeholders."""
    nums = rng.integers(1, 99999, size=k)
    dims = rng.choice([120, 150, 224, 300, 640, 800, 1024, 1080, 1920], size=(k, 2))
    out = []
    for i, kind in enumerate(rng.integers(0, 8, size=k)):
        n, (w, h) = int(nums[i]), dims[i]
        out.append(
            (
                f"IMG_{n:04d}.JPG",
                f"DSC{n:05d}",
                f"photo{n}.png",
                f"{w}x{h}",
                f"{w} x {h} px",
                f"https://www.example.org/p/{n}",
                "untitled image",
                "no image available",
            )[kind]
        )
    return out


def _junk(rng: np.random.Generator, k: int) -> list[str]:
    """Tokens that occur once: a letter then base-36 digits of a 48-bit random number."""
    alphabet = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = []
    for x in rng.integers(0, 2**48, size=k, dtype=np.int64).tolist():
        s = "k"
        while x:
            x, d = divmod(x, 36)
            s += alphabet[d]
        out.append(s)
    return out


def generate(rows: int, seed: int = 0) -> pa.Table:
    """A table of `rows` rows (`url`, `caption`), the same for the same seed and size."""
    rng = np.random.default_rng(seed)
    vocab = make_vocabulary(vocabulary_size(rows))
    lengths_avail = np.array([n for n, _ in LENGTH_HIST])
    weights = np.array([c for _, c in LENGTH_HIST], dtype=np.float64)
    lengths = rng.choice(lengths_avail, size=rows, p=weights / weights.sum())
    ends = np.cumsum(lengths)
    words = vocab[zipf_sampler(len(vocab), ZIPF_WORDS, rng)(int(ends[-1]))]
    junk_rows = np.flatnonzero(rng.random(rows) < P_JUNK)
    junk_pos = ends[junk_rows] - 1 - (rng.random(len(junk_rows)) * lengths[junk_rows]).astype(int)
    words[junk_pos] = _junk(rng, len(junk_rows))
    capital = (rng.random(rows) < P_CAPITALIZED).tolist()
    captions: list[str | None] = []
    start = 0
    for end, cap in zip(ends.tolist(), capital, strict=True):
        text = " ".join(words[start:end])
        captions.append(text[0].upper() + text[1:] if cap else text)
        start = end

    # Heavy-tailed caption frequency: copies of earlier captions, then boilerplate.
    fresh = list(captions)
    idx = np.arange(rows)
    copy_rows = np.flatnonzero(rng.random(rows) < P_COPY_CAPTION)
    copy_src = (rng.random(len(copy_rows)) * idx[copy_rows]).astype(int)
    for r, s in zip(copy_rows.tolist(), copy_src.tolist(), strict=True):
        captions[r] = fresh[s]
    bp_rows = np.flatnonzero(rng.random(rows) < P_BOILERPLATE)
    bp = zipf_sampler(len(BOILERPLATE), ZIPF_BOILERPLATE, rng)(len(bp_rows))
    for r, b in zip(bp_rows.tolist(), bp.tolist(), strict=True):
        captions[r] = BOILERPLATE[b]
    bad_rows = np.flatnonzero(rng.random(rows) < P_REJECTABLE)
    for r, text in zip(bad_rows.tolist(), _rejectable(rng, len(bad_rows)), strict=True):
        captions[r] = text
    for r in np.flatnonzero(rng.random(rows) < P_NO_CAPTION).tolist():
        captions[r] = None

    hosts = zipf_sampler(HOSTS, ZIPF_HOSTS, rng)(rows)
    urls = [f"https://img{h}.example.com/{i}.jpg" for i, h in enumerate(hosts.tolist())]
    rep_rows = np.flatnonzero(rng.random(rows) < P_REPEAT_URL)
    rep_src = (rng.random(len(rep_rows)) * idx[rep_rows]).astype(int)
    whole = (rng.random(len(rep_rows)) < 0.5).tolist()
    for r, s, w in zip(rep_rows.tolist(), rep_src.tolist(), whole, strict=True):
        urls[r] = urls[s]
        if w:
            captions[r] = captions[s]
    return pa.table({"url": pa.array(urls, pa.string()), "caption": pa.array(captions)})


def write_table(rows: int, output: Path, seed: int = 0) -> Path:
    """Generate `rows` rows and write them to `output` (Parquet, 64k-row groups)."""
    output.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(generate(rows, seed), output, row_group_size=65536)
    return output


def main(argv: list[str] | None = None) -> None:
    """CLI: --rows N --output PATH [--seed S]."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--output", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    write_table(args.rows, args.output, args.seed)
    print(f"{args.rows:,} rows -> {args.output} in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
