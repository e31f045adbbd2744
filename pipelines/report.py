"""Statistics and report: distributions, top hosts and sample galleries, composed in Beam.

The decisions and the HTML live in curation/ (stats.py, report.py); this module gathers
their inputs with combiners that keep a bounded amount per worker.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

import apache_beam as beam

from curation import reasons
from curation.config import CurationConfig
from curation.record import BlobRef, Candidate, Rejected, Rejection, image_size
from curation.report import (
    BLURRED_REASONS,
    REPORT_FILE,
    SAMPLES_FILE,
    SAMPLES_SCHEMA,
    build_html,
    preview,
    sort_samples,
)
from curation.shards import parquet_bytes
from curation.stats import Distributions, Funnel, TopTable
from filters.dataset import text_key
from filters.tokenize import tokenize
from pipelines.image_read import GOOD, ReadImages
from pipelines.image_rules import EvalIndexSource
from pipelines.io import join, write_atomic
from pipelines.spool import read_blobs

KEPT_SAMPLES = 24
REJECTED_SAMPLES = 8
# Rejected alt-texts per text reason: a table row is cheaper to read than a thumbnail.
TEXT_SAMPLES = 12
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
# Image-stage reasons whose gallery is worth a second look at the image.
PREVIEW_REASONS = (
    reasons.IMAGE_TOO_SMALL,
    reasons.IMAGE_ASPECT_RATIO,
    reasons.NEAR_DUPLICATE,
    reasons.EVAL_DUPLICATE,
    reasons.NSFW,
)


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


def _sample_row(
    group: str, c: Candidate, detail: str, data: bytes | None, missing: str = ""
) -> dict[str, Any]:
    """A row of report_samples.parquet; `missing` says why there are no bytes, if so."""
    thumb, note = preview(data, blur=group in BLURRED_REASONS) if data else (None, missing)
    return {
        "group": group,
        "uid": c.uid,
        "alt_text": c.alt_text,
        "image_url": c.image_url,
        "detail": detail,
        "thumbnail": thumb,
        "note": note or None,
    }


def _text_row(r: Rejected) -> dict[str, Any]:
    # A text reason's sample is its alt-text: no image is read for it.
    return _sample_row(r.rejection.reason, r.candidate, r.rejection.detail, None)


class TextSamples(beam.PTransform):
    """Rejected records -> sample rows of each text reason's alt-texts (the smallest uids)."""

    def expand(self, rejected):
        return (
            rejected
            | "Text rejects" >> beam.Filter(lambda r: r.rejection.stage == reasons.STAGE_TEXT)
            | "By text reason" >> beam.Map(lambda r: (r.rejection.reason, r))
            | "Text sample"
            >> beam.combiners.Top.SmallestPerKey(TEXT_SAMPLES, key=lambda r: r.candidate.uid)
            | "Each text" >> beam.FlatMap(lambda kv: kv[1])
            | "Text rows" >> beam.Map(_text_row)
        )


class ReportSamples(beam.PTransform):
    """A fixed-size sample of kept records, of each image-stage reject reason (with
    thumbnails) and of each text reason (alt-texts). The sample is the smallest uids (uids
    are hashes: a uniform sample), and the rejected images, which the records no longer
    carry, are read or fetched once more; a near-duplicate gets the kept image it copies."""

    def __init__(self, rejected, archives: list[str], cfg: CurationConfig) -> None:
        super().__init__()
        self.rejected = rejected
        self.archives = archives
        self.cfg = cfg

    def expand(self, kept):
        kept_rows = (
            kept
            | "Kept sample" >> beam.combiners.Top.Smallest(KEPT_SAMPLES, key=lambda c: c.uid)
            | "Kept previews" >> beam.FlatMap(_kept_previews)
        )
        text_rows = self.rejected | "Text samples" >> TextSamples()
        picked = (
            self.rejected
            | "Image rejects"
            >> beam.Filter(
                lambda r: (
                    r.rejection.stage == reasons.STAGE_IMAGE
                    and r.rejection.reason in PREVIEW_REASONS
                )
            )
            | "By reason" >> beam.Map(lambda r: (r.rejection.reason, r))
            | "Rejected sample"
            >> beam.combiners.Top.SmallestPerKey(REJECTED_SAMPLES, key=lambda r: r.candidate.uid)
            | "Each" >> beam.FlatMap(lambda kv: kv[1])
        )
        urls = (
            picked
            | "Sample urls" >> beam.Map(lambda r: r.candidate.image_url)
            | ("Distinct urls" >> beam.Distinct())
        )
        # A preview that fails to fetch is only a missing thumbnail: its dead letter is dropped.
        fetched = (urls | "Fetch again" >> ReadImages(self.archives, self.cfg))[GOOD]
        rejected_rows = (
            {
                "sample": picked | "Key sample" >> beam.Map(lambda r: (r.candidate.image_url, r)),
                "fetched": fetched,
            }
            | "Join previews" >> beam.CoGroupByKey()
            | "Rejected previews" >> beam.FlatMap(_rejected_rows)
        )
        if self.cfg.eval_images or self.cfg.eval_index:
            source = EvalIndexSource(self.cfg.eval_index, self.cfg.eval_images)
            rejected_rows = rejected_rows | "Eval matches" >> beam.ParDo(AddEvalMatchFn(source))
        if self.cfg.near_dup_distance >= 0:
            rejected_rows = rejected_rows | "Kept matches" >> AddKeptMatches(kept, picked)
        return (
            (kept_rows, text_rows, rejected_rows)
            | "All samples" >> beam.Flatten()
            | ("Sample list" >> beam.combiners.ToList())
        )


class AddKeptMatches(beam.PTransform):
    """Sample rows of near-duplicates get the kept image each copies: the ledger's detail is
    that image's uid, read from the kept records (their bytes or spool refs)."""

    def __init__(self, kept, picked) -> None:
        super().__init__()
        self.kept = kept
        self.picked = picked

    def expand(self, rows):
        wanted = (
            self.picked
            | "Near duplicate sample"
            >> beam.Filter(lambda r: r.rejection.reason == reasons.NEAR_DUPLICATE)
            | "Copied uid" >> beam.Map(lambda r: r.rejection.detail)
        )
        # At most REJECTED_SAMPLES uids: a side input every worker can hold.
        matches = (
            self.kept
            | "Copied kept"
            >> beam.Filter(lambda c, uids: c.uid in uids, uids=beam.pvalue.AsList(wanted))
            | "Copied list" >> beam.combiners.ToList()
            | "Copied previews" >> beam.FlatMap(_match_previews)
        )
        return rows | "With kept match" >> beam.Map(
            _with_kept_match, matches=beam.pvalue.AsDict(matches)
        )


def _match_previews(candidates: list[Candidate]) -> list[tuple[str, bytes]]:
    found = read_blobs(c.image for c in candidates if isinstance(c.image, BlobRef))
    out = []
    for c in candidates:
        data = found[c.image] if isinstance(c.image, BlobRef) else c.image
        thumb = preview(data)[0] if data else None
        if thumb is not None:
            out.append((c.uid, thumb))
    return out


def _with_kept_match(row: dict[str, Any], matches: dict[str, bytes]) -> dict[str, Any]:
    if row["group"] != reasons.NEAR_DUPLICATE:
        return row
    match = matches.get(row["detail"])
    if match is not None:
        return {**row, "match_thumbnail": match}
    # The rule keeps an earlier run's image over this run's (--retry-failed), and a kept
    # image may still fall to a later rule (nsfw): then there is none to show.
    why = "the image it duplicates is not among this run's kept records"
    return {**row, "note": f"{row['note']}; {why}" if row.get("note") else why}


class AddEvalMatchFn(beam.DoFn):
    """An eval_duplicate sample row gets the eval image it matched, as the index keeps it."""

    def __init__(self, source: EvalIndexSource) -> None:
        self.source = source

    def setup(self) -> None:
        self.index = self.source.shared()

    def process(self, row: dict[str, Any]) -> Iterable[dict[str, Any]]:
        if row["group"] == reasons.EVAL_DUPLICATE:
            name = row["detail"].rsplit(" (score ", 1)[0]
            grey = self.index.thumbnail(name)
            if grey is not None:
                side = 2 * grey.width  # shown at the size of the rejected image's preview
                buf = io.BytesIO()
                grey.resize((side, side)).save(buf, "JPEG", quality=85)
                row = {**row, "match_thumbnail": buf.getvalue()}
        yield row


def _kept_previews(candidates: list[Candidate]) -> list[dict[str, Any]]:
    # Spooled images are read in one pass (each spool file opened once, not once an image).
    found = read_blobs(c.image for c in candidates if isinstance(c.image, BlobRef))
    return [
        _sample_row(
            "kept",
            c,
            "",
            found[c.image] if isinstance(c.image, BlobRef) else c.image,
            "no preview: the record holds no image",
        )
        for c in candidates
    ]


def _rejected_rows(item) -> Iterable[dict[str, Any]]:
    _, joined = item
    result = joined["fetched"][0] if joined["fetched"] else None
    data = result.data if result is not None and result.ok else None
    for r in joined["sample"]:
        yield _sample_row(
            r.rejection.reason,
            r.candidate,
            r.rejection.detail,
            data,
            "no preview: the image could not be read again",
        )


def write_report(doc: dict[str, Any], samples: list[dict[str, Any]], output: str) -> None:
    """report.html and the samples it shows (so `curate report` can rebuild the page)."""
    ordered = sort_samples(samples)
    write_atomic(join(output, REPORT_FILE), build_html(doc, ordered, title=output).encode())
    write_atomic(join(output, SAMPLES_FILE), parquet_bytes(ordered, SAMPLES_SCHEMA))
