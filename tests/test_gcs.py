"""A whole run against a GCS emulator: archives read from a bucket, shards, ledger, stats and
report written to a bucket. The emulator runs on 127.0.0.1, started by the test."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import SAMPLE_WARC
from tests.test_cli import check_invariant

storage = pytest.importorskip("google.cloud.storage", reason="needs apache-beam[gcp]")
EMULATOR = shutil.which("gcp-storage-emulator") or str(
    Path(sys.executable).parent / "gcp-storage-emulator"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def emulator():
    if not Path(EMULATOR).exists():
        pytest.skip("gcp-storage-emulator is not installed (pip install .[test])")
    port = _free_port()
    proc = subprocess.Popen(
        [EMULATOR, "start", "--host", "127.0.0.1", "--port", str(port), "--in-memory"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.1)
    host = f"http://127.0.0.1:{port}"
    yield host
    proc.terminate()
    proc.wait(timeout=10)


def test_a_whole_run_from_and_to_a_bucket(emulator: str, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "STORAGE_EMULATOR_HOST": emulator,
        "NO_GCE_CHECK": "true",  # never probe the cloud metadata address from a test
        "GOOGLE_CLOUD_PROJECT": "test",
    }
    from google.auth.credentials import AnonymousCredentials

    os.environ["STORAGE_EMULATOR_HOST"] = emulator
    try:
        client = storage.Client(credentials=AnonymousCredentials(), project="test")
        bucket = client.create_bucket("crawls")
        bucket.blob("in/crawl.warc.gz").upload_from_filename(str(SAMPLE_WARC))
    finally:
        del os.environ["STORAGE_EMULATOR_HOST"]
    start = time.monotonic()
    # A separate process, as a user runs it: the emulator variable is all it is told.
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipelines.cli",
            "run",
            "--input",
            "gs://crawls/in/*.warc.gz",
            "--output",
            "gs://crawls/out",
            "--images-from",
            "archive",
            "--formats",
            "parquet,webdataset",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert time.monotonic() - start < 120  # no ~25 s credential hunt per process
    assert "invariant OK: extracted 38 = kept 13 + rejected 25" in result.stdout
    local = tmp_path / "out"
    for blob in client.list_blobs("crawls", prefix="out/"):
        target = local / blob.name.removeprefix("out/")
        target.parent.mkdir(parents=True, exist_ok=True)
        blob.download_to_filename(str(target))
    kept, _, stats = check_invariant(local)
    assert len(kept) == 13 and stats["totals"]["extracted"] == 38
    assert (local / "report.html").exists() and (local / "config.yaml").exists()
    assert json.loads((local / "webdataset" / "_manifest.json").read_text())["total"] == 13
    assert not [b.name for b in client.list_blobs("crawls", prefix="out/") if "/.tmp-" in b.name]


def test_a_table_of_images_in_a_bucket(emulator: str, tmp_path: Path) -> None:
    """A URL table in a bucket naming images in the same bucket (relative and gs:// paths,
    file_roots on the bucket): read through Beam's GCS filesystem; a missing object is
    file_not_found, an object outside the root is never read."""
    from google.auth.credentials import AnonymousCredentials

    from tests.conftest import jpeg_bytes
    from tests.test_files import _checkerboard

    os.environ["STORAGE_EMULATOR_HOST"] = emulator
    try:
        client = storage.Client(credentials=AnonymousCredentials(), project="test")
        bucket = client.create_bucket("photos")
        bucket.blob("set/a.jpg").upload_from_string(jpeg_bytes((320, 240)))
        bucket.blob("set/b.jpg").upload_from_string(_checkerboard((300, 260)))
        bucket.blob("private/c.jpg").upload_from_string(jpeg_bytes((320, 240), colour=10))
        rows = [
            ("a.jpg", "white stripes painted on a blue wall"),
            ("gs://photos/set/b.jpg", "a pale wall with a dark checkerboard"),
            ("gone.jpg", "a photo that was deleted from the bucket"),
            ("gs://photos/private/c.jpg", "a photo outside the allowed folder"),
        ]
        table = "url\tcaption\n" + "".join(f"{u}\t{t}\n" for u, t in rows)
        bucket.blob("set/urls.tsv").upload_from_string(table)
    finally:
        del os.environ["STORAGE_EMULATOR_HOST"]
    out = tmp_path / "out"
    env = {
        **os.environ,
        "STORAGE_EMULATOR_HOST": emulator,
        "NO_GCE_CHECK": "true",
        "GOOGLE_CLOUD_PROJECT": "test",
    }
    args = ["--input", "gs://photos/set/urls.tsv", "--output", str(out), "--nsfw", "false"]
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "run", *args, "--file-roots", "gs://photos/set"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    kept, rejected, stats = check_invariant(out)
    assert {r["image_url"] for r in kept} == {"gs://photos/set/a.jpg", "gs://photos/set/b.jpg"}
    assert [(r["image_url"], r["reason"]) for r in rejected] == [
        ("gs://photos/set/gone.jpg", "file_not_found")
    ]
    assert stats["extract"]["path_not_allowed"] == 1
