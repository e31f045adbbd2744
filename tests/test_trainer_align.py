"""The trainer as ALIGN trained it (issue 24): LAMB leaves the no-decay group (and so the
temperature) out of the trust ratio, the temperature has a floor, the image tower pools the
last block with no head convolution, BatchNorm keeps TensorFlow's 0.99 decay, a DDP run
survives an undecodable image with full batches, retrieval scores each image once, metrics
never repeat a step after a resume, the loader resumes without decoding what it consumed,
the tokenizer is a step of its own, and accumulation and checkpointing keep the gradients.
All on synthetic shards written here (no curation run), on the CPU."""

from __future__ import annotations

import io
import json
import math
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="the trainer is the [train] extra")
pytest.importorskip("transformers")

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import yaml  # noqa: E402
from PIL import Image  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

import trainer.data as data_module  # noqa: E402
from trainer.cli import train_main  # noqa: E402
from trainer.config import CONFIG_DIR, TrainConfig  # noqa: E402
from trainer.data import Position, ShardDataset, collate, iter_captions  # noqa: E402
from trainer.eval import embed_shards  # noqa: E402
from trainer.evaluate import retrieval_recall  # noqa: E402
from trainer.loss import ContrastiveLoss  # noqa: E402
from trainer.model import DualEncoder, ImageTower  # noqa: E402
from trainer.optim import Lamb, make_optimizer, warmup_linear_decay  # noqa: E402
from trainer.train import METRICS, train_step  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _jpeg(rgb: tuple[int, int, int], size: int = 40) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), rgb).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def _write(path: Path, rows: list[tuple[str, bytes, str]]) -> Path:
    table = pa.Table.from_pylist(
        [{"uid": k, "image": img, "alt_text": cap} for k, img, cap in rows]
    )
    pq.write_table(table, path, row_group_size=4)  # several row groups: skipping is exercised
    return path


def _colour_rows(shard: int, n: int) -> list[tuple[str, bytes, str]]:
    names = ["red", "green", "blue", "yellow", "black", "white"]
    colours = [(220, 30, 30), (30, 180, 40), (40, 60, 230), (240, 220, 20), (5, 5, 5), (250,) * 3]
    return [
        (f"{shard:02d}{i:04d}", _jpeg(colours[i % 6]), f"a {names[i % 6]} square number {i}")
        for i in range(n)
    ]


# --- 1. LAMB and the temperature ------------------------------------------------------------


def test_lamb_trust_ratio_skips_the_no_decay_group() -> None:
    """A zero-initialised bias and a log-temperature at log(1) = 0 take Adam-sized steps
    (with the trust ratio they could never move: the step is capped at lr·‖w‖ = 0), while
    a decayed weight still moves by exactly lr·‖w‖ (the trust ratio's promise)."""
    weight = torch.nn.Parameter(torch.full((4, 4), 0.5))
    bias = torch.nn.Parameter(torch.zeros(4))
    log_t = torch.nn.Parameter(torch.zeros(()))
    opt = Lamb(
        [{"params": [weight], "weight_decay": 1e-5}, {"params": [bias, log_t], "weight_decay": 0}],
        lr=0.01,
    )
    for p in (weight, bias, log_t):
        p.grad = torch.ones_like(p)
    before = weight.detach().clone()
    opt.step()
    assert (weight - before).norm().item() == pytest.approx(0.01 * before.norm().item(), rel=1e-4)
    assert torch.allclose(bias, torch.full((4,), -0.01), atol=1e-6)  # Adam's first step: lr
    assert log_t.item() == pytest.approx(-0.01, abs=1e-6)
    # Ten steps with a steady gradient: Adam-sized (0.01 each) without the trust ratio; with
    # it (the old behaviour, apex's use_nvlamb) each step after the first is lr·|w|: 1.01^n.
    moved = {}
    for always_adapt in (False, True):
        t = torch.nn.Parameter(torch.zeros(()))
        opt = Lamb([t], lr=0.01, always_adapt=always_adapt)
        for _ in range(10):
            t.grad = torch.ones(())
            opt.step()
        moved[always_adapt] = -t.item()
    assert moved[False] == pytest.approx(0.1, rel=1e-3)
    assert moved[True] == pytest.approx(0.01 * 1.01**9, rel=1e-3)


def test_temperature_has_a_floor() -> None:
    cfg = TrainConfig.load("tiny", {"temperature_min": 0.02})
    model = DualEncoder(cfg)
    with torch.no_grad():
        model.log_temperature.fill_(math.log(0.001))
    assert model.temperature.item() == pytest.approx(0.02)
    model.clamp_temperature()
    assert model.log_temperature.item() == pytest.approx(math.log(0.02))


def test_paper_configuration_lowers_the_temperature_and_the_loss(tmp_path: Path) -> None:
    """LAMB and a temperature learned from 1.0 (ALIGN §4.1) on the tiny config. Before the fix
    the temperature stayed at 1.0000 (±5e-5) however long a run was."""
    folder = tmp_path / "data"
    folder.mkdir()
    from tests.test_trainer_learns import _shard

    _shard(folder / "00000.parquet", per_class=8, seed=1)
    run = tmp_path / "run"
    args = ["--config", "tiny", "--data", str(folder), "--output", str(run), "--steps", "30"]
    args += ["--batch-size", "16", "--learning-rate", "0.05", "--warmup-steps", "5"]
    args += ["--total-steps", "200", "--optimizer", "lamb", "--temperature-init", "1.0"]
    assert train_main(args) == 0
    lines = [json.loads(x) for x in (run / METRICS).read_text().splitlines()]
    assert [x["step"] for x in lines] == list(range(1, 31))
    first, last = lines[:5], lines[-5:]
    # Measured: the temperature 1.0 -> ~0.8, the loss 5.54 -> ~4.9 (2 ln 16 = 5.55: chance).
    assert last[-1]["temperature"] < 0.92, [x["temperature"] for x in lines]
    mean = lambda xs: sum(x["loss"] for x in xs) / len(xs)  # noqa: E731
    assert mean(last) < mean(first) - 0.2, [x["loss"] for x in lines]


# --- 3, 4. The image tower ------------------------------------------------------------------


def test_image_tower_pools_the_last_block_like_align() -> None:
    """B7 pools its last block's 640 channels, the embedding itself: no head convolution
    (Hugging Face's EfficientNet would widen to 2560 first) and no projection. B5's 512
    channels need one (Table 8's baseline embeds in 640)."""
    small_text = TrainConfig.load("tiny").text_encoder  # BERT-base would only cost time here
    b7 = DualEncoder(TrainConfig.load("b7", {"vocab_size": 100, "text_encoder": small_text}))
    assert b7.image.width == 640 and isinstance(b7.image_projection, torch.nn.Identity)
    assert not any("top" in name for name, _ in b7.image.named_modules())
    base = DualEncoder(TrainConfig.load("base", {"vocab_size": 100, "text_encoder": small_text}))
    assert base.image.width == 512 and base.image_projection.in_features == 512
    # The pooled feature is the mean of the last block's output over the image.
    tiny = ImageTower(TrainConfig.load("tiny")).eval()
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        x = tiny.embeddings(pixels)
        for block in tiny.blocks:
            x = block(x)
        assert torch.allclose(tiny(pixels), x.mean(dim=(2, 3)))
        assert tiny(pixels).shape == (2, tiny.width)


def test_batch_norm_keeps_tensorflows_decay() -> None:
    """TensorFlow's decay 0.99 is PyTorch's momentum 0.01: one batch moves the running mean
    1% of the way, not 99% (Hugging Face's config passes 0.99 through)."""
    assert TrainConfig().batch_norm_momentum == TrainConfig.load("b7").batch_norm_momentum == 0.01
    # The tiny config's short runs use 0.1 (tiny.yaml); the paper's value on its small tower:
    tower = ImageTower(TrainConfig.load("tiny", {"batch_norm_momentum": 0.01}))
    norms = [m for m in tower.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(m.momentum == 0.01 for m in norms)
    stem = tower.embeddings.batchnorm
    tower.train()
    pixels = torch.randn(4, 3, 64, 64) + 3.0
    with torch.no_grad():
        feats = tower.embeddings.convolution(tower.embeddings.padding(pixels))
        tower(pixels)
    assert torch.allclose(stem.running_mean, 0.01 * feats.mean(dim=(0, 2, 3)), atol=1e-5)


# --- 2. DDP with an undecodable image -------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_with_an_undecodable_image_keeps_batches_full(tmp_path: Path) -> None:
    """Two ranks (gloo): each shard starts with an image that does not decode. Before, one
    rank's batch came out short and the gather failed ("Received data size doesn't match")
    or a rank skipped a step and the other waited forever. Now batches stay full and the
    failures are counted, across ranks, beside the samples."""
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    data = tmp_path / "data"
    data.mkdir()
    for shard in range(2):
        rows = [(f"bad{shard}", b"this is not an image", "a broken picture of nothing")]
        _write(data / f"{shard:05d}.parquet", rows + _colour_rows(shard, 12))
    tiny = yaml.safe_load((CONFIG_DIR / "tiny.yaml").read_text())
    # No shuffle: each rank decodes its bad image first, so exactly 2 are met in 3 steps.
    config = tmp_path / "tiny-ordered.yaml"
    config.write_text(yaml.safe_dump({**tiny, "shuffle_buffer": 0, "num_workers": 0}))
    tokenizer = tmp_path / "tokenizer.json"
    assert train_main(["tokenizer", "--data", str(data), "--output", str(tokenizer)]) == 0
    run = tmp_path / "run"
    command = [torchrun, "--nproc_per_node", "2", "--master_addr", "127.0.0.1"]
    command += ["--master_port", str(_free_port()), "-m", "trainer.cli"]
    command += ["--config", str(config), "--data", str(data), "--steps", "3"]
    command += ["--batch-size", "8", "--output", str(run), "--tokenizer", str(tokenizer)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(x) for x in (run / METRICS).read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3]
    assert [x["samples"] for x in lines] == [8, 16, 24]  # full global batches every step
    assert lines[-1]["decode_failures"] == 2  # both ranks' failures, all-reduced
    assert all(x["loss"] > 0 for x in lines)


# --- 5. Retrieval on a set with five captions per image ---------------------------------------


class _ColourModel(torch.nn.Module):
    """Embeds an image by its red level (one of N) and a text by its first token: a model
    that is always right, so the scores depend only on how rows are grouped."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        index = (pixels[:, 0].float().mean(dim=(1, 2)) / 40).round().long()
        return torch.nn.functional.one_hot(index, self.n).float()

    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.one_hot(ids[:, 0], self.n).float()


def test_retrieval_groups_captions_by_image(tmp_path: Path) -> None:
    """A COCO-like set: 6 images, 5 captions each, one row per caption. One-to-one pairing
    put each image 5 times in the gallery and capped text->image R@1 near 1/5."""
    rows = [
        (f"{i}-{c}", _jpeg((40 * i, 0, 0)), f"{i} caption {c}") for i in range(6) for c in range(5)
    ]
    _write(tmp_path / "coco.parquet", rows)

    def tokenize(caption: str) -> dict[str, torch.Tensor]:
        return {"input_ids": torch.tensor([int(caption[0])]), "attention_mask": torch.ones(1)}

    cfg = TrainConfig.load("tiny", {"resize": 32, "crop": 32})
    image_emb, text_emb, owner, failures = embed_shards(
        _ColourModel(6), tokenize, cfg, [str(tmp_path)], 7, torch.device("cpu")
    )
    assert image_emb.shape[0] == 6 and text_emb.shape[0] == 30 and failures == 0
    assert owner.tolist() == [i for i in range(6) for _ in range(5)]
    recall = retrieval_recall(image_emb, text_emb, owner)
    assert recall["t2i_R@1"] == 1.0 and recall["i2t_R@1"] == 1.0
    # What the one-to-one pairing scored on the same embeddings: each image 5 times.
    assert retrieval_recall(image_emb[owner], text_emb, torch.arange(30))["t2i_R@1"] == 0.2


# --- 7. metrics.jsonl after a resume ----------------------------------------------------------


def test_metrics_do_not_repeat_steps_after_a_resume(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    _write(data / "00000.parquet", _colour_rows(0, 16))
    run = tmp_path / "run"
    args = ["--config", "tiny", "--data", str(data), "--output", str(run), "--batch-size", "4"]
    assert train_main([*args, "--steps", "2"]) == 0
    # An interrupted run logged steps 3 and 4 but died before checkpointing them.
    with (run / METRICS).open("a") as f:
        f.write(json.dumps({"step": 3, "loss": 9.0}) + "\n" + json.dumps({"step": 4}) + "\n")
    assert train_main([*args, "--steps", "4"]) == 0
    lines = [json.loads(x) for x in (run / METRICS).read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3, 4] and lines[2]["loss"] != 9.0


# --- 8. Resuming the data stream --------------------------------------------------------------


def _stream(tmp_path: Path) -> list[str]:
    data = tmp_path / "data"
    if not data.exists():
        data.mkdir()
        for shard in range(3):
            rows = _colour_rows(shard, 9)
            rows.insert(4, (f"bad{shard}", b"\x89PNG broken", "a broken image"))
            _write(data / f"{shard:05d}.parquet", rows)
    return [str(data)]


def _dataset(paths: list[str]) -> ShardDataset:
    return ShardDataset(
        paths, train=True, resize=24, crop=20, shuffle_buffer=5, epochs=None, shards_per_worker=2
    )


def test_resume_skips_consumed_records_without_decoding_them(tmp_path, monkeypatch) -> None:
    """Resumed from a position, a reader yields exactly what the uninterrupted one would
    have (same samples, same augmentations, into the next epoch), decoding only those: the
    records it had consumed are replayed from the shard lengths, never read or decoded."""
    paths = _stream(tmp_path)
    whole = list(zip(range(45), iter(_dataset(paths)), strict=False))
    worker, epoch, emitted = whole[11][1]["position"]
    failed_before = sum(len(item["decode_failures"]) for _, item in whole[:12])
    assert (worker, epoch) == (0, 0) and emitted == 12 + failed_before
    decoded: list[bytes] = []
    real = data_module.decode_image

    def counting(data: bytes, *args: object) -> object:
        decoded.append(data)
        return real(data, *args)

    monkeypatch.setattr(data_module, "decode_image", counting)
    resumed = _dataset(paths)
    resumed.resume({0: Position(epoch, emitted)})
    tail = list(zip(range(33), iter(resumed), strict=False))
    for (_, a), (_, b) in zip(whole[12:], tail, strict=True):
        assert a["key"] == b["key"] and torch.equal(a["image"], b["image"])
        assert [f.key for f in a["decode_failures"]] == [f.key for f in b["decode_failures"]]
    failures = sum(len(b["decode_failures"]) for _, b in tail)
    assert len(decoded) == 33 + failures  # the tail's samples and failures, nothing before
    assert {b["position"][1] for _, b in tail} == {0, 1}  # it crossed into epoch 1


def test_resume_with_two_workers_keeps_the_batch_order(tmp_path: Path) -> None:
    """With DataLoader workers, batches come from the workers in turn; a resumed loader
    starts at the worker whose batch was next (the phase), so the order is unchanged."""
    paths = _stream(tmp_path)

    def batches(ds: ShardDataset, n: int) -> list[dict]:
        loader = DataLoader(ds, batch_size=3, num_workers=2, collate_fn=collate)
        return [b for _, b in zip(range(n), loader, strict=False)]

    whole = batches(_dataset(paths), 8)
    consumed = whole[:3]  # worker 0, 1, 0: worker 1's batch is next
    positions = {}
    for b in consumed:
        worker, epoch, emitted = b["position"]
        positions[worker] = Position(epoch, emitted)
    resumed = _dataset(paths)
    resumed.resume(positions, phase=3 % 2)
    tail = batches(resumed, 5)
    assert [b["batch"]["key"] for b in tail] == [b["batch"]["key"] for b in whole[3:]]


# --- 9. The tokenizer, a step of its own -------------------------------------------------------


def test_tokenizer_step_reads_the_captions_alone(tmp_path: Path, monkeypatch) -> None:
    data = tmp_path / "data"
    data.mkdir()
    _write(data / "00000.parquet", _colour_rows(0, 12))
    read_columns: list[object] = []
    real = pq.ParquetFile.iter_batches

    def spy(self: pq.ParquetFile, *args: object, **kwargs: object) -> object:
        read_columns.append(kwargs.get("columns"))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", spy)
    assert list(iter_captions(str(data / "00000.parquet")))[:2] == [
        "a red square number 0",
        "a green square number 1",
    ]
    out = tmp_path / "tok" / "tokenizer.json"
    assert train_main(["tokenizer", "--data", str(data), "--output", str(out)]) == 0
    assert read_columns and all(cols == ["alt_text"] for cols in read_columns)
    vocab = json.loads(out.read_text())["model"]["vocab"]
    assert "red" in vocab and "[CLS]" in vocab


# --- 13. Accumulation and activation checkpointing keep the gradients -------------------------


def _step_once(cfg: TrainConfig, batch: dict, accum: int, train_mode: bool) -> dict:
    torch.manual_seed(0)
    model = DualEncoder(cfg)
    model.train(train_mode)
    opt = make_optimizer(model, "adamw", 1e-3, 0.0)
    sched = warmup_linear_decay(opt, 1, 10)
    grads = {}

    def keep_grads() -> None:
        grads.update({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})

    opt.register_step_pre_hook(lambda *_: keep_grads())
    loss_fn = ContrastiveLoss(0.1, gather=False)
    train_step(model, loss_fn, batch, opt, sched, torch.device("cpu"), False, accum)
    return grads


def test_accumulation_and_checkpointing_give_the_full_batch_gradient() -> None:
    small = {"vocab_size": 50, "resize": 32, "crop": 32}
    cfg = TrainConfig.load("tiny", small)
    g = torch.Generator().manual_seed(1)
    batch = {
        "image": torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, generator=g),
        "input_ids": torch.randint(5, 50, (8, 12), generator=g),
        "attention_mask": torch.ones(8, 12, dtype=torch.long),
    }
    # Eval mode: BatchNorm's batch statistics (and dropout) would differ by micro-batch.
    full = _step_once(cfg, batch, 1, train_mode=False)
    accumulated = _step_once(cfg, batch, 4, train_mode=False)
    assert full.keys() == accumulated.keys() and "log_temperature" in full
    for name, grad in full.items():
        # The temperature's gradient too: taken once, not once per micro-batch.
        assert torch.allclose(grad, accumulated[name], rtol=1e-4, atol=1e-6), name
    # Checkpointing recomputes activations in backward (train mode: BatchNorm, dropout).
    plain = _step_once(cfg, batch, 1, train_mode=True)
    checkpointed = _step_once(
        TrainConfig.load("tiny", {**small, "grad_checkpointing": True}),
        batch,
        1,
        train_mode=True,
    )
    for name, grad in plain.items():
        assert torch.allclose(grad, checkpointed[name], rtol=1e-4, atol=1e-6), name


# --- 6. Zero-shot: CLIP's templates and ImageNet's class names, shipped ------------------------


def test_zero_shot_ships_clips_templates_and_imagenets_names(tmp_path: Path) -> None:
    from trainer.evaluate import IMAGENET_CLASSES, PROMPT_TEMPLATES, image_folder

    assert len(PROMPT_TEMPLATES) == 80 == len(set(PROMPT_TEMPLATES))
    assert all(t.count("{}") == 1 for t in PROMPT_TEMPLATES)
    assert "itap of a {}." in PROMPT_TEMPLATES and "a photo of a {}." in PROMPT_TEMPLATES
    assert len(IMAGENET_CLASSES) == 1000
    assert IMAGENET_CLASSES[:3] == ["tench", "goldfish", "great white shark"]
    assert IMAGENET_CLASSES[-1] == "toilet paper"
    # The full layout: 1000 WordNet-id folders get CLIP's names, in sorted-id order.
    for i in range(1000):
        (tmp_path / f"n{i:08d}").mkdir()
    _, _, names = image_folder(tmp_path)
    assert names == IMAGENET_CLASSES
