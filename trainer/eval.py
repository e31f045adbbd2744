"""Loading a trained model and running the evaluations of trainer/evaluate.py on it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from PIL import Image

from trainer.config import TrainConfig
from trainer.data import ShardDataset, collate, image_transform
from trainer.evaluate import (
    class_embeddings,
    image_folder,
    retrieval_recall,
    zero_shot_accuracy,
)
from trainer.model import DualEncoder
from trainer.tokenizer import TextEncoder
from trainer.train import CHECKPOINT, TOKENIZER, shard_paths


def load_model(folder: Path) -> tuple[DualEncoder, TextEncoder, TrainConfig, int]:
    """The model, tokenizer, config and step that curate-train wrote to `folder`."""
    if not (folder / CHECKPOINT).exists():
        raise FileNotFoundError(f"{folder}: no {CHECKPOINT} (run curate-train first)")
    state = torch.load(folder / CHECKPOINT, map_location="cpu", weights_only=False)
    cfg = TrainConfig(**state["config"])
    text = TextEncoder.load(folder / TOKENIZER, cfg.max_text_len)
    vocab = min(cfg.vocab_size, text.vocab_size)
    model = DualEncoder(TrainConfig(**{**cfg.to_dict(), "vocab_size": vocab}), text.pad_id)
    model.load_state_dict(state["model"])
    model.eval()
    return model, text, cfg, int(state["step"])


@torch.no_grad()
def evaluate_model(
    folder: Path, data: list[str], imagenet: Path | None, batch_size: int = 64
) -> dict[str, Any]:
    """Retrieval on held-out shards and/or zero-shot classification on an image folder."""
    model, text, cfg, step = load_model(folder)
    result: dict[str, Any] = {"step": step}
    if data:
        dataset = ShardDataset(
            shard_paths(data),
            tokenize=text,
            train=False,
            resize=cfg.resize,
            crop=cfg.crop,
            shuffle_buffer=0,
            seed=0,
            epochs=1,
        )
        images, texts, failures = [], [], 0
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=collate)
        for item in loader:
            failures += len(item["decode_failures"])
            batch = item["batch"]
            if batch is None:
                continue
            images.append(model.encode_image(batch["image"]))
            texts.append(model.encode_text(batch["input_ids"], batch["attention_mask"]))
        image_emb, text_emb = torch.cat(images), torch.cat(texts)
        pairs = torch.arange(image_emb.shape[0])
        result["retrieval"] = retrieval_recall(image_emb, text_emb, pairs)
        result["retrieval_pairs"] = int(image_emb.shape[0])
        result["decode_failures"] = failures
    if imagenet is not None:
        paths, labels, names = image_folder(imagenet)
        transform = image_transform(train=False, resize=cfg.resize, crop=cfg.crop)
        embs = []
        for i in range(0, len(paths), batch_size):
            chunk = [transform(Image.open(p).convert("RGB")) for p in paths[i : i + batch_size]]
            embs.append(model.encode_image(torch.stack(chunk)))

        def encode_texts(prompts: list[str]) -> torch.Tensor:
            enc = text.batch(prompts)
            return model.encode_text(enc["input_ids"], enc["attention_mask"])

        classes = class_embeddings(names, encode_texts)
        result["zero_shot"] = zero_shot_accuracy(
            torch.cat(embs), torch.tensor(labels), classes, ks=(1, min(5, len(names)))
        )
        result["zero_shot_classes"] = len(names)
    return result
