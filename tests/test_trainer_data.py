"""trainer/data.py on real shards: the bundled sample curated into all three formats."""

from __future__ import annotations

import json
import random
import struct
import zlib
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

torch = pytest.importorskip("torch", reason="the trainer is the [train] extra")

from PIL import Image  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from curation import reasons  # noqa: E402
from curation.config import CurationConfig  # noqa: E402
from curation.shards import SHARD_SCHEMA  # noqa: E402
from filters.image import decode  # noqa: E402
from tests.conftest import SAMPLE_WARC  # noqa: E402
from trainer.data import (  # noqa: E402
    MAX_PIXELS,
    DecodeFailure,
    ShardDataset,
    collate,
    expand_paths,
    image_transform,
    iter_records,
    normalize_pixels,
    record_count,
)

# Records the sample keeps: read from the run's own report (the pipeline's rules change; these
# tests are about reading what it wrote).
KEPT = 0
SHARD_SIZE = 3  # -> 4 shards per format, so that two workers each get some


@pytest.fixture(scope="module")
def output(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pipelines.cli import main

    out = tmp_path_factory.mktemp("curated")
    argv = ["run", "--input", str(SAMPLE_WARC), "--output", str(out), "--images-from", "archive"]
    main([*argv, "--formats", "parquet,tfrecord,webdataset", "--shard-size", str(SHARD_SIZE)])
    global KEPT
    KEPT = json.loads((out / "stats.json").read_text())["totals"]["kept"]
    return out


FOLDERS = {"parquet": "shards", "tfrecord": "tfrecord", "webdataset": "webdataset"}


def _records(output: Path, fmt: str) -> list[tuple[str, bytes, str]]:
    return [r for shard in expand_paths(str(output / FOLDERS[fmt])) for r in iter_records(shard)]


def _tokenize(caption: str) -> dict[str, torch.Tensor]:
    ids = [min(b, 255) for b in caption.encode()[:8]]
    return {"input_ids": torch.tensor(ids + [0] * (8 - len(ids))), "length": torch.tensor(len(ids))}


def _bad_shard(path: Path, like: Path, images: dict[str, bytes]) -> Path:
    """A Parquet shard with the columns of `like`: its first row, once per (uid, image)."""
    row = pq.read_table(like).slice(0, 1).to_pylist()[0]
    rows = [{**row, "uid": uid, "key": uid, "image": data} for uid, data in images.items()]
    pq.write_table(pa.Table.from_pylist(rows, schema=SHARD_SCHEMA), path)
    return path


def _png_bomb(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height, with a tiny IDAT: a header-only bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 16)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_every_format_yields_the_same_samples(output: Path) -> None:
    by_format = {fmt: _records(output, fmt) for fmt in FOLDERS}
    pairs = {fmt: {(k, c) for k, _, c in recs} for fmt, recs in by_format.items()}
    assert len(pairs["parquet"]) == KEPT == len(by_format["parquet"])
    assert pairs["parquet"] == pairs["tfrecord"] == pairs["webdataset"]
    images = {fmt: {k: data for k, data, _ in recs} for fmt, recs in by_format.items()}
    assert images["parquet"] == images["tfrecord"] == images["webdataset"]
    for data in images["parquet"].values():
        assert isinstance(decode(data, min_side=None), Image.Image)


def test_paths_globs_and_folders(output: Path) -> None:
    tars = sorted(str(p) for p in (output / "webdataset").glob("*.tar"))
    assert len(tars) == -(-KEPT // SHARD_SIZE)
    assert expand_paths(str(output / "webdataset")) == tars  # _manifest.json is not a shard
    assert expand_paths([str(output / "webdataset" / "*.tar"), tars[0]]) == tars
    with pytest.raises(FileNotFoundError):
        expand_paths([str(output / "nothing" / "*.tar")])
    with pytest.raises(ValueError):
        list(iter_records(str(output / "stats.json")))


def test_tfrecord_crc_is_checked(output: Path, tmp_path: Path) -> None:
    data = bytearray((output / "tfrecord" / "00000.tfrecord").read_bytes())
    data[40] ^= 0xFF  # inside the first record's data
    bad = tmp_path / "bad.tfrecord"
    bad.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="CRC"):
        list(iter_records(str(bad)))
    bad.write_bytes(bytes(data[:-3]))
    with pytest.raises(ValueError):
        list(iter_records(str(bad)))


@pytest.mark.parametrize("fmt", sorted(FOLDERS))
def test_dataloader_covers_every_sample_once_per_epoch(output: Path, fmt: str) -> None:
    ds = ShardDataset(
        str(output / FOLDERS[fmt]), _tokenize, train=True, resize=64, crop=56, epochs=2
    )
    loader = DataLoader(ds, batch_size=4, num_workers=2, collate_fn=collate)
    keys: list[str] = []
    for out in loader:
        assert out["decode_failures"] == []
        batch = out["batch"]
        n = len(batch["key"])
        # uint8 crosses the process boundary (a quarter of float32's bytes); the device scales.
        assert batch["image"].shape == (n, 3, 56, 56) and batch["image"].dtype == torch.uint8
        assert normalize_pixels(batch["image"]).abs().max() <= 1.0
        assert batch["input_ids"].shape == (n, 8) and len(batch["caption"]) == n
        keys += batch["key"]
    expected = {k for k, _ in {(k, c) for k, _, c in _records(output, "parquet")}}
    assert Counter(keys) == Counter({k: 2 for k in expected})  # 2 epochs, once each


def test_split_across_ranks_and_workers(output: Path) -> None:
    ds = ShardDataset(str(output / "shards"), train=True, seed=3)
    slots = [(rank, 2, worker, 2) for rank in range(2) for worker in range(2)]
    for epoch in range(3):
        read = [s for slot in slots for s in ds.shards_for(epoch, *slot)]
        assert sorted(read) == sorted(ds.shards)  # each shard by exactly one (rank, worker)


def _order(output: Path, seed: int, **kw: object) -> list[str]:
    ds = ShardDataset(str(output / "shards"), train=True, resize=32, crop=24, seed=seed, **kw)
    return [item["key"] for item in ds]


def test_shuffle_is_deterministic_per_seed(output: Path) -> None:
    first = _order(output, seed=0, shuffle_buffer=5)
    assert first == _order(output, seed=0, shuffle_buffer=5)
    assert first != _order(output, seed=1, shuffle_buffer=5)
    assert sorted(first) == sorted(_order(output, seed=1, shuffle_buffer=5))
    sorted_keys = [k for k, _, _ in _records(output, "parquet")]
    assert first != sorted_keys
    eval_keys = [i["key"] for i in ShardDataset(str(output / "shards"), train=False)]
    assert eval_keys == sorted_keys  # eval: shards and samples in order


def test_epochs_differ_and_none_is_endless(output: Path) -> None:
    ds = ShardDataset(str(output / "shards"), train=True, resize=32, crop=24, epochs=None)
    it = iter(ds)
    keys = [next(it)["key"] for _ in range(3 * KEPT)]
    epochs = [keys[i : i + KEPT] for i in range(0, 3 * KEPT, KEPT)]
    assert all(sorted(e) == sorted(epochs[0]) for e in epochs)
    assert len({tuple(e) for e in epochs}) > 1


def test_transforms() -> None:
    im = Image.new("RGB", (100, 50), (255, 0, 0))
    im.paste((0, 0, 255), (0, 0, 50, 50))  # left half blue
    ev = image_transform(False, resize=20, crop=10)(im)
    assert ev.shape == (3, 10, 10) and ev.dtype == torch.float32
    assert torch.allclose(ev[:, :, 0], torch.tensor([-1.0, -1.0, 1.0]).view(3, 1))  # blue
    assert torch.allclose(ev[:, :, -1], torch.tensor([1.0, -1.0, -1.0]).view(3, 1))  # red
    a = [image_transform(True, 20, 10, random.Random(7))(im) for _ in range(2)]
    t = image_transform(True, 20, 10, random.Random(7))
    b = [t(im), t(im)]
    assert torch.equal(a[0], b[0]) and torch.equal(a[0], a[1])
    flips = {bool(t(im)[2, 0, 0] > 0) for _ in range(20)}  # blue left, or flipped right
    assert flips == {True, False}
    with pytest.raises(ValueError):
        image_transform(True, resize=10, crop=20)


def test_bad_images_are_decode_failures_not_dropped(output: Path, tmp_path: Path) -> None:
    assert CurationConfig().max_image_pixels == MAX_PIXELS
    good = sorted((output / "shards").glob("*.parquet"))
    images = {"0" * 32: b"not an image at all", "f" * 32: _png_bomb(100_000, 100_000)}
    bad = _bad_shard(tmp_path / "bad.parquet", good[0], images)
    ds = ShardDataset([str(bad), *map(str, good)], train=True, resize=32, crop=24)
    loader = DataLoader(ds, batch_size=5, num_workers=2, collate_fn=collate)
    failures: list[DecodeFailure] = []
    samples = 0
    for out in loader:
        failures += out["decode_failures"]
        samples += len(out["batch"]["key"]) if out["batch"] is not None else 0
    assert samples == KEPT
    by_key = {f.key: f for f in failures}
    assert len(failures) == 2 == len(by_key)
    assert by_key["0" * 32].reason == reasons.IMAGE_UNREADABLE
    assert by_key["f" * 32].reason == reasons.IMAGE_TOO_MANY_PIXELS
    assert by_key["f" * 32].detail == "100000x100000"


def test_collate_all_failures() -> None:
    out = collate([DecodeFailure("a", reasons.IMAGE_UNREADABLE), DecodeFailure("b", "x", "y")])
    assert out["batch"] is None and [f.key for f in out["decode_failures"]] == ["a", "b"]
    item = {"key": "k", "image": torch.zeros(3, 2, 2), "caption": "c"}
    out = collate([item, DecodeFailure("b", "x"), item])
    assert out["batch"]["image"].shape == (2, 3, 2, 2) and out["batch"]["key"] == ["k", "k"]
    assert len(out["decode_failures"]) == 1


def test_ranks_read_disjoint_shards(output: Path) -> None:
    def keys(rank: int) -> list[str]:
        ds = ShardDataset(
            str(output / "shards"), train=True, resize=32, crop=24, rank=rank, world_size=2
        )
        return [item["key"] for item in ds]

    k0, k1 = keys(0), keys(1)
    assert k0 and k1 and not set(k0) & set(k1)
    assert sorted(k0 + k1) == sorted(k for k, _, _ in _records(output, "parquet"))


@pytest.mark.parametrize("fmt", sorted(FOLDERS))
def test_reading_from_an_offset_and_counting(output: Path, fmt: str) -> None:
    """A resumed reader starts mid-shard: iter_records(start=k) gives the records from the
    k-th on (Parquet skips row groups, TFRecord seeks over lengths, tar over headers), and
    record_count reads no image."""
    for shard in expand_paths(str(output / FOLDERS[fmt])):
        records = list(iter_records(shard))
        assert record_count(shard) == len(records)
        for start in range(len(records) + 1):
            assert list(iter_records(shard, start=start)) == records[start:]
    # A Parquet shard of several row groups: the start falls inside the later ones too.
    rows = _records(output, "parquet")
    table = pa.Table.from_pylist([{"uid": k, "image": d, "alt_text": c} for k, d, c in rows])
    many = output.parent / f"groups-{fmt}.parquet"
    pq.write_table(table, many, row_group_size=5)
    for start in range(len(rows) + 1):
        assert list(iter_records(str(many), start=start)) == rows[start:]
