"""GPU training throughput: a realistic configuration for a fixed number of steps.

    python bench/bench_trainer_gpu.py                       # EfficientNet-B3 + BERT-base, bf16
    python bench/bench_trainer_gpu.py --device cpu --config tiny --steps 3 --batch 8   # smoke

Finds the largest batch that fits (doubling from --batch until out of memory, unless
--fixed-batch), then times --steps optimisation steps on synthetic inputs of the real shapes
(289² images, 64-token texts) and prints samples/s, the median step time and peak memory.
It needs only this project, torch and transformers: no data, no network. Runs in about three
minutes on one GPU. No GPU was available when it was written: its figures are not yet in
BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from trainer.config import TrainConfig
from trainer.loss import ContrastiveLoss
from trainer.model import DualEncoder
from trainer.optim import make_optimizer, warmup_linear_decay
from trainer.train import train_step

B3_BERT_BASE = {
    "image_encoder": {"width_coefficient": 1.2, "depth_coefficient": 1.4},
    "text_encoder": {
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
    },
    "vocab_size": 100_000,
}


def _batch(n: int, cfg: TrainConfig, device: torch.device) -> dict[str, torch.Tensor]:
    return {
        "image": torch.randn(n, 3, cfg.crop, cfg.crop, device=device),
        "input_ids": torch.randint(5, cfg.vocab_size, (n, cfg.max_text_len), device=device),
        "attention_mask": torch.ones(n, cfg.max_text_len, dtype=torch.long, device=device),
    }


def _steps(cfg: TrainConfig, device: torch.device, batch: int, steps: int) -> list[float]:
    model = DualEncoder(cfg).to(device)
    opt = make_optimizer(model, cfg.optimizer, cfg.learning_rate, cfg.weight_decay)
    sched = warmup_linear_decay(opt, cfg.warmup_steps, cfg.total_steps)
    loss_fn = ContrastiveLoss(cfg.label_smoothing, gather=False)
    data = _batch(batch, cfg, device)
    times = []
    for _ in range(steps + 2):  # two warm-up steps
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        train_step(model, loss_fn, data, opt, sched, device, cfg.bf16)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times[2:]


def largest_batch(cfg: TrainConfig, device: torch.device, start: int) -> int:
    """Double the batch until a step runs out of memory; return the last that fitted."""
    fitted, batch = 0, start
    while batch <= 65_536:
        try:
            _steps(cfg, device, batch, 1)
            fitted, batch = batch, batch * 2
        except torch.OutOfMemoryError:
            break
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
    if not fitted:
        raise SystemExit(f"batch {start} does not fit")
    return fitted


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=None, help="a trainer config (default: B3 + BERT-base)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=64, help="first batch tried")
    ap.add_argument("--fixed-batch", action="store_true", help="do not search for the largest")
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    cfg = TrainConfig.load(args.config) if args.config else TrainConfig(**B3_BERT_BASE)
    device = torch.device(args.device)
    batch = args.batch if args.fixed_batch else largest_batch(cfg, device, args.batch)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = _steps(cfg, device, batch, args.steps)
    step = statistics.median(times)
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "config": args.config or "B3 + BERT-base",
        "batch": batch,
        "bf16": cfg.bf16 and device.type == "cuda",
        "median_step_s": step,
        "samples_per_s": batch / step,
        "peak_memory_gib": (
            torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
        ),
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
