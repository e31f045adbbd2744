"""Near-duplicate images within a run by 64-bit perceptual hash: banding and verification.

Two hashes within Hamming distance k agree exactly on at least one of k+1 disjoint bands
(pigeonhole), so grouping by (band, value) finds every such pair without comparing all
pairs; each group is then verified exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

HASH_BITS = 64


def band_slices(k: int) -> list[tuple[int, int]]:
    """(shift, width) of k+1 contiguous bands covering the 64 bits, as even as possible."""
    n = k + 1
    widths = [HASH_BITS // n + (1 if i < HASH_BITS % n else 0) for i in range(n)]
    out, shift = [], HASH_BITS
    for w in widths:
        shift -= w
        out.append((shift, w))
    return out


def bands(phash_hex: str, k: int) -> list[tuple[int, int]]:
    """The (band index, band value) keys of a hash for distance k."""
    h = int(phash_hex, 16)
    return [(i, (h >> shift) & ((1 << w) - 1)) for i, (shift, w) in enumerate(band_slices(k))]


def hamming(a: str, b: str) -> int:
    """Hamming distance of two hex hashes."""
    return (int(a, 16) ^ int(b, 16)).bit_count()


def _popcount(x: np.ndarray) -> np.ndarray:
    return np.bitwise_count(x)


def smaller_neighbours(members: Sequence[tuple[str, str]], k: int) -> dict[str, str]:
    """For (key, hash) members of one band group: each key that has a neighbour within k
    with a smaller key, mapped to the smallest such neighbour's key."""
    ordered = sorted(set(members))
    if len(ordered) < 2:
        return {}
    keys = [m[0] for m in ordered]
    hashes = np.array([int(m[1], 16) for m in ordered], dtype=np.uint64)
    out: dict[str, str] = {}
    for i in range(1, len(ordered)):
        close = np.nonzero(_popcount(hashes[:i] ^ hashes[i]) <= k)[0]
        if close.size:
            out[keys[i]] = keys[int(close[0])]
    return out
