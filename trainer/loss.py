"""ALIGN's normalized softmax loss (§3.2): image→text plus text→image, in-batch negatives.

The distributed policy lives in the constructor, as in open_clip's ClipLoss: with
`gather=True` under torch.distributed, embeddings from every rank are gathered with their
gradients, so the negatives span the global batch (ALIGN gathers across all 1024 cores).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


def _gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x), dim=0)


class ContrastiveLoss(nn.Module):
    """L = L_i2t + L_t2i with logits x·yᵀ/σ and label smoothing (ALIGN §3.2, §4.1)."""

    def __init__(self, label_smoothing: float = 0.1, gather: bool = True) -> None:
        super().__init__()
        self.label_smoothing = label_smoothing
        self.gather = gather

    def forward(
        self, image: torch.Tensor, text: torch.Tensor, temperature: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Named losses: 'i2t', 't2i' and their sum 'loss'."""
        offset = 0
        all_image, all_text = image, text
        if self.gather and dist.is_available() and dist.is_initialized():
            all_image, all_text = _gather_with_grad(image), _gather_with_grad(text)
            offset = dist.get_rank() * image.shape[0]
        # Each rank scores its own rows against the global batch.
        labels = torch.arange(image.shape[0], device=image.device) + offset
        logits_i2t = image @ all_text.T / temperature
        logits_t2i = text @ all_image.T / temperature
        ce = nn.functional.cross_entropy
        i2t = ce(logits_i2t, labels, label_smoothing=self.label_smoothing)
        t2i = ce(logits_t2i, labels, label_smoothing=self.label_smoothing)
        return {"loss": i2t + t2i, "i2t": i2t, "t2i": t2i}
