"""Dead letters: what an unexpected exception in a DoFn leaves behind, kept, never swallowed.

Each guarded step runs with Beam's `with_exception_handling`; its `bad` output holds
(element, (type, value, traceback)). Those become rows of OUTPUT/dead_letter/ with the
traceback, a count in stats.json, and, when the element was a candidate, a rejection with
reason `internal_error` in the ledger, so the accounting still balances.
"""

from __future__ import annotations

from typing import Any

import apache_beam as beam
import pyarrow as pa

from curation import reasons
from curation.record import Candidate, Rejected, Rejection

DEAD_LETTER_STAGE = "dead_letter"  # the funnel's stage for these counts
DEAD_LETTER_SCHEMA = pa.schema(
    [
        ("uid", pa.string()),  # a hash of the row, so rows sort and shard like the others
        ("stage", pa.string()),
        ("element", pa.string()),
        ("error", pa.string()),
        ("traceback", pa.string()),
    ]
)


def _error(exc: tuple[Any, Any, Any]) -> str:
    exc_type, exc_value, _ = exc
    name = getattr(exc_type, "__name__", str(exc_type))
    return f"{name}: {exc_value}"[:500]


class _Row:
    """A dead-letter row that WriteShards can write (it calls to_row())."""

    def __init__(self, row: dict[str, Any]) -> None:
        self.row = row

    def to_row(self) -> dict[str, Any]:
        return self.row


def to_dead_row(stage: str, bad: tuple[Any, tuple[Any, Any, Any]]) -> _Row:
    """A dead-letter row from a `bad` element: the element, the error, the traceback."""
    import hashlib

    element, exc = bad
    described = element.uid if isinstance(element, Candidate) else repr(element)[:2000]
    tb = exc[2]
    trace = "".join(tb) if isinstance(tb, list | tuple) else str(tb)
    row = {
        "stage": stage,
        "element": described,
        "error": _error(exc),
        "traceback": trace[-8000:],
    }
    row["uid"] = hashlib.sha256(repr(sorted(row.items())).encode()).hexdigest()[:32]
    return _Row(row)


def as_rejection(stage: str, bad: tuple[Any, tuple[Any, Any, Any]]) -> list[Rejected]:
    """A candidate that made its step raise, as a ledger entry (non-candidates: none)."""
    element, exc = bad
    if isinstance(element, Candidate):
        return [Rejected(element, Rejection(stage, reasons.INTERNAL_ERROR, _error(exc)))]
    return []


class CollectDeadLetters(beam.PTransform):
    """{stage: bad PCollection} -> (dead-letter rows, rejections, tallies)."""

    def __init__(self, bad_by_stage: dict[str, Any]) -> None:
        super().__init__()
        self.bad_by_stage = bad_by_stage

    def expand(self, pbegin):
        rows, rejections = [], []
        for stage, bad in sorted(self.bad_by_stage.items()):
            rows.append(bad | f"Dead row {stage}" >> beam.Map(lambda b, s=stage: to_dead_row(s, b)))
            rejections.append(
                bad | f"As rejection {stage}" >> beam.FlatMap(lambda b, s=stage: as_rejection(s, b))
            )
        p = pbegin.pipeline if hasattr(pbegin, "pipeline") else pbegin
        all_rows = tuple(rows) | "All dead letters" >> beam.Flatten(pipeline=p)
        all_rejections = tuple(rejections) | "All internal errors" >> beam.Flatten(pipeline=p)
        tallies = all_rows | "Tally dead letters" >> beam.Map(
            lambda r: (DEAD_LETTER_STAGE, r.row["stage"], 1)
        )
        return all_rows, all_rejections, tallies
