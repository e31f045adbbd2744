"""The report's samples: a uniform sample (the smallest uids) of kept records, of each
image-rule reject (with thumbnails, the rejected images read once more) and of each text
reason (alt-texts); a duplicate gets the image it copies beside it."""

from __future__ import annotations

import io
from collections.abc import Iterable
from typing import Any

import apache_beam as beam

from curation import reasons
from curation.config import CurationConfig
from curation.record import BlobRef, Candidate, Rejected
from curation.report import BLURRED_REASONS, preview
from pipelines.image_read import GOOD, ReadImages
from pipelines.image_rules import EvalIndexSource, eval_name
from pipelines.spool import read_blobs

KEPT_SAMPLES = 24
REJECTED_SAMPLES = 8
# Rejected alt-texts per text reason: a table row is cheaper to read than a thumbnail.
TEXT_SAMPLES = 12
# Image-stage reasons whose gallery is worth a second look at the image.
PREVIEW_REASONS = (
    reasons.IMAGE_TOO_SMALL,
    reasons.IMAGE_ASPECT_RATIO,
    reasons.NEAR_DUPLICATE,
    reasons.EVAL_DUPLICATE,
    reasons.NSFW,
)


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
            name = eval_name(row["detail"])
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
