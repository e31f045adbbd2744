"""Faults on the wire: every case succeeds after a retry or gets its named reason, in bounded
time, and a whole run over all of them still accounts for every candidate."""

from __future__ import annotations

import dataclasses
import time
from collections import Counter

import pytest

from curation import reasons
from curation.config import CurationConfig
from curation.fetch import Fetcher
from pipelines.cli import main
from pipelines.image_read import fetch_settings
from tests.conftest import ImageServer, serve
from tests.test_cli import check_invariant

CFG = dataclasses.replace(
    CurationConfig(),
    allow_private_network=True,
    read_timeout=1.0,
    connect_timeout=1.0,
    fetch_deadline_seconds=1.5,
    max_image_bytes=2_000_000,
    max_retries=2,
    backoff_seconds=0.05,
)

# (path, expected reason or None for success): the wire faults of the hostile-input suite.
FAULTS = [
    ("/reset-mid-body.jpg", reasons.CONNECTION_ERROR),
    ("/short-body.jpg", reasons.TRUNCATED_BODY),
    ("/slow-drip.jpg", reasons.TIMEOUT),
    ("/endless.jpg", reasons.TOO_LARGE),
    ("/gzip-bomb.jpg", reasons.TOO_LARGE),
    ("/chain/3.jpg", None),
    ("/chain/8.jpg", reasons.TOO_MANY_REDIRECTS),
    ("/loop.jpg", reasons.TOO_MANY_REDIRECTS),
    ("/429.jpg", None),
    ("/503-then-ok.jpg", None),
    ("/flap.jpg", None),
    ("/always500.jpg", "http_503"),
    ("/to-metadata.jpg", reasons.PRIVATE_ADDRESS),
]


@pytest.fixture(scope="module")
def server():
    with serve() as s:
        yield s


@pytest.mark.parametrize(("path", "reason"), FAULTS)
def test_each_fault_gets_its_reason(server: ImageServer, path: str, reason: str | None) -> None:
    fetcher = Fetcher(fetch_settings(CFG), sleep=lambda s: None)
    start = time.monotonic()
    result = fetcher.fetch(server.base + path)
    assert result.reason == reason, result.detail
    assert time.monotonic() - start < 15  # bounded, retries included


def test_https_spoken_to_a_plain_http_port(server: ImageServer) -> None:
    fetcher = Fetcher(fetch_settings(dataclasses.replace(CFG, max_retries=0)))
    https = server.base.replace("http://", "https://") + "/ok.jpg"
    assert fetcher.fetch(https).reason == reasons.TLS_ERROR


def test_a_run_over_every_fault_accounts_for_everything(tmp_path, server: ImageServer) -> None:
    urls = [(server.base + path, reason) for path, reason in FAULTS]
    urls.append((server.base.replace("http://", "https://") + "/other.jpg", reasons.TLS_ERROR))
    urls.append(("http://no-such-host.invalid/a.jpg", reasons.DNS_ERROR))
    table = tmp_path / "faults.tsv"
    table.write_text(
        "url\tcaption\n"
        + "".join(f"{u}\tcaption number {i} of the fault suite\n" for i, (u, _) in enumerate(urls))
    )
    out = tmp_path / "out"
    args = ["run", "--input", str(table), "--output", str(out), "--images-from", "http"]
    args += ["--allow-private-network", "true", "--read-timeout", "1", "--connect-timeout", "1"]
    args += ["--fetch-deadline-seconds", "1.5", "--max-image-bytes", "2000000"]
    args += ["--backoff-seconds", "0.05", "--near-dup-distance", "-1"]
    start = time.monotonic()
    assert main(args) == 0
    assert time.monotonic() - start < 120
    kept, rejected, _ = check_invariant(out)
    outcome = {r["image_url"]: r["reason"] for r in rejected}
    outcome.update({r["image_url"]: None for r in kept})
    assert outcome == dict(urls)
    assert Counter(outcome.values())[None] == 4
