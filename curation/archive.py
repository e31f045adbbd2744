"""Reading web archives: WARC 1.0/1.1/0.17/0.18 (gzip per record, or plain) and legacy ARC.

FastWARC reads WARC (measured fastest, BENCHMARKS.md); warcio reads ARC, which FastWARC
cannot. Both run in raw mode: we read each record's block ourselves, so a clipped record is
seen as such (its block is shorter than its Content-Length) and HTTP parsing is the same for
both readers. A damaged file yields every record before the damage plus a counted reason;
it never raises.
"""

from __future__ import annotations

import dataclasses
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from fastwarc.warc import ArchiveIterator as FastWarcIterator
from warcio.archiveiterator import ArchiveIterator as WarcioIterator

from curation import reasons
from curation.record import SOURCE_ARC, SOURCE_WARC
from curation.stats import Funnel

_READ = reasons.STAGE_READ
GZIP_MAGIC = b"\x1f\x8b"
_STATUS_RE = re.compile(rb"^HTTP/\d(?:\.\d)?\s+(\d{3})")


@dataclass(frozen=True, slots=True)
class ArchivedResponse:
    """One captured payload: an HTTP response record, or a resource record (no HTTP)."""

    url: str
    offset: int  # byte offset of the record in the archive file
    date: str | None  # WARC-Date (ISO 8601)
    status: int  # HTTP status; 200 for resource records, which carry no HTTP
    headers: tuple[tuple[str, str], ...]  # HTTP headers as captured, names lowercased
    body: bytes  # payload with transfer- and content-encoding removed
    truncated: bool  # the record's block was shorter than its declared length
    source_kind: str

    def header(self, name: str) -> str | None:
        """The first value of a header (name lowercase), or None."""
        for k, v in self.headers:
            if k == name:
                return v
        return None

    @property
    def mime_type(self) -> str:
        """The media type of the payload, lowercased, without parameters."""
        return (self.header("content-type") or "").split(";", 1)[0].strip().lower()

    @property
    def charset(self) -> str | None:
        """The charset parameter of Content-Type, if declared."""
        m = re.search(r"charset\s*=\s*[\"']?([\w.:-]+)", self.header("content-type") or "", re.I)
        return m.group(1).lower() if m else None


def sniff_format(head: bytes) -> str | None:
    """'warc', 'arc' or None from the first bytes of a file (decompressed if gzip)."""
    if head.startswith(GZIP_MAGIC):
        try:
            head = zlib.decompressobj(wbits=31).decompress(head, 64)
        except zlib.error:
            return None
    head = head.lstrip(b"\r\n")
    if head.startswith(b"WARC/"):
        return SOURCE_WARC
    if head.startswith(b"filedesc://"):
        return SOURCE_ARC
    return None


def iter_responses(
    stream: BinaryIO, funnel: Funnel, max_body_bytes: int = 20_000_000
) -> Iterator[ArchivedResponse]:
    """Yield every response/resource record of a seekable archive stream, counting the rest."""
    start = stream.tell()
    head = stream.read(4096)
    stream.seek(start)
    kind = sniff_format(head)
    if kind is None:
        funnel.add(_READ, reasons.NOT_AN_ARCHIVE)
        return
    yield from _responses(stream, kind, funnel, max_body_bytes)


def read_response_at(
    stream: BinaryIO, offset: int, max_body_bytes: int = 20_000_000
) -> ArchivedResponse | None:
    """The response record starting at `offset` (a per-record gzip member, or plain)."""
    stream.seek(offset)
    for resp in iter_responses(stream, Funnel(), max_body_bytes):
        # FastWARC reports absolute positions, warcio positions relative to where it began.
        if resp.offset not in (offset, 0):
            return None
        return dataclasses.replace(resp, offset=offset)
    return None


def _responses(
    stream: BinaryIO, kind: str, funnel: Funnel, max_body_bytes: int
) -> Iterator[ArchivedResponse]:
    reader = _iter_warc_blocks if kind == SOURCE_WARC else _iter_arc_blocks
    try:
        for rec in reader(stream):
            funnel.add(_READ, reasons.RECORDS)
            rtype, url, offset, date, ctype, declared, block = rec
            if rtype not in ("response", "resource"):
                funnel.add(_READ, reasons.RECORD_NOT_RESPONSE)
                continue
            truncated = declared is not None and len(block) < declared
            if truncated:
                funnel.add(_READ, reasons.ARCHIVE_TRUNCATED)
            if rtype == "resource":
                headers: tuple[tuple[str, str], ...] = (("content-type", ctype or ""),)
                status, body = 200, block
            else:
                parsed = parse_http_response(block)
                if parsed is None:
                    funnel.add(_READ, reasons.RECORD_NOT_HTTP)
                    continue
                status, headers, body = parsed
                body_or_reason = decode_body(headers, body, max_body_bytes)
                if isinstance(body_or_reason, str):
                    funnel.add(_READ, body_or_reason)
                    continue
                body = body_or_reason
            yield ArchivedResponse(
                url=url,
                offset=offset,
                date=date,
                status=status,
                headers=headers,
                body=body,
                truncated=truncated,
                source_kind=kind,
            )
    except (OSError, EOFError, ValueError, zlib.error):
        # Both readers raise these on bytes that are not a record header or on a gzip
        # member cut short; what was read before stays counted and yielded.
        funnel.add(_READ, reasons.ARCHIVE_CORRUPT)


# A raw record: (type, target URI, offset, WARC-Date, WARC Content-Type, declared length, block)
_RawRecord = tuple[str, str, int, str | None, str | None, int | None, bytes]


def clean_uri(uri: object) -> str:
    """A WARC-Target-URI as a URL: wget 1.21 wraps it in <...>
    (../shared/data/warc/dolma_sample-0000); anything but a string is none."""
    uri = uri.strip() if isinstance(uri, str) else ""
    if uri.startswith("<") and uri.endswith(">"):
        uri = uri[1:-1].strip()
    return uri


def _iter_warc_blocks(stream: BinaryIO) -> Iterator[_RawRecord]:
    for record in FastWarcIterator(stream, parse_http=False):
        h = record.headers
        try:
            declared: int | None = int(h.get("Content-Length") or "")
        except ValueError:
            declared = None
        yield (
            str(record.record_type).rsplit(".", 1)[-1],
            clean_uri(h.get("WARC-Target-URI")),
            int(record.stream_pos),
            h.get("WARC-Date"),
            h.get("Content-Type"),
            declared,
            record.reader.read(),
        )


def _iter_arc_blocks(stream: BinaryIO) -> Iterator[_RawRecord]:
    it = WarcioIterator(stream, arc2warc=True, no_record_parse=True)
    for record in it:
        declared = None if record.rec_type == "warcinfo" else record.length
        block = record.raw_stream.read()
        yield (
            "response" if record.rec_type == "response" else record.rec_type,
            clean_uri(record.rec_headers.get_header("WARC-Target-URI")),
            int(it.get_record_offset()),
            record.rec_headers.get_header("WARC-Date"),
            record.rec_headers.get_header("Content-Type"),
            declared,
            block,
        )


def parse_http_response(block: bytes) -> tuple[int, tuple[tuple[str, str], ...], bytes] | None:
    """Split an HTTP response block into (status, headers, body); None if it is not HTTP."""
    m = _STATUS_RE.match(block)
    if m is None:
        return None
    end = block.find(b"\r\n\r\n")
    sep = 4
    if end < 0 or (0 <= block.find(b"\n\n") < end):
        # Some crawlers wrote bare LF line endings.
        end, sep = block.find(b"\n\n"), 2
    if end < 0:
        end, sep = len(block), 0
    head, body = block[:end], block[end + sep :]
    headers = []
    for line in head.split(b"\n")[1:]:
        name, colon, value = line.partition(b":")
        if colon:
            headers.append(
                (
                    name.strip().decode("latin-1").lower(),
                    value.strip().decode("latin-1"),
                )
            )
    return int(m.group(1)), tuple(headers), body


def _dechunk(body: bytes) -> bytes | None:
    out = bytearray()
    pos = 0
    while True:
        eol = body.find(b"\n", pos)
        if eol < 0:
            return bytes(out) if out else None
        size_field = body[pos:eol].split(b";", 1)[0].strip()
        try:
            size = int(size_field, 16)
        except ValueError:
            return None
        if size == 0:
            return bytes(out)
        start = eol + 1
        out += body[start : start + size]
        pos = start + size
        if body[pos : pos + 2] == b"\r\n":
            pos += 2
        elif body[pos : pos + 1] == b"\n":
            pos += 1


def decode_body(headers: tuple[tuple[str, str], ...], body: bytes, max_bytes: int) -> bytes | str:
    """Undo transfer and content encodings; return the payload, or a read-stage reason."""
    hmap = dict(headers)
    if "chunked" in hmap.get("transfer-encoding", "").lower():
        # Many archives keep the header but store the body already de-chunked.
        dechunked = _dechunk(body)
        if dechunked is not None:
            body = dechunked
    # Content-Encoding lists the codings in the order they were applied: undo the last first.
    codings = [c.strip() for c in hmap.get("content-encoding", "").lower().split(",")]
    for coding in reversed([c for c in codings if c not in ("", "identity", "none")]):
        decoder = _DECODERS.get(coding)
        if decoder is None:
            return reasons.CONTENT_ENCODING_UNSUPPORTED
        body = decoder(body, max_bytes)
    if len(body) > max_bytes:
        return reasons.BODY_TOO_LARGE
    return body


# Each decoder returns at most max_bytes + 1 bytes (enough to tell the body is too large, so
# a compression bomb stops there) and, when the bytes do not decode, the body as stored:
# archives often keep the Content-Encoding header over a body already decoded.


def _gzip(body: bytes, max_bytes: int) -> bytes:
    try:
        return zlib.decompressobj(wbits=47).decompress(body, max_bytes + 1)  # gzip or zlib
    except zlib.error:
        return body


def _deflate(body: bytes, max_bytes: int) -> bytes:
    for wbits in (15, -15):  # zlib-wrapped, as the RFC says; raw, as some servers send
        try:
            return zlib.decompressobj(wbits=wbits).decompress(body, max_bytes + 1)
        except zlib.error:
            continue
    return body


def _brotli(body: bytes, max_bytes: int) -> bytes:
    # Browsers ask for br, so crawls made by browsers hold it (Content-Encoding: br).
    import brotli

    try:
        return brotli.Decompressor().process(body, output_buffer_limit=max_bytes + 1)
    except brotli.error:
        return body


def _zstd(body: bytes, max_bytes: int) -> bytes:
    import zstandard

    out = bytearray()
    try:
        with zstandard.ZstdDecompressor().stream_reader(body) as reader:
            # read() may return less than asked before the end: read until the cap or EOF.
            while len(out) <= max_bytes and (chunk := reader.read(max_bytes + 1 - len(out))):
                out += chunk
    except zstandard.ZstdError:
        return body
    return bytes(out)


_DECODERS = {
    "gzip": _gzip,
    "x-gzip": _gzip,
    "deflate": _deflate,
    "br": _brotli,
    "zstd": _zstd,
}
