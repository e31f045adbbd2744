"""The HTTP fetcher against a real, misbehaving server on 127.0.0.1."""

from __future__ import annotations

import dataclasses

import pytest

from curation import reasons
from curation.config import CurationConfig
from curation.fetch import Fetcher, address_refused
from pipelines.image_read import _sniffed, fetch_settings
from tests.conftest import ImageServer, serve

CFG = dataclasses.replace(
    CurationConfig(),
    allow_private_network=True,  # the test server is on 127.0.0.1
    read_timeout=0.5,
    connect_timeout=0.5,
    max_image_bytes=1_000_000,
    max_retries=2,
)


@pytest.fixture(scope="module")
def server():
    with serve() as s:
        yield s


class Sleeps(list):
    """Records the fetcher's backoff waits instead of sleeping."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def fetcher(cfg: CurationConfig = CFG) -> tuple[Fetcher, Sleeps]:
    sleeps = Sleeps()
    return Fetcher(fetch_settings(cfg), sleep=sleeps), sleeps


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/ok.jpg", None),
        ("/octet.jpg", None),
        ("/redirect.jpg", None),
        ("/404.jpg", "http_404"),
        ("/always500.jpg", "http_503"),
        ("/slow.jpg", reasons.TIMEOUT),
        ("/big.jpg", reasons.TOO_LARGE),
        ("/big-stream.jpg", reasons.TOO_LARGE),
        ("/gzip-bomb.jpg", reasons.TOO_LARGE),
        ("/page.html", reasons.NOT_AN_IMAGE),
        ("/noai.jpg", reasons.OPT_OUT),
        ("/loop.jpg", reasons.TOO_MANY_REDIRECTS),
        ("/to-metadata.jpg", reasons.PRIVATE_ADDRESS),
        ("/to-ftp.jpg", reasons.BAD_REDIRECT),
        ("/private/x.jpg", reasons.ROBOTS_DISALLOWED),
    ],
)
def test_each_case_gets_its_reason(server: ImageServer, path: str, reason: str | None) -> None:
    f, _ = fetcher()
    result = f.fetch(server.base + path)
    assert result.reason == reason, result.detail
    if reason is None:
        assert result.data == server.image
    else:
        assert result.data is None


def test_500_then_200_succeeds_after_a_retry(server: ImageServer) -> None:
    f, sleeps = fetcher()
    result = f.fetch(server.base + "/flaky.jpg")
    assert result.ok
    assert len(sleeps) == 1 and 1.0 <= sleeps[0] <= 2.0  # backoff 1 s plus jitter


def test_429_honours_retry_after(server: ImageServer) -> None:
    f, sleeps = fetcher()
    result = f.fetch(server.base + "/429.jpg")
    assert result.ok
    assert sleeps and sleeps[0] >= 1.0


def test_retries_are_bounded_with_exponential_backoff(server: ImageServer) -> None:
    f, sleeps = fetcher()
    assert f.fetch(server.base + "/always500.jpg").reason == "http_503"
    assert len(sleeps) == 2  # max_retries
    assert 1.0 <= sleeps[0] < 2.0 <= sleeps[1] < 3.0


def test_timeout_is_retried_then_named(server: ImageServer) -> None:
    f, sleeps = fetcher(dataclasses.replace(CFG, max_retries=1))
    assert f.fetch(server.base + "/slow.jpg").reason == reasons.TIMEOUT
    assert len(sleeps) == 1


def test_robots_txt_is_fetched_once_per_host(server: ImageServer) -> None:
    before = server.hits["/robots.txt"]
    f, _ = fetcher()
    for _ in range(3):
        assert f.fetch(server.base + "/other.jpg").ok
    assert server.hits["/robots.txt"] == before + 1


def test_private_address_refused_without_the_flag(server: ImageServer) -> None:
    f, _ = fetcher(dataclasses.replace(CFG, allow_private_network=False))
    result = f.fetch(server.base + "/ok.jpg")
    assert result.reason == reasons.PRIVATE_ADDRESS


def test_unresolvable_host_is_a_dns_error() -> None:
    f, _ = fetcher(dataclasses.replace(CFG, max_retries=0))
    assert f.fetch("http://no-such-host.invalid/a.jpg").reason == reasons.DNS_ERROR


def test_wrong_bytes_behind_an_image_type_are_caught_by_magic(server: ImageServer) -> None:
    f, _ = fetcher()
    result = f.fetch(server.base + "/fake.jpg")
    assert result.ok  # the header said image/jpeg
    assert _sniffed(result).reason == reasons.NOT_AN_IMAGE


def test_user_agent_is_sent(server: ImageServer) -> None:
    f, _ = fetcher(dataclasses.replace(CFG, user_agent="test-agent/9"))
    seen = []
    import http.server

    original = http.server.BaseHTTPRequestHandler.parse_request

    def spy(self):
        ok = original(self)
        seen.append(self.headers.get("User-Agent"))
        return ok

    http.server.BaseHTTPRequestHandler.parse_request = spy
    try:
        assert f.fetch(server.base + "/ok.jpg").ok
    finally:
        http.server.BaseHTTPRequestHandler.parse_request = original
    assert "test-agent/9" in seen


@pytest.mark.parametrize(
    ("address", "allow_private", "refused"),
    [
        ("93.184.216.34", False, False),
        ("127.0.0.1", False, True),
        ("127.0.0.1", True, False),
        ("10.1.2.3", False, True),
        ("10.1.2.3", True, False),
        ("192.168.1.1", True, False),
        ("172.16.0.1", False, True),
        ("100.64.0.1", False, True),
        ("169.254.169.254", False, True),
        ("169.254.169.254", True, True),  # the metadata server: never
        ("fe80::1", True, True),
        ("::1", False, True),
        ("::ffff:127.0.0.1", False, True),
        ("::ffff:169.254.169.254", True, True),
        ("224.0.0.1", True, True),
        ("0.0.0.0", True, True),
        ("240.0.0.1", False, True),
        ("2606:2800:220:1:248:1893:25c8:1946", False, False),
        ("not-an-ip", False, True),
    ],
)
def test_address_guard(address: str, allow_private: bool, refused: bool) -> None:
    assert address_refused(address, allow_private) is refused
