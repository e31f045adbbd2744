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
        f.add_kept(data.get("totals", {}).get("kept", 0))
        return f

    def to_json(self) -> str:
        """stats.json text: sorted keys, so equal funnels give equal bytes."""
        return json.dumps(self.to_json_dict(), indent=2, sort_keys=True) + "\n"
