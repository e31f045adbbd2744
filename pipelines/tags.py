"""The routing vocabulary of every stage: output tags, a rejection, a dead letter.

A stage's main output is KEPT; rejected candidates leave by REJECTED (as `Rejected`
records, for the ledger), funnel counts by TALLY, and elements whose step raised by BAD
(dead letters, see pipelines/deadletter.py). One definition each, so stages compose.
"""

from __future__ import annotations

import traceback
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics

from curation.record import Candidate, Rejected, Rejection

KEPT = "kept"
REJECTED = "rejected"
TALLY = "tally"
BAD = "bad"  # Beam's tag for the dead-letter output of with_exception_handling

Failure = tuple[Any, str, list[str]]  # (exception type, repr, formatted traceback)


def reject(candidate: Candidate, rejection: Rejection) -> beam.pvalue.TaggedOutput:
    """`candidate` to the REJECTED output with its reason, counted in Beam's metrics."""
    Metrics.counter(rejection.stage, rejection.reason).inc()
    return beam.pvalue.TaggedOutput(REJECTED, Rejected(candidate, rejection))


def failure(exc: BaseException) -> Failure:
    """An exception as with_exception_handling records it, for steps that catch their own."""
    return (type(exc), repr(exc), traceback.format_exception(exc))
