"""Shard encoders: Parquet (img2dataset-compatible columns), TFRecord of tf.train.Example,
and WebDataset tar. Pure functions from rows to bytes; the same rows give the same bytes.

TFRecord is written without TensorFlow: tf.train.Example is a small protobuf, encoded here
by hand, framed as TFRecord with masked CRC-32C checksums.
"""

from __future__ import annotations

import io
import json
import struct
import tarfile
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import google_crc32c
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curation.record import CANDIDATE_SCHEMA, image_size

FORMATS = ("parquet", "tfrecord", "webdataset")
SUFFIX = {"parquet": ".parquet", "tfrecord": ".tfrecord", "webdataset": ".tar"}

# img2dataset's column names, added beside ours so that its readers find them; every row
# written is one of its successes (a failure is in our rejects ledger instead).
IMG2DATASET_ALIASES = (("key", "uid"), ("url", "image_url"), ("caption", "alt_text"))
IMG2DATASET_STATUS = {"status": "success", "error_message": None}
SHARD_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string()),
        pa.field("url", pa.string()),
        pa.field("caption", pa.string()),
        pa.field("status", pa.string()),
        pa.field("error_message", pa.string()),
        *CANDIDATE_SCHEMA,
    ]
)

# Pillow format name -> the file extension that WebDataset/open_clip loaders look for.
EXTENSIONS = {
    "JPEG": "jpg",
    "PNG": "png",
    "WEBP": "webp",
    "GIF": "gif",
    "MPO": "jpg",
    "JPEG2000": "jp2",
    "TIFF": "tif",
}


def image_extension(image_format: str | None) -> str:
    """File extension for a Pillow format name (jpg, png, webp, ...)."""
    if not image_format:
        return "bin"
    return EXTENSIONS.get(image_format.upper(), image_format.lower())


def with_aliases(row: Mapping[str, Any]) -> dict[str, Any]:
    """A kept row with img2dataset's key/url/caption/status/error_message columns added."""
    out: dict[str, Any] = {alias: row[ours] for alias, ours in IMG2DATASET_ALIASES}
    out.update(IMG2DATASET_STATUS)
    out.update(row)
    return out


# Offsets of Arrow's binary type are int32: one chunk of a binary column stays below 2 GiB.
_BINARY_CHUNK_BYTES = (1 << 31) - 1


def arrow_table(
    rows: Sequence[Mapping[str, Any]], schema: pa.Schema, chunk_bytes: int = _BINARY_CHUNK_BYTES
) -> pa.Table:
    """Rows as an Arrow table, as `pa.Table.from_pylist` builds it (a missing key is null),
    with the binary columns (image bytes) copied once into a buffer of their exact size.

    from_pylist grows each binary column by doubling in Arrow's own allocator: fresh pages
    and copies that took most of the encoding (BENCHMARKS.md, "figures behind code choices").
    """
    columns = []
    for field in schema:
        values = [row.get(field.name) for row in rows]
        large = pa.types.is_large_binary(field.type)
        # The fast path takes bytes and memoryviews of bytes (the spool's mapped files)
        # alone, each below a chunk: anything else (None, str, bytearray, a 2 GiB value)
        # goes to Arrow's own conversion.
        if (
            (large or pa.types.is_binary(field.type))
            and values
            and all(_is_blob(v) and len(v) < chunk_bytes for v in values)
        ):
            columns.append(_binary_column(values, field.type, large, chunk_bytes))
        else:
            columns.append(pa.array(values, type=field.type))
    return pa.Table.from_arrays(columns, schema=schema)


def _is_blob(value: Any) -> bool:
    """bytes, or a flat read-only view of bytes (len() counts bytes, join() takes it)."""
    kind = type(value)
    return kind is bytes or (
        kind is memoryview and value.format == "B" and value.ndim == 1 and value.c_contiguous
    )


def _binary_column(
    values: list[Any], kind: pa.DataType, large: bool, chunk_bytes: int
) -> pa.Array | pa.ChunkedArray:
    sizes = [len(v) for v in values]
    chunks, start, held = [], 0, 0
    for i, size in enumerate(sizes):
        if i > start and not large and held + size > chunk_bytes:
            chunks.append((start, i))
            start, held = i, 0
        held += size
    chunks.append((start, len(values)))
    offset_type = np.int64 if large else np.int32
    arrays = []
    for lo, hi in chunks:
        offsets = np.zeros(hi - lo + 1, dtype=offset_type)
        np.cumsum(sizes[lo:hi], out=offsets[1:])
        data = b"".join(values[lo:hi])
        buffers = [None, pa.py_buffer(offsets), pa.py_buffer(data)]
        arrays.append(pa.Array.from_buffers(kind, hi - lo, buffers))
    return arrays[0] if len(arrays) == 1 else pa.chunked_array(arrays, type=kind)


# A shard is written a row group at a time, each cut where its binary columns (the images)
# pass this size: Arrow's column and the encoded pages then hold one group's images, not a
# shard's (10,000 images of ~100 KB are ~1 GB, which the writer held three times over: the
# rows, Arrow's column, the encoded pages). 16 MB was the fastest of the sizes measured
# (BENCHMARKS.md, "figures behind code choices").
ROW_GROUP_BYTES = 16 << 20

Rows = Sequence[Mapping[str, Any]]


def _blob_fields(schema: pa.Schema) -> list[str]:
    return [
        f.name for f in schema if pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type)
    ]


def row_groups(rows: Rows, schema: pa.Schema, limit: int | None = None) -> list[Rows]:
    """`rows` cut in order into groups whose binary columns hold about `limit` bytes
    (default ROW_GROUP_BYTES): a group closes with the row that reaches the limit, so it
    holds less than the limit plus its largest row. Sizes are read from bytes or from
    BlobRefs alike. No rows: one empty group."""
    limit = ROW_GROUP_BYTES if limit is None else limit
    fields = _blob_fields(schema)
    groups: list[Rows] = []
    start = held = 0
    for i, row in enumerate(rows):
        held += sum(image_size(row.get(name)) or 0 for name in fields)
        if held >= limit:
            groups.append(rows[start : i + 1])
            start, held = i + 1, 0
    if start < len(rows) or not groups:
        groups.append(rows[start:])
    return groups


def write_parquet(rows: Rows, schema: pa.Schema, sink: Any) -> None:
    """Rows as one Parquet file, written to `sink` (a binary file object or an Arrow output
    stream) a row group at a time (see ROW_GROUP_BYTES). The same rows in the same order
    give the same bytes.

    Text and number columns: zstd, dictionary, statistics. Binary columns (encoded images,
    thumbnails): none of the three. JPEG and PNG bytes do not compress, no two are equal,
    and min/max of image bytes filter nothing, so each only cost time: 293 -> 160 ms for
    1,000 kept rows (67 MB), file 0.2% larger (/tmp measurement on the benchmark corpus).
    """
    blobs = set(_blob_fields(schema))
    rest = [f.name for f in schema if f.name not in blobs]
    with pq.ParquetWriter(
        sink,
        schema,
        compression={f.name: "none" if f.name in blobs else "zstd" for f in schema},
        use_dictionary=rest,
        write_statistics=rest,
    ) as writer:
        for group in row_groups(rows, schema):
            writer.write_table(arrow_table(group, schema))


def parquet_bytes(rows: Sequence[Mapping[str, Any]], schema: pa.Schema) -> bytes:
    """Rows as the bytes of one Parquet file (see write_parquet)."""
    # Arrow's own growing buffer, not io.BytesIO: ~2x faster for shards of images.
    buf = pa.BufferOutputStream()
    write_parquet(rows, schema, buf)
    return buf.getvalue().to_pybytes()


# --- tf.train.Example, by hand.


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative int64s are 10-byte two's complement varints
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _feature(value: Any) -> bytes:
    values = value if isinstance(value, list | tuple) else [value]
    if all(isinstance(v, bytes | memoryview | str) for v in values):
        items = b"".join(_field(1, v.encode() if isinstance(v, str) else v) for v in values)
        return _field(1, items)  # BytesList
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return _field(3, _field(1, b"".join(_varint(v) for v in values)))  # Int64List, packed
    if all(isinstance(v, int | float) for v in values):
        return _field(2, _field(1, struct.pack(f"<{len(values)}f", *values)))  # FloatList
    raise TypeError(f"cannot encode {value!r} as a tf.train.Feature")


def encode_example(features: Mapping[str, Any]) -> bytes:
    """A tf.train.Example protobuf; keys sorted so that the bytes are deterministic."""
    entries = b"".join(
        _field(1, _field(1, key.encode()) + _field(2, _feature(features[key])))
        for key in sorted(features)
        if features[key] is not None
    )
    return _field(1, entries)


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC-32C."""
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord_frame(record: bytes) -> bytes:
    """One TFRecord: length, CRC of the length, data, CRC of the data."""
    length = struct.pack("<Q", len(record))
    return (
        length
        + struct.pack("<I", masked_crc32c(length))
        + record
        + struct.pack("<I", masked_crc32c(record))
    )


# What a null is written as in a tf.train.Example, so that every example carries every
# feature and a strict parse spec (FixedLenFeature) reads them all.
MISSING_STRING, MISSING_INT, MISSING_FLOAT = "", -1, float("nan")


def example_features(row: Mapping[str, Any]) -> dict[str, Any]:
    """The tf.train.Example fields of a kept row (the usual image/* names, plus ours);
    nulls are MISSING_STRING, MISSING_INT or MISSING_FLOAT."""

    def text(name: str) -> str:
        value = row.get(name)
        return MISSING_STRING if value is None else value

    def number(name: str, missing: float) -> float:
        value = row.get(name)
        return missing if value is None else value

    return {
        "image/encoded": row["image"],
        "image/format": image_extension(row["image_format"]),
        "image/original_format": image_extension(row.get("original_format")),
        "image/width": number("width", MISSING_INT),
        "image/height": number("height", MISSING_INT),
        "image/original_width": number("original_width", MISSING_INT),
        "image/original_height": number("original_height", MISSING_INT),
        "image/sha256": text("sha256"),
        "image/phash": text("phash"),
        "caption": row["alt_text"],
        "key": row["uid"],
        "url": row["image_url"],
        "page_url": text("page_url"),
        "text_lang": text("text_lang"),
        "nsfw_score": number("nsfw_score", MISSING_FLOAT),
    }


def tfrecord_bytes(rows: Iterable[Mapping[str, Any]]) -> bytes:
    """A TFRecord file of tf.train.Example, one per kept row."""
    return b"".join(tfrecord_frame(encode_example(example_features(r))) for r in rows)


# --- WebDataset.


def _member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    # Fixed metadata: the tar's bytes depend on the samples alone.
    info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = 0, 0o644, 0, 0, "", ""
    tar.addfile(info, io.BytesIO(data))


def sample_metadata(row: Mapping[str, Any]) -> dict[str, Any]:
    """The key.json of a WebDataset sample: every column but the image bytes."""
    return {k: v for k, v in with_aliases(row).items() if k != "image"}


def webdataset_bytes(rows: Iterable[Mapping[str, Any]]) -> bytes:
    """A WebDataset tar: key.<ext>, key.txt and key.json per sample; keys are uids (hex), so
    no member name comes from a URL or an alt-text."""
    buf = io.BytesIO()
    write_webdataset([list(rows)], buf)
    return buf.getvalue()


def write_webdataset(groups: Iterable[Rows], sink: Any) -> None:
    """webdataset_bytes of the groups' rows in order, streamed into `sink` (which needs
    write() and tell()); the same bytes."""
    with tarfile.open(fileobj=sink, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for rows in groups:
            for row in rows:
                key = row["uid"]
                assert key.isalnum(), "tar member names are built from hex uids only"
                _member(tar, f"{key}.{image_extension(row['image_format'])}", row["image"])
                _member(tar, f"{key}.txt", row["alt_text"].encode())
                meta = json.dumps(sample_metadata(row), sort_keys=True, ensure_ascii=False)
                _member(tar, f"{key}.json", meta.encode())


def write_shard(fmt: str, rows: Rows, schema: pa.Schema, sink: Any) -> None:
    """One shard in one format, streamed into `sink` a row group at a time (see
    ROW_GROUP_BYTES), so a shard's images are not copied twice more in memory."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown shard format {fmt!r} (known: {', '.join(FORMATS)})")
    if fmt == "parquet":
        if schema.equals(CANDIDATE_SCHEMA):  # kept records: add img2dataset's columns
            rows, schema = [with_aliases(r) for r in rows], SHARD_SCHEMA
        write_parquet(rows, schema, sink)
        return
    groups = row_groups(rows, schema)
    if fmt == "tfrecord":
        for group in groups:  # records are framed one by one: groups simply follow
            sink.write(tfrecord_bytes(group))
    else:
        write_webdataset(groups, sink)


def count_records(fmt: str, fh: Any) -> int:
    """The records in one shard file (a seekable binary file object), read from the file's
    own structure: Parquet's footer, TFRecord's length prefixes, a tar's sample members."""
    if fmt == "parquet":
        return pq.ParquetFile(fh).metadata.num_rows
    if fmt == "tfrecord":
        end = fh.seek(0, io.SEEK_END)
        fh.seek(0)
        count = 0
        while head := fh.read(12):
            if len(head) < 12:
                raise ValueError("a TFRecord file cut inside a record header")
            (length,) = struct.unpack("<Q", head[:8])
            # The record and its CRC; a seek past the end succeeds, so the end is checked.
            if fh.seek(length + 4, io.SEEK_CUR) > end:
                raise ValueError("a TFRecord file cut inside a record")
            count += 1
        return count
    if fmt == "webdataset":
        with tarfile.open(fileobj=fh, mode="r:") as tar:
            return sum(1 for m in tar if m.name.endswith(".json"))  # one .json per sample
    raise ValueError(f"unknown shard format {fmt!r}")
