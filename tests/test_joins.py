"""LookupJoin: the few values of a key reach the function as lists, its items as a stream."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import apache_beam as beam
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipelines.joins import LookupJoin


def _summarize(key: str, few: dict[str, list[int]], items: Iterable[int]) -> Iterator[tuple]:
    assert not isinstance(items, list | tuple), "items must be streamed, not handed as a list"
    n = sum(1 for _ in items)
    if n:
        yield key, sorted(few["count"]), sorted(few["note"]), n
    else:
        yield beam.pvalue.TaggedOutput("orphans", (key, sorted(few["count"])))


def test_lookup_join_streams_items_and_lists_the_few() -> None:
    items = [("hot", i) for i in range(5000)] + [("cold", 1), ("bare", 2), ("bare", 3)]
    with BeamTestPipeline() as p:
        joined = (
            p
            | "Items" >> beam.Create(items)
            | LookupJoin(
                {
                    "count": p | "Counts" >> beam.Create([("hot", 7), ("cold", 1), ("alone", 3)]),
                    "note": p | "Notes" >> beam.Create([("hot", 1), ("hot", 2)]),
                },
                _summarize,
                outputs=("orphans",),
                main="joined",
            )
        )
        assert_that(
            joined["joined"],
            equal_to([("hot", [7], [1, 2], 5000), ("cold", [1], [], 1), ("bare", [], [], 2)]),
            label="joined",
        )
        assert_that(joined["orphans"], equal_to([("alone", [3])]), label="orphans")
