"""The training loop: data, model, loss, LAMB, checkpoints, metrics.jsonl; one GPU, many
(torchrun + DistributedDataParallel), or a CPU for the tiny config.

The step returns (losses, report) and the loop stays short (open_clip's habit). Decode
failures in the data are counted per step and written to metrics.jsonl, never skipped
silently.
"""

from __future__ import annotations

import glob
import json
import os
import random
import time
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from trainer.config import TrainConfig
from trainer.data import ShardDataset, collate, iter_records
from trainer.loss import ContrastiveLoss
from trainer.model import DualEncoder
from trainer.optim import make_optimizer, warmup_linear_decay
from trainer.tokenizer import TextEncoder, train_wordpiece

CHECKPOINT = "checkpoint.pt"
TOKENIZER = "tokenizer.json"
METRICS = "metrics.jsonl"


def shard_paths(data: list[str]) -> list[str]:
    """Shard files named by paths, globs or folders (Parquet, tar, TFRecord)."""
    found: list[str] = []
    for item in data:
        if os.path.isdir(item):
            for suffix in ("*.parquet", "*.tar", "*.tfrecord"):
                found.extend(glob.glob(os.path.join(item, suffix)))
        else:
            found.extend(glob.glob(item))
    if not found:
        raise FileNotFoundError(f"no shards in {data}")
    return sorted(set(found))


def _distributed() -> tuple[int, int, torch.device]:
    """(rank, world size, device); torchrun sets the environment this reads."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local)
    return rank, world, torch.device("cpu")


def build_tokenizer(paths: list[str], cfg: TrainConfig, output: Path, rank: int) -> TextEncoder:
    """Train the WordPiece vocabulary on the shards' captions (rank 0), or load it."""
    path = output / TOKENIZER
    if rank == 0 and not path.exists():
        captions = (caption for p in paths for _, _, caption in iter_records(p))
        encoder = TextEncoder(train_wordpiece(captions, cfg.vocab_size), cfg.max_text_len)
        tmp = path.with_suffix(".tmp")
        encoder.save(tmp)
        tmp.replace(path)
    if dist.is_initialized():
        dist.barrier()
    return TextEncoder.load(path, cfg.max_text_len)


def train_step(
    model: torch.nn.Module,
    loss_fn: ContrastiveLoss,
    batch: dict[str, Any],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    device: torch.device,
    bf16: bool,
) -> tuple[dict[str, float], dict[str, float]]:
    """One optimisation step: (named losses, report)."""
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if bf16 and device.type == "cuda"
        else nullcontext()
    )
    pixels = batch["image"].to(device, non_blocking=True)
    ids = batch["input_ids"].to(device, non_blocking=True)
    mask = batch["attention_mask"].to(device, non_blocking=True)
    with autocast:
        image, text, temperature = model(pixels, ids, mask)
        losses = loss_fn(image, text, temperature)
    optimizer.zero_grad(set_to_none=True)
    losses["loss"].backward()
    optimizer.step()
    scheduler.step()
    report = {"temperature": float(temperature.detach()), "lr": scheduler.get_last_lr()[0]}
    return {k: float(v.detach()) for k, v in losses.items()}, report


def _batches(loader: DataLoader) -> Iterator[dict[str, Any]]:
    while True:  # epochs until the step budget is spent
        yield from loader


def save_checkpoint(
    path: Path, model, optimizer, scheduler, step: int, cfg: TrainConfig, batches: int
) -> None:
    """Model, optimizer, schedule, random state and data position, written atomically."""
    module = model.module if isinstance(model, DistributedDataParallel) else model
    state = {
        "step": step,
        "batches": batches,  # loader batches consumed: where the data stream stands
        "model": module.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "config": cfg.to_dict(),
        "rng": {"torch": torch.get_rng_state(), "python": random.getstate()},
    }
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def train(cfg: TrainConfig, data: list[str], steps: int, output: Path) -> dict[str, float]:
    """Train for `steps` steps (resuming from output/checkpoint.pt if present)."""
    rank, world, device = _distributed()
    torch.manual_seed(cfg.seed + rank)
    random.seed(cfg.seed + rank)
    output.mkdir(parents=True, exist_ok=True)
    paths = shard_paths(data)
    readers = world * max(1, cfg.num_workers)
    if world > 1 and len(paths) < readers:
        # Each shard goes to one (rank, worker): a rank without shards would never step, and
        # the others would wait for it forever in the gradient all-reduce.
        raise FileNotFoundError(
            f"{len(paths)} shards for {world} ranks x {max(1, cfg.num_workers)} workers: "
            "write more, smaller shards (curate run --shard-size)"
        )
    text = build_tokenizer(paths, cfg, output, rank)
    cfg_vocab = min(cfg.vocab_size, text.vocab_size)
    model = DualEncoder(TrainConfig(**{**cfg.to_dict(), "vocab_size": cfg_vocab}), text.pad_id)
    model.to(device)
    optimizer = make_optimizer(model, cfg.optimizer, cfg.learning_rate, cfg.weight_decay)
    scheduler = warmup_linear_decay(optimizer, cfg.warmup_steps, cfg.total_steps)
    step = consumed = 0
    rng_state = None
    ckpt = output / CHECKPOINT
    if ckpt.exists():
        state = torch.load(ckpt, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, consumed = state["step"], state.get("batches", state["step"])
        rng_state = state["rng"]
    if world > 1:
        model = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    loss_fn = ContrastiveLoss(cfg.label_smoothing, gather=world > 1)
    dataset = ShardDataset(
        paths,
        tokenize=text,
        train=True,
        resize=cfg.resize,
        crop=cfg.crop,
        shuffle_buffer=cfg.shuffle_buffer,
        seed=cfg.seed,
        epochs=None,
    )
    loader = DataLoader(
        dataset,
        batch_size=max(1, cfg.batch_size // world),
        num_workers=cfg.num_workers,
        collate_fn=collate,
        # Under DDP every rank must take the same number of steps: no short last batches.
        drop_last=world > 1,
    )
    (output / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    last: dict[str, float] = {}
    failures = 0
    started, seen = time.monotonic(), 0
    metrics = (output / METRICS).open("a") if rank == 0 else None
    batches = _batches(loader)
    # Resume where the interrupted run stood: replay the data stream past the batches it
    # consumed (the same seed gives the same order and augmentations), then restore the
    # random state, so a resumed run reaches the same loss as an uninterrupted one.
    for _ in range(consumed):
        next(batches)
    if rng_state is not None:
        torch.set_rng_state(rng_state["torch"])
        random.setstate(rng_state["python"])
    try:
        for item in batches:
            consumed += 1
            if step >= steps:
                break
            failures += len(item["decode_failures"])
            batch = item["batch"]
            if batch is None or (world == 1 and batch["image"].shape[0] < 2):
                continue  # nothing to contrast; the failures are still counted
            losses, report = train_step(
                model, loss_fn, batch, optimizer, scheduler, device, cfg.bf16
            )
            step += 1
            seen += batch["image"].shape[0]
            last = {**losses, **report}
            if metrics and (step % cfg.log_every == 0 or step == steps):
                rate = seen * world / max(1e-9, time.monotonic() - started)
                line = {"step": step, **last, "decode_failures": failures, "samples_per_s": rate}
                metrics.write(json.dumps(line) + "\n")
                metrics.flush()
            if rank == 0 and (step % cfg.checkpoint_every == 0 or step == steps):
                save_checkpoint(ckpt, model, optimizer, scheduler, step, cfg, consumed)
    finally:
        if metrics:
            metrics.close()
    return {"step": step, "decode_failures": failures, **last}
