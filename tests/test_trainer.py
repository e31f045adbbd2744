"""The trainer: loss, optimizer, schedule, config, model, tokenizer, and curate-train /
curate-eval end to end on shards curated from the bundled sample (the tiny config, on CPU)."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="the trainer is the [train] extra")
pytest.importorskip("transformers")

import torch.multiprocessing as mp  # noqa: E402

from pipelines.cli import main as curate  # noqa: E402
from tests.conftest import SAMPLE_WARC, SHARED_DATA  # noqa: E402
from trainer.cli import eval_main, train_main  # noqa: E402
from trainer.config import TrainConfig, TrainConfigError  # noqa: E402
from trainer.data import iter_records  # noqa: E402
from trainer.loss import ContrastiveLoss  # noqa: E402
from trainer.model import DualEncoder  # noqa: E402
from trainer.optim import Lamb, warmup_linear_decay  # noqa: E402
from trainer.tokenizer import TextEncoder, train_wordpiece  # noqa: E402


def _emb(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=-1)


def test_loss_is_the_symmetric_normalized_softmax() -> None:
    x, y = _emb(6, 8, 1), _emb(6, 8, 2)
    t = torch.tensor(0.5)
    out = ContrastiveLoss(label_smoothing=0.0, gather=False)(x, y, t)
    logits = x @ y.T / 0.5
    labels = torch.arange(6)
    expect_i2t = torch.nn.functional.cross_entropy(logits, labels)
    expect_t2i = torch.nn.functional.cross_entropy(logits.T, labels)
    assert torch.allclose(out["i2t"], expect_i2t) and torch.allclose(out["t2i"], expect_t2i)
    assert torch.allclose(out["loss"], expect_i2t + expect_t2i)
    # Matched pairs cost less than random ones; smoothing raises the floor.
    same = ContrastiveLoss(0.0, gather=False)(x, x, torch.tensor(0.05))["loss"]
    smooth = ContrastiveLoss(0.1, gather=False)(x, x, torch.tensor(0.05))["loss"]
    assert same < out["loss"] and smooth > same


def _gather_worker(rank: int, port: int, queue) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    x, y = _emb(8, 4, 3), _emb(8, 4, 4)
    mine = slice(rank * 4, rank * 4 + 4)
    xr, yr = x[mine].clone().requires_grad_(), y[mine].clone().requires_grad_()
    loss = ContrastiveLoss(0.1, gather=True)(xr, yr, torch.tensor(0.1))["loss"]
    loss.backward()
    queue.put((rank, float(loss), xr.grad.abs().sum().item() > 0))
    dist.destroy_process_group()


def test_gathered_loss_spans_the_global_batch() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    procs = [ctx.Process(target=_gather_worker, args=(r, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    results = sorted(queue.get() for _ in range(2))
    x, y = _emb(8, 4, 3), _emb(8, 4, 4)
    whole = float(ContrastiveLoss(0.1, gather=False)(x, y, torch.tensor(0.1))["loss"])
    # Each rank's rows scored against all 8: the mean over ranks is the global loss.
    assert abs(sum(r[1] for r in results) / 2 - whole) < 1e-5
    assert all(r[2] for r in results)  # gradients flow through the gather


def test_lamb_minimizes_and_schedule_matches_the_paper() -> None:
    w = torch.nn.Parameter(torch.tensor([3.0, -2.0]))
    opt = Lamb([w], lr=0.1)
    for _ in range(50):
        opt.zero_grad()
        (w**2).sum().backward()
        opt.step()
    assert w.norm() < 0.5
    sched = warmup_linear_decay(
        torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3), 10, 110
    )
    lrs = []
    for _ in range(110):
        lrs.append(sched.get_last_lr()[0])
        sched.optimizer.step()
        sched.step()
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert lrs[60] == pytest.approx(1e-3 * 50 / 100) and lrs[109] == pytest.approx(1e-5)


def test_configs() -> None:
    assert TrainConfig().temperature_init == 1.0 and TrainConfig().label_smoothing == 0.1
    assert TrainConfig().optimizer == "lamb" and TrainConfig().embed_dim == 640
    for size in ("tiny", "small", "base", "b7", "large"):
        TrainConfig.load(size)
    assert TrainConfig.load("large").embed_dim == 1376
    with pytest.raises(TrainConfigError, match="unknown key"):
        TrainConfig.load("tiny", {"learning_rat": 1.0})
    with pytest.raises(TrainConfigError, match="sizes"):
        TrainConfig.load("huge")


def test_model_and_tokenizer() -> None:
    texts = ["a red fox in the snow", "a barn owl on a fence", "two hikers on a path"] * 5
    enc = TextEncoder(train_wordpiece(texts, 200), 16)
    batch = enc.batch(["a red fox", "an owl"])
    assert batch["input_ids"].shape == (2, 16) and batch["attention_mask"][0, 0] == 1
    assert batch["input_ids"][0, 0] == enc.tokenizer.token_to_id("[CLS]")
    cfg = TrainConfig.load("tiny", {"vocab_size": enc.vocab_size})
    model = DualEncoder(cfg, enc.pad_id)
    img, txt, temp = model(
        torch.randn(2, 3, cfg.crop, cfg.crop), batch["input_ids"], batch["attention_mask"]
    )
    assert img.shape == txt.shape == (2, cfg.embed_dim)
    assert torch.allclose(img.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert float(temp.detach()) == pytest.approx(1.0)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("train") / "curated"
    args = ["run", "--input", str(SAMPLE_WARC), "--output", str(out), "--images-from", "archive"]
    assert curate([*args, "--formats", "parquet,webdataset"]) == 0
    return out


def test_train_resume_and_evaluate(shards: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = ["--config", "tiny", "--data", str(shards / "shards"), "--output", str(run)]
    assert train_main([*args, "--steps", "6", "--batch-size", "6"]) == 0
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == list(range(1, 7))
    assert all(x["loss"] > 0 and x["temperature"] > 0 and x["decode_failures"] == 0 for x in lines)
    assert (run / "checkpoint.pt").exists() and (run / "tokenizer.json").exists()
    # Resume: from step 6 to 9, from the WebDataset copy of the same records.
    wds = ["--config", "tiny", "--data", str(shards / "webdataset"), "--output", str(run)]
    assert train_main([*wds, "--steps", "9", "--batch-size", "6"]) == 0
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps[-3:] == [7, 8, 9]
    assert eval_main(["--model", str(run), "--data", str(shards / "shards")]) == 0
    result = json.loads((run / "eval.json").read_text())
    kept = sum(1 for p in (shards / "shards").glob("*.parquet") for _ in iter_records(str(p)))
    # Rows are grouped by image: the gallery holds each distinct image once.
    assert result["step"] == 9 and result["retrieval_pairs"] == kept
    assert 0 < result["retrieval_images"] <= kept
    assert 0.0 <= result["retrieval"]["i2t_R@1"] <= 1.0


def test_zero_shot_on_an_imagenet_layout_folder(shards: Path, tmp_path: Path) -> None:
    samples = SHARED_DATA / "evalsets" / "imagenet_samples"
    if not samples.exists():
        pytest.skip("needs ../shared/data/evalsets")
    folder = tmp_path / "imagenet"
    for path in sorted(samples.iterdir()):
        name = path.stem.split("_", 1)[1]
        (folder / name).mkdir(parents=True)
        (folder / name / path.name).write_bytes(path.read_bytes())
    run = tmp_path / "run"
    args = ["--config", "tiny", "--data", str(shards / "shards"), "--output", str(run)]
    assert train_main([*args, "--steps", "2", "--batch-size", "6"]) == 0
    assert eval_main(["--model", str(run), "--imagenet-folder", str(folder)]) == 0
    result = json.loads((run / "eval.json").read_text())
    assert result["zero_shot_classes"] == len(list(samples.iterdir()))
    assert 0.0 <= result["zero_shot"]["top1"] <= 1.0


def test_clear_errors(tmp_path: Path, capsys) -> None:
    assert (
        train_main(["--config", "huge", "--data", "x", "--steps", "1", "--output", str(tmp_path)])
        == 2
    )
    assert "sizes" in capsys.readouterr().err
    assert eval_main(["--model", str(tmp_path), "--data", "x"]) == 2


def test_torchrun_two_ranks_on_cpu(tmp_path: Path) -> None:
    """DistributedDataParallel through torchrun (gloo on CPU here; NCCL on GPUs)."""
    import shutil
    import subprocess
    import sys

    out = tmp_path / "cur"
    args = ["run", "--input", str(SAMPLE_WARC), "--output", str(out), "--images-from", "archive"]
    assert curate([*args, "--shard-size", "3", "--stop-after", "image"]) == 0
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    train = shutil.which("curate-train") or str(Path(sys.executable).parent / "curate-train")
    if not Path(train).exists():
        pytest.skip("curate-train is not installed as a console script")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = tmp_path / "run"
    # Under torchrun the tokenizer is its own step, before the run.
    tokenizer = tmp_path / "tokenizer.json"
    assert train_main(["tokenizer", "--data", str(out / "shards"), "--output", str(tokenizer)]) == 0
    result = subprocess.run(
        [
            torchrun,
            "--nproc_per_node",
            "2",
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(port),
            "--no-python",
            train,
            "--config",
            "tiny",
            "--data",
            str(out / "shards"),
            "--steps",
            "3",
            "--batch-size",
            "8",
            "--output",
            str(run),
            "--tokenizer",
            str(tokenizer),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3]  # rank 0 alone writes metrics


def test_gpu_benchmark_script_runs_on_cpu() -> None:
    """The GPU benchmark's smoke mode: the script works before a GPU is there to run it."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "bench_trainer_gpu.py"),
            "--device",
            "cpu",
            "--config",
            "tiny",
            "--steps",
            "2",
            "--batch",
            "4",
            "--fixed-batch",
            "--end-to-end",
            "--workers",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout[result.stdout.index("{") :])
    assert out["batch"] == 4 and out["samples_per_s"] > 0
    assert out["loader_samples_per_s"] > 0 and out["end_to_end_samples_per_s"] > 0
