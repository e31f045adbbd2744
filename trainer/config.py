"""Training configuration: the paper's values as defaults, one YAML file per model size.

ALIGN (Jia et al. 2021, §4.1 and §5): LAMB with weight decay 1e-5; learning rate warmed
up linearly to 1e-3 over 10k steps, then decayed linearly to 0 at 1.2M steps; batch 16,384;
temperature learnable from 1.0; label smoothing 0.1; images resized to 346² and randomly
cropped to 289² with horizontal flips; text: a 100k WordPiece vocabulary, at most 64 tokens;
embedding 640.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

CONFIG_DIR = Path(__file__).parent / "configs"


class TrainConfigError(ValueError):
    """A training configuration that cannot be used; the message names the key."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs, with ALIGN's values as defaults."""

    # Encoders: Hugging Face AlignVisionConfig / BertConfig keyword overrides.
    image_encoder: dict[str, Any] = field(default_factory=dict)
    text_encoder: dict[str, Any] = field(default_factory=dict)
    # §5: B7's last block has 640 channels, which ALIGN pools directly (L2: 1376); a tower
    # whose width differs (B5: 512) gets a linear projection.
    embed_dim: int = 640
    # EfficientNet's TensorFlow BatchNorm decay 0.99 is PyTorch's momentum 0.01 (PyTorch's
    # momentum is the weight of the new batch; Hugging Face passes 0.99 through unchanged).
    batch_norm_momentum: float = 0.01
    # Text.
    vocab_size: int = 100_000  # §4.1: 100k WordPiece vocabulary from the training data
    max_text_len: int = 64  # §4.1
    # Images.
    resize: int = 346  # §4.1
    crop: int = 289  # §4.1
    # Loss.
    temperature_init: float = 1.0  # §4.1: learnable, converges near 1/64
    # A floor for the learned temperature, as open_clip caps its logit scale at 100: ALIGN's
    # settles near 1/64, and a temperature that runs away to 0 makes the logits overflow.
    temperature_min: float = 0.01
    label_smoothing: float = 0.1  # §4.1
    # Optimisation.
    optimizer: str = "lamb"  # §4.1; "adamw" also offered
    learning_rate: float = 1e-3  # §4.1
    weight_decay: float = 1e-5  # §4.1
    warmup_steps: int = 10_000  # §4.1
    total_steps: int = 1_200_000  # §4.1: about 12 epochs
    batch_size: int = 16_384  # §4.1: global batch, split over the devices
    # Gradient accumulation with feature caching (open_clip's accum_freq): the global batch
    # is batch_size, computed in accum_freq micro-batches per rank; the loss still contrasts
    # every pair of the global batch.
    accum_freq: int = 1
    grad_checkpointing: bool = False  # recompute activations in backward: less memory
    channels_last: bool = False  # NHWC convolutions (faster with bf16 on recent GPUs)
    # Runtime.
    seed: int = 0
    # DataLoader workers per process; "auto": the cores this process may use, shared among
    # the local ranks, less one for the training loop (decode + resize ~7 ms a sample a core).
    num_workers: int | str = "auto"
    shards_per_worker: int = 4  # shards a worker reads at once, interleaved record by record
    shuffle_buffer: int = 1_000  # per worker, raw records; the interleave mixes shards too
    log_every: int = 100
    checkpoint_every: int = 5_000
    bf16: bool = True  # autocast on GPU; CPU runs in float32

    def __post_init__(self) -> None:
        if self.optimizer not in ("lamb", "adamw"):
            raise TrainConfigError(f"optimizer: 'lamb' or 'adamw', got {self.optimizer!r}")
        for name in ("embed_dim", "vocab_size", "max_text_len", "crop", "batch_size"):
            if getattr(self, name) < 1:
                raise TrainConfigError(f"{name}: must be at least 1")
        if self.crop > self.resize:
            raise TrainConfigError("crop: must not exceed resize")
        if not 0 <= self.label_smoothing < 1:
            raise TrainConfigError("label_smoothing: must be in [0, 1)")
        if not 0 < self.temperature_min <= self.temperature_init:
            raise TrainConfigError("temperature_min: must be in (0, temperature_init]")
        if not 0 < self.batch_norm_momentum < 0.5:
            raise TrainConfigError(
                "batch_norm_momentum: PyTorch's (weight of the new batch), e.g. 0.01; "
                "TensorFlow's decay 0.99 is 0.01 here"
            )
        for name in ("accum_freq", "shards_per_worker"):
            if getattr(self, name) < 1:
                raise TrainConfigError(f"{name}: must be at least 1")
        if self.batch_size % self.accum_freq:
            raise TrainConfigError("batch_size: must be a multiple of accum_freq")
        if self.num_workers != "auto" and (
            not isinstance(self.num_workers, int) or self.num_workers < 0
        ):
            raise TrainConfigError("num_workers: 'auto' or a count >= 0")

    def workers(self, local_ranks: int = 1) -> int:
        """DataLoader workers per process: the configured count, or for "auto" this
        process's share of the usable cores less one for the training loop."""
        if isinstance(self.num_workers, int):
            return self.num_workers
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
        return max(1, (cores or os.cpu_count() or 2) // max(1, local_ranks) - 1)

    @classmethod
    def load(cls, name_or_path: str, overrides: dict[str, Any] | None = None) -> TrainConfig:
        """A named size (tiny, small, base, b7, large) or a YAML file, then overrides."""
        path = Path(name_or_path)
        if not path.suffix:
            path = CONFIG_DIR / f"{name_or_path}.yaml"
        if not path.exists():
            known = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
            raise TrainConfigError(f"config {name_or_path!r}: no such file (sizes: {known})")
        data = yaml.safe_load(path.read_text()) or {}
        data.update({k: v for k, v in (overrides or {}).items() if v is not None})
        known_keys = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known_keys)
        if unknown:
            raise TrainConfigError(f"config {path}: unknown key {unknown[0]!r}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """Plain values, as written next to the checkpoints."""
        return dataclasses.asdict(self)
