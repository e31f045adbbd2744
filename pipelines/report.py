"""Statistics and the report: distributions, top hosts and yields, composed in Beam, and the
report's files (the samples it shows: pipelines/report_samples.py).

The decisions and the HTML live in curation/ (stats.py, report.py); this module gathers
their inputs with combiners that keep a bounded amount per worker.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

import apache_beam as beam

from curation import reasons
from curation.record import Candidate, Rejection, image_size
from curation.report import (
    REPORT_FILE,
    SAMPLES_FILE,
    SAMPLES_SCHEMA,
    build_html,
    sort_samples,
)
from curation.shards import parquet_bytes
from curation.stats import Distributions, Funnel, TopTable
from filters.dataset import text_key
from filters.tokenize import tokenize
from pipelines.io import join, write_atomic

TOP_HOSTS = 20
# Rows each bounded table of stats.json keeps (the rest is summed into one row).
TABLE_ROWS = {
    "language": 30,
    "host": 25,
    reasons.TEXT_ON_MANY_IMAGES: 20,
    reasons.TEXT_RARE_TOKEN: 30,
}
YIELDS = ("language", "host")
# The language of a candidate the text rules rejected: language ID runs after them.
BEFORE_LANGUAGE_ID = "(before language ID)"


class DistributionsCombineFn(beam.CombineFn):
    """('kept', fields) and ('near_dup_group', size) observations -> Distributions."""

    def create_accumulator(self) -> Distributions:
        return Distributions()

    def add_input(self, acc: Distributions, item: tuple[str, Any]) -> Distributions:
        kind, payload = item
        if kind == "kept":
            acc.observe_kept(payload, len(tokenize(payload["alt_text"])))
        else:
            acc.observe("near_dup_group_size", payload)
        return acc

    def merge_accumulators(self, accs: Iterable[Distributions]) -> Distributions:
        out = Distributions()
        for a in accs:
            out = out.merge(a)
        return out

    def extract_output(self, acc: Distributions) -> Distributions:
        return acc


def _kept_fields(c: Candidate) -> tuple[str, dict[str, Any]]:
    return (
        "kept",
        {
            "alt_text": c.alt_text,
            "text_lang": c.text_lang,
            "original_width": c.original_width,
            "original_height": c.original_height,
            # The size, not the bytes: this record crosses a stage boundary (~1 s for
            # 2,000 images when it carried them).
            "file_size": image_size(c.image),
            "nsfw_score": c.nsfw_score,
        },
    )


def _host(url: str) -> str:
    return urlsplit(url).hostname or ""


def _language(c: Candidate, rejection: Rejection | None = None) -> str:
    if (
        rejection is not None
        and rejection.stage == reasons.STAGE_TEXT
        and rejection.reason != reasons.LANGUAGE_NOT_SELECTED
    ):
        return BEFORE_LANGUAGE_ID
    return c.text_lang or "unknown"


def _yield_keys(c: Candidate, kept: int, rejection: Rejection | None = None):
    counts = (kept, 1 - kept)
    return [(("language", _language(c, rejection)), counts), (("host", _host(c.image_url)), counts)]


def _sum_pairs(pairs: Iterable[tuple[int, int]]) -> tuple[int, int]:
    kept = rejected = 0
    for k, r in pairs:
        kept += k
        rejected += r
    return kept, rejected


def _images_of(rejection: Rejection) -> int:
    # filters/dataset.py check_shared writes "<n> images".
    head = rejection.detail.split(" ", 1)[0]
    return int(head) if head.isdigit() else 0


class TopTableCombineFn(beam.CombineFn):
    """(key, counts) rows, each key once -> the TopTable of `size` rows."""

    def __init__(self, size: int, width: int) -> None:
        self.size = size
        self.width = width

    def create_accumulator(self) -> TopTable:
        return TopTable(self.size, self.width)

    def add_input(self, acc: TopTable, row: tuple[str, tuple[int, ...]]) -> TopTable:
        acc.add(*row)
        return acc

    def merge_accumulators(self, accs: Iterable[TopTable]) -> TopTable:
        out = self.create_accumulator()
        for a in accs:
            out = out.merge(a)
        return out

    def extract_output(self, acc: TopTable) -> TopTable:
        return acc


class BoundedTables(beam.PTransform):
    """(table, (key, counts)) rows, each key once per table -> (table, TopTable)."""

    def expand(self, rows):
        return (
            tuple(
                rows
                | f"Only {name}" >> beam.Filter(lambda kv, name=name: kv[0] == name)
                | f"Rows of {name}" >> beam.Values()
                | f"Top of {name}"
                >> beam.CombineGlobally(TopTableCombineFn(TABLE_ROWS[name], width))
                | f"Named {name}" >> beam.Map(lambda t, name=name: (name, t))
                for name, width in (
                    ("language", 2),
                    ("host", 2),
                    (reasons.TEXT_ON_MANY_IMAGES, 1),
                    (reasons.TEXT_RARE_TOKEN, 1),
                )
            )
            | "All tables" >> beam.Flatten()
        )


class CollectStatistics(beam.PTransform):
    """Kept and rejected records -> Distributions and a dict of tables (singletons): the top
    kept hosts, the yield per language and per host, the top texts of two text rules."""

    def __init__(self, rejected) -> None:
        super().__init__()
        self.rejected = rejected

    def expand(self, kept):
        observations = kept | "Observe kept" >> beam.Map(_kept_fields)
        groups = (
            self.rejected
            | "Near duplicates"
            >> beam.Filter(lambda r: r.rejection.reason == reasons.NEAR_DUPLICATE)
            | "Kept uid" >> beam.Map(lambda r: r.rejection.detail)
            | "Per group" >> beam.combiners.Count.PerElement()
            | "Group size" >> beam.Map(lambda kv: ("near_dup_group", kv[1] + 1))
        )
        dist = (
            (observations, groups)
            | "All observations" >> beam.Flatten()
            | ("Distributions" >> beam.CombineGlobally(DistributionsCombineFn()))
        )
        hosts = (
            kept
            | "Hosts" >> beam.Map(lambda c: _host(c.image_url))
            | "Per host" >> beam.combiners.Count.PerElement()
            # Ties are broken by host name, so the list is the same on every runner.
            | "Top hosts" >> beam.combiners.Top.Of(TOP_HOSTS, key=lambda kv: (kv[1], _rev(kv[0])))
            | "Name top hosts" >> beam.Map(lambda top: ("top_hosts_kept", top))
        )
        yields = (
            (
                kept | "Kept keys" >> beam.FlatMap(_yield_keys, 1),
                self.rejected
                | "Rejected keys"
                >> beam.FlatMap(lambda r: _yield_keys(r.candidate, 0, r.rejection)),
            )
            | "All keys" >> beam.Flatten()
            | "Per key" >> beam.CombinePerKey(_sum_pairs)
            | "Yield rows" >> beam.Map(lambda kv: (kv[0][0], (kv[0][1], kv[1])))
        )
        shared = (
            self.rejected
            | "Shared texts"
            >> beam.Filter(lambda r: r.rejection.reason == reasons.TEXT_ON_MANY_IMAGES)
            # The rule counts texts by text_key: its rows do too, with the rule's image count.
            | "Text and images"
            >> beam.Map(lambda r: (text_key(r.candidate.alt_text), _images_of(r.rejection)))
            | "Per text" >> beam.CombinePerKey(max)
            | "Text rows" >> beam.Map(lambda kv: (reasons.TEXT_ON_MANY_IMAGES, (kv[0], (kv[1],))))
        )
        rare = (
            self.rejected
            | "Rare tokens" >> beam.Filter(lambda r: r.rejection.reason == reasons.TEXT_RARE_TOKEN)
            | "Token" >> beam.Map(lambda r: r.rejection.detail)
            | "Per token" >> beam.combiners.Count.PerElement()
            | "Token rows" >> beam.Map(lambda kv: (reasons.TEXT_RARE_TOKEN, (kv[0], (kv[1],))))
        )
        tables = (yields, shared, rare) | "All rows" >> beam.Flatten() | "Tables" >> BoundedTables()
        everything = (hosts, tables) | "Hosts and tables" >> beam.Flatten()
        return dist, everything | "As one dict" >> beam.combiners.ToDict()


def _rev(s: str) -> tuple[int, ...]:
    return tuple(-ord(ch) for ch in s)


def stats_document(funnel: Funnel, dist: Distributions, tables: dict[str, Any]) -> dict[str, Any]:
    """stats.json: the funnel, the distributions, the top hosts, the yield per language and
    per host, and the top texts of two text rules (`tables`: CollectStatistics' tables)."""
    doc = funnel.to_json_dict()
    doc["distributions"] = dist.to_json_dict()
    doc["top_hosts"] = {"kept": [list(h) for h in tables.get("top_hosts_kept", [])]}

    def table(name: str, width: int) -> dict[str, Any]:
        found = tables.get(name) or TopTable(TABLE_ROWS[name], width)
        return found.to_json_dict()

    doc["yield"] = {name: table(name, 2) for name in YIELDS}
    doc["text_rejects"] = {
        name: table(name, 1) for name in (reasons.TEXT_ON_MANY_IMAGES, reasons.TEXT_RARE_TOKEN)
    }
    return doc


def write_report(doc: dict[str, Any], samples: list[dict[str, Any]], output: str) -> None:
    """report.html and the samples it shows (so `curate report` can rebuild the page)."""
    ordered = sort_samples(samples)
    write_atomic(join(output, REPORT_FILE), build_html(doc, ordered, title=output).encode())
    write_atomic(join(output, SAMPLES_FILE), parquet_bytes(ordered, SAMPLES_SCHEMA))
