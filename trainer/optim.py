"""LAMB (You et al. 2020), which ALIGN trained with (§4.1), and ALIGN's learning-rate schedule."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


class Lamb(Optimizer):
    """LAMB: Adam moments, then a per-tensor trust ratio ‖w‖/‖update‖ scaling each step.

    The trust ratio applies only where weight decay does (`always_adapt=False`), as in timm
    (`always_adapt=False`), apex (`use_nvlamb=False`) and TF-Addons
    (`exclude_from_layer_adaptation`): on a tensor whose norm is 0 or tiny (a zero-initialised
    bias, the log-temperature that starts at log 1 = 0) the ratio caps the step at lr·‖w‖,
    and such a tensor never moves. The no-decay group therefore takes plain Adam steps.

    The step is written with `torch._foreach_*` ops: one kernel launch per op for the whole
    group rather than a Python loop over ~900 tensors, and no host sync (the trust ratios
    stay on the device).
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        always_adapt: bool = False,
    ) -> None:
        defaults = {
            "lr": lr,
            "betas": betas,
            "eps": eps,
            "weight_decay": weight_decay,
            "always_adapt": always_adapt,
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        """One LAMB update of every parameter that has a gradient."""
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            for p in params:
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["m"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["v"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
            ms = [self.state[p]["m"] for p in params]
            vs = [self.state[p]["v"] for p in params]
            # Every tensor of a group is stepped together, so they share the step count.
            t = self.state[params[0]]["step"]
            beta1, beta2 = group["betas"]
            torch._foreach_mul_(ms, beta1)
            torch._foreach_add_(ms, grads, alpha=1 - beta1)
            torch._foreach_mul_(vs, beta2)
            torch._foreach_addcmul_(vs, grads, grads, value=1 - beta2)
            # update = (m / (1 - β1^t)) / (sqrt(v / (1 - β2^t)) + eps)
            denom = torch._foreach_sqrt(vs)
            torch._foreach_div_(denom, math.sqrt(1 - beta2**t))
            torch._foreach_add_(denom, group["eps"])
            update = torch._foreach_div(ms, denom)
            torch._foreach_div_(update, 1 - beta1**t)
            if group["weight_decay"]:
                torch._foreach_add_(update, params, alpha=group["weight_decay"])
            if group["weight_decay"] or group["always_adapt"]:
                w_norm = torch.stack(torch._foreach_norm(params))
                u_norm = torch.stack(torch._foreach_norm(update))
                trust = torch.where(
                    (w_norm > 0) & (u_norm > 0), w_norm / u_norm, torch.ones_like(w_norm)
                )
                torch._foreach_mul_(update, list(trust.unbind()))
            torch._foreach_add_(params, update, alpha=-group["lr"])
        return loss


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on weight matrices and kernels only; none on biases, norms, temperature
    (and so, in LAMB, no trust ratio on those either)."""
    decay, no_decay = [], []
    for _, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def make_optimizer(model: torch.nn.Module, name: str, lr: float, weight_decay: float) -> Optimizer:
    """LAMB (the paper's) or AdamW."""
    groups = param_groups(model, weight_decay)
    if name == "lamb":
        return Lamb(groups, lr=lr)
    return torch.optim.AdamW(groups, lr=lr)


def warmup_linear_decay(optimizer: Optimizer, warmup: int, total: int) -> LambdaLR:
    """Linear warm-up from 0 over `warmup` steps, then linear decay to 0 at `total` (§4.1)."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        return max(0.0, (total - step) / max(1, total - warmup))

    return LambdaLR(optimizer, factor)
