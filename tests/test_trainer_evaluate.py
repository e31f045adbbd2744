"""trainer/evaluate.py: exact Recall@K, prompt-ensemble zero-shot accuracy, the image folder."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the trainer is the [train] extra")

import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402

from trainer.evaluate import (  # noqa: E402
    PROMPT_TEMPLATES,
    class_embeddings,
    embed_in_batches,
    image_folder,
    retrieval_recall,
    zero_shot_accuracy,
)

KS = (1, 5, 10)


def _unit(rows: int, dim: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(rows, dim, generator=g), dim=-1)


def _brute_force(image_emb, text_emb, text_to_image, ks) -> dict[str, float]:
    """Reference by full stable sorts in numpy: score descending, then index ascending."""
    sims = image_emb.double().numpy() @ text_emb.double().numpy().T  # [N, M]
    owner = text_to_image.numpy()
    n, m = sims.shape
    out = {}
    for k in ks:
        i2t = [
            np.isin(np.lexsort((np.arange(m), -sims[i]))[:k], np.flatnonzero(owner == i)).any()
            for i in range(n)
            if (owner == i).any()
        ]
        t2i = [owner[j] in np.lexsort((np.arange(n), -sims[:, j]))[:k] for j in range(m)]
        out[f"i2t_R@{k}"] = float(np.mean(i2t))
        out[f"t2i_R@{k}"] = float(np.mean(t2i))
    return out


def test_identity_pairing_is_perfect() -> None:
    emb = _unit(50, 16, seed=0)
    result = retrieval_recall(emb, emb.clone(), torch.arange(50), ks=KS)
    assert result == {f"{d}_R@{k}": 1.0 for d in ("i2t", "t2i") for k in KS}


def test_shuffled_pairing_matches_brute_force() -> None:
    # Text j is a noisy copy of its image text_to_image[j], so the recalls are non-trivial.
    images = _unit(80, 8, seed=1)
    text_to_image = torch.randperm(80, generator=torch.Generator().manual_seed(3))
    texts = F.normalize(images[text_to_image] + 1.5 * _unit(80, 8, seed=2), dim=-1)
    result = retrieval_recall(images, texts, text_to_image, ks=KS)
    assert result == pytest.approx(_brute_force(images, texts, text_to_image, KS))
    assert 0 < result["t2i_R@1"] < result["t2i_R@10"] < 1  # a non-trivial case


def test_several_texts_per_image_with_distractor_images() -> None:
    # 40 images, 5 noisy captions each for the first 30; the last 10 are distractors.
    images = _unit(40, 12, seed=4)
    text_to_image = torch.arange(30).repeat_interleave(5)
    noise = 0.9 * torch.randn(150, 12, generator=torch.Generator().manual_seed(5))
    texts = F.normalize(images[text_to_image] + noise, dim=-1)
    result = retrieval_recall(images, texts, text_to_image, ks=KS)
    assert result == pytest.approx(_brute_force(images, texts, text_to_image, KS))
    assert result["i2t_R@1"] > result["t2i_R@1"]  # any of five captions counts


def test_any_own_text_in_top_k_is_an_image_to_text_hit() -> None:
    images = torch.eye(2)
    # Image 0's texts rank 2nd and 4th; image 1's single text ranks 3rd for it.
    texts = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.8, 0.2], [0.7, 0.3]])
    text_to_image = torch.tensor([1, 0, 1, 0])
    result = retrieval_recall(images, F.normalize(texts, dim=-1), text_to_image, ks=(1, 2, 3))
    # Image 0 ranks texts 0,1,2,3 (its own: 1, 3): hit at K >= 2. Image 1 ranks 3,2,1,0
    # (its own: 2, 0): hit at K >= 2.
    assert [result[f"i2t_R@{k}"] for k in (1, 2, 3)] == [0.0, 1.0, 1.0]


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 10_000])
def test_chunking_does_not_change_the_result(chunk_size: int) -> None:
    images, texts = _unit(64, 8, seed=6), _unit(100, 8, seed=7)
    text_to_image = torch.randint(0, 64, (100,), generator=torch.Generator().manual_seed(8))
    whole = retrieval_recall(images, texts, text_to_image, ks=KS, chunk_size=100_000)
    assert retrieval_recall(images, texts, text_to_image, ks=KS, chunk_size=chunk_size) == whole


def test_ties_break_by_index_deterministically() -> None:
    # Every score is equal, so every ranking is plain index order.
    images, texts = torch.ones(4, 2) / 2**0.5, torch.ones(4, 2) / 2**0.5
    text_to_image = torch.arange(4)
    results = [retrieval_recall(images, texts, text_to_image, ks=(1, 2, 3, 4)) for _ in range(3)]
    expected = {f"{d}_R@{k}": k / 4 for d in ("i2t", "t2i") for k in (1, 2, 3, 4)}
    assert all(r == expected for r in results)
    assert results[0] == _brute_force(images, texts, text_to_image, (1, 2, 3, 4))


def test_k_beyond_the_gallery_is_a_hit() -> None:
    images, texts = _unit(3, 4, seed=9), _unit(3, 4, seed=10)
    result = retrieval_recall(images, texts, torch.tensor([2, 0, 1]), ks=(3, 10))
    assert result["i2t_R@10"] == result["t2i_R@10"] == result["i2t_R@3"] == 1.0


@pytest.mark.parametrize(
    "text_to_image, ks",
    [
        (torch.tensor([0, 3]), (1,)),  # an image index out of range
        (torch.tensor([0, -1]), (1,)),
        (torch.tensor([0]), (1,)),  # one entry per text
        (torch.tensor([0, 1]), (0,)),
    ],
)
def test_bad_retrieval_inputs_are_refused(text_to_image: torch.Tensor, ks: tuple[int]) -> None:
    with pytest.raises(ValueError):
        retrieval_recall(_unit(3, 4, seed=0), _unit(2, 4, seed=1), text_to_image, ks=ks)


# A deterministic fake text encoder: a prompt's vector is its class's direction plus
# hash-seeded noise, so the template ensemble has something to average out.
CLASSES = ["tench", "goldfish", "great white shark", "tiger shark", "hammerhead", "electric ray"]
DIM = 32
DIRECTIONS = _unit(len(CLASSES), DIM, seed=11)


def _fake_encode_texts(texts: list[str]) -> torch.Tensor:
    rows = []
    for text in texts:
        label = next(i for i, name in enumerate(CLASSES) if f" {name}" in f" {text}")
        seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")
        noise = torch.randn(DIM, generator=torch.Generator().manual_seed(seed))
        rows.append(3 * DIRECTIONS[label] + noise)  # unnormalized, like a raw encoder output
    return torch.stack(rows)


def test_class_embeddings_average_normalized_prompt_embeddings() -> None:
    emb = class_embeddings(CLASSES, _fake_encode_texts, batch_size=7)
    assert emb.shape == (len(CLASSES), DIM)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(len(CLASSES)))
    prompts = [t.format(CLASSES[2]) for t in PROMPT_TEMPLATES]
    expected = F.normalize(F.normalize(_fake_encode_texts(prompts), dim=-1).mean(0), dim=0)
    assert torch.allclose(emb[2], expected, atol=1e-6)
    # The ensemble is closer to the class direction than one template alone.
    single = class_embeddings(CLASSES, _fake_encode_texts, templates=PROMPT_TEMPLATES[:1])
    assert (emb * DIRECTIONS).sum(-1).mean() > (single * DIRECTIONS).sum(-1).mean()


def test_zero_shot_accuracy_with_known_classes() -> None:
    class_emb = class_embeddings(CLASSES, _fake_encode_texts)
    labels = torch.tensor([0, 1, 2, 3, 4, 5, 0, 1])
    image_emb = F.normalize(DIRECTIONS[labels] + 0.05 * _unit(8, DIM, seed=12), dim=-1)
    assert zero_shot_accuracy(image_emb, labels, class_emb) == {"top1": 1.0, "top5": 1.0}
    wrong = (labels + 1) % len(CLASSES)
    assert zero_shot_accuracy(image_emb, wrong, class_emb, ks=(1,))["top1"] == 0.0


def test_zero_shot_accuracy_matches_brute_force_and_chunking() -> None:
    class_emb, image_emb = _unit(20, 8, seed=13), _unit(300, 8, seed=14)
    labels = torch.randint(0, 20, (300,), generator=torch.Generator().manual_seed(15))
    order = np.argsort(-(image_emb.numpy() @ class_emb.numpy().T), axis=1, kind="stable")
    expected = {
        f"top{k}": float((order[:, :k] == labels.numpy()[:, None]).any(1).mean()) for k in (1, 5)
    }
    assert zero_shot_accuracy(image_emb, labels, class_emb) == pytest.approx(expected)
    assert zero_shot_accuracy(image_emb, labels, class_emb, chunk_size=13) == pytest.approx(
        expected
    )


def test_zero_shot_ties_break_toward_the_lower_class_index() -> None:
    class_emb = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    image_emb = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    result = zero_shot_accuracy(image_emb, torch.tensor([0, 1]), class_emb, ks=(1, 2))
    assert result == {"top1": 0.5, "top2": 1.0}


def test_embed_in_batches_concatenates_in_order_and_normalizes() -> None:
    calls: list[list[int]] = []

    def encode(batch: list[int]) -> torch.Tensor:
        calls.append(batch)
        return torch.tensor([[float(x), 1.0] for x in batch], requires_grad=True)

    emb = embed_in_batches(list(range(7)), encode, batch_size=3)
    assert calls == [[0, 1, 2], [3, 4, 5], [6]]
    assert torch.allclose(emb, F.normalize(torch.tensor([[x, 1.0] for x in range(7)]), dim=-1))
    assert not emb.requires_grad
    with pytest.raises(ValueError):
        embed_in_batches([], encode, batch_size=3)


def _png(path: Path, color: tuple[int, int, int]) -> None:
    Image.new("RGB", (4, 4), color).save(path, format="PNG")


def _tree(root: Path) -> None:
    for folder in ("n02_great_white_shark", "n01_tench", "n03_empty"):
        (root / folder).mkdir()
    _png(root / "n01_tench" / "b.png", (255, 0, 0))
    _png(root / "n01_tench" / "a.JPG", (0, 255, 0))  # suffix match is case-insensitive
    (root / "n01_tench" / "notes.txt").write_text("not an image")
    (root / "n01_tench" / "nested").mkdir()
    _png(root / "n01_tench" / "nested" / "deep.png", (0, 0, 0))  # not at <class>/<image>
    _png(root / "n02_great_white_shark" / "c.webp.png", (0, 0, 255))
    _png(root / "stray.png", (9, 9, 9))  # a file at the root is not a class


def test_image_folder_layout_labels_and_underscore_names(tmp_path: Path) -> None:
    _tree(tmp_path)
    paths, labels, names = image_folder(tmp_path)
    assert names == ["n01 tench", "n02 great white shark", "n03 empty"]
    assert [p.relative_to(tmp_path).as_posix() for p in paths] == [
        "n01_tench/a.JPG",
        "n01_tench/b.png",
        "n02_great_white_shark/c.webp.png",
    ]
    assert labels == [0, 0, 1]
    assert all(Image.open(p).size == (4, 4) for p in paths)


def test_image_folder_honours_classes_txt(tmp_path: Path) -> None:
    _tree(tmp_path)
    (tmp_path / "classes.txt").write_text(
        "n01_tench\ttench\nn02_great_white_shark\tgreat white shark\n\n"
        "n03_empty\tempty class\nn99_absent\tnot a folder here\n"
    )
    paths, labels, names = image_folder(str(tmp_path))
    assert names == ["tench", "great white shark", "empty class"]
    assert labels == [0, 0, 1] and len(paths) == 3


@pytest.mark.parametrize("text", ["n01_tench\ttench\n", "n01_tench tench\n"])
def test_image_folder_refuses_an_incomplete_or_malformed_classes_txt(
    tmp_path: Path, text: str
) -> None:
    _tree(tmp_path)
    (tmp_path / "classes.txt").write_text(text)
    with pytest.raises(ValueError, match=r"classes\.txt"):
        image_folder(tmp_path)
