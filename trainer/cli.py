"""`curate-train` and `curate-eval`: train ALIGN's dual encoder on curated shards, evaluate it.

curate-train tokenizer --config tiny --data OUTPUT/shards --output runs/tokenizer.json
curate-train --config tiny --data OUTPUT/shards --steps 40 --output runs/tiny \
    [--tokenizer runs/tokenizer.json]
curate-eval --model runs/tiny --data HELD_OUT/shards [--imagenet-folder PATH]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from trainer.config import TrainConfig, TrainConfigError


def _workers(value: str) -> int | str:
    return value if value == "auto" else int(value)


def tokenizer_main(argv: list[str]) -> int:
    """`curate-train tokenizer`: the WordPiece vocabulary from the shards' captions alone."""
    ap = argparse.ArgumentParser(
        prog="curate-train tokenizer",
        description="train the WordPiece tokenizer on the captions (ALIGN §4.1), a step of "
        "its own before a distributed run; only the caption column is read",
    )
    ap.add_argument("--config", default="tiny", help="a size or YAML: vocab_size, max_text_len")
    ap.add_argument("--data", nargs="+", required=True, help="shard files, globs or folders")
    ap.add_argument("--output", type=Path, required=True, help="the tokenizer's JSON file")
    ap.add_argument("--vocab-size", type=int, help="overrides the config's vocab_size")
    args = ap.parse_args(argv)
    try:
        cfg = TrainConfig.load(args.config, {"vocab_size": args.vocab_size})
        from trainer.train import train_tokenizer

        encoder = train_tokenizer(args.data, cfg.vocab_size, cfg.max_text_len, args.output)
    except (TrainConfigError, FileNotFoundError) as e:
        print(f"curate-train tokenizer: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"tokenizer": str(args.output), "vocab_size": encoder.vocab_size}))
    return 0


def train_main(argv: list[str] | None = None) -> int:
    """Entry point of `curate-train` (and of `curate-train tokenizer`)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["tokenizer"]:
        return tokenizer_main(argv[1:])
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
    ap.add_argument("--num-workers", type=_workers, help="DataLoader workers per process, or auto")
    ap.add_argument("--warmup-steps", type=int, help="linear warm-up steps")
    ap.add_argument("--total-steps", type=int, help="where the linear decay reaches 0")
    ap.add_argument("--temperature-init", type=float, help="initial softmax temperature")
    ap.add_argument("--accum-freq", type=int, help="micro-batches per step (feature caching)")
    ap.add_argument("--grad-checkpointing", action="store_true", default=None)
    ap.add_argument("--channels-last", action="store_true", default=None)
    ap.add_argument(
        "--tokenizer", type=Path, help="from curate-train tokenizer (required under torchrun)"
    )
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
                "accum_freq": args.accum_freq,
                "grad_checkpointing": args.grad_checkpointing,
                "channels_last": args.channels_last,
            },
        )
        from trainer.train import train

        result = train(cfg, args.data, args.steps, args.output, args.tokenizer)
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


if __name__ == "__main__":  # `python -m trainer.cli ...`, as torchrun -m runs it
    sys.exit(train_main())
