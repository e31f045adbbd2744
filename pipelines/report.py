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
from curation.record import BlobRef, Candidate, image_size
from curation.report import (
    BLURRED_REASONS,
    REPORT_FILE,
    SAMPLES_FILE,
    SAMPLES_SCHEMA,
    build_html,
    thumbnail,
)
from curation.shards import parquet_bytes
from curation.stats import Distributions, Funnel
from filters.tokenize import tokenize
from pipelines.image_read import GOOD, ReadImages
from pipelines.image_rules import EvalIndexSource
from pipelines.io import join, write_atomic
from pipelines.spool import read_blobs

KEPT_SAMPLES = 24
REJECTED_SAMPLES = 8
TOP_HOSTS = 20
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


class CollectStatistics(beam.PTransform):
    """Kept and rejected records -> (Distributions, top hosts) singletons."""

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
        )
        return dist, hosts


def _rev(s: str) -> tuple[int, ...]:
    return tuple(-ord(ch) for ch in s)


def stats_document(
    funnel: Funnel, dist: Distributions, hosts: list[tuple[str, int]]
) -> dict[str, Any]:
    """stats.json: the funnel, the distributions and the top hosts."""
    doc = funnel.to_json_dict()
    doc["distributions"] = dist.to_json_dict()
    doc["top_hosts"] = {"kept": [list(h) for h in hosts]}
    return doc


def _sample_row(group: str, c: Candidate, detail: str, data: bytes | None) -> dict[str, Any]:
    return {
        "group": group,
        "uid": c.uid,
        "alt_text": c.alt_text,
        "image_url": c.image_url,
        "detail": detail,
        "thumbnail": thumbnail(data, blur=group in BLURRED_REASONS) if data else None,
    }


class ReportSamples(beam.PTransform):
    """A fixed-size sample of kept records and of each image-stage reject reason, with
    thumbnails. The sample is the smallest uids (uids are hashes: a uniform sample), and the
    rejected images, which the records no longer carry, are read or fetched once more."""

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
        return (
            (kept_rows, rejected_rows)
            | "All samples" >> beam.Flatten()
            | ("Sample list" >> beam.combiners.ToList())
        )


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
        _sample_row("kept", c, "", found[c.image] if isinstance(c.image, BlobRef) else c.image)
        for c in candidates
    ]


def _rejected_rows(item) -> Iterable[dict[str, Any]]:
    _, joined = item
    result = joined["fetched"][0] if joined["fetched"] else None
    data = result.data if result is not None and result.ok else None
    for r in joined["sample"]:
        yield _sample_row(r.rejection.reason, r.candidate, r.rejection.detail, data)


def sort_samples(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Samples in a fixed order: kept first, then by reason, each by uid."""
    return sorted(samples, key=lambda s: (s["group"] != "kept", s["group"], s["uid"]))


def write_report(doc: dict[str, Any], samples: list[dict[str, Any]], output: str) -> None:
    """report.html and the samples it shows (so `curate report` can rebuild the page)."""
    ordered = sort_samples(samples)
    write_atomic(join(output, REPORT_FILE), build_html(doc, ordered, title=output).encode())
    write_atomic(join(output, SAMPLES_FILE), parquet_bytes(ordered, SAMPLES_SCHEMA))
