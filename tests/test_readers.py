"""The shards as the trainers' own readers see them (issue #20): real images of every format
in ../shared/data/images, served from 127.0.0.1, curated into all three formats, then read by
the `webdataset` package with open_clip's sample filter, Hugging Face `datasets` (Parquet, and
its WebDataset loader on `--encode-format jpg` tars), DuckDB and the `tfrecord` reader with a
strict spec. tf.data and open_clip themselves are too heavy for CI: scripts/check_readers.py
runs them in throwaway environments (docs/outputs.md records the result)."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from curation import reasons
from curation.shards import EXTENSIONS
from pipelines.cli import main
from tests.conftest import SHARED_DATA, ImageServer, require, serve
from tests.test_cli import check_invariant, read_rows

# What open_clip's WebDataset pipeline keeps (open_clip_train/data.py
# filter_no_caption_or_no_image), and the keys its decoder maps to an image.
OPEN_CLIP_IMAGE_KEYS = ("png", "jpg", "jpeg", "webp")
TRAINER_FORMATS = {"JPEG", "PNG", "WEBP"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Every file of ../shared/data/images served over HTTP, curated twice: all formats with
    the default encoding, and WebDataset alone with --encode-format jpg."""
    folder = require(SHARED_DATA / "images")
    server = ImageServer()
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix not in (".md", ".csv"))
    for i, path in enumerate(files):
        server.images[f"/img/{i:03d}{path.suffix.lower()}"] = path.read_bytes()
    root = tmp_path_factory.mktemp("readers")
    table = root / "urls.tsv"
    words = ["red", "green", "blue", "amber", "violet", "grey", "white", "black"]
    table.write_text(
        "url\tcaption\n"
        + "".join(
            f"{{base}}{url}\ta test picture in {words[i % 8]} tones number {i}\n"
            for i, url in enumerate(sorted(server.images))
        )
    )
    out = {"all": root / "all", "jpg": root / "jpg"}
    with serve(server):
        table.write_text(table.read_text().replace("{base}", server.base))
        base = ["run", "--input", str(table), "--images-from", "http", "--no-nsfw"]
        base += ["--allow-private-network", "--max-retries", "0"]
        formats = "parquet,tfrecord,webdataset"
        assert main([*base, "--output", str(out["all"]), "--formats", formats]) == 0
        jpg = ["--output", str(out["jpg"]), "--formats", "webdataset", "--encode-format", "jpg"]
        assert main([*base, *jpg]) == 0
    return out


def _tars(out: Path) -> list[str]:
    return sorted(str(p) for p in (out / "webdataset").glob("*.tar"))


def _kept_total(out: Path) -> int:
    return json.loads((out / "stats.json").read_text())["totals"]["kept"]


def test_every_format_of_the_shared_images_is_stored_as_trainers_read_it(runs) -> None:
    kept, rejected, _ = check_invariant(runs["all"])
    formats = {r["original_format"] for r in kept}
    # The corpus holds what trainers cannot read: these came back transcoded.
    assert {"TIFF", "JPEG2000", "AVIF", "GIF", "MPO"} <= formats, formats
    for r in kept:
        stored = Image.open(io.BytesIO(r["image"]))
        assert stored.format == r["image_format"] in TRAINER_FORMATS, r["image_url"]
        assert stored.size == (r["width"], r["height"])
        if r["original_format"] in TRAINER_FORMATS and r["image_format"] == "JPEG":
            assert r["sha256"] and r["status"] == "success" and r["error_message"] is None
    assert not any(r["reason"] == reasons.INTERNAL_ERROR for r in rejected)


def test_tar_members_are_named_by_what_their_bytes_are(runs) -> None:
    for tar_path in _tars(runs["all"]):
        with tarfile.open(tar_path) as tar:
            for member in tar:
                _, ext = member.name.rsplit(".", 1)
                if ext in ("txt", "json"):
                    continue
                data = tar.extractfile(member).read()
                assert EXTENSIONS[Image.open(io.BytesIO(data)).format] == ext, member.name


def test_open_clip_filter_keeps_every_sample_and_sizes_json_counts_them(runs) -> None:
    import webdataset as wds

    def open_clip_keeps(sample: dict) -> bool:
        has_caption = "txt" in sample
        has_image = any(k in sample for k in OPEN_CLIP_IMAGE_KEYS)
        return has_caption and has_image

    tars = _tars(runs["all"])
    reached = list(wds.WebDataset(tars, shardshuffle=False).select(open_clip_keeps))
    assert len(reached) == _kept_total(runs["all"]) > 20
    sizes = json.loads((runs["all"] / "webdataset" / "sizes.json").read_text())
    assert sum(sizes[os.path.basename(t)] for t in tars) == len(reached)


def test_tfrecord_examples_all_carry_every_feature(runs) -> None:
    from tfrecord.reader import tfrecord_loader

    spec = {
        "image/encoded": "byte",
        "image/format": "byte",
        "image/original_format": "byte",
        "image/width": "int",
        "image/height": "int",
        "caption": "byte",
        "key": "byte",
        "text_lang": "byte",
        "nsfw_score": "float",
    }
    examples = [
        ex
        for path in sorted((runs["all"] / "tfrecord").glob("*.tfrecord"))
        for ex in tfrecord_loader(str(path), None, spec)
    ]
    assert len(examples) == _kept_total(runs["all"])
    for ex in examples:
        assert set(spec) <= set(ex)  # a strict parse spec finds every feature
        assert bytes(ex["image/format"]).decode() in ("jpg", "png", "webp")


def test_duckdb_reads_img2dataset_columns(runs) -> None:
    import duckdb

    shards = str(runs["all"] / "shards" / "*.parquet")
    sql = f"SELECT count(*) FROM '{shards}' WHERE status = 'success'"
    ((count,),) = duckdb.sql(sql).fetchall()
    assert count == _kept_total(runs["all"])
    ((errors,),) = duckdb.sql(f"SELECT count(error_message) FROM '{shards}'").fetchall()
    assert errors == 0


def test_hugging_face_datasets_reads_parquet_and_jpg_tars(runs, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    from datasets import load_dataset

    files = sorted(str(p) for p in (runs["all"] / "shards").glob("*.parquet"))
    parquet = load_dataset("parquet", data_files=files, split="train")
    assert parquet.num_rows == _kept_total(runs["all"])
    assert set(parquet.column_names) >= {"key", "url", "caption", "status", "image"}
    tars = load_dataset("webdataset", data_files=_tars(runs["jpg"]), split="train")
    assert tars.num_rows == _kept_total(runs["jpg"]) == _kept_total(runs["all"])
    for row in tars:
        assert isinstance(row["jpg"], Image.Image) and row["txt"]


def test_webdataset_alone_balances_and_encode_format_gives_one_type(runs) -> None:
    out = runs["jpg"]
    assert not (out / "shards").exists()  # no Parquet written, and still balanced
    stats = json.loads((out / "stats.json").read_text())
    rejected = len(read_rows(out / "rejects"))
    assert stats["totals"]["extracted"] == stats["totals"]["kept"] + rejected
    exts = set()
    for tar_path in _tars(out):
        with tarfile.open(tar_path) as tar:
            exts |= {m.name.rsplit(".", 1)[1] for m in tar}
    assert exts == {"jpg", "txt", "json"}
