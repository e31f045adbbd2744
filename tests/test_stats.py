"""The funnel: merging is associative and commutative; stats.json round-trips."""

from __future__ import annotations

import itertools
import json

from curation import reasons
from curation.stats import Funnel


def _funnels() -> list[Funnel]:
    a, b, c = Funnel(), Funnel(), Funnel()
    a.add(reasons.STAGE_READ, reasons.FILES)
    a.add(reasons.STAGE_EXTRACT, reasons.CANDIDATES, 5)
    b.add(reasons.STAGE_EXTRACT, reasons.CANDIDATES, 3)
    b.add_rejection(reasons.STAGE_TEXT, reasons.TEXT_TOO_SHORT, 2)
    c.add_kept(6)
    return [a, b, c]


def test_merge_in_any_order_gives_the_same_funnel() -> None:
    funnels = _funnels()
    results = {Funnel.merge_all(order).to_json() for order in itertools.permutations(funnels)}
    assert len(results) == 1
    a, b, c = funnels
    assert a.merge(b).merge(c) == a.merge(b.merge(c))


def test_totals_and_balance() -> None:
    f = Funnel.merge_all(_funnels())
    f.add(reasons.STAGE_EXTRACT, reasons.DUPLICATE_CAPTURE, 0)
    doc = json.loads(f.to_json())
    assert doc["totals"] == {"extracted": 8, "kept": 6, "rejected": 2, "balanced": True}
    assert doc["rejected"] == {"text": {"text_too_short": 2}}


def test_json_round_trip() -> None:
    f = Funnel.merge_all(_funnels())
    assert Funnel.from_json_dict(json.loads(f.to_json())) == f


def test_merge_does_not_mutate() -> None:
    a, b, _ = _funnels()
    before = a.to_json()
    a.merge(b)
    assert a.to_json() == before
