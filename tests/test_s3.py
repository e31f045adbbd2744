"""s3:// inputs and outputs through Beam's own S3 filesystem (apache-beam[aws]), against moto's
S3 emulator started by the test on 127.0.0.1 (a free port).

The bucket holds the sample archive and a shared WARC, under a flat folder and under Common
Crawl's layout with a manifest listing them. A run reading them from the bucket must write
the rows of the same files read from disk (every Parquet column but `source_file`, which
names where the file was read). Credentials are given as a user gives them: boto3's
environment variables in one run, Beam's --s3_* flags in the other; boto3 is kept from every
credential file and from the cloud metadata address, so no test leaves 127.0.0.1.
"""

from __future__ import annotations

import gzip
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import SAMPLE_WARC, WARC_DIR, require
from tests.test_cli import check_invariant, read_rows

boto3 = pytest.importorskip("boto3", reason="needs apache-beam[aws] (pip install .[aws])")
pytest.importorskip("apache_beam.io.aws.s3filesystem", reason="needs apache-beam[aws]")
moto_server = pytest.importorskip("moto.server", reason="needs moto[server] (pip install .[test])")

BUCKET = "crawls"
CRAWL = "crawl-data/CC-MAIN-2024-22"
SHARED = "resiliparse_warcfile.warc.gz"  # 136 KB, 9 HTML pages with images
KEY, SECRET = "test-key", "test-secret"
# The image stage reads archived images by offset (a seek into the S3 object); the NSFW
# model is left out: it reads no file and would double the run's time.
RUN_FLAGS = ["--images-from", "archive", "--nsfw", "false"]
RUN_SECONDS = 120


def _client(endpoint: str):
    """A boto3 S3 client for the moto server at `endpoint`, with the test's credentials."""
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=KEY,
        aws_secret_access_key=SECRET,
        region_name="us-east-1",
    )


@pytest.fixture(scope="module")
def s3() -> Iterator[str]:
    """moto's S3 on 127.0.0.1 with the archives uploaded; yields its endpoint URL."""
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()  # returns once the socket listens
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    try:
        client = _client(endpoint)
        client.create_bucket(Bucket=BUCKET)
        shared = require(WARC_DIR / SHARED)
        listed = []
        for i, path in enumerate((SAMPLE_WARC, shared)):
            client.upload_file(str(path), BUCKET, f"flat/{path.name}")
            key = f"{CRAWL}/segments/1716{i}/warc/{path.name}"
            client.upload_file(str(path), BUCKET, key)
            listed.append(key)
        manifest = gzip.compress("\n".join(listed).encode(), mtime=0)
        client.put_object(Bucket=BUCKET, Key=f"{CRAWL}/warc.paths.gz", Body=manifest)
        yield endpoint
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def _aws_isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No credential or config file of this machine, no metadata-address probe (boto3's
    chain would try 169.254.169.254 last), no GCE probe by Beam."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("NO_GCE_CHECK", "true")


def _run(*args: str) -> int:
    """`curate run` in this process, stopped by SIGALRM if it outlasts RUN_SECONDS (each
    takes 7 to 40 s here, by the load on 2 shared cores): a client retrying without end
    (Beam retries S3 for minutes) fails the test, not the suite."""
    from pipelines.cli import main

    def expire(signum: int, frame: object) -> None:
        raise TimeoutError(f"curate run took over {RUN_SECONDS} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(RUN_SECONDS)
    try:
        return main(["run", *args])
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _rows(out: Path) -> tuple[list[dict], list[dict], dict]:
    """Kept and rejected rows without `source_file`, in a fixed order, and the stats."""
    kept, rejected, stats = check_invariant(out)

    def strip(rows: list[dict]) -> list[dict]:
        rows = [{k: v for k, v in r.items() if k != "source_file"} for r in rows]
        return sorted(rows, key=lambda r: r["uid"])

    return strip(kept), strip(rejected), stats


@pytest.fixture(scope="module")
def on_disk(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict], list[dict], dict]:
    """The same two archives read from disk."""
    folder = tmp_path_factory.mktemp("disk")
    for path in (SAMPLE_WARC, require(WARC_DIR / SHARED)):
        shutil.copy(path, folder / path.name)
    out = folder / "out"
    assert _run("--input", str(folder / "*.warc.gz"), "--output", str(out), *RUN_FLAGS) == 0
    return _rows(out)


def test_a_glob_in_a_bucket_gives_the_rows_of_the_files_on_disk(
    s3: str, on_disk, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Credentials from boto3's environment variables; only the endpoint is a Beam flag.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    out = tmp_path / "out"
    args = ["--input", f"s3://{BUCKET}/flat/*.warc.gz", "--output", str(out), *RUN_FLAGS]
    assert _run(*args, "--s3_endpoint_url", s3, "--s3_region_name", "us-east-1") == 0
    kept, rejected, stats = _rows(out)
    want_kept, want_rejected, want_stats = on_disk
    assert kept == want_kept and rejected == want_rejected
    assert len(kept) == 13  # the sample's (the shared WARC's candidates are all rejected)
    # Images were read by offset from the bucket: kept rows carry their bytes.
    assert all(r["image"] for r in kept)
    assert {r["stage"] for r in rejected} >= {"fetch", "image", "text"}
    for part in ("read", "extract", "rejected", "totals"):
        assert stats[part] == want_stats[part], part
    rows = read_rows(out / "shards") + read_rows(out / "rejects")
    assert {r["source_file"] for r in rows} == {
        f"s3://{BUCKET}/flat/{SAMPLE_WARC.name}",
        f"s3://{BUCKET}/flat/{SHARED}",
    }


def test_a_manifest_in_a_bucket_read_and_written_there(s3: str, on_disk, tmp_path: Path) -> None:
    """The manifest is read from the bucket, its paths found under its own location up to
    crawl-data/ (s3://crawls/), and the output written to the bucket; the credentials are
    Beam's flags alone (the environment has none). Through the text rules only: Beam 2.77
    builds a boto3 client for every filesystem call (~0.15 s each here), and the image
    stage's spool and formats would make this run three times as long for no other check."""
    out = f"s3://{BUCKET}/runs/manifest"
    args = ["--input", f"s3://{BUCKET}/{CRAWL}/warc.paths.gz", "--output", out]
    flags = [
        "--s3_endpoint_url",
        s3,
        "--s3_region_name",
        "us-east-1",
        "--s3_access_key_id",
        KEY,
        "--s3_secret_access_key",
        SECRET,
    ]
    assert _run(*args, "--stop-after", "text", *flags) == 0
    client = _client(s3)
    local = tmp_path / "out"
    listing = client.list_objects_v2(Bucket=BUCKET, Prefix="runs/manifest/")["Contents"]
    names = [o["Key"].removeprefix("runs/manifest/") for o in listing]
    assert not [n for n in names if "/.tmp-" in n or n.startswith(".tmp-")]
    for name in names:
        (local / name).parent.mkdir(parents=True, exist_ok=True)
        client.download_file(BUCKET, f"runs/manifest/{name}", str(local / name))
    assert (local / "config.yaml").exists() and (local / "report.html").exists()
    kept, rejected, stats = _rows(local)
    want_kept, want_rejected, want_stats = on_disk
    # The same candidates; the text rules reject the same rows, and what passed them is kept
    # here (the image stage, which did not run, kept or rejected it on disk).
    assert rejected == [r for r in want_rejected if r["stage"] == "text"] and rejected
    passed = [r for r in want_rejected if r["stage"] != "text"] + want_kept
    assert sorted(r["uid"] for r in kept) == sorted(r["uid"] for r in passed)
    assert {(r["uid"], r["alt_text"], r["image_url"]) for r in kept} == {
        (r["uid"], r["alt_text"], r["image_url"]) for r in passed
    }
    for part in ("read", "extract"):
        assert stats[part] == want_stats[part], part
    assert stats["rejected"]["text"] == want_stats["rejected"]["text"]
    rows = read_rows(local / "shards") + read_rows(local / "rejects")
    assert {r["source_file"] for r in rows} == {
        f"s3://{BUCKET}/{CRAWL}/segments/17160/warc/{SAMPLE_WARC.name}",
        f"s3://{BUCKET}/{CRAWL}/segments/17161/warc/{SHARED}",
    }
