"""Training configuration: the paper's values as defaults, one YAML file per model size.

ALIGN (Jia et al. 2021, §4.1 and §5): LAMB with weight decay 1e-5; learning rate warmed
up linearly to 1e-3 over 10k steps, then decayed linearly to 0 at 1.2M steps; batch 16,384;
temperature learnable from 1.0; label smoothing 0.1; images resized to 346² and randomly
cropped to 289² with horizontal flips; text: a 100k WordPiece vocabulary, at most 64 tokens;
embedding 640.
"""

from __future__ import annotations

import dataclasses
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

    # Encoders: Hugging Face EfficientNetConfig / BertConfig keyword overrides.
    image_encoder: dict[str, Any] = field(default_factory=dict)
    text_encoder: dict[str, Any] = field(default_factory=dict)
    embed_dim: int = 640  # §5, Table 8 baseline
    # Text.
    vocab_size: int = 100_000  # §4.1: 100k WordPiece vocabulary from the training data
    max_text_len: int = 64  # §4.1
    # Images.
    resize: int = 346  # §4.1
    crop: int = 289  # §4.1
    # Loss.
    temperature_init: float = 1.0  # §4.1: learnable, converges near 1/64
    label_smoothing: float = 0.1  # §4.1
    # Optimisation.
    optimizer: str = "lamb"  # §4.1; "adamw" also offered
    learning_rate: float = 1e-3  # §4.1
    weight_decay: float = 1e-5  # §4.1
    warmup_steps: int = 10_000  # §4.1
    total_steps: int = 1_200_000  # §4.1: about 12 epochs
    batch_size: int = 16_384  # §4.1: global batch, split over the devices
    # Runtime.
    seed: int = 0
    num_workers: int = 4
    shuffle_buffer: int = 10_000
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
