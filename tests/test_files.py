"""URL tables that name their images by path: local files, file:// URLs, gs:// objects,
allowed only under `file_roots` (curation/files.py), end to end through `curate run`."""

from __future__ import annotations

import functools
import io
import json
import os
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from curation import reasons
from curation.files import image_path, is_image_path, normalize_root, read_image_file
from pipelines.cli import main
from tests.conftest import jpeg_bytes
from tests.test_cli import check_invariant

ROOTS = [normalize_root("/data/images"), normalize_root("gs://bucket/imgs/")]


@pytest.mark.parametrize(
    ("value", "table", "expected"),
    [
        # Not paths: the caller resolves them as URLs.
        ("https://example.com/a.jpg", "/data/t.parquet", (None, None)),
        ("HTTP://example.com/a.jpg", "/data/t.parquet", (None, None)),
        ("data:image/png;base64,AAAA", "/data/t.parquet", (None, None)),
        ("javascript:alert(1)", "/data/t.parquet", (None, None)),
        ("//example.com/a.jpg", "/data/t.parquet", (None, None)),
        ("", "/data/images/t.parquet", (None, None)),  # empty: the URL rules name it
        ("  ", "/data/images/t.parquet", (None, None)),
        (".", "/data/images/t.parquet", (None, None)),  # the table's folder is no image
        # A NUL byte, raw or percent-encoded: no file name holds one.
        ("/data/images/a.jpg\x00.png", "/x/t.parquet", (None, reasons.BAD_URL)),
        ("file:///data/images/a.jpg%00", "/x/t.parquet", (None, reasons.BAD_URL)),
        # Paths under a root.
        ("/data/images/a.jpg", "/x/t.parquet", ("/data/images/a.jpg", None)),
        ("file:///data/images/a%20b.jpg", "/x/t.parquet", ("/data/images/a b.jpg", None)),
        ("file://localhost/data/images/a.jpg", "/x/t.parquet", ("/data/images/a.jpg", None)),
        ("a.jpg", "/data/images/t.parquet", ("/data/images/a.jpg", None)),
        (" a.jpg\t", "/data/images/t.parquet", ("/data/images/a.jpg", None)),
        ("sub/../a.jpg", "/data/images/t.parquet", ("/data/images/a.jpg", None)),
        ("gs://bucket/imgs/a.jpg", "/x/t.parquet", ("gs://bucket/imgs/a.jpg", None)),
        ("a.jpg", "gs://bucket/imgs/t.parquet", ("gs://bucket/imgs/a.jpg", None)),
        # Paths elsewhere: named, never read.
        ("/data/images2/a.jpg", "/x/t.parquet", (None, reasons.PATH_NOT_ALLOWED)),
        ("/data/images/../secret/a.jpg", "/x/t.parquet", (None, reasons.PATH_NOT_ALLOWED)),
        ("/etc/passwd", "/x/t.parquet", (None, reasons.PATH_NOT_ALLOWED)),
        ("../a.jpg", "/data/images/t.parquet", (None, reasons.PATH_NOT_ALLOWED)),
        ("a.jpg", "/x/t.parquet", (None, reasons.PATH_NOT_ALLOWED)),
        ("gs://bucket/imgs/../../other/a", "/x/t.parquet", (None, reasons.PATH_NOT_ALLOWED)),
        ("gs://other/imgs/a.jpg", "/x/t.parquet", (None, reasons.PATH_NOT_ALLOWED)),
        ("file://host/data/images/a.jpg", "/x/t.parquet", (None, reasons.UNSUPPORTED_SCHEME)),
    ],
)
def test_image_path(value: str, table: str, expected: tuple) -> None:
    assert image_path(value, table, ROOTS) == expected


def test_roots_are_normalized() -> None:
    assert normalize_root("file:///data/images/") == "/data/images"
    assert normalize_root("gs://bucket/imgs/../imgs2") == "gs://bucket/imgs2"
    assert normalize_root("rel/dir") == os.path.abspath("rel/dir")
    assert is_image_path("/a.jpg") and is_image_path("gs://b/a.jpg")
    assert not is_image_path("https://example.com/a.jpg")


def test_read_image_file(tmp_path: Path) -> None:
    """Each outcome of reading a file: its bytes, or a named reason."""
    root = tmp_path / "root"
    (root / "dir").mkdir(parents=True)
    (root / "a.jpg").write_bytes(b"x" * 100)
    (tmp_path / "outside.jpg").write_bytes(b"secret")
    (root / "escape.jpg").symlink_to(tmp_path / "outside.jpg")
    (root / "inside.jpg").symlink_to(root / "a.jpg")
    roots = [normalize_root(str(root))]

    def read(name: str, max_bytes: int = 1000, opener=open):
        return read_image_file(str(root / name), roots, max_bytes, lambda p: opener(p, "rb"))

    assert read("a.jpg").data == b"x" * 100
    assert read("a.jpg", max_bytes=100).data == b"x" * 100  # exactly the limit
    assert read("a.jpg", max_bytes=99).reason == reasons.TOO_LARGE
    assert read("inside.jpg").data == b"x" * 100  # a symlink within the root
    escaped = read("escape.jpg")
    assert escaped.reason == reasons.PATH_NOT_ALLOWED and escaped.data is None
    assert read("missing.jpg").reason == reasons.FILE_NOT_FOUND
    assert read("dir").reason == reasons.FILE_ERROR

    def denied(path: str, mode: str):
        raise PermissionError(13, "Permission denied", path)

    failed = read("a.jpg", opener=denied)
    assert failed.reason == reasons.FILE_ERROR and "PermissionError" in failed.detail
    # The reader refuses on its own what image_path would never hand it.
    for path in (str(tmp_path / "outside.jpg"), str(root / "a.jpg\x00"), "gs://b/x.jpg"):
        result = read_image_file(path, roots, 1000, functools.partial(open, mode="rb"))
        assert result.reason == reasons.PATH_NOT_ALLOWED and result.data is None


def _checkerboard(size: tuple[int, int]) -> bytes:
    """A JPEG unlike jpeg_bytes' stripes (pHash far apart: not near-duplicates)."""
    im = Image.new("RGB", size, (250, 240, 230))
    draw = ImageDraw.Draw(im)
    for x in range(0, size[0], 40):
        for y in range((x // 40) % 2 * 40, size[1], 80):
            draw.rectangle((x, y, x + 39, y + 39), fill=(30, 60, 20))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def test_a_table_of_paths_end_to_end(tmp_path: Path) -> None:
    """A table naming local files (relative, absolute, file://) through the whole pipeline:
    every row kept, rejected with a named reason, or counted at extraction."""
    images = tmp_path / "images"
    images.mkdir()
    (images / "stripes.jpg").write_bytes(jpeg_bytes((320, 240), colour=40))
    (images / "other.jpg").write_bytes(_checkerboard((300, 260)))
    (images / "tiny.jpg").write_bytes(jpeg_bytes((120, 90)))
    (images / "notes.jpg").write_bytes(b"<html>not an image</html>")
    (tmp_path / "private.jpg").write_bytes(jpeg_bytes((320, 240)))
    (images / "link.jpg").symlink_to(tmp_path / "private.jpg")
    rows = [
        ("images/stripes.jpg", "white stripes painted on a blue wall"),
        (f"file://{images / 'other.jpg'}", "a pale wall with thin white stripes"),
        (str(images / "tiny.jpg"), "a tiny thumbnail of a blue wall"),
        ("images/missing.jpg", "a photo that was never copied here"),
        ("images/notes.jpg", "an html page saved with the wrong name"),
        ("images/link.jpg", "a link to a file outside the image folder"),
        (str(tmp_path / "private.jpg"), "a file outside the image folder"),
    ]
    table = tmp_path / "urls.tsv"
    table.write_text("url\tcaption\n" + "".join(f"{u}\t{t}\n" for u, t in rows))
    out = tmp_path / "out"
    args = ["run", "--input", str(table), "--output", str(out), "--nsfw", "false"]
    assert main([*args, "--file-roots", str(images)]) == 0
    kept, rejected, stats = check_invariant(out)
    assert sorted(r["alt_text"] for r in kept) == sorted(t for _, t in rows[:2])
    assert {r["image_url"] for r in kept} == {str(images / n) for n in ("stripes.jpg", "other.jpg")}
    assert all(r["image"] and r["width"] > 200 for r in kept)
    assert {r["alt_text"]: r["reason"] for r in rejected} == {
        rows[2][1]: reasons.IMAGE_TOO_SMALL,
        rows[3][1]: reasons.FILE_NOT_FOUND,
        rows[4][1]: reasons.NOT_AN_IMAGE,
        rows[5][1]: reasons.PATH_NOT_ALLOWED,
    }
    # The last row names a file outside the roots: counted at extraction, never read.
    assert stats["extract"][reasons.PATH_NOT_ALLOWED] == 1

    # Without file_roots no path is read: the rows are counted as before, and a run with no
    # candidate at all exits 1 (its files still balance).
    out2 = tmp_path / "out2"
    assert main(["run", "--input", str(table), "--output", str(out2), "--nsfw", "false"]) == 1
    kept2, rejected2, stats2 = check_invariant(out2)
    assert kept2 == [] and rejected2 == []
    extract = stats2["extract"]
    assert extract[reasons.UNSUPPORTED_SCHEME] == 1 and extract[reasons.BAD_URL] == 6
    assert json.loads((out2 / "stats.json").read_text())["totals"]["extracted"] == 0


def test_roots_are_settled_where_the_config_is_made(tmp_path: Path, monkeypatch) -> None:
    """Relative roots are the directory's the run starts in, not each worker's; empty ones
    are dropped; a config read from YAML or flags settles them the same way."""
    import dataclasses

    from curation.config import CurationConfig

    monkeypatch.chdir(tmp_path)
    cfg = dataclasses.replace(CurationConfig(), file_roots=("images/", "", "file:///srv/x/"))
    assert cfg.file_roots == (str(tmp_path / "images"), "/srv/x")
    loaded = CurationConfig.load(None, {"file_roots": "images, gs://b/imgs/"})
    assert loaded.file_roots == (str(tmp_path / "images"), "gs://b/imgs")
