"""The eval-duplicate rule in the pipeline: `curate eval-index` from folders, globs and tars,
`curate run --eval-index` over HTTP from 127.0.0.1, the report's side-by-side gallery, and
the same verdicts on both local runners. The matcher itself: tests/test_evaldup.py."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageOps

from curation import reasons
from curation.config import ConfigError, CurationConfig
from pipelines.cli import main
from tests.conftest import SHARED_DATA, ImageServer, require, serve
from tests.test_cli import check_invariant

EVALSETS = SHARED_DATA / "evalsets"


def _eval_photos() -> list[Path]:
    folder = require(EVALSETS / "imagenet_samples")
    return sorted(folder.glob("*.JPEG"))[:6]


def _jpeg(im: Image.Image, quality: int = 85) -> bytes:
    buf = io.BytesIO()
    im.convert("RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _copies(path: Path) -> dict[str, bytes]:
    im = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
    w, h = im.size
    scale = max(0.5, 220 / min(w, h))
    return {
        # Half size, or as small as keeps the shorter side above ALIGN's 200 px rule.
        "half": _jpeg(im.resize((int(w * scale), int(h * scale)))),
        "crop5": _jpeg(im.crop((w // 20, h // 20, w - w // 20, h - h // 20))),
        "grey": _jpeg(im.convert("L"), 60),
    }


def test_an_index_is_the_same_from_a_folder_a_glob_and_a_tar(tmp_path) -> None:
    photos = _eval_photos()
    folder = tmp_path / "photos"
    folder.mkdir()
    tar_path = tmp_path / "photos.tar"
    with tarfile.open(tar_path, "w") as tar:
        for p in photos:
            (folder / p.name).write_bytes(p.read_bytes())
            tar.add(p, arcname=p.name)
    sources = {"folder": str(folder), "glob": str(folder / "*.JPEG"), "tar": str(tar_path)}
    built = {}
    for kind, source in sources.items():
        out = tmp_path / f"{kind}.index"
        assert main(["eval-index", "--images", f"val={source}", "--output", str(out)]) == 0
        built[kind] = out.read_bytes()
    assert built["folder"] == built["glob"] == built["tar"]
    # Unnamed, the set is the folder's or the archive's name.
    assert main(["eval-index", "--images", str(tar_path), "--output", str(tmp_path / "x")]) == 0
    from filters.evaldup import EvalMatchIndex

    names = EvalMatchIndex.load(tmp_path / "x").names.tolist()
    assert names == [f"photos/{p.name}" for p in photos]


def test_eval_index_refuses_sources_without_images(tmp_path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    args = ["eval-index", "--images", str(tmp_path / "nothing-*.jpg"), "--output", "x.index"]
    assert main(args) == 2
    assert "no eval images match" in capsys.readouterr().err
    args = ["eval-index", "--images", str(tmp_path / "empty"), "--output", str(tmp_path / "i")]
    assert main(args) == 2
    assert "no usable image" in capsys.readouterr().err
    assert not (tmp_path / "i").exists()


def test_eval_images_and_an_index_are_one_or_the_other() -> None:
    with pytest.raises(ConfigError, match="give one"):
        CurationConfig(eval_images=("a/*.jpg",), eval_index="eval.index")


@pytest.fixture
def copies_server():
    """Copies of six eval photos and six unrelated photos, served from 127.0.0.1."""
    server = ImageServer()
    for path in _eval_photos():
        for name, data in _copies(path).items():
            server.images[f"/copy/{name}/{path.stem}.jpg"] = data
    others = sorted(require(SHARED_DATA / "images" / "skimage").glob("*.jpg"))
    others += sorted(require(EVALSETS / "coco_val2014").glob("*.jpg"))
    for path in others[:6]:
        server.images[f"/other/{path.stem}.jpg"] = _jpeg(Image.open(path))
    with serve(server):
        yield server


def _table(tmp_path: Path, server: ImageServer) -> Path:
    table = tmp_path / "urls.tsv"
    words = [
        "red",
        "green",
        "blue",
        "amber",
        "violet",
        "grey",
        "white",
        "black",
        "olive",
        "teal",
        "coral",
        "ivory",
    ]
    lines = [
        f"{server.base}{url}\ta photograph in {words[i % 12]} tones, number {i}\n"
        for i, url in enumerate(sorted(server.images))
    ]
    table.write_text("url\tcaption\n" + "".join(lines))
    return table


def test_run_with_an_index_rejects_the_copies_and_keeps_the_rest(
    tmp_path, copies_server: ImageServer
) -> None:
    index = tmp_path / "eval.index"
    folder = require(EVALSETS / "imagenet_samples")
    assert main(["eval-index", "--images", f"imagenet={folder}", "--output", str(index)]) == 0
    table = _table(tmp_path, copies_server)
    base = ["run", "--input", str(table), "--images-from", "http", "--nsfw", "false"]
    base += ["--allow-private-network", "true", "--eval-index", str(index)]
    runs = {}
    for mode in ("in_memory", "multi_processing"):
        out = tmp_path / mode
        extra = [f"--direct_running_mode={mode}"]
        if mode == "multi_processing":
            extra.append("--direct_num_workers=2")
        assert main([*base, "--output", str(out), *extra]) == 0
        kept, rejected, _ = check_invariant(out)
        runs[mode] = (kept, rejected)
        by_url = {r["image_url"].split("/", 3)[3]: r for r in rejected}
        assert {r["image_url"].split("/", 3)[3] for r in kept} == {
            u.lstrip("/") for u in copies_server.images if u.startswith("/other/")
        }
        for path in _eval_photos():
            for name in ("half", "crop5", "grey"):
                row = by_url[f"copy/{name}/{path.stem}.jpg"]
                assert row["reason"] == reasons.EVAL_DUPLICATE
                assert row["detail"].startswith(f"imagenet/{path.name} (score ")
    # Both runners: the same verdicts, byte for byte in the ledger's rows.
    assert runs["in_memory"] == runs["multi_processing"]
    # The report shows each removed copy beside the eval image it matched.
    samples = pq.read_table(tmp_path / "in_memory" / "report_samples.parquet").to_pylist()
    evals = [s for s in samples if s["group"] == reasons.EVAL_DUPLICATE]
    assert evals and all(s["thumbnail"] and s["match_thumbnail"] for s in evals)
    page = (tmp_path / "in_memory" / "report.html").read_text()
    assert page.count("duplicates</small>") == len(evals)
