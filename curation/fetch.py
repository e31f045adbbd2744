"""A polite, hardened HTTP(S) image fetcher.

- Safety: the address of every connection, redirects included, is checked after DNS
  resolution, on the socket itself (so a DNS answer that changes between check and
  connect cannot slip through). Loopback, private, link-local (the cloud metadata server
  169.254.169.254), multicast and reserved addresses are refused; `allow_private_network`
  lifts the refusal for loopback and private ranges only.
- Politeness: robots.txt fetched once per host and cached; X-Robots-Tag noai/noimageai
  honoured; a per-host concurrency limit; retries with exponential backoff and jitter on
  timeouts, 429 (Retry-After honoured) and 5xx; a configurable User-Agent.
- Bounds: connect and read timeouts, a redirect cap, and a body cap enforced while
  streaming (after content decoding, so a gzip bomb stops at the cap too).

Every failure is a named reason from curation.reasons.
"""

from __future__ import annotations

import email.utils
import ipaddress
import random
import socket
import threading
import time
import urllib.robotparser
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    MaxRetryError,
    NameResolutionError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    SSLError,
)

from curation import reasons

# Media types served for images besides image/*: generic binary, as many CDNs send.
_BINARY_TYPES = ("application/octet-stream", "binary/octet-stream", "application/binary")
# Raw bytes per read: a gzip bomb inflates one read at most ~1000-fold before the cap acts.
_CHUNK = 16 * 1024
# RFC 9309: crawlers must parse at least 500 KiB of robots.txt.
ROBOTS_MAX_BYTES = 500 * 1024
_CGNAT = ipaddress.ip_network("100.64.0.0/10")


class AddressRefused(Exception):
    """A connection to an address the guard forbids."""

    def __init__(self, address: str) -> None:
        super().__init__(address)
        self.address = address


def address_refused(address: str, allow_private: bool) -> bool:
    """Whether the SSRF guard refuses a connection to this IP address."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return True
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_link_local or ip.is_multicast or ip.is_unspecified:
        return True  # never, not even with allow_private: the metadata server lives here
    if ip.is_loopback or ip.is_private or ip in _CGNAT:
        return not allow_private
    return ip.is_reserved or not ip.is_global


@dataclass(frozen=True, slots=True)
class FetchResult:
    """Bytes of an image, or the reason there are none."""

    url: str
    data: bytes | None = None
    reason: str | None = None
    detail: str = ""
    content_type: str = ""

    @property
    def ok(self) -> bool:
        """Whether bytes came back."""
        return self.data is not None


@dataclass(frozen=True)
class FetchSettings:
    """What the fetcher needs from the run configuration."""

    user_agent: str
    connect_timeout: float
    read_timeout: float
    max_retries: int
    backoff_seconds: float
    max_backoff_seconds: float
    max_redirects: int
    max_bytes: int
    deadline_seconds: float
    per_host_connections: int
    respect_robots: bool
    respect_opt_out: bool
    allow_private_network: bool


class _Failure(Exception):
    def __init__(self, reason: str, detail: str = "", retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail
        self.retry_after = retry_after


class Fetcher:
    """Fetches images over HTTP(S); thread-safe, one per worker."""

    def __init__(
        self, settings: FetchSettings, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        self.s = settings
        self._sleep = sleep
        self._rng = random.Random(0)
        self._lock = threading.Lock()
        self._host_slots: dict[str, threading.BoundedSemaphore] = {}
        self._robots: dict[str, urllib.robotparser.RobotFileParser | str | _Failure] = {}
        self._robots_locks: dict[str, threading.Lock] = {}
        allow = settings.allow_private_network

        def guarded(base: type[HTTPConnection]) -> type[HTTPConnection]:
            class Guarded(base):  # type: ignore[misc, valid-type]
                def _new_conn(self) -> socket.socket:
                    sock = super()._new_conn()
                    peer = sock.getpeername()[0]
                    if address_refused(peer, allow):
                        sock.close()
                        raise AddressRefused(peer)
                    return sock

            return Guarded

        class Pool(HTTPConnectionPool):
            ConnectionCls = guarded(HTTPConnection)

        class SPool(HTTPSConnectionPool):
            ConnectionCls = guarded(HTTPSConnection)

        self._http = urllib3.PoolManager(
            num_pools=256,
            maxsize=max(1, settings.per_host_connections),
            block=False,
            headers={"User-Agent": settings.user_agent, "Accept": "image/*,*/*;q=0.5"},
            timeout=urllib3.Timeout(connect=settings.connect_timeout, read=settings.read_timeout),
            retries=False,
        )
        self._http.pool_classes_by_scheme = {"http": Pool, "https": SPool}

    # --- public
    def fetch(self, url: str) -> FetchResult:
        """Fetch one image URL, following redirects and retrying transient failures."""
        try:
            data, ctype = self._fetch_following(url)
        except _Failure as f:
            return FetchResult(url, reason=f.reason, detail=f.detail[:300])
        return FetchResult(url, data=data, content_type=ctype)

    def close(self) -> None:
        """Close every pooled connection."""
        self._http.clear()

    # --- redirects and retries
    def _fetch_following(self, url: str) -> tuple[bytes, str]:
        current = url
        for _ in range(self.s.max_redirects + 1):
            parts = urlsplit(current)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise _Failure(reasons.BAD_REDIRECT, current)
            if self.s.respect_robots and not self._robots_allow(current):
                raise _Failure(reasons.ROBOTS_DISALLOWED, "robots.txt disallows the path")
            outcome = self._with_retries(current)
            if isinstance(outcome, str):
                current = outcome  # a redirect target
                continue
            return outcome
        raise _Failure(reasons.TOO_MANY_REDIRECTS, f"more than {self.s.max_redirects}")

    def _with_retries(self, url: str, expect_image: bool = True) -> tuple[bytes, str] | str:
        attempt = 0
        while True:
            try:
                return self._one_request(url, expect_image)
            except _Failure as f:
                if not reasons.is_transient(f.reason) or attempt >= self.s.max_retries:
                    raise
                delay = self.s.backoff_seconds * (2**attempt)
                delay += self._jitter(self.s.backoff_seconds)
                if f.retry_after is not None:
                    delay = max(delay, f.retry_after)
                if delay > self.s.max_backoff_seconds:
                    raise  # the server asks for a longer wait than we will spend
                attempt += 1
                self._sleep(delay)

    def _jitter(self, scale: float) -> float:
        with self._lock:
            return self._rng.uniform(0, scale)

    def _slot(self, host: str) -> threading.BoundedSemaphore:
        with self._lock:
            slot = self._host_slots.get(host)
            if slot is None:
                slot = threading.BoundedSemaphore(max(1, self.s.per_host_connections))
                self._host_slots[host] = slot
            return slot

    # --- one request
    def _one_request(self, url: str, expect_image: bool) -> tuple[bytes, str] | str:
        host = urlsplit(url).netloc.lower()
        with self._slot(host):
            try:
                resp = self._http.request(
                    "GET", url, preload_content=False, redirect=False, decode_content=True
                )
            except AddressRefused as e:
                raise _Failure(reasons.PRIVATE_ADDRESS, e.address) from None
            except (MaxRetryError, HTTPError) as e:
                raise _classify(e) from None
            try:
                outcome = self._read_response(url, resp, expect_image)
            except BaseException:
                # Unread bytes would poison the pooled connection: drop it instead.
                resp.close()
                raise
            finally:
                resp.release_conn()
            return outcome

    def _read_response(
        self, url: str, resp: urllib3.BaseHTTPResponse, expect_image: bool
    ) -> tuple[bytes, str] | str:
        status = resp.status
        if status in (301, 302, 303, 307, 308):
            location = resp.headers.get("Location")
            if not location:
                raise _Failure(reasons.BAD_REDIRECT, f"{status} without Location")
            try:
                return urljoin(url, location.strip())
            except ValueError:
                raise _Failure(reasons.BAD_REDIRECT, location) from None
        if status == 429 or status >= 500:
            raise _Failure(
                reasons.http_status(status),
                retry_after=_retry_after(resp.headers.get("Retry-After")),
            )
        if not 200 <= status < 300:
            raise _Failure(reasons.http_status(status))
        tags = resp.headers.get_all("X-Robots-Tag") or []
        if expect_image and self.s.respect_opt_out and _opted_out(tags):
            raise _Failure(reasons.OPT_OUT, ", ".join(tags))
        ctype = (resp.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
        if expect_image and ctype and not ctype.startswith("image/") and ctype not in _BINARY_TYPES:
            raise _Failure(reasons.NOT_AN_IMAGE, ctype)
        declared = resp.headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > self.s.max_bytes:
            raise _Failure(reasons.TOO_LARGE, f"Content-Length {declared}")
        body = bytearray()
        deadline = time.monotonic() + self.s.deadline_seconds
        try:
            # read1: one socket read at a time, so a slow-drip body meets the deadline check
            # between drops instead of blocking until a whole chunk has arrived.
            while chunk := resp.read1(_CHUNK, decode_content=True):
                body += chunk
                if len(body) > self.s.max_bytes:
                    raise _Failure(reasons.TOO_LARGE, f"over {self.s.max_bytes} bytes")
                if time.monotonic() > deadline:
                    raise _Failure(reasons.TIMEOUT, f"body took over {self.s.deadline_seconds} s")
        except (MaxRetryError, HTTPError) as e:
            raise _classify(e) from None
        return bytes(body), ctype

    # --- robots.txt
    def _robots_allow(self, url: str) -> bool:
        parts = urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc.lower()}"
        with self._lock:
            lock = self._robots_locks.setdefault(origin, threading.Lock())
        with lock:  # one fetch per host, even with many threads waiting on it
            rules = self._robots.get(origin)
            if rules is None:
                rules = self._load_robots(origin)
                self._robots[origin] = rules
        if isinstance(rules, _Failure):
            # The host could not be reached for robots.txt: the image cannot be either.
            raise _Failure(rules.reason, f"robots.txt: {rules.detail}")
        if isinstance(rules, str):
            if rules == "allow":
                return True
            raise _Failure(reasons.ROBOTS_DISALLOWED, rules)
        return rules.can_fetch(self.s.user_agent, url)

    def _load_robots(self, origin: str) -> urllib.robotparser.RobotFileParser | str | _Failure:
        try:
            outcome = self._with_retries(origin + "/robots.txt", expect_image=False)
        except _Failure as f:
            # RFC 9309 §2.3.1: 4xx means no rules; a server error means disallow.
            if f.reason.startswith("http_4") and f.reason != "http_429":
                return "allow"
            if f.reason == "http_429" or f.reason.startswith("http_5"):
                return f"robots.txt answered {f.reason}"
            if f.reason == reasons.TOO_LARGE:
                return "allow"
            return f  # unreachable host: every image of it fails the same way
        if isinstance(outcome, str):
            return "allow"  # a redirected robots.txt: RFC allows following; we stay lenient
        data, _ = outcome
        parser = urllib.robotparser.RobotFileParser()
        parser.parse(data[:ROBOTS_MAX_BYTES].decode("utf-8", "replace").splitlines())
        return parser


def _classify(e: Exception) -> _Failure:
    reason = getattr(e, "reason", None)
    inner = reason if isinstance(reason, Exception) else e
    if isinstance(inner, AddressRefused):
        return _Failure(reasons.PRIVATE_ADDRESS, inner.address)
    if isinstance(inner, NameResolutionError):
        return _Failure(reasons.DNS_ERROR, str(inner))
    if isinstance(inner, (ConnectTimeoutError, ReadTimeoutError, socket.timeout, TimeoutError)):
        return _Failure(reasons.TIMEOUT, str(inner))
    if isinstance(inner, SSLError):
        return _Failure(reasons.TLS_ERROR, str(inner))
    if isinstance(inner, ProtocolError) and "IncompleteRead" in str(inner):
        return _Failure(reasons.TRUNCATED_BODY, str(inner))
    if isinstance(inner, (NewConnectionError, ProtocolError, ConnectionError)):
        return _Failure(reasons.CONNECTION_ERROR, str(inner))
    return _Failure(reasons.FETCH_FAILED, f"{type(inner).__name__}: {inner}")


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _opted_out(values: list[str]) -> bool:
    for value in values:
        # "noai", "googlebot: noimageai, noindex": directives may carry a bot prefix.
        for part in value.lower().replace(":", ",").split(","):
            if part.strip() in ("noai", "noimageai"):
                return True
    return False
