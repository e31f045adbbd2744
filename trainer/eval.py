"""Loading a trained model and running the evaluations of trainer/evaluate.py on it, on the
GPU when there is one."""

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
def embed_shards(
    model: DualEncoder,
    text: TextEncoder,
    cfg: TrainConfig,
    data: list[str],
    batch_size: int,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """(image embeddings, text embeddings, text_to_image, decode failures) of held-out
    shards. Rows are grouped by image (the hash of its bytes): a set written one row per
    caption gives each image once to the gallery, with all of its captions."""
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
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=collate)
    image_index: dict[str, int] = {}
    images, texts, owners, failures = [], [], [], 0
    for item in loader:
        failures += len(item["decode_failures"])
        batch = item["batch"]
        if batch is None:
            continue
        new = []
        for row, image_id in enumerate(batch["image_id"]):
            if image_id not in image_index:
                image_index[image_id] = len(image_index)
                new.append(row)
            owners.append(image_index[image_id])
        if new:
            pixels = batch["image"][new].to(device, non_blocking=True)
            images.append(model.encode_image(pixels))
        ids = batch["input_ids"].to(device, non_blocking=True)
        mask = batch["attention_mask"].to(device, non_blocking=True)
        texts.append(model.encode_text(ids, mask))
    if not texts:
        raise FileNotFoundError(f"no decodable samples in {data}")
    owner = torch.tensor(owners, device=device)
    return torch.cat(images), torch.cat(texts), owner, failures


@torch.no_grad()
def evaluate_model(
    folder: Path,
    data: list[str],
    imagenet: Path | None,
    batch_size: int = 64,
    device: torch.device | str | None = None,
) -> dict[str, Any]:
    """Retrieval on held-out shards and/or zero-shot classification on an image folder,
    on `device` (the GPU when there is one, else the CPU)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, text, cfg, step = load_model(folder)
    model.to(device)
    result: dict[str, Any] = {"step": step}
    if data:
        image_emb, text_emb, owner, failures = embed_shards(
            model, text, cfg, data, batch_size, device
        )
        result["retrieval"] = retrieval_recall(image_emb, text_emb, owner)
        result["retrieval_pairs"] = int(text_emb.shape[0])
        result["retrieval_images"] = int(image_emb.shape[0])
        result["decode_failures"] = failures
    if imagenet is not None:
        paths, labels, names = image_folder(imagenet)
        transform = image_transform(train=False, resize=cfg.resize, crop=cfg.crop, uint8=True)
        embs = []
        for i in range(0, len(paths), batch_size):
            chunk = [transform(Image.open(p).convert("RGB")) for p in paths[i : i + batch_size]]
            embs.append(model.encode_image(torch.stack(chunk).to(device)))

        def encode_texts(prompts: list[str]) -> torch.Tensor:
            enc = text.batch(prompts)
            return model.encode_text(enc["input_ids"].to(device), enc["attention_mask"].to(device))

        classes = class_embeddings(names, encode_texts)
        result["zero_shot"] = zero_shot_accuracy(
            torch.cat(embs), torch.tensor(labels), classes, ks=(1, min(5, len(names)))
        )
        result["zero_shot_classes"] = len(names)
    return result
