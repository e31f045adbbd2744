"""The training loop: data, model, loss, LAMB, checkpoints, metrics.jsonl; one GPU, many
(torchrun + DistributedDataParallel), or a CPU for the tiny config.

The step returns (losses, report) and the loop stays short (open_clip's habit). Decode
failures are skipped inside the dataset, so every rank's batch stays full, and counted: the
count rides beside the samples and is written to metrics.jsonl. The step keeps its results
on the device; they are read (one sync) only on logging steps, all-reduced across ranks, so
the logged loss is the global batch's.
"""

from __future__ import annotations

import glob
import json
import os
import random
import sys
import time
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from trainer.config import TrainConfig, TrainConfigError
from trainer.data import Position, ShardDataset, collate, iter_captions
from trainer.loss import ContrastiveLoss
from trainer.model import DualEncoder, frozen_batch_norm_stats
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


def train_tokenizer(data: list[str], vocab_size: int, max_len: int, path: Path) -> TextEncoder:
    """Train the WordPiece vocabulary on the shards' captions (only the caption column is
    read) and write it to `path` atomically: `curate-train tokenizer`, a step of its own, so
    that no rank of a training run spends hours on it while the others wait at a barrier."""
    captions = (caption for p in shard_paths(data) for caption in iter_captions(p))
    encoder = TextEncoder(train_wordpiece(captions, vocab_size), max_len)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    encoder.save(tmp)
    tmp.replace(path)
    return encoder


def load_tokenizer(
    paths: list[str], cfg: TrainConfig, output: Path, world: int, source: Path | None
) -> TextEncoder:
    """The run's tokenizer: output/tokenizer.json (a resumed run's), else a copy of `source`,
    else (one process only) trained here on the captions. Under torchrun it must exist."""
    path = output / TOKENIZER
    if not path.exists():
        if source is not None:
            if dist.is_initialized():
                dist.barrier()  # every rank has checked before rank 0 writes
            if not dist.is_initialized() or dist.get_rank() == 0:
                tmp = path.with_name(f".{path.name}.tmp")
                tmp.write_bytes(source.read_bytes())
                tmp.replace(path)
            if dist.is_initialized():
                dist.barrier()
        elif world > 1:
            raise FileNotFoundError(
                f"{path}: no tokenizer; train it first (curate-train tokenizer --data ... "
                "--output TOKENIZER.json) and pass --tokenizer"
            )
        else:
            train_tokenizer(paths, cfg.vocab_size, cfg.max_text_len, path)
    return TextEncoder.load(path, cfg.max_text_len)


def train_step(
    model: torch.nn.Module,
    loss_fn: ContrastiveLoss,
    batch: dict[str, Any],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    device: torch.device,
    bf16: bool,
    accum_freq: int = 1,
    channels_last: bool = False,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """One optimisation step: (named losses, report), all left on the device (reading them
    would stall the GPU every step). The encoders run under bf16 autocast on GPU; the loss
    runs outside it, in float32: logits divided by a temperature near 1/64 overflow bf16's
    8-bit mantissa into visible error. With `accum_freq` > 1 the batch is computed in that many
    micro-batches with open_clip's feature caching: every micro-batch's features first
    without gradients, then each micro-batch again with gradients against the cached rest,
    so the loss still contrasts the whole batch and the summed gradient is the full batch's.
    """
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if bf16 and device.type == "cuda"
        else nullcontext()
    )
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    pixels = batch["image"].to(device, non_blocking=True).contiguous(memory_format=memory_format)
    ids = batch["input_ids"].to(device, non_blocking=True)
    mask = batch["attention_mask"].to(device, non_blocking=True)
    module = model.module if isinstance(model, DistributedDataParallel) else model
    optimizer.zero_grad(set_to_none=True)
    if accum_freq == 1:
        with autocast:
            image, text, temperature = model(pixels, ids, mask)
        losses = loss_fn(image.float(), text.float(), temperature.float())
        losses["loss"].backward()
    else:
        chunks = list(
            zip(
                pixels.chunk(accum_freq),
                ids.chunk(accum_freq),
                mask.chunk(accum_freq),
                strict=True,
            )
        )
        # Pass 1: the features of every micro-batch, no graph kept, BatchNorm statistics
        # untouched (pass 2 updates them once).
        with torch.no_grad(), autocast, frozen_batch_norm_stats(module):
            cached = [module(*chunk)[:2] for chunk in chunks]
        images = [c[0].float() for c in cached]
        texts = [c[1].float() for c in cached]
        for j, chunk in enumerate(chunks):
            last = j == len(chunks) - 1
            sync = nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync()
            with sync:
                with autocast:
                    image_j, text_j, temperature = model(*chunk)
                image = torch.cat([*images[:j], image_j.float(), *images[j + 1 :]])
                text = torch.cat([*texts[:j], text_j.float(), *texts[j + 1 :]])
                # The temperature enters every micro-batch's loss; its gradient is taken once.
                t = temperature.float() if j == 0 else temperature.detach().float()
                losses = loss_fn(image, text, t)
                losses["loss"].backward()
    optimizer.step()
    module.clamp_temperature()
    scheduler.step()
    report = {"temperature": module.temperature.detach(), "lr": scheduler.get_last_lr()[0]}
    return {k: v.detach() for k, v in losses.items()}, report


def _batches(loader: DataLoader) -> Iterator[dict[str, Any]]:
    while True:  # epochs until the step budget is spent
        yield from loader


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save_checkpoint(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    step: int,
    cfg: TrainConfig,
    ranks: list[dict[str, Any]],
) -> None:
    """Model, optimizer, schedule, and per rank its random state (CPU, CUDA, Python) and
    where each of its data readers stands, written atomically."""
    module = model.module if isinstance(model, DistributedDataParallel) else model
    state = {
        "step": step,
        "model": module.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "config": cfg.to_dict(),
        "ranks": ranks,
    }
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def _trim_metrics(path: Path, step: int) -> None:
    """Drop metrics.jsonl lines past `step`: an interrupted run may have logged steps after
    its last checkpoint, and the resumed run logs them again."""
    if not path.exists():
        return
    lines = path.read_text().splitlines()
    kept = [line for line in lines if line.strip() and json.loads(line)["step"] <= step]
    if len(kept) != len(lines):
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        tmp.replace(path)


def _global(values: list[torch.Tensor | float], world: int, mean: bool) -> list[float]:
    """Values summed (or averaged) over the ranks: one all-reduce, one device sync."""
    t = torch.stack([torch.as_tensor(v, dtype=torch.float64).reshape(()) for v in values])
    if world > 1:
        backend_device = "cuda" if dist.get_backend() == "nccl" else "cpu"
        t = t.to(backend_device)
        dist.all_reduce(t)
        if mean:
            t /= world
    return t.tolist()


def train(
    cfg: TrainConfig,
    data: list[str],
    steps: int,
    output: Path,
    tokenizer: Path | None = None,
) -> dict[str, float]:
    """Train for `steps` steps (resuming from output/checkpoint.pt if present)."""
    rank, world, device = _distributed()
    torch.manual_seed(cfg.seed + rank)
    random.seed(cfg.seed + rank)
    output.mkdir(parents=True, exist_ok=True)
    paths = shard_paths(data)
    if len(paths) < world:
        # Each shard goes to one (rank, worker): a rank without shards would never step, and
        # the others would wait for it forever in the gradient all-reduce.
        raise FileNotFoundError(
            f"{len(paths)} shards for {world} ranks: write more, smaller shards "
            "(curate run --shard-size)"
        )
    # A worker without a shard would end at once; fewer workers then, never an idle one.
    workers = min(cfg.workers(int(os.environ.get("LOCAL_WORLD_SIZE", "1"))), len(paths) // world)
    if cfg.batch_size % world or (cfg.batch_size // world) % cfg.accum_freq:
        raise TrainConfigError(
            f"batch_size {cfg.batch_size}: must split evenly over {world} ranks x "
            f"{cfg.accum_freq} micro-batches"
        )
    text = load_tokenizer(paths, cfg, output, world, tokenizer)
    cfg_vocab = min(cfg.vocab_size, text.vocab_size)
    model = DualEncoder(TrainConfig(**{**cfg.to_dict(), "vocab_size": cfg_vocab}), text.pad_id)
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, cfg.optimizer, cfg.learning_rate, cfg.weight_decay)
    scheduler = warmup_linear_decay(optimizer, cfg.warmup_steps, cfg.total_steps)
    step = 0
    mine: dict[str, Any] | None = None
    ranks: list[dict[str, Any]] = []
    ckpt = output / CHECKPOINT
    if ckpt.exists():
        state = torch.load(ckpt, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step = state["step"]
        ranks = state.get("ranks", [])
        if len(ranks) == world and ranks[rank]["workers"] == max(1, workers):
            mine = ranks[rank]
        elif rank == 0:
            print(
                "curate-train: the checkpoint's ranks or workers differ from this run's: "
                "the data starts at a new epoch",
                file=sys.stderr,
            )
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
        shards_per_worker=cfg.shards_per_worker,
    )
    phase = 0
    positions: dict[int, Position] = {}
    if mine is not None:
        positions = {w: Position(*p) for w, p in mine["positions"].items()}
        phase = mine["phase"]
        dataset.resume(positions, phase)
    elif ckpt.exists():
        epochs = [p[0] for r in ranks for p in r["positions"].values()]
        dataset.set_epoch(1 + max(epochs, default=0))
    loader = DataLoader(
        dataset,
        batch_size=cfg.batch_size // world,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=device.type == "cuda",
        # Under DDP every rank must take the same number of steps: no short last batches.
        drop_last=world > 1,
    )
    (output / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    last: dict[str, Any] = {}
    failures = seen = batches = 0
    started = time.monotonic()
    if rank == 0:
        _trim_metrics(output / METRICS, step)
    metrics = (output / METRICS).open("a") if rank == 0 else None
    batches_iter = _batches(loader)
    # The loader's iterator draws its seed from the global generator: restore the random
    # state after it exists, so a resumed run draws what the uninterrupted one would have.
    first = next(batches_iter) if step < steps else None
    if mine is not None:
        _set_rng_state(mine["rng"])
    try:
        while step < steps:
            item, first = (first, None) if first is not None else (next(batches_iter), None)
            batches += 1
            failures += len(item["decode_failures"])
            if item["position"] is not None:
                worker, epoch, emitted = item["position"]
                positions[worker] = Position(epoch, emitted)
            batch = item["batch"]
            if batch is None or (world == 1 and batch["image"].shape[0] < 2):
                continue  # nothing to contrast; the failures are still counted
            losses, report = train_step(
                model,
                loss_fn,
                batch,
                optimizer,
                scheduler,
                device,
                cfg.bf16,
                cfg.accum_freq,
                cfg.channels_last,
            )
            step += 1
            seen += batch["image"].shape[0]
            last = {**losses, **report}
            if step % cfg.log_every == 0 or step == steps:
                named = [losses["loss"], losses["i2t"], losses["t2i"]]
                loss, i2t, t2i = _global(named, world, mean=True)
                total_failures, total_seen = _global([failures, seen], world, mean=False)
                if metrics:
                    rate = total_seen / max(1e-9, time.monotonic() - started)
                    line = {
                        "step": step,
                        "loss": loss,
                        "i2t": i2t,
                        "t2i": t2i,
                        "temperature": float(report["temperature"]),
                        "lr": report["lr"],
                        "decode_failures": int(total_failures),
                        "samples": int(total_seen),
                        "samples_per_s": rate,
                    }
                    metrics.write(json.dumps(line) + "\n")
                    metrics.flush()
            if step % cfg.checkpoint_every == 0 or step == steps:
                here = {
                    "positions": {w: (p.epoch, p.emitted) for w, p in positions.items()},
                    "phase": (phase + batches) % max(1, workers),
                    "workers": max(1, workers),
                    "rng": _rng_state(),
                }
                everyone = [here]
                if world > 1:
                    everyone = [None] * world
                    dist.all_gather_object(everyone, here)
                if rank == 0:
                    save_checkpoint(ckpt, model, optimizer, scheduler, step, cfg, everyone)
    finally:
        if metrics:
            metrics.close()
    out: dict[str, float] = {"step": step, "decode_failures": failures}
    out.update({k: float(v) for k, v in last.items()})
    return out
