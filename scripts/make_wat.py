"""Write the WAT file of a WARC file, in Common Crawl's layout.

    python scripts/make_wat.py IN.warc.gz OUT.warc.wat.gz [--date 2024-05-31T01:16:45Z]

Common Crawl derives a WAT from each WARC with ia-web-commons (`WATExtractorOutput`): a
warcinfo record, then one gzip member per WARC record holding a `metadata` record whose JSON
describes it (`Container`: the WARC's name, offset and gzip member; `Envelope`: its WARC
headers, HTTP message and, for HTML, `HTML-Metadata` with `Head` and `Links`). This writes the
same, deterministically (uuid5 record ids, the `--date` as extraction date, gzip mtime 0), so
larger WATs can be made from the shared WARCs for tests and benchmarks.

How faithful it is, checked against the real cc-whirlwind WAT (tests/test_wat.py compares the
request record it holds, field by field):
- Same: the record layout and WARC headers, every JSON key and its nesting, numbers written
  as strings, `Container.Gzip-Metadata`, header and block lengths, digests (sha1, base32),
  request and response messages, `Headers` as one mapping (a repeated header keeps its last
  value, as a JSON object must).
- `HTML-Metadata` is built from lexbor's HTML5 parse (the one the WARC reading uses), not
  ia-web-commons' htmlparser: on tag soup the two may see different tags. It records what
  ia-web-commons records for the tags that matter here: `IMG@/src` with `alt` and `title`
  (only `<img>` with a `src`; `alt` absent when the tag has none), `IMG@/longdesc`, `A@/href`
  with its text (128 characters at most), `<iframe>`/`<frame>`/`<embed>`/`<source>`/
  `<audio>`/`<video>`/`<track>` sources, `<form action>`, `Head.Title`, `Head.Base` (the last
  `<base href>`, as ia-web-commons overwrites), `Head.Metas` (with `HTML@/lang`),
  `Head.Link`, `Head.Scripts`. Not written: CSS `url()` links, `onclick` URLs, the
  `background`/`data-href` attributes. An `<a>` is listed where it opens (ia-web-commons
  lists it where it closes, after the links inside it).
- `Container.Filename` is the input's file name; in Common Crawl it is the crawl's WARC name.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import hashlib
import io
import json
import os
import sys
import uuid
import zlib
from collections.abc import Iterator
from typing import Any

from fastwarc.warc import ArchiveIterator
from selectolax.lexbor import LexborHTMLParser

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from curation.archive import decode_body, parse_http_response
from curation.html import HTML_MIME_TYPES, decode_html

SOFTWARE = "align-curation scripts/make_wat.py (ia-web-commons WAT layout)"
_TEXT_MAX = 128  # ia-web-commons' MAX_TEXT_LEN for anchor texts and titles
# Tags whose URL attributes ia-web-commons lists as plain links (no extra attributes).
_BASIC = {
    "iframe": ("src",),
    "frame": ("src",),
    "embed": ("src",),
    "audio": ("src",),
    "track": ("src",),
    "source": ("src",),
    "video": ("src", "poster"),
    "input": ("src", "formaction"),
    "button": ("formaction",),
    "object": ("codebase", "cdata", "data"),
    "applet": ("codebase", "cdata"),
    "q": ("cite",),
    "blockquote": ("cite",),
    "del": ("cite",),
    "ins": ("cite",),
}


def _digest(data: bytes) -> str:
    return "sha1:" + base64.b32encode(hashlib.sha1(data).digest()).decode()


def _members(raw: bytes) -> Iterator[tuple[int, int]]:
    """(offset, length) of each record as FastWARC finds them."""
    positions: list[int] = []
    try:
        for record in ArchiveIterator(io.BytesIO(raw), parse_http=False):
            positions.append(int(record.stream_pos))
    except (OSError, ValueError, EOFError, zlib.error):
        pass  # a damaged file: its WAT describes the records before the damage
    for i, pos in enumerate(positions):
        yield pos, (positions[i + 1] if i + 1 < len(positions) else len(raw)) - pos


def _gzip_metadata(member: bytes) -> tuple[dict[str, str], bytes]:
    """Gzip-Metadata of one member as ia-web-commons writes it, and the inflated bytes."""
    flags = member[3]
    pos = 10
    if flags & 4:  # FEXTRA
        pos += 2 + int.from_bytes(member[pos : pos + 2], "little")
    for bit in (8, 16):  # FNAME, FCOMMENT: zero-terminated
        if flags & bit:
            pos = member.index(b"\0", pos) + 1
    if flags & 2:  # FHCRC
        pos += 2
    d = zlib.decompressobj(wbits=31)
    inflated = d.decompress(member)
    footer = 8
    deflate_len = len(member) - len(d.unused_data) - pos - footer
    meta = {
        "Deflate-Length": str(deflate_len),
        "Header-Length": str(pos),
        "Footer-Length": str(footer),
        "Inflated-CRC": str(zlib.crc32(inflated)),
        "Inflated-Length": str(len(inflated)),
    }
    return meta, inflated


def _split_record(record: bytes) -> tuple[bytes, dict[str, str], bytes]:
    """(WARC header bytes incl. the blank line, headers in order, block)."""
    end = record.index(b"\r\n\r\n") + 4
    headers: dict[str, str] = {}
    for line in record[:end].split(b"\r\n")[1:]:
        name, colon, value = line.partition(b":")
        if colon:
            headers[name.decode("utf-8", "replace").strip()] = value.decode(
                "utf-8", "replace"
            ).strip()
    length = int(headers.get("Content-Length", "0"))
    return record[:end], headers, record[end : end + length]


def _http_headers(head: bytes) -> tuple[str, dict[str, str]]:
    lines = (
        head.decode("latin-1").split("\r\n")
        if b"\r\n" in head
        else head.decode("latin-1").split("\n")
    )
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if colon:
            headers[name.strip()] = value.strip()
    return lines[0], headers


def _entity(block: bytes) -> tuple[bytes, bytes]:
    """(HTTP head without the blank line, entity) of an HTTP message block."""
    end = block.find(b"\r\n\r\n")
    if end < 0:
        return block, b""
    return block[:end], block[end + 4 :]


def _attrs_list(node: Any, path: str, url_attr: str, *extra: str) -> dict[str, str] | None:
    attrs = node.attributes
    url = attrs.get(url_attr)
    if url is None:
        return None
    out = {"path": path, "url": url}
    for name in extra:
        value = attrs.get(name, False)
        if value is not False:
            out[name] = value or ""
    return out


def html_metadata(html: str) -> dict[str, Any]:
    """`HTML-Metadata` of a page: `Head` (Title, Metas, Link, Scripts, Base) and `Links`."""
    tree = LexborHTMLParser(html)
    head: dict[str, Any] = {}
    links: list[dict[str, str]] = []
    if tree.root is None:
        return {}
    for node in tree.root.traverse(include_text=False):
        tag = node.tag
        if tag is None or tag.startswith("-"):
            continue
        attrs = node.attributes
        upper = tag.upper()
        if tag == "html":
            for name in ("lang", "xml:lang"):
                if attrs.get(name) is not None:
                    head.setdefault("Metas", []).append(
                        {"name": f"HTML@/{name}", "content": attrs[name]}
                    )
        elif tag == "title" and "Title" not in head:
            text = node.text(deep=True).strip()[:_TEXT_MAX]
            if text:
                head["Title"] = text
        elif tag == "base" and attrs.get("href") is not None:
            head["Base"] = attrs["href"]
        elif tag == "meta":
            meta = {
                k: attrs[k] or ""
                for k in ("name", "rel", "content", "http-equiv", "property")
                if k in attrs
            }
            if meta:
                head.setdefault("Metas", []).append(meta)
        elif tag == "link":
            entry = _attrs_list(node, "LINK@/href", "href", "rel", "type")
            if entry:
                head.setdefault("Link", []).append(entry)
        elif tag == "script":
            entry = _attrs_list(node, "SCRIPT@/src", "src", "type")
            if entry:
                head.setdefault("Scripts", []).append(entry)
        elif tag == "img":
            entry = _attrs_list(node, "IMG@/src", "src", "alt", "title")
            if entry:
                links.append(entry)
            entry = _attrs_list(node, "IMG@/longdesc", "longdesc")
            if entry:
                links.append(entry)
        elif tag == "a":
            entry = _attrs_list(
                node, "A@/href", "href", "target", "alt", "title", "rel", "hreflang", "type"
            )
            if entry:
                text = " ".join(node.text(deep=True).split())[:_TEXT_MAX]
                if text:
                    entry["text"] = text
                links.append(entry)
        elif tag == "form":
            entry = _attrs_list(node, "FORM@/action", "action", "target", "method")
            if entry:
                links.append(entry)
        elif tag == "area":
            entry = _attrs_list(node, "AREA@/href", "href", "rel")
            if entry:
                links.append(entry)
        elif tag in _BASIC:
            for name in _BASIC[tag]:
                if attrs.get(name) is not None:
                    links.append({"path": f"{upper}@/{name}", "url": attrs[name]})
    out: dict[str, Any] = {}
    if head:
        out["Head"] = head
    if links:
        out["Links"] = links
    return out


def _payload(warc: dict[str, str], block: bytes, max_html_bytes: int) -> dict[str, Any]:
    """`Envelope.Payload-Metadata` of one record."""
    ctype = warc.get("Content-Type", "")
    out: dict[str, Any] = {"Actual-Content-Type": ctype}
    rtype = warc.get("WARC-Type")
    if rtype in ("request", "response") and ctype.startswith("application/http"):
        head, entity = _entity(block)
        first, headers = _http_headers(head)
        parts = first.split(" ", 2)
        if rtype == "request":
            message = {
                "Method": parts[0],
                "Path": parts[1] if len(parts) > 1 else "",
                "Version": parts[2] if len(parts) > 2 else "",
            }
            key, msg_key = "HTTP-Request-Metadata", "Request-Message"
        else:
            message = {
                "Version": parts[0],
                "Status": parts[1] if len(parts) > 1 else "",
                "Reason": parts[2] if len(parts) > 2 else "",
            }
            key, msg_key = "HTTP-Response-Metadata", "Response-Message"
        http: dict[str, Any] = {
            msg_key: message,
            # Measured on the real WAT: the head and one CRLF, not the blank line's second.
            "Headers-Length": str(len(head) + 2),
            "Headers": headers,
            "Entity-Length": str(len(entity)),
            "Entity-Digest": _digest(entity),
            "Entity-Trailing-Slop-Length": "0",
        }
        if rtype == "response":
            html = _page_html(block, max_html_bytes)
            if html is not None:
                http["HTML-Metadata"] = html_metadata(html)
        out[key] = http
    elif rtype == "resource" and ctype.split(";")[0].strip().lower() in HTML_MIME_TYPES:
        # Common Crawl's WATs hold no resource records; the page's metadata sits beside it.
        out["HTML-Metadata"] = html_metadata(decode_html(block, None)[0])
    elif rtype == "warcinfo":
        out["WARC-Info-Metadata"] = dict(_fields(block))
    elif rtype == "metadata" and ctype.startswith("application/warc-fields"):
        out["WARC-Metadata-Metadata"] = {
            "Metadata-Records": [{"Name": k, "Value": v} for k, v in _fields(block)]
        }
    out["Actual-Content-Length"] = str(len(block))
    out["Trailing-Slop-Length"] = "4"
    out["Block-Digest"] = _digest(block)
    return out


def _fields(block: bytes) -> Iterator[tuple[str, str]]:
    for line in block.decode("utf-8", "replace").splitlines():
        name, colon, value = line.partition(":")
        if colon:
            yield name.strip(), value.strip()


def _page_html(block: bytes, max_html_bytes: int) -> str | None:
    """The decoded HTML of a 2xx HTML response block, else None."""
    parsed = parse_http_response(block)
    if parsed is None:
        return None
    status, headers, body = parsed
    ctype = dict(headers).get("content-type", "")
    if not 200 <= status < 300 or ctype.split(";")[0].strip().lower() not in HTML_MIME_TYPES:
        return None
    decoded = decode_body(headers, body, max_html_bytes)
    if isinstance(decoded, str):
        return None
    charset = None
    if "charset=" in ctype.lower():
        charset = ctype.lower().split("charset=", 1)[1].split(";")[0].strip(" \"'")
    return decode_html(decoded, charset)[0]


def _member(record: bytes) -> bytes:
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz:
        gz.write(record)
    return buf.getvalue()


def _warc_record(headers: list[tuple[str, str]], block: bytes) -> bytes:
    head = "WARC/1.0\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
    return head.encode("utf-8") + block + b"\r\n\r\n"


def make_wat(
    warc_bytes: bytes, filename: str, date: str, max_html_bytes: int = 20_000_000
) -> bytes:
    """The WAT file (gzip members) of a WARC file's bytes, gzipped per record or plain."""
    compressed = warc_bytes[:2] == b"\x1f\x8b"
    wat_name = filename.removesuffix(".gz").removesuffix(".warc") + ".warc.wat.gz"
    info = (
        f"Software-Info: {SOFTWARE}\r\nExtracted-Date: {date}\r\n"
        "format: WARC File Format 1.0\r\n"
        "conformsTo: http://bibnum.bnf.fr/WARC/WARC_ISO_28500_version1_latestdraft.pdf\r\n"
    ).encode()
    out = [
        _member(
            _warc_record(
                [
                    ("WARC-Type", "warcinfo"),
                    ("WARC-Date", date),
                    ("WARC-Filename", wat_name),
                    ("WARC-Record-ID", f"<urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, wat_name)}>"),
                    ("Content-Type", "application/warc-fields"),
                    ("Content-Length", str(len(info))),
                    ("WARC-Block-Digest", _digest(info)),
                ],
                info,
            )
        )
    ]
    for offset, length in _members(warc_bytes):
        container: dict[str, Any] = {
            "Filename": filename,
            "Compressed": compressed,
            "Offset": str(offset),
        }
        raw = warc_bytes[offset : offset + length]
        if compressed:
            container["Gzip-Metadata"], raw = _gzip_metadata(raw)
        head, warc, block = _split_record(raw)
        envelope = {
            "Payload-Metadata": _payload(warc, block, max_html_bytes),
            "Format": "WARC/1.0",
            "WARC-Header-Length": str(len(head)),
            "WARC-Header-Metadata": warc,
        }
        doc = {"Container": container, "Envelope": envelope}
        body = json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        target = warc.get("WARC-Target-URI") or warc.get("WARC-Filename", "")
        refers = warc.get("WARC-Record-ID", f"<urn:offset:{offset}>")
        headers = [
            ("WARC-Type", "metadata"),
            ("WARC-Target-URI", target),
            ("WARC-Date", date),
            ("WARC-Record-ID", f"<urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, refers)}>"),
            ("WARC-Refers-To", refers),
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
            ("WARC-Payload-Digest", _digest(body)),
            ("WARC-Block-Digest", _digest(body)),
        ]
        out.append(_member(_warc_record(headers, body)))
    return b"".join(out)


def main(argv: list[str] | None = None) -> int:
    """Write OUT, the WAT of IN."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("warc")
    parser.add_argument("wat")
    parser.add_argument("--date", default="2024-01-01T00:00:00Z", help="extraction date")
    args = parser.parse_args(argv)
    with open(args.warc, "rb") as fh:
        data = fh.read()
    with open(args.wat, "wb") as fh:
        fh.write(make_wat(data, os.path.basename(args.warc), args.date))
    return 0


if __name__ == "__main__":
    sys.exit(main())
