"""A join whose many side is streamed: memory per key stays flat however hot the key.

Beam's CoGroupByKey hands a DoFn every value of a key as lists. The rules here join a few
values per key (a count, a verdict, an image's bytes) to every candidate of that key, and
on the web some keys are hot: one boilerplate alt-text on millions of images, one logo on
millions of pages, a common token in most alt-texts. As lists, such a key is held whole
by one worker. LookupJoin groups once and reads the group twice instead: first for the
few values, then streaming the items, which Beam's grouped values allow (they may be
iterated more than once; on Dataflow they are paged in from the shuffle, not held).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import apache_beam as beam

_ITEM = "\x00item"  # the items' tag: no caller's tag can be this


class LookupJoin(beam.PTransform):
    """(key, item) pairs + {tag: (key, value) PCollection} -> fn(key, few, items, *args).

    `few` is {tag: [values of that tag for the key]}: the small side, read into lists, so it
    must stay small per key. `items` iterates the key's items from the group without
    copying them into a list; `fn` may iterate it once. With `outputs`, the result is the
    FlatMap's tagged outputs (`main` names the main one).
    """

    def __init__(
        self,
        few: dict[str, Any],
        fn: Callable[..., Iterable[Any]],
        *args: Any,
        outputs: tuple[str, ...] = (),
        main: str | None = None,
    ) -> None:
        super().__init__()
        assert _ITEM not in few
        self.few = few
        self.fn = fn
        self.args = args
        self.outputs = outputs
        self.main = main

    def expand(self, items):
        tagged = [
            pcoll | f"Tag {tag}" >> beam.Map(lambda kv, t=tag: (kv[0], (t, kv[1])))
            for tag, pcoll in sorted(self.few.items())
        ]
        tagged.append(items | "Tag items" >> beam.Map(lambda kv: (kv[0], (_ITEM, kv[1]))))
        apply = beam.FlatMap(_lookup, tuple(sorted(self.few)), self.fn, self.args)
        if self.outputs:
            apply = apply.with_outputs(*self.outputs, main=self.main)
        return (
            tuple(tagged)
            | "Flatten" >> beam.Flatten()
            | "Group" >> beam.GroupByKey()
            | "Apply" >> apply
        )


def _lookup(
    group: tuple[Any, Iterable[tuple[str, Any]]],
    tags: tuple[str, ...],
    fn: Callable[..., Iterable[Any]],
    args: tuple[Any, ...],
) -> Iterable[Any]:
    key, values = group
    few: dict[str, list[Any]] = {tag: [] for tag in tags}
    for tag, value in values:  # first pass: the few values, items skipped
        if tag != _ITEM:
            few[tag].append(value)
    items = (value for tag, value in values if tag == _ITEM)  # second pass, streamed
    return fn(key, few, items, *args)
