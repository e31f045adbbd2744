"""GPU training throughput: a realistic configuration for a fixed number of steps.

    python bench/bench_trainer_gpu.py                       # EfficientNet-B3 + BERT-base, bf16
    python bench/bench_trainer_gpu.py --device cpu --config tiny --steps 3 --batch 8   # smoke
    python bench/bench_trainer_gpu.py --end-to-end [--data SHARDS]  # loader included

With --end-to-end the steps are fed by the real data path (shards -> DataLoader workers
decoding JPEGs, uint8 batches in pinned memory -> normalised on the device), from --data or
from synthetic JPEG shards written to a temporary folder, and it reports the loader alone
(samples/s with no model) beside the whole loop: which of the two bounds a GPU.

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
import tempfile
import time
from pathlib import Path

import torch

from trainer.config import TrainConfig
from trainer.loss import ContrastiveLoss
from trainer.model import DualEncoder
from trainer.optim import make_optimizer, warmup_linear_decay
from trainer.train import train_step

SYNTHETIC_SIDE = 400  # px: a typical curated image (the shards store images as fetched)

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


def synthetic_shards(folder: Path, shards: int, per_shard: int) -> list[str]:
    """Parquet shards of random-texture JPEGs with captions, like curated ones."""
    import io

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for s in range(shards):
        rows = []
        for i in range(per_shard):
            noise = rng.integers(0, 256, (SYNTHETIC_SIDE // 8, SYNTHETIC_SIDE // 8, 3), np.uint8)
            im = Image.fromarray(noise).resize((SYNTHETIC_SIDE, SYNTHETIC_SIDE * 3 // 4))
            buf = io.BytesIO()
            im.save(buf, "JPEG", quality=90)
            rows.append(
                {"uid": f"{s:04d}{i:06d}", "image": buf.getvalue(), "alt_text": f"a photo {i}"}
            )
        path = folder / f"{s:05d}.parquet"
        pq.write_table(pa.Table.from_pylist(rows), path)
        paths.append(str(path))
    return paths


def end_to_end(
    cfg: TrainConfig, device: torch.device, batch: int, steps: int, paths: list[str]
) -> dict[str, float]:
    """Samples/s of the loader alone and of loader + step, the trainer's own data path."""
    from torch.utils.data import DataLoader

    from trainer.data import ShardDataset, collate

    def tokenize(caption: str) -> dict[str, torch.Tensor]:
        ids = torch.randint(5, cfg.vocab_size, (cfg.max_text_len,))
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    workers = min(cfg.workers(), len(paths))
    dataset = ShardDataset(
        paths,
        tokenize=tokenize,
        resize=cfg.resize,
        crop=cfg.crop,
        shuffle_buffer=cfg.shuffle_buffer,
        epochs=None,
        shards_per_worker=cfg.shards_per_worker,
    )
    loader = DataLoader(
        dataset,
        batch_size=batch,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=device.type == "cuda",
    )
    it = iter(loader)
    for _ in range(2):  # workers started, buffers filled
        next(it)
    start = time.perf_counter()
    for _ in range(steps):
        next(it)["batch"]["image"].to(device, non_blocking=True)
    loader_rate = steps * batch / (time.perf_counter() - start)
    model = DualEncoder(cfg).to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    opt = make_optimizer(model, cfg.optimizer, cfg.learning_rate, cfg.weight_decay)
    sched = warmup_linear_decay(opt, cfg.warmup_steps, cfg.total_steps)
    loss_fn = ContrastiveLoss(cfg.label_smoothing, gather=False)

    def step() -> None:
        b = next(it)["batch"]
        train_step(
            model, loss_fn, b, opt, sched, device, cfg.bf16, cfg.accum_freq, cfg.channels_last
        )

    for _ in range(2):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return {
        "workers": workers,
        "loader_samples_per_s": loader_rate,
        "end_to_end_samples_per_s": steps * batch / (time.perf_counter() - start),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=None, help="a trainer config (default: B3 + BERT-base)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=64, help="first batch tried")
    ap.add_argument("--fixed-batch", action="store_true", help="do not search for the largest")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--end-to-end", action="store_true", help="feed the steps from shards")
    ap.add_argument("--data", nargs="*", help="shards for --end-to-end (default: synthetic)")
    ap.add_argument("--workers", help="DataLoader workers (default: auto, the cores less one)")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--grad-checkpointing", action="store_true")
    args = ap.parse_args()
    overrides = {
        "channels_last": args.channels_last or None,
        "grad_checkpointing": args.grad_checkpointing or None,
        "num_workers": (
            None
            if args.workers is None
            else "auto"
            if args.workers == "auto"
            else int(args.workers)
        ),
    }
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if args.config:
        cfg = TrainConfig.load(args.config, overrides)
    else:
        cfg = TrainConfig(**{**B3_BERT_BASE, **overrides})
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
    if args.end_to_end:
        with tempfile.TemporaryDirectory() as tmp:
            paths = args.data or synthetic_shards(Path(tmp), max(2, cfg.workers()), 4 * batch)
            result.update(end_to_end(cfg, device, batch, args.steps, paths))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
