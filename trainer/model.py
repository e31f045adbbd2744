"""ALIGN's dual encoder: EfficientNet for images, BERT for text, both from scratch (§4.1).

The image embedding is EfficientNet's globally pooled feature, through a linear layer when
its width differs from the embedding dimension (Hugging Face's EfficientNet ties its top
convolution to 1280 x width); the text embedding is BERT's [CLS] output through a linear
layer to the same dimension (§4.1). Both are L2-normalized. Hugging
Face transformers provides both encoders in plain PyTorch, built from a config, with no
torchvision (which does not import beside the CPU torch build these machines use) and no
weights downloaded.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import BertConfig, BertModel, EfficientNetConfig, EfficientNetModel
from transformers.models.efficientnet.modeling_efficientnet import round_filters

from trainer.config import TrainConfig


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


class DualEncoder(nn.Module):
    """Image and text towers into one normalized embedding space, plus the temperature."""

    def __init__(self, cfg: TrainConfig, pad_token_id: int = 0) -> None:
        super().__init__()
        image_cfg = EfficientNetConfig(**{"image_size": cfg.crop, **cfg.image_encoder})
        # The top convolution's width is 1280 scaled by the width coefficient; Hugging Face
        # needs hidden_dim to match it.
        image_cfg.hidden_dim = round_filters(image_cfg, 1280)
        self.image = EfficientNetModel(image_cfg)
        self.image.apply(_efficientnet_init)
        self.image_projection = (
            nn.Identity()
            if image_cfg.hidden_dim == cfg.embed_dim
            else nn.Linear(image_cfg.hidden_dim, cfg.embed_dim)
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

    @property
    def temperature(self) -> torch.Tensor:
        """The softmax temperature σ (logits are x·y / σ)."""
        return self.log_temperature.exp()

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """Images (N, 3, H, W) -> L2-normalized embeddings (N, D)."""
        pooled = self.image(pixel_values=pixels).pooler_output.flatten(1)
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
