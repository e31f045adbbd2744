"""Benchmark: the eval-duplicate matcher (filters/evaldup.py) against pHash within 12.

On the shared photos (../shared/data): recall per transform (issue #19's list, then the goals),
false positives over every pair of distinct pictures and over every transformed copy against
every other picture, with the 95% upper bound and what it means for a 56,000-image eval set;
then the costs: eval features per 1,000 images, web features per image (against the pHash the
pipeline computes today, same run), and the lookup per web image against a 56,000-entry index.
That index is synthetic (say so when quoting it): the shared photos' variant hashes with 12-20
random bits flipped, each with a real thumbnail, so that buckets are as skewed as real pHashes
and queries of real photos find candidates to verify.

    .venv/bin/python bench/bench_evaldup.py            # prints a markdown section
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.test_evaldup holds the transforms and picture families

from curation.record import Rejection  # noqa: E402
from filters import evaldup  # noqa: E402
from filters.evaldup import (  # noqa: E402
    CANDIDATE_DISTANCE,
    VARIANTS,
    EvalFeatures,
    EvalMatchIndex,
    compute_eval_features,
    compute_web_features,
)
from filters.image import image_phash  # noqa: E402
from tests.test_evaldup import (  # noqa: E402
    GOAL_TRANSFORMS,
    SHARED_DATA,
    TRANSFORMS,
    _eval_photos,
    family,
    shared_pictures,
)

EVAL_SET_SIZE = 56_000  # ImageNet val 50,000 + MSCOCO 5,000 + Flickr30K test 1,000
OLD_DISTANCE = 12  # the pHash rule this replaces (eval_dup_distance)


def upper95(failures: int, trials: int) -> float:
    """Clopper-Pearson 95% upper bound of a rate (one-sided for zero: 1 - 0.05^(1/n))."""
    if failures == 0:
        return 1.0 - 0.05 ** (1.0 / trials)
    from scipy.stats import beta

    return float(beta.ppf(0.975, failures + 1, trials - failures))


def crawl_fraction(per_pair: float, size: int = EVAL_SET_SIZE) -> float:
    """The fraction of web images matching at least one of `size` unrelated eval images."""
    return 1.0 - (1.0 - per_pair) ** size


def _features(data: bytes) -> EvalFeatures:
    f = compute_eval_features(data)
    assert not isinstance(f, Rejection)
    return f


def recall(index: EvalMatchIndex, photos, transforms) -> tuple[list[str], int, int]:
    """Rows of recall per transform; and wrong matches / (copy, other picture) pairs."""
    rows, wrong, pairs = [], 0, 0
    for label, transform in transforms.items():
        caught = candidates = 0
        worst = 1.0
        for name, im in photos:
            web = compute_web_features(transform(im))
            assert not isinstance(web, Rejection)
            found = index.matches(web)
            pairs += len(index) - 1
            wrong += sum(family(m.name) != family(name) for m in found)
            mine = [m for m in found if m.name == name]
            caught += bool(mine)
            worst = min([worst] + [m.score for m in mine])
            v = index.names.tolist().index(name)
            hashes = index.hashes[v]
            near = min(
                int(np.bitwise_count(hashes ^ np.uint64(view.phash)).min()) for view in web.views
            )
            candidates += near <= CANDIDATE_DISTANCE
        n = len(photos)
        rows.append(
            f"| {label} | {n} | {candidates / n:.1%} | **{caught / n:.1%}** | {worst:.3f} |"
        )
    return rows, wrong, pairs


def false_positives(pictures) -> dict[str, float]:
    """Every ordered pair of distinct pictures: the matcher, its two stages alone, and pHash."""
    index = EvalMatchIndex((name, _features(data)) for name, data in pictures)
    names = index.names.tolist()
    fam = [family(n) for n in names]
    by_name = dict(pictures)
    webs = {name: compute_web_features(data) for name, data in pictures}
    matched, stage1, old = set(), set(), set()
    full = index.hashes[:, 0]
    for name, web in webs.items():
        i = names.index(name)
        for m in index.matches(web):
            if fam[names.index(m.name)] != fam[i]:
                matched.add(frozenset((name, m.name)))
        for view in web.views[:1]:
            for _, flat in index.candidates(view.phash):
                j = flat // len(VARIANTS)
                if fam[j] != fam[i]:
                    stage1.add(frozenset((i, j)))
        own = int(image_phash(by_name[name]), 16)
        close = np.flatnonzero(np.bitwise_count(full ^ np.uint64(own)) <= OLD_DISTANCE)
        old.update(frozenset((i, int(j))) for j in close if fam[int(j)] != fam[i])
    distinct = sum(fam[i] != fam[j] for i in range(len(names)) for j in range(i + 1, len(names)))
    # Stage 2 alone, with no candidate search in front and no alignment: every distinct
    # ordered pair at every crop variant; the best of each pair.
    pixels, gradients = _stage2_vectors(index)
    query_p, query_g = [], []
    for name in names:
        view = webs[name].views[0]
        thumb = np.frombuffer(view.thumb, np.uint8).reshape(evaldup.WEB_THUMB_SIDE, -1)
        query_p.append(_unit(thumb.astype(np.float32), gradient=False))
        query_g.append(_unit(thumb.astype(np.float32), gradient=True))
    p = np.einsum("id,jvd->ijv", np.array(query_p), pixels)
    g = np.einsum("id,jvd->ijv", np.array(query_g), gradients)
    same = np.array([[a == b for b in fam] for a in fam])
    both = np.minimum(p, g).max(axis=2)
    passes = (p >= evaldup.MIN_PIXEL_NCC) & (g >= evaldup.MIN_GRADIENT_NCC)
    return {
        "pictures": len(names),
        "distinct pairs": distinct,
        "matched": len(matched),
        "stage 1 pairs": len(stage1),
        "old pairs": len(old),
        "stage 2 ordered pairs": int((~same).sum()),
        "stage 2 passes": int((passes.any(axis=2) & ~same).sum()),
        "stage 2 max pixels": float(p.max(axis=2)[~same].max()),
        "stage 2 max gradients": float(g.max(axis=2)[~same].max()),
        "stage 2 max both": float(both[~same].max()),
    }


def _unit(values: np.ndarray, gradient: bool) -> np.ndarray:
    if gradient:
        values = evaldup._gradient(values)
    flat = values.ravel() - values.mean()
    if not gradient and flat.std() < evaldup.MIN_THUMB_STD:
        return np.zeros_like(flat)
    norm = np.linalg.norm(flat)
    return flat / norm if norm > 1e-6 else flat


def _stage2_vectors(index: EvalMatchIndex) -> tuple[np.ndarray, np.ndarray]:
    pixels, gradients = [], []
    for entry in range(len(index)):
        p, g = [], []
        for x0, y0, x1, y1, flip in VARIANTS:
            crop = evaldup._resampled(index._thumb(entry, flip), (x0, y0, x1, y1))
            p.append(_unit(crop, gradient=False))
            g.append(_unit(crop, gradient=True))
        pixels.append(p)
        gradients.append(g)
    return np.array(pixels), np.array(gradients)


def synthetic_index(pictures, size: int, seed: int = 0) -> EvalMatchIndex:
    """`size` entries: real variant hashes with 12-20 random bits flipped, real thumbnails."""
    rng = np.random.default_rng(seed)
    real = [_features(data) for _, data in pictures]
    entries = []
    for k in range(size):
        base = real[int(rng.integers(len(real)))]
        hashes = []
        for h in base.hashes:
            flips = rng.choice(64, size=int(rng.integers(12, 21)), replace=False)
            hashes.append(h ^ int(sum(1 << int(b) for b in flips)))
        thumb = real[int(rng.integers(len(real)))].thumb
        entries.append((f"synthetic/{k:06d}", EvalFeatures(tuple(hashes), thumb)))
    return EvalMatchIndex(entries)


def _per_call(fn, items, repeat: int = 3) -> float:
    """Best of `repeat` rounds of the mean seconds per item."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for item in items:
            fn(item)
        best = min(best, (time.perf_counter() - start) / len(items))
    return best


def costs(pictures, photos, tmp: Path) -> list[str]:
    """Rows of the cost table."""
    eval_bytes = [(SHARED_DATA / name).read_bytes() for name, _ in photos]
    feature = _per_call(compute_eval_features, eval_bytes, repeat=1)
    web_feature = _per_call(compute_web_features, eval_bytes)
    old_feature = _per_call(image_phash, eval_bytes)

    start = time.perf_counter()
    big = synthetic_index(pictures, EVAL_SET_SIZE)
    build = time.perf_counter() - start
    path = tmp / "synthetic_eval_index.npz"
    start = time.perf_counter()
    big.save(path)
    save = time.perf_counter() - start
    start = time.perf_counter()
    big = EvalMatchIndex.load(path)
    load = time.perf_counter() - start

    webs = [compute_web_features(data) for _, data in pictures]
    webs = [w for w in webs if not isinstance(w, Rejection)]
    lookup = _per_call(big.match, webs)
    cands = [len(big.candidates(w.views[0].phash)) for w in webs]
    stage1 = _per_call(lambda w: [big.candidates(v.phash) for v in w.views], webs)
    small = synthetic_index(pictures, 56)
    small_lookup = _per_call(small.match, webs)
    ms = 1e3
    return [
        f"| eval features, per 1,000 eval images, one core | {feature * 1000:.1f} s |",
        f"| web features, per web image | {web_feature * ms:.2f} ms "
        f"({web_feature / old_feature:.2f}x image_phash, {old_feature * ms:.2f} ms) |",
        f"| match per web image, 56,000-entry synthetic index | {lookup * ms:.3f} ms "
        f"(candidates: mean {np.mean(cands):.1f}, max {max(cands)}) |",
        f"| stage 1 alone per web image, same index | {stage1 * ms:.3f} ms |",
        f"| match per web image, 56-entry synthetic index (flat cost check) | "
        f"{small_lookup * ms:.3f} ms |",
        f"| 56,000-entry index: synthesise + build / save / load | "
        f"{build:.1f} s / {save:.2f} s / {load:.2f} s |",
        f"| 56,000-entry index file | {path.stat().st_size / 1e6:.0f} MB |",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tmp", default="/tmp", help="where the synthetic index file is written")
    args = parser.parse_args()
    photos = _eval_photos()
    pictures = shared_pictures()
    index = EvalMatchIndex(
        (name, _features((SHARED_DATA / name).read_bytes())) for name, _ in photos
    )

    required, wrong_r, pairs_r = recall(index, photos, TRANSFORMS)
    goals, wrong_g, pairs_g = recall(index, photos, GOAL_TRANSFORMS)
    fp = false_positives(pictures)
    cost_rows = costs(pictures, photos, Path(args.tmp))

    n = fp["distinct pairs"]
    direct = fp["matched"]
    copies_pairs, copies_wrong = pairs_r + pairs_g, wrong_r + wrong_g
    total_pairs, total_wrong = n + copies_pairs, direct + copies_wrong
    bound = upper95(total_wrong, total_pairs)
    s1_bound = upper95(fp["stage 1 pairs"], n)
    s2_bound = upper95(fp["stage 2 passes"], fp["stage 2 ordered pairs"])
    old = fp["old pairs"] / n
    print("### Eval duplicates (filters/evaldup.py), shared photos\n")
    print(f"{len(photos)} eval photos (../shared/data/evalsets), each copied by every transform.\n")
    print("| transform | copies | stage 1 finds | caught | lowest score |")
    print("| --- | ---: | ---: | ---: | ---: |")
    print("\n".join(required))
    print("| *goals, not required:* | | | | |")
    print("\n".join(goals))

    def row(label: str, pairs: str, hits: int, rate: str, crawl: str = "") -> None:
        print(f"| {label} | {pairs} | {hits} | {rate} | {crawl} |")

    def rate(hits: int, trials: int) -> str:
        return f"{hits / trials:.1e} ({upper95(hits, trials):.1e})"

    print()
    print("| false positives | pairs | matched | rate a pair (95% upper) | crawl removed at 56k |")
    print("| --- | ---: | ---: | ---: | ---: |")
    row(
        f"pHash within {OLD_DISTANCE} (today's rule), distinct pictures",
        f"{n:,}",
        fp["old pairs"],
        rate(fp["old pairs"], n),
        f"{crawl_fraction(old):.1%}",
    )
    row(
        f"this matcher, {fp['pictures']} distinct pictures, all pairs",
        f"{n:,}",
        direct,
        rate(direct, n),
        f"<= {crawl_fraction(upper95(direct, n)):.1%} (bound)",
    )
    row(
        "this matcher, every transformed copy against every other eval photo",
        f"{copies_pairs:,}",
        copies_wrong,
        rate(copies_wrong, copies_pairs),
    )
    row(
        "both together",
        f"{total_pairs:,}",
        total_wrong,
        rate(total_wrong, total_pairs),
        f"<= {crawl_fraction(bound):.2%} (bound)",
    )
    row(
        f"stage 1 alone (a variant within {CANDIDATE_DISTANCE})",
        f"{n:,}",
        fp["stage 1 pairs"],
        rate(fp["stage 1 pairs"], n),
    )
    row(
        "stage 2 alone (no stage 1, no alignment, best of 8 variants)",
        f"{fp['stage 2 ordered pairs']:,} ordered",
        fp["stage 2 passes"],
        rate(fp["stage 2 passes"], fp["stage 2 ordered pairs"]),
    )
    est = s1_bound * s2_bound
    row(
        "stages 1 x 2 if independent (the two upper bounds multiplied)",
        "",
        0,
        f"{est:.1e}",
        f"{crawl_fraction(est):.4%}",
    )
    print()
    print(
        "Stage 2 alone, best over the 8 variants of any distinct pair: "
        f"pixels {fp['stage 2 max pixels']:.3f}, gradients {fp['stage 2 max gradients']:.3f}, "
        f"both {fp['stage 2 max both']:.3f}; thresholds {evaldup.MIN_PIXEL_NCC} and "
        f"{evaldup.MIN_GRADIENT_NCC}.\n"
    )
    print("| cost | value |")
    print("| --- | ---: |")
    print("\n".join(cost_rows))


if __name__ == "__main__":
    main()
