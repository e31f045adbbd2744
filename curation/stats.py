"""The funnel: mergeable counts per (stage, name), the durable record of what each rule removed.

Merging is addition of counters, so it is associative and commutative: per-worker
funnels combined in any order give the same stats.json.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from curation import reasons
from curation.record import image_size


class Funnel:
    """Counts keyed by (stage, name); `name` is a reason or a counter such as 'candidates'."""

    __slots__ = ("counts",)

    def __init__(self, counts: Mapping[tuple[str, str], int] | None = None) -> None:
        self.counts: Counter[tuple[str, str]] = Counter(counts or {})

    def add(self, stage: str, name: str, n: int = 1) -> None:
        """Add n to one counter."""
        if n:
            self.counts[(stage, name)] += n

    def get(self, stage: str, name: str) -> int:
        """One counter's value (0 when never added)."""
        return self.counts.get((stage, name), 0)

    def merge(self, other: Funnel) -> Funnel:
        """A new funnel holding the sum of both."""
        out = Funnel(self.counts)
        out.counts.update(other.counts)
        return out

    def __iadd__(self, other: Funnel) -> Funnel:
        self.counts.update(other.counts)
        return self

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Funnel) and +self.counts == +other.counts

    def __repr__(self) -> str:
        return f"Funnel({dict(sorted(self.counts.items()))})"

    @staticmethod
    def merge_all(funnels: Iterable[Funnel]) -> Funnel:
        """The sum of any number of funnels."""
        out = Funnel()
        for f in funnels:
            out += f
        return out

    def stage(self, stage: str) -> dict[str, int]:
        """The counters of one stage, sorted by name."""
        return {name: n for (s, name), n in sorted(self.counts.items()) if s == stage}

    # Counts of rejections live under ("rejected:<stage>", reason) so they cannot be
    # confused with the read/extract counters of the same stage.
    def add_rejection(self, stage: str, reason: str, n: int = 1) -> None:
        """Count a candidate rejected at `stage` for `reason`."""
        self.add(f"rejected:{stage}", reason, n)

    def add_kept(self, n: int = 1) -> None:
        """Count a candidate that reached the shards."""
        self.add("kept", "kept", n)

    def to_json_dict(self) -> dict[str, Any]:
        """The stats.json layout: read, extract, per-stage rejections and the totals."""
        rejected: dict[str, dict[str, int]] = {}
        for (s, name), n in sorted(self.counts.items()):
            if s.startswith("rejected:"):
                rejected.setdefault(s.removeprefix("rejected:"), {})[name] = n
        extract = self.stage(reasons.STAGE_EXTRACT)
        emitted = extract.get(reasons.CANDIDATES, 0)
        duplicates = extract.get(reasons.DUPLICATE_CAPTURE, 0)
        kept = self.get("kept", "kept")
        total_rejected = sum(sum(r.values()) for r in rejected.values())
        extracted = emitted - duplicates
        return {
            "read": self.stage(reasons.STAGE_READ),
            "extract": extract,
            "rejected": rejected,
            # Exceptions that escaped a step, per step (OUTPUT/dead_letter/ has each one).
            "dead_letter": self.stage("dead_letter"),
            "totals": {
                "extracted": extracted,
                "kept": kept,
                "rejected": total_rejected,
                "balanced": extracted == kept + total_rejected,
            },
        }

    @classmethod
    def from_json_dict(cls, data: Mapping[str, Any]) -> Funnel:
        """Rebuild a funnel from a stats.json dict (inverse of to_json_dict)."""
        f = cls()
        for stage in (reasons.STAGE_READ, reasons.STAGE_EXTRACT):
            for name, n in data.get(stage, {}).items():
                f.add(stage, name, n)
        for stage, by_reason in data.get("rejected", {}).items():
            for reason, n in by_reason.items():
                f.add_rejection(stage, reason, n)
        for stage, n in data.get("dead_letter", {}).items():
            f.add("dead_letter", stage, n)
        f.add_kept(data.get("totals", {}).get("kept", 0))
        return f

    def to_json(self) -> str:
        """stats.json text: sorted keys, so equal funnels give equal bytes."""
        return json.dumps(self.to_json_dict(), indent=2, sort_keys=True) + "\n"


# --- Distributions of the kept records: fixed-edge histograms and categorical counts.
# Fixed edges make histograms mergeable by addition, so any order of merging agrees.

_INF = float("inf")
HISTOGRAM_EDGES: dict[str, tuple[float, ...]] = {
    "width": (0, 128, 200, 256, 384, 512, 768, 1024, 1536, 2048, 4096, _INF),
    "height": (0, 128, 200, 256, 384, 512, 768, 1024, 1536, 2048, 4096, _INF),
    "shorter_side": (0, 128, 200, 256, 384, 512, 768, 1024, 1536, 2048, 4096, _INF),
    "aspect_ratio": (1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 4.0, _INF),
    "file_size": (0, 10e3, 30e3, 100e3, 300e3, 1e6, 3e6, 10e6, _INF),
    "text_unigrams": (0, 3, 5, 8, 12, 16, 21, 30, _INF),
    "nsfw_score": (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, _INF),
    "near_dup_group_size": (2, 3, 4, 6, 11, 21, 51, _INF),
}


def _bucket(edges: tuple[float, ...], value: float) -> int:
    for i in range(len(edges) - 1):
        if edges[i] <= value < edges[i + 1]:
            return i
    return 0 if value < edges[0] else len(edges) - 2


class Distributions:
    """Histograms (fixed edges) and categorical counts over records; merged by addition."""

    __slots__ = ("categories", "histograms")

    def __init__(self) -> None:
        self.histograms: dict[str, list[int]] = {
            name: [0] * (len(edges) - 1) for name, edges in HISTOGRAM_EDGES.items()
        }
        self.categories: dict[str, Counter[str]] = {"text_lang": Counter()}

    def observe(self, name: str, value: float | None, n: int = 1) -> None:
        """Count a value in histogram `name` (None is not counted)."""
        if value is not None:
            self.histograms[name][_bucket(HISTOGRAM_EDGES[name], value)] += n

    def observe_category(self, name: str, value: str | None) -> None:
        """Count a categorical value (None counts as 'unknown')."""
        self.categories[name][value or "unknown"] += 1

    def observe_kept(self, row: Mapping[str, Any], unigrams: int) -> None:
        """Every distribution of one kept record."""
        self.observe("text_unigrams", unigrams)
        self.observe_category("text_lang", row.get("text_lang"))
        w, h = row.get("original_width"), row.get("original_height")
        if w and h:
            self.observe("width", w)
            self.observe("height", h)
            self.observe("shorter_side", min(w, h))
            self.observe("aspect_ratio", max(w, h) / min(w, h))
        if row.get("file_size") is not None:
            self.observe("file_size", row["file_size"])
        elif row.get("image") is not None:
            self.observe("file_size", image_size(row["image"]))
        self.observe("nsfw_score", row.get("nsfw_score"))

    def merge(self, other: Distributions) -> Distributions:
        """A new object holding the sum of both."""
        out = Distributions()
        for d in (self, other):
            for name, counts in d.histograms.items():
                out.histograms[name] = [
                    a + b for a, b in zip(out.histograms[name], counts, strict=True)
                ]
            for name, counter in d.categories.items():
                out.categories[name].update(counter)
        return out

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Distributions)
            and self.histograms == other.histograms
            and self.categories == other.categories
        )

    def to_json_dict(self) -> dict[str, Any]:
        """Histograms as {edges, counts}; categories sorted by count, then name."""
        return {
            "histograms": {
                name: {
                    "edges": [e if e != _INF else None for e in HISTOGRAM_EDGES[name]],
                    "counts": counts,
                }
                for name, counts in self.histograms.items()
            },
            "categories": {
                name: dict(sorted(c.items(), key=lambda kv: (-kv[1], kv[0])))
                for name, c in self.categories.items()
            },
        }


# --- Bounded tables: the largest rows of a keyed count, and the sum of the rest.


class TopTable:
    """The `size` largest rows of a table of per-key counts, and the rest summed.

    A row is (key, counts), ranked by the sum of its counts, ties by key, so every runner
    and every merge order keeps the same rows. Each key must be added once overall (count
    per key first, as Beam's CombinePerKey does): the table then holds the true top rows,
    since a row among the top `size` of all is among the top `size` of any part.
    """

    __slots__ = ("rest", "rest_keys", "rows", "size")

    def __init__(self, size: int, width: int) -> None:
        self.size = size
        self.rows: list[tuple[str, tuple[int, ...]]] = []
        self.rest_keys = 0
        self.rest: tuple[int, ...] = (0,) * width

    def add(self, key: str, counts: Iterable[int]) -> None:
        """One key's counts (each key once over all parts)."""
        self.rows.append((key, tuple(counts)))
        self._trim()

    def merge(self, other: TopTable) -> TopTable:
        """A new table holding the rows of both (the keys of the two are distinct)."""
        out = TopTable(self.size, len(self.rest))
        out.rows = [*self.rows, *other.rows]
        out.rest_keys = self.rest_keys + other.rest_keys
        out.rest = tuple(a + b for a, b in zip(self.rest, other.rest, strict=True))
        out._trim()
        return out

    def _trim(self) -> None:
        if len(self.rows) <= self.size:
            return
        self.rows.sort(key=lambda row: (-sum(row[1]), row[0]))
        spilled, self.rows = self.rows[self.size :], self.rows[: self.size]
        self.rest_keys += len(spilled)
        for _, counts in spilled:
            self.rest = tuple(a + b for a, b in zip(self.rest, counts, strict=True))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TopTable) and self.to_json_dict() == other.to_json_dict()

    def __repr__(self) -> str:
        return f"TopTable({self.to_json_dict()})"

    def to_json_dict(self) -> dict[str, Any]:
        """{"rows": [[key, *counts], ...] largest first, "rest": {"keys": n, "counts": [...]}}."""
        rows = sorted(self.rows, key=lambda row: (-sum(row[1]), row[0]))
        return {
            "rows": [[key, *counts] for key, counts in rows],
            "rest": {"keys": self.rest_keys, "counts": list(self.rest)},
        }
