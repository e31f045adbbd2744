"""Named reasons and stages: the vocabulary shared by the rejects ledger, stats.json and tests.

Every value here is part of the public output contract. Rename nothing; add new names.
"""

from __future__ import annotations

# --- Stages, in pipeline order. `--stop-after` takes one of STAGES.
STAGE_READ = "read"  # archive records / table rows read
STAGE_EXTRACT = "extract"  # <img> tags and table rows turned into candidates
STAGE_TEXT = "text"  # text rules, per record and dataset-wide (ALIGN §3)
STAGE_FETCH = "fetch"  # getting the image bytes (archive or HTTP)
STAGE_IMAGE = "image"  # decode guard and image rules (ALIGN §3)
# `--stop-after` names one of these; "image" covers fetching too.
STAGES = (STAGE_EXTRACT, STAGE_TEXT, STAGE_IMAGE)

# --- Read stage: why an archive record or file gave no page to extract from.
RECORD_NOT_RESPONSE = "record_not_response"  # warcinfo, request, metadata, revisit, ...
RECORD_NOT_HTTP = "record_not_http"  # a response/resource record without an HTTP payload
HTTP_STATUS_NOT_2XX = "http_status_not_2xx"
NOT_HTML = "not_html"  # a 2xx response whose Content-Type is not text/html or XHTML
CONTENT_ENCODING_UNSUPPORTED = "content_encoding_unsupported"
BODY_TOO_LARGE = "body_too_large"  # decoded body above max_html_bytes
HTML_TOO_DEEP = "html_too_deep"  # element nesting beyond max_html_depth: not parsed
ARCHIVE_TRUNCATED = "archive_truncated"  # the file ends inside a record
ARCHIVE_CORRUPT = "archive_corrupt"  # bytes that are not WARC/ARC where a record should start
NOT_AN_ARCHIVE = "not_an_archive"  # an input file that is neither WARC nor ARC
TABLE_UNREADABLE = "table_unreadable"
FILE_FAILED = "file_failed"  # reading the file raised: see OUTPUT/dead_letter/

# --- Extract stage: an <img> tag (or table row) that did not become a candidate.
NO_ALT_TEXT = "no_alt_text"  # <img> without an alt attribute / null caption
EMPTY_ALT_TEXT = "empty_alt_text"  # alt="" or only whitespace
ALT_TEXT_OVERSIZED = "alt_text_oversized"  # above max_alt_chars: a cap, not a rule
NO_IMAGE_URL = "no_image_url"  # no src, srcset or lazy-load attribute
DATA_URI = "data_uri"  # the image is inline (data:), there is no URL to fetch
UNSUPPORTED_SCHEME = "unsupported_scheme"  # javascript:, ftp:, file:, about:, ...
PATH_NOT_ALLOWED = "path_not_allowed"  # a table row's image path outside every file_roots folder
BAD_URL = "bad_url"  # a src that does not resolve to an absolute http(s) URL with a host
URL_OVERSIZED = "url_oversized"  # above max_url_chars: a cap, not a rule
DUPLICATE_ON_PAGE = "duplicate_on_page"  # the same (image_url, alt_text) again on one page
PAGE_IMAGE_CAP = "page_image_cap"  # <img> tags past max_images_per_page on one page
DUPLICATE_CAPTURE = "duplicate_capture"  # the same (page, image, alt) from another capture/row

# --- Text stage (ALIGN §3 and boilerplate rules); these are ledger reasons.
TEXT_TOO_SHORT = "text_too_short"
TEXT_TOO_LONG = "text_too_long"
TEXT_FILENAME = "text_filename"
TEXT_DIMENSIONS = "text_dimensions"
TEXT_URL = "text_url"
TEXT_PLACEHOLDER = "text_placeholder"

# Dataset-wide text rules (ALIGN §3): they need counts over every candidate of the run.
TEXT_ON_MANY_IMAGES = "text_on_too_many_images"  # the same alt-text on > max_images_per_text
TEXT_RARE_TOKEN = "text_rare_token"  # a unigram/bigram outside the vocabulary
LANGUAGE_NOT_SELECTED = "language_not_selected"  # --languages given, text in another one

TEXT_REASONS = (
    TEXT_URL,
    TEXT_FILENAME,
    TEXT_DIMENSIONS,
    TEXT_PLACEHOLDER,
    TEXT_TOO_SHORT,
    TEXT_TOO_LONG,
)

# --- Fetch stage: why no image bytes came back. HTTP errors are `http_<status>`.
NOT_IN_ARCHIVE = "not_in_archive"  # --images-from archive, and the archive lacks the image
TIMEOUT = "timeout"
DNS_ERROR = "dns_error"
CONNECTION_ERROR = "connection_error"
TLS_ERROR = "tls_error"
TOO_LARGE = "too_large"  # body above max_image_bytes, stopped while streaming
TRUNCATED_BODY = "truncated_body"  # the connection ended before Content-Length bytes came
NOT_AN_IMAGE = "not_an_image"  # Content-Type or magic bytes say it is not an image
ROBOTS_DISALLOWED = "robots_disallowed"  # the host's robots.txt forbids the path
OPT_OUT = "opt_out"  # X-Robots-Tag: noai / noimageai
PRIVATE_ADDRESS = "private_address"  # host resolves to loopback/private/link-local/...
TOO_MANY_REDIRECTS = "too_many_redirects"
BAD_REDIRECT = "bad_redirect"  # a Location that is missing, not http(s), or unusable
FETCH_FAILED = "fetch_failed"  # any other protocol error, detail says which
FILE_NOT_FOUND = "file_not_found"  # a table row's image path (file_roots) names no file
FILE_ERROR = "file_error"  # reading that file failed otherwise; detail says how


def http_status(code: int) -> str:
    """The reason for an HTTP error status: http_404, http_503, ..."""
    return f"http_{code}"


def is_transient(reason: str) -> bool:
    """Whether a fetch failure may succeed on a later try (for --retry-failed)."""
    if reason in (TIMEOUT, DNS_ERROR, CONNECTION_ERROR, TLS_ERROR, TRUNCATED_BODY):
        return True
    return reason == "http_429" or (reason.startswith("http_5") and len(reason) == 8)


# --- Image stage (ALIGN §3 and the decode guard).
IMAGE_TOO_MANY_TEXTS = "image_too_many_texts"  # > max_texts_per_image alt-texts (URL or hash)
IMAGE_UNREADABLE = "image_unreadable"  # not decodable; detail has Pillow's error
IMAGE_TOO_MANY_PIXELS = "image_too_many_pixels"  # decompression bomb guard
# The process measuring this image died or hung on it, twice (once alone): a decoder bug
IMAGE_DECODER_CRASHED = "image_decoder_crashed"
IMAGE_TOO_SMALL = "image_too_small"  # shorter side <= 200 px
IMAGE_ASPECT_RATIO = "image_aspect_ratio"  # aspect ratio >= 3
EVAL_DUPLICATE = "eval_duplicate"  # near-duplicate of a downstream evaluation image
NEAR_DUPLICATE = "near_duplicate"  # near-duplicate of another kept image; detail: its uid
NSFW = "nsfw"  # NSFW score >= nsfw_threshold

# --- Any stage: processing this candidate raised an exception (see OUTPUT/dead_letter/).
INTERNAL_ERROR = "internal_error"

# --- Funnel counter names that are not reasons.
FILES = "files"
RECORDS = "records"
HTML_PAGES = "html_pages"
TABLE_ROWS = "table_rows"
IMG_TAGS = "img_tags"
CANDIDATES = "candidates"
