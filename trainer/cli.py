"""`curate-train` and `curate-eval`: train ALIGN's dual encoder on curated shards, evaluate it.

curate-train --config tiny --data OUTPUT/shards --steps 40 --output runs/tiny
curate-eval --model runs/tiny --data HELD_OUT/shards [--imagenet-folder PATH]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from trainer.config import TrainConfig, TrainConfigError


def train_main(argv: list[str] | None = None) -> int:
    """Entry point of `curate-train`."""
    ap = argparse.ArgumentParser(prog="curate-train", description=__doc__.splitlines()[0])
    ap.add_argument(
        "--config", default="tiny", help="a size (tiny, small, base, b7, large) or YAML"
    )
    ap.add_argument("--data", nargs="+", required=True, help="shard files, globs or folders")
    ap.add_argument("--steps", type=int, required=True, help="optimisation steps to reach")
    ap.add_argument("--output", type=Path, required=True, help="checkpoints and metrics.jsonl")
    ap.add_argument("--batch-size", type=int, help="global batch (overrides the config)")
    ap.add_argument("--learning-rate", type=float, help="peak learning rate")
    ap.add_argument("--optimizer", choices=["lamb", "adamw"])
    ap.add_argument("--num-workers", type=int, help="DataLoader workers per process")
    ap.add_argument("--warmup-steps", type=int, help="linear warm-up steps")
    ap.add_argument("--total-steps", type=int, help="where the linear decay reaches 0")
    ap.add_argument("--temperature-init", type=float, help="initial softmax temperature")
    args = ap.parse_args(argv)
    try:
        cfg = TrainConfig.load(
            args.config,
            {
                "batch_size": args.batch_size,
                "learning_rate": args.learning_rate,
                "optimizer": args.optimizer,
                "num_workers": args.num_workers,
                "warmup_steps": args.warmup_steps,
                "total_steps": args.total_steps,
                "temperature_init": args.temperature_init,
            },
        )
        from trainer.train import train

        result = train(cfg, args.data, args.steps, args.output)
    except (TrainConfigError, FileNotFoundError) as e:
        print(f"curate-train: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


def eval_main(argv: list[str] | None = None) -> int:
    """Entry point of `curate-eval`."""
    ap = argparse.ArgumentParser(prog="curate-eval", description="evaluate a trained model")
    ap.add_argument("--model", type=Path, required=True, help="a curate-train --output folder")
    ap.add_argument("--data", nargs="*", default=[], help="held-out shards: retrieval R@1/5/10")
    ap.add_argument("--imagenet-folder", type=Path, help="ImageNet-layout folder: zero-shot")
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args(argv)
    if not args.data and not args.imagenet_folder:
        ap.error("give --data, --imagenet-folder, or both")
    try:
        from trainer.eval import evaluate_model

        result = evaluate_model(args.model, args.data, args.imagenet_folder, args.batch_size)
    except FileNotFoundError as e:
        print(f"curate-eval: error: {e}", file=sys.stderr)
        return 2
    (args.model / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return 0
