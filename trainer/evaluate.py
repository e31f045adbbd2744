"""Zero-shot evaluation for the dual encoder: retrieval Recall@K and prompt-ensemble classification.

Pure torch on embeddings; the encoders come in as callables, so nothing here knows the model.
Scores are dot products of L2-normalized embeddings (cosine similarity), as in ALIGN's
retrieval and zero-shot ImageNet evaluation (PAPER.md, section 3). Ranks are exact and
deterministic: among equal scores the lower index ranks first, the order a stable sort gives.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor

T = TypeVar("T")

ZERO_SHOT_DATA = Path(__file__).parent / "zeroshot"


def _lines(name: str) -> list[str]:
    text = (ZERO_SHOT_DATA / name).read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line.strip()]


# CLIP's 80 ImageNet prompt templates (Radford et al. 2021, the "Prompt_Engineering_for_ImageNet"
# notebook), shipped as trainer/zeroshot/clip_templates.txt. ALIGN evaluates zero-shot ImageNet
# with CLIP's prompt ensemble and reports that it adds 2.9 points top-1 (PAPER.md, section 3).
PROMPT_TEMPLATES: list[str] = _lines("clip_templates.txt")
# The 1000 ILSVRC-2012 classes in index order (sorted WordNet ids), with CLIP's readable names
# (the same notebook): trainer/zeroshot/imagenet_classes.txt.
IMAGENET_CLASSES: list[str] = _lines("imagenet_classes.txt")

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp"})


def _rank_of(scores: Tensor, target_score: Tensor, target_index: Tensor) -> Tensor:
    """0-based rank of each row's target under (score descending, index ascending)."""
    index = torch.arange(scores.shape[1], device=scores.device)
    above = scores > target_score[:, None]
    tied_before = (scores == target_score[:, None]) & (index[None, :] < target_index[:, None])
    return (above | tied_before).sum(dim=1)


def _hits(ranks: Tensor, ks: Sequence[int]) -> dict[int, int]:
    return {k: int((ranks < k).sum()) for k in ks}


def _hits_in_chunks(
    queries: Tensor, gallery: Tensor, target: Tensor, ks: Sequence[int], chunk_size: int
) -> dict[int, int]:
    """For each k, how many queries rank their target gallery row in the top k; scored
    `chunk_size` queries at a time, so the score matrix never holds all queries at once."""
    hits = dict.fromkeys(ks, 0)
    for start in range(0, queries.shape[0], chunk_size):
        scores = queries[start : start + chunk_size] @ gallery.T  # [chunk, gallery]
        mine = target[start : start + chunk_size]
        ranks = _rank_of(scores, scores.gather(1, mine[:, None])[:, 0], mine)
        for k, hit in _hits(ranks, ks).items():
            hits[k] += hit
    return hits


def _check_ks(ks: Sequence[int]) -> None:
    if not ks or any(k < 1 for k in ks):
        raise ValueError(f"ks must be positive integers, got {list(ks)}")


def retrieval_recall(
    image_emb: Tensor,
    text_emb: Tensor,
    text_to_image: Tensor,
    ks: Sequence[int] = (1, 5, 10),
    chunk_size: int = 1024,
) -> dict[str, float]:
    """Image→text and text→image Recall@K; several texts may belong to one image.

    An image→text query hits when any of its texts ranks in the top K. Images with no text
    (distractors) are gallery items for text→image but are not image→text queries.
    """
    _check_ks(ks)
    n, m = image_emb.shape[0], text_emb.shape[0]
    if image_emb.ndim != 2 or text_emb.ndim != 2 or image_emb.shape[1] != text_emb.shape[1]:
        raise ValueError(
            f"embeddings must be [N, D] and [M, D], got {image_emb.shape}, {text_emb.shape}"
        )
    if text_to_image.shape != (m,):
        raise ValueError(f"text_to_image must have shape ({m},), got {tuple(text_to_image.shape)}")
    if m == 0 or int(text_to_image.min()) < 0 or int(text_to_image.max()) >= n:
        raise ValueError(f"text_to_image must be non-empty with values in [0, {n})")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    images, texts = image_emb.float(), text_emb.float()
    owner = text_to_image.to(device=texts.device, dtype=torch.long)
    text_index = torch.arange(m, device=texts.device)

    t2i = _hits_in_chunks(texts, images, owner, ks, chunk_size)

    i2t, queries = dict.fromkeys(ks, 0), 0
    for start in range(0, n, chunk_size):
        scores = images[start : start + chunk_size] @ texts.T  # [c, M]
        image_index = torch.arange(start, start + scores.shape[0], device=scores.device)
        mine = owner[None, :] == image_index[:, None]
        has_text = mine.any(dim=1)
        # The image's best-ranked own text: highest score, lowest index among equals.
        best = scores.masked_fill(~mine, float("-inf")).max(dim=1).values
        best_index = torch.where(mine & (scores == best[:, None]), text_index, m).min(dim=1).values
        ranks = _rank_of(scores, best, best_index)[has_text]
        queries += int(has_text.sum())
        for k, hit in _hits(ranks, ks).items():
            i2t[k] += hit

    out = {f"i2t_R@{k}": i2t[k] / queries for k in ks}
    out.update({f"t2i_R@{k}": t2i[k] / m for k in ks})
    return out


def embed_in_batches(
    items: Sequence[T], encode: Callable[[list[T]], Tensor], batch_size: int
) -> Tensor:
    """Encode items batch by batch (no grad) and return the L2-normalized rows, concatenated."""
    if not items:
        raise ValueError("no items to embed")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    with torch.no_grad():
        parts = [
            encode(list(items[i : i + batch_size])).detach().float()
            for i in range(0, len(items), batch_size)
        ]
    return F.normalize(torch.cat(parts), dim=-1)


def class_embeddings(
    class_names: Sequence[str],
    encode_texts: Callable[[list[str]], Tensor],
    templates: Sequence[str] = PROMPT_TEMPLATES,
    batch_size: int = 1024,
) -> Tensor:
    """[C, D] zero-shot classifier: per class, the renormalized mean of its prompt embeddings."""
    if not class_names or not templates:
        raise ValueError("need at least one class name and one template")
    prompts = [template.format(name) for name in class_names for template in templates]
    emb = embed_in_batches(prompts, encode_texts, batch_size)
    return F.normalize(emb.view(len(class_names), len(templates), -1).mean(dim=1), dim=-1)


def zero_shot_accuracy(
    image_emb: Tensor,
    labels: Tensor,
    class_emb: Tensor,
    ks: Sequence[int] = (1, 5),
    chunk_size: int = 4096,
) -> dict[str, float]:
    """Top-K accuracy of nearest-class-embedding classification, keys "top1", "top5", ...."""
    _check_ks(ks)
    n, c = image_emb.shape[0], class_emb.shape[0]
    if labels.shape != (n,) or n == 0:
        raise ValueError(f"labels must have shape ({n},) with N > 0, got {tuple(labels.shape)}")
    if int(labels.min()) < 0 or int(labels.max()) >= c:
        raise ValueError(f"labels must lie in [0, {c})")
    images, classes = image_emb.float(), class_emb.float()
    labels = labels.to(device=images.device, dtype=torch.long)
    correct = _hits_in_chunks(images, classes, labels, ks, chunk_size)
    return {f"top{k}": correct[k] / n for k in ks}


def _read_class_names(path: Path) -> dict[str, str]:
    names = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        folder, sep, name = line.partition("\t")
        if not sep or not folder or not name.strip():
            raise ValueError(f"{path}:{number}: expected 'folder<TAB>name', got {line!r}")
        names[folder] = name.strip()
    return names


def _is_wnid(name: str) -> bool:
    return len(name) == 9 and name[0] == "n" and name[1:].isdigit()


def image_folder(root: str | Path) -> tuple[list[Path], list[int], list[str]]:
    """Images in ImageNet layout root/<class>/<image>: (paths, labels, class names).

    Classes are the sorted subfolders. A class's name comes from root/classes.txt when it
    maps 'folder<TAB>name' per line; else, for the full ILSVRC-2012 layout (1000 WordNet-id
    folders, n01440764 ...), from CLIP's names (IMAGENET_CLASSES, in that sorted order);
    else it is the folder name with '_' -> ' '.
    """
    root = Path(root)
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise ValueError(f"no class folders under {root}")
    mapping_file = root / "classes.txt"
    if mapping_file.is_file():
        mapping = _read_class_names(mapping_file)
        missing = [f for f in folders if f not in mapping]
        if missing:
            raise ValueError(f"{mapping_file} names no class for folders {missing[:5]}")
        names = [mapping[f] for f in folders]
    elif len(folders) == len(IMAGENET_CLASSES) and all(_is_wnid(f) for f in folders):
        names = list(IMAGENET_CLASSES)
    else:
        names = [f.replace("_", " ") for f in folders]
    paths: list[Path] = []
    labels: list[int] = []
    for label, folder in enumerate(folders):
        for path in sorted((root / folder).iterdir()):
            if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
                paths.append(path)
                labels.append(label)
    return paths, labels, names
