"""Images named by path in a URL table: local files, file:// URLs, or any filesystem the
runner reads (gs://, ...), allowed only under the folders the user lists in `file_roots`.

A URL table may come from the web (LAION-style dumps do), and a worker can read what its
service account can: the project's private buckets, its own disk. So a path is followed
only when it lies under a configured root, after `..` is resolved; a local path is checked
again, symlinks resolved, when it is read. Pure functions: the runner passes in how to open
a path (Beam's FileSystems.open in pipelines/).
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Callable, Sequence
from typing import BinaryIO
from urllib.parse import unquote, urlsplit

from curation import reasons
from curation.fetch import FetchResult

WEB_SCHEMES = ("http", "https")
# Files are read in 1 MiB chunks, up to one byte past max_image_bytes (which tells a file of
# exactly the limit from a larger one).
_READ_CHUNK = 1 << 20


def _scheme(value: str) -> str | None:
    """The scheme of `value` when it is written `scheme://...`, lower-cased; else None
    ("data:" and "javascript:" are not paths)."""
    head, sep, _ = value.partition("://")
    if sep and head and head.replace("+", "").replace("-", "").replace(".", "").isalnum():
        return head.lower()
    return None


def normalize_root(root: str) -> str:
    """A configured root as paths are compared with it: file:// and relative local roots
    become absolute local paths, `..` and trailing slashes go."""
    return _normalize(_local_or_remote(root) or root)


def _local_or_remote(value: str) -> str | None:
    scheme = _scheme(value)
    if scheme == "file":
        parts = urlsplit(value)
        if parts.netloc not in ("", "localhost"):
            return None  # file://otherhost/...: not a path on this machine
        return unquote(parts.path)
    if scheme is not None:
        return value
    return os.path.abspath(value) if not value.startswith("/") else value


def _normalize(path: str) -> str:
    scheme = _scheme(path)
    if scheme is None:
        return posixpath.normpath(path)
    rest = path[len(scheme) + 3 :]
    return f"{scheme}://{posixpath.normpath(rest).lstrip('/')}" if rest else path


def is_image_path(image_url: str) -> bool:
    """Whether a candidate's image_url names a file (as `image_path` returns them) rather
    than a web URL."""
    return _scheme(image_url) not in WEB_SCHEMES


def _under(path: str, roots: Sequence[str]) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def image_path(value: str, table_path: str, roots: Sequence[str]) -> tuple[str | None, str | None]:
    """A URL-table cell as an image path: (path, None) when it names a file under one of
    `roots` (normalized by normalize_root), (None, reason) when it names a file elsewhere
    or on another host, and (None, None) when it is no path at all (a web URL, data:,
    javascript:, //host/...: the caller resolves it as a URL). A relative path is relative
    to the table's folder."""
    value = value.strip()
    if "\x00" in value:
        return None, reasons.BAD_URL  # no filesystem takes a NUL byte in a name
    scheme = _scheme(value)
    if not value or value in (".", "./") or scheme in WEB_SCHEMES or value.startswith("//"):
        return None, None  # the table folder itself is no image either
    if scheme is None and not value.startswith("/"):
        if ":" in value.split("/", 1)[0]:
            return None, None  # data:..., javascript:..., mailto:...
        if _scheme(table_path):
            value = posixpath.join(posixpath.dirname(table_path), value)
        else:
            value = os.path.join(os.path.dirname(os.path.abspath(table_path)), value)
    path = _local_or_remote(value)
    if path is None:
        return None, reasons.UNSUPPORTED_SCHEME  # file://otherhost/...
    if "\x00" in path:
        return None, reasons.BAD_URL  # percent-encoded in a file:// URL
    path = _normalize(path)
    if not _under(path, roots):
        return None, reasons.PATH_NOT_ALLOWED
    return path, None


def read_image_file(
    path: str,
    roots: Sequence[str],
    max_bytes: int,
    open_path: Callable[[str], BinaryIO],
) -> FetchResult:
    """The bytes of an image file as a FetchResult, else file_not_found, too_large (stopped
    after max_bytes), path_not_allowed (outside `roots`, normalized by normalize_root, or a
    local symlink out of them) or file_error (any other failure, with its message)."""
    # Checked again at read time: a path reaches here only from image_path, but the reader
    # is the last place that can refuse.
    if "\x00" in path or not _under(_normalize(path), roots):
        return FetchResult(path, reason=reasons.PATH_NOT_ALLOWED, detail="outside file_roots")
    target = path
    if _scheme(path) is None:
        try:
            # Symlinks resolved: a link inside a root may point anywhere.
            target = os.path.realpath(path)
            local_roots = [os.path.realpath(r) for r in roots if _scheme(r) is None]
            if not _under(target, local_roots):
                detail = "a symlink out of file_roots"
                return FetchResult(path, reason=reasons.PATH_NOT_ALLOWED, detail=detail)
            if not os.path.isfile(target):
                missing = not os.path.exists(target)
                reason = reasons.FILE_NOT_FOUND if missing else reasons.FILE_ERROR
                return FetchResult(path, reason=reason, detail="not a regular file")
        except (OSError, ValueError) as e:
            detail = f"{type(e).__name__}: {e}"[:300]
            return FetchResult(path, reason=reasons.FILE_ERROR, detail=detail)
    chunks, size = [], 0
    try:
        with open_path(target) as fh:  # the resolved file, as checked
            while size <= max_bytes:
                chunk = fh.read(min(_READ_CHUNK, max_bytes + 1 - size))
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
    except Exception as e:  # any filesystem's failure (permissions, I/O, network) is named
        detail = f"{type(e).__name__}: {e}"[:300]
        # Local files raise FileNotFoundError; GCS raises its client's NotFound (a 404).
        missing = isinstance(e, FileNotFoundError) or type(e).__name__ == "NotFound"
        return FetchResult(
            path, reason=reasons.FILE_NOT_FOUND if missing else reasons.FILE_ERROR, detail=detail
        )
    if size > max_bytes:
        return FetchResult(path, reason=reasons.TOO_LARGE, detail=f"more than {max_bytes} bytes")
    return FetchResult(path, data=b"".join(chunks))
