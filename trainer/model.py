"""ALIGN's dual encoder: EfficientNet for images, BERT for text, both from scratch (§4.1).

The image embedding is the global average pool of EfficientNet's last block, with no head
convolution: ALIGN drops the classification head's 1x1 convolution (PAPER.md: "the 1x1 conv
in the classification head is not trained"), as Hugging Face's `AlignVisionModel` does, so
B7 pools 640 channels and L2 1376, which are the embedding dimensions themselves. A tower
whose last block has another width (B5: 512, the tiny config) goes through a linear layer to
the embedding dimension. The text embedding is BERT's [CLS] output through a linear layer to
the same dimension (§4.1). Both are L2-normalized. Hugging Face transformers provides both
encoders in plain PyTorch, built from a config, with no torchvision (which does not import
beside the CPU torch build these machines use) and no weights downloaded.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import AlignVisionConfig, BertConfig, BertModel
from transformers.models.align.modeling_align import AlignVisionEmbeddings, AlignVisionEncoder

from trainer.config import TrainConfig
from trainer.data import normalize_pixels


def _efficientnet_init(module: nn.Module) -> None:
    """EfficientNet's own initialisation, for training from scratch.

    Hugging Face initialises every convolution with N(0, 0.02), which suits loading
    pretrained weights but not training from scratch: through dozens of layers the
    activations shrink to ~1e-34 (measured on the tiny config) and nothing learns. The
    reference implementation draws convolution kernels from N(0, sqrt(2 / fan_out)).
    """
    if isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


@contextlib.contextmanager
def frozen_batch_norm_stats(module: nn.Module) -> Iterator[None]:
    """BatchNorm layers of `module` leave their running statistics alone meanwhile.

    Activation checkpointing runs a block's forward twice (once more in backward); without
    this the running mean and variance would take every batch twice.
    """
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.momentum = 0.0  # running = (1 - 0) * running + 0 * batch
    try:
        yield
    finally:
        for m, momentum in zip(norms, saved, strict=True):
            m.momentum = momentum


class ImageTower(nn.Module):
    """EfficientNet's stem and blocks (no head convolution), globally average-pooled."""

    def __init__(self, cfg: TrainConfig) -> None:
        super().__init__()
        self.config = AlignVisionConfig(
            **{
                "image_size": cfg.crop,
                **cfg.image_encoder,
                # Hugging Face hands this straight to nn.BatchNorm2d, whose momentum is the
                # new batch's weight: TensorFlow's decay 0.99 is 0.01 here (config.py).
                "batch_norm_momentum": cfg.batch_norm_momentum,
            }
        )
        self.embeddings = AlignVisionEmbeddings(self.config)
        self.blocks = AlignVisionEncoder(self.config).blocks
        self.apply(_efficientnet_init)
        for m in self.modules():
            # Hugging Face builds the expansion layers' norms without the config's momentum
            # (PyTorch's default 0.1 there): set every one.
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = cfg.batch_norm_momentum
        self.grad_checkpointing = False

    @property
    def width(self) -> int:
        """Channels of the last block: the pooled feature's width (B7: 640, L2: 1376)."""
        return self.blocks[-1].projection.project_conv.out_channels

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Images (N, 3, H, W) -> pooled features (N, width)."""
        x = self.embeddings(pixels)
        for block in self.blocks:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(
                    block,
                    x,
                    use_reentrant=False,
                    context_fn=lambda b=block: (
                        contextlib.nullcontext(),
                        frozen_batch_norm_stats(b),
                    ),
                )
            else:
                x = block(x)
        return x.mean(dim=(2, 3))


class DualEncoder(nn.Module):
    """Image and text towers into one normalized embedding space, plus the temperature."""

    def __init__(self, cfg: TrainConfig, pad_token_id: int = 0) -> None:
        super().__init__()
        self.image = ImageTower(cfg)
        self.image_projection = (
            nn.Identity()
            if self.image.width == cfg.embed_dim
            else nn.Linear(self.image.width, cfg.embed_dim)
        )
        text_cfg = BertConfig(
            **{
                "vocab_size": cfg.vocab_size,
                "max_position_embeddings": max(512, cfg.max_text_len),
                "pad_token_id": pad_token_id,
                **cfg.text_encoder,
            }
        )
        self.text = BertModel(text_cfg, add_pooling_layer=False)
        self.text_projection = nn.Linear(text_cfg.hidden_size, cfg.embed_dim)
        # The temperature is learned in log space so it stays positive (§4.1: starts at 1.0).
        self.log_temperature = nn.Parameter(torch.tensor(float(cfg.temperature_init)).log())
        self.log_temperature_min = math.log(cfg.temperature_min)
        self.set_grad_checkpointing(cfg.grad_checkpointing)

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        """Recompute activations in backward (image blocks and BERT layers): less memory,
        about a third more compute."""
        self.image.grad_checkpointing = enabled
        if enabled:
            self.text.activation_checkpointing_enable({"use_reentrant": False})
        elif self.text.is_gradient_checkpointing:
            self.text.activation_checkpointing_disable()

    @property
    def temperature(self) -> torch.Tensor:
        """The softmax temperature σ (logits are x·y / σ), never below temperature_min."""
        return self.log_temperature.clamp(min=self.log_temperature_min).exp()

    @torch.no_grad()
    def clamp_temperature(self) -> None:
        """Hold the parameter itself at the floor (open_clip clamps its logit scale in place
        after each step): below it the clamp above passes no gradient to pull it back."""
        self.log_temperature.clamp_(min=self.log_temperature_min)

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """Images (N, 3, H, W), uint8 pixels or already scaled to [-1, 1] -> L2-normalized
        embeddings (N, D)."""
        if pixels.dtype == torch.uint8:
            pixels = normalize_pixels(pixels)  # here, on the device: the loader ships uint8
        pooled = self.image(pixels)
        return nn.functional.normalize(self.image_projection(pooled).float(), dim=-1)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Token ids (N, L) -> L2-normalized embeddings (N, D), from the [CLS] position."""
        hidden = self.text(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return nn.functional.normalize(self.text_projection(hidden[:, 0]).float(), dim=-1)

    def forward(
        self, pixels: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(image embeddings, text embeddings, temperature)."""
        return (
            self.encode_image(pixels),
            self.encode_text(input_ids, attention_mask),
            self.temperature,
        )
