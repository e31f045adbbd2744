"""Measuring a fetched image: the decode guard, ALIGN's size rules (§3) and the hashes, in
one pure function over its bytes (run in the fetch threads or in pipelines/measure_pool.py's
child processes)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from curation import reasons
from curation.config import CurationConfig
from curation.fetch import FetchResult
from curation.record import Rejection, fast_pickling

if TYPE_CHECKING:
    from filters.evaldup import WebFeatures
from filters.image import (
    ImageHeader,
    check_size,
    image_phash,
    phash,
    read_header,
    sha256,
    stored_image,
)

_FETCH = reasons.STAGE_FETCH


@fast_pickling
@dataclasses.dataclass(frozen=True, slots=True)
class ImageInfo:
    """One fetched, measured image (keyed by its content hash), without its bytes.

    The bytes (tens of KB) travel in their own collection, keyed by hash: the joins that
    decide on an image move only this record, and the bytes are joined once, to the
    survivors (the profile had image bytes through five joins as ~1/3 of the stage).
    """

    url: str
    sha256: str
    phash: str
    width: int
    height: int
    original_width: int
    original_height: int
    image_format: str  # of the stored bytes
    original_format: str  # as fetched
    # What the eval-duplicate rule matches (filters/evaldup.py), when the run has one.
    eval_features: WebFeatures | None = None


Measured = tuple[ImageInfo, bytes] | Rejection


@dataclasses.dataclass(frozen=True)
class MeasureSettings:
    """What measuring needs of the run configuration (the measuring processes get this,
    not the whole config)."""

    max_image_pixels: int
    min_image_side: int
    max_aspect_ratio: float
    resize_mode: str
    resize_max_side: int
    jpeg_quality: int
    encode_format: str = "original"
    eval_features: bool = False  # compute what the eval-duplicate rule matches

    @classmethod
    def of(cls, cfg: CurationConfig) -> MeasureSettings:
        """The measuring view of a run configuration."""
        names = [f.name for f in dataclasses.fields(cls) if f.name != "eval_features"]
        fields = {name: getattr(cfg, name) for name in names}
        return cls(**fields, eval_features=bool(cfg.eval_images or cfg.eval_index))


# Rules decided on an image's header alone (size, aspect), before any decode: each
# (header, settings) -> Rejection or None, in order. The decode guard (read_header) runs
# before them, the hashes after; cross-image rules are in pipelines/image_rules.py.
HEADER_RULES: tuple[Callable[[ImageHeader, Any], Rejection | None], ...] = (check_size,)


def measure_bytes(url: str, data: bytes, cfg: MeasureSettings | CurationConfig) -> Measured:
    """Decode guard, size/aspect rules and hashes for one image's bytes: its record, and the
    bytes the shards store (as fetched, or re-encoded: filters/image.py stored_image)."""
    settings = cfg if isinstance(cfg, MeasureSettings) else MeasureSettings.of(cfg)
    header = read_header(data, settings.max_image_pixels)
    if isinstance(header, Rejection):
        return header
    for rule in HEADER_RULES:
        rejection = rule(header, settings)
        if rejection is not None:
            return rejection
    features = None
    if settings.eval_features:
        # One grey decode serves the pHash and the eval features (imported only here: the
        # matcher's scipy is ~0.3 s of a process's start).
        from filters.evaldup import grey_image, web_features_of

        grey = grey_image(data)
        if isinstance(grey, Rejection):
            return grey
        hashed = phash(grey)
        features = web_features_of(grey)
    else:
        hashed = image_phash(data)
        if isinstance(hashed, Rejection):
            return hashed
    kept = stored_image(
        data,
        header,
        settings.encode_format,
        settings.jpeg_quality,
        settings.resize_mode,
        settings.resize_max_side,
    )
    if isinstance(kept, Rejection):
        return kept
    stored, stored_format, width, height = kept
    info = ImageInfo(
        url=url,
        sha256=sha256(data),
        phash=hashed,
        width=width,
        height=height,
        original_width=header.width,
        original_height=header.height,
        image_format=stored_format,
        original_format=header.format,
        eval_features=features,
    )
    return info, stored


def measure(url: str, result: FetchResult, cfg: MeasureSettings | CurationConfig) -> Measured:
    """`measure_bytes` for a fetch result: a failed fetch is its own rejection."""
    if not result.ok:
        return Rejection(_FETCH, result.reason or reasons.FETCH_FAILED, result.detail)
    return measure_bytes(url, result.data, cfg)  # type: ignore[arg-type]
