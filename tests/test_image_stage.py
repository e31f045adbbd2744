"""The image stage end to end: offline from real archives, and over HTTP from 127.0.0.1."""

from __future__ import annotations

import io
from collections import Counter

import pytest
import yaml
from PIL import Image

from curation import reasons
from pipelines import images
from pipelines.cli import main
from tests.conftest import SHARED_DATA, WARC_DIR, ImageServer, jpeg_bytes, require, serve
from tests.test_cli import check_invariant

FETCH_OR_IMAGE = ("fetch", "image")


def test_real_archives_with_their_images_offline(tmp_path) -> None:
    names = ["ukwa_wikipedia_main-page.warc.gz", "servo_Wikipedia.warc.gz", "aut_example.warc.gz"]
    inputs = [str(require(WARC_DIR / n)) for n in names]
    out = tmp_path / "out"
    assert main(["run", "--input", *inputs, "--output", str(out), "--images-from", "archive"]) == 0
    kept, rejected, stats = check_invariant(out)
    image_reasons = Counter(r["reason"] for r in rejected if r["stage"] in FETCH_OR_IMAGE)
    # Wikipedia's main page shows 100 px thumbnails: ALIGN's 200 px rule removes them.
    assert image_reasons[reasons.IMAGE_TOO_SMALL] > 0
    assert sum(image_reasons.values()) + len(kept) == stats["totals"]["extracted"] - sum(
        stats["rejected"]["text"].values()
    )


def _coco_half() -> bytes:
    path = require(SHARED_DATA / "evalsets" / "coco_val2014" / "COCO_val2014_000000000192.jpg")
    im = Image.open(path).convert("RGB")
    im = im.resize((im.width // 2, im.height // 2))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=80)
    return buf.getvalue()


@pytest.fixture
def server():
    s = ImageServer()
    s.images["/coco-copy.jpg"] = _coco_half()
    s.images["/small.jpg"] = jpeg_bytes((120, 100))
    s.images["/other-look.jpg"] = jpeg_bytes((400, 300), colour=20)
    with serve(s):
        yield s


def test_http_end_to_end(tmp_path, server: ImageServer) -> None:
    rows = [
        ("/ok.jpg", "white stripes painted on a blue wall"),
        ("/ok.jpg", "a blue wall with thin white stripes"),  # the same URL again
        ("/other.jpg", "stripes of white paint on a blue background"),  # same bytes
        ("/404.jpg", "a photo that has gone missing"),
        ("/to-metadata.jpg", "a redirect into the cloud metadata server"),
        ("/coco-copy.jpg", "a resized copy of an evaluation photo"),
        ("/fake.jpg", "an error page served as a picture"),
        ("/small.jpg", "a tiny thumbnail of a blue wall"),
        ("/private/x.jpg", "a picture the robots file forbids"),
    ]
    table = tmp_path / "urls.tsv"
    table.write_text(
        "url\tcaption\n" + "".join(f"{server.base}{path}\t{text}\n" for path, text in rows)
    )
    evals = SHARED_DATA / "evalsets" / "coco_val2014" / "*.jpg"
    out = tmp_path / "out"
    args = ["run", "--input", str(table), "--output", str(out), "--images-from", "http"]
    args += ["--allow-private-network", "true", "--eval-images", str(evals), "--max-retries", "0"]
    assert main(args) == 0
    kept, rejected, _ = check_invariant(out)
    assert sorted(r["alt_text"] for r in kept) == sorted(t for _, t in rows[:3])
    assert {r["alt_text"]: r["reason"] for r in rejected} == {
        rows[3][1]: "http_404",
        rows[4][1]: reasons.PRIVATE_ADDRESS,
        rows[5][1]: reasons.EVAL_DUPLICATE,
        rows[6][1]: reasons.NOT_AN_IMAGE,
        rows[7][1]: reasons.IMAGE_TOO_SMALL,
        rows[8][1]: reasons.ROBOTS_DISALLOWED,
    }
    eval_reject = next(r for r in rejected if r["reason"] == reasons.EVAL_DUPLICATE)
    assert eval_reject["detail"].startswith("COCO_val2014_000000000192.jpg")
    # Each unique URL was fetched once, robots.txt once for the host.
    assert server.hits["/ok.jpg"] == 1
    assert server.hits["/robots.txt"] == 1
    assert server.hits["/private/x.jpg"] == 0
    assert {r["sha256"] for r in kept} == {kept[0]["sha256"]}


def test_texts_per_image_limit_stops_the_fetch(tmp_path, server: ImageServer) -> None:
    table = tmp_path / "urls.csv"
    lines = [f"{server.base}/other-look.jpg,caption number {i} for one picture" for i in range(4)]
    lines.append(f"{server.base}/ok.jpg,a single caption for this picture")
    table.write_text("url,caption\n" + "\n".join(lines) + "\n")
    out = tmp_path / "out"
    args = ["run", "--input", str(table), "--output", str(out), "--images-from", "http"]
    args += ["--allow-private-network", "true", "--max-texts-per-image", "3"]
    assert main(args) == 0
    kept, rejected, _ = check_invariant(out)
    assert [r["alt_text"] for r in kept] == ["a single caption for this picture"]
    assert {r["reason"] for r in rejected} == {reasons.IMAGE_TOO_MANY_TEXTS}
    assert server.hits["/other-look.jpg"] == 0  # never downloaded


def test_resize_keep_ratio(tmp_path, server: ImageServer) -> None:
    table = tmp_path / "urls.csv"
    table.write_text(f"url,caption\n{server.base}/other-look.jpg,a dark blue wall with stripes\n")
    out = tmp_path / "out"
    args = ["run", "--input", str(table), "--output", str(out), "--images-from", "http"]
    args += ["--allow-private-network", "true", "--resize-mode", "keep_ratio"]
    args += ["--resize-max-side", "256"]
    assert main(args) == 0
    (row,), _, _ = check_invariant(out)
    assert (row["original_width"], row["original_height"]) == (400, 300)
    assert (row["width"], row["height"]) == (256, 192)
    assert Image.open(io.BytesIO(row["image"])).size == (256, 192)


def test_retry_failed_reruns_only_transient_failures(
    tmp_path, server: ImageServer, pools_made
) -> None:
    server.images["/second.jpg"] = jpeg_bytes((400, 300), colour=200)
    rows = [
        ("/ok.jpg", "white stripes painted on a blue wall"),
        ("/503-then-ok.jpg", "the same wall photographed a second time"),
        ("/404.jpg", "a photo that has gone missing"),
        ("/ok.jpg", "jpg"),  # a text reject: stays in the ledger as it was
    ]
    table = tmp_path / "urls.tsv"
    table.write_text(
        "url\tcaption\n" + "".join(f"{server.base}{path}\t{text}\n" for path, text in rows)
    )
    first, second = tmp_path / "first", tmp_path / "second"
    args = ["--allow-private-network", "true", "--max-retries", "0"]  # images: auto -> http
    args += ["--near-dup-distance", "-1"]  # ok.jpg and its retry are the same picture
    args += ["--image-transport", "shuffle"]  # given: the retry keeps it
    assert main(["run", "--input", str(table), "--output", str(first), *args]) == 0
    kept1, rejected1, stats1 = check_invariant(first)
    assert {r["reason"] for r in rejected1} == {"http_503", "http_404", "text_filename"}
    hits_before = dict(server.hits)

    pools_made.clear()
    assert main(["run", "--retry-failed", str(first), "--output", str(second)]) == 0
    # One measuring pool, started with the retry and taken by its fetch step, and closed.
    assert len(pools_made) == 1
    assert all(c.proc.poll() is not None for c in pools_made[0]._children)
    kept2, rejected2, stats2 = check_invariant(second)
    assert sorted(r["alt_text"] for r in kept2) == sorted([rows[0][1], rows[1][1]])
    assert {r["reason"] for r in rejected2} == {"http_404", "text_filename"}
    assert stats2["totals"]["extracted"] == stats1["totals"]["extracted"]
    assert stats2["read"] == stats1["read"] and stats2["extract"] == stats1["extract"]
    # The retry runs with the first run's config as given: a setting given is kept, 'auto'
    # stays auto (settled for the retry's own runner).
    cfg1, cfg2 = (yaml.safe_load((o / "config.yaml").read_text()) for o in (first, second))
    assert cfg1 == cfg2
    assert (cfg2["image_transport"], cfg2["measure_processes"]) == ("shuffle", -1)
    # Only the transient failure was fetched again.
    assert server.hits["/503-then-ok.jpg"] == hits_before["/503-then-ok.jpg"] + 1
    assert server.hits["/404.jpg"] == hits_before["/404.jpg"]
    assert server.hits["/ok.jpg"] == hits_before["/ok.jpg"]
    earlier = {r["uid"]: r for r in kept1}
    assert all(earlier[r["uid"]]["image"] == r["image"] for r in kept2 if r["uid"] in earlier)


def test_hot_image_goes_to_the_model_in_chunks(tmp_path, server: ImageServer, monkeypatch) -> None:
    """An image on many pages reaches open_nsfw in chunks of candidates; every candidate is
    kept once, with the same bytes and score (the in-process runner sees the patch)."""
    monkeypatch.setattr(images, "SCORE_CHUNK", 2)
    rows = [(f"/copy-{i}.jpg", f"white stripes on a blue wall, view number {i}") for i in range(5)]
    for path, _ in rows:
        server.images[path] = jpeg_bytes((400, 300), colour=90)
    table = tmp_path / "urls.tsv"
    table.write_text(
        "url\tcaption\n" + "".join(f"{server.base}{path}\t{text}\n" for path, text in rows)
    )
    out = tmp_path / "out"
    args = ["run", "--input", str(table), "--output", str(out), "--images-from", "http"]
    assert main([*args, "--allow-private-network", "true"]) == 0
    kept, rejected, _ = check_invariant(out)
    assert rejected == []
    assert sorted(r["alt_text"] for r in kept) == sorted(t for _, t in rows)
    assert len({(r["sha256"], r["nsfw_score"], r["image"]) for r in kept}) == 1
    assert kept[0]["nsfw_score"] is not None
