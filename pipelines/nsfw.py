"""open_nsfw inside Beam: a ModelHandler for RunInference (the model loads once per worker
and runs in batches).

Imported only when the NSFW rule is on, and Beam's RunInference module is imported without
its ModelManager (see `_inference_base`).
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from types import ModuleType
from typing import Any

from curation.record import Rejection
from filters.image import decode
from filters.nsfw import OpenNsfwScorer

try:
    import resource
except ImportError:  # not on Windows; Beam then goes without memory metrics itself
    resource = None  # type: ignore[assignment]

_BASE = "apache_beam.ml.inference.base"
_MODEL_MANAGER = "apache_beam.ml.inference.model_manager"


def _inference_base() -> ModuleType:
    """Beam's RunInference module, imported without the torch it does not need here.

    Beam 2.77's `base` imports its ModelManager whenever it can, and that module imports
    torch and scipy: 2.2-2.5 s of every run's start when the trainer's extra is installed
    (`python -X importtime`). Only `use_model_manager=True` uses it, which this handler does
    not set, and that path imports the module itself when `base` holds None for it. So the
    import runs with the ModelManager module marked absent (an ImportError that `base`
    catches), and the `resource` module, which sits in the same try block and serves
    RunInference's memory metrics, is put back.

    This helps the process that builds and runs the pipeline (the local runners' one
    process). A worker that unpickles the RunInference step imports Beam's module first, as
    Beam does, torch included: 2 s once per worker process.
    """
    if _BASE in sys.modules:  # imported already (or being imported: this waits for it)
        return importlib.import_module(_BASE)
    blocked = _MODEL_MANAGER not in sys.modules
    if blocked:
        sys.modules[_MODEL_MANAGER] = None  # type: ignore[assignment]
    try:
        base = importlib.import_module(_BASE)
    finally:
        # Only the marker is removed: a later import of the module itself works as usual.
        if blocked and _MODEL_MANAGER in sys.modules and sys.modules[_MODEL_MANAGER] is None:
            del sys.modules[_MODEL_MANAGER]
    if resource is not None and getattr(base, "resource", resource) is None:
        base.resource = resource
    return base


_base = _inference_base()
KeyedModelHandler = _base.KeyedModelHandler
ModelHandler = _base.ModelHandler
PredictionResult = _base.PredictionResult
RunInference = _base.RunInference


class NsfwModelHandler(ModelHandler[bytes, float, Any]):
    """Scores image bytes with the NSFW scorer; a thumbnail decode feeds the model."""

    def __init__(self, threads: int = 1) -> None:
        super().__init__()
        if threads < 0:
            raise ValueError(f"NSFW threads must be settled (>= 0) by the run plan, got {threads}")
        self.threads = threads  # 0: one per core

    def load_model(self) -> Any:
        threads = self.threads
        return _Model(OpenNsfwScorer(threads=threads), threads or os.cpu_count() or 1)

    def run_inference(
        self, batch: Sequence[bytes], model: Any, inference_args: dict[str, Any] | None = None
    ) -> Iterable[PredictionResult]:
        images = model.decode_all(batch)
        usable = [im for im in images if not isinstance(im, Rejection)]
        scores = iter(model.scorer.score_batch(usable))
        for data, im in zip(batch, images, strict=True):
            # An image that decoded a moment ago and not now scores 1.0: refuse, never keep.
            score = 1.0 if isinstance(im, Rejection) else next(scores)
            yield PredictionResult(data, score)

    def batch_elements_kwargs(self) -> dict[str, Any]:
        return {"min_batch_size": 1, "max_batch_size": 16}


class _Model:
    """The scorer, and a pool that decodes a batch on `threads` threads: Pillow's decoder
    releases the GIL, and with one thread the other cores idled while the model waited.
    (A class, not a tuple: Beam's Shared holds the model by weak reference.)"""

    def __init__(self, scorer: OpenNsfwScorer, threads: int) -> None:
        self.scorer = scorer
        self.pool = ThreadPoolExecutor(max_workers=threads) if threads > 1 else None

    def decode_all(self, batch: Sequence[bytes]) -> list[Any]:
        if self.pool is None:
            return [decode(data) for data in batch]
        return list(self.pool.map(decode, batch))


def score_nsfw(threads: int) -> RunInference:
    """((key, image bytes)) -> (key, PredictionResult(bytes, NSFW score))."""
    return RunInference(KeyedModelHandler(NsfwModelHandler(threads)))
