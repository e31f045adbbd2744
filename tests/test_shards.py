"""Every shard format read back by an independent reader."""

from __future__ import annotations

import contextlib
import io
import json
import struct
import time
from pathlib import Path

import google_crc32c
import pyarrow.dataset as ds
import pytest
import webdataset as wds
from PIL import Image
from tfrecord import example_pb2

from curation import shards
from curation.record import CANDIDATE_SCHEMA
from curation.shards import encode_example, masked_crc32c, tfrecord_frame, webdataset_bytes
from pipelines.cli import main
from tests.conftest import SAMPLE_WARC


@pytest.fixture(scope="module")
def output(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards") / "out"
    args = ["run", "--input", str(SAMPLE_WARC), "--output", str(out), "--images-from", "archive"]
    assert main([*args, "--formats", "parquet,tfrecord,webdataset", "--shard-size", "5"]) == 0
    return out


def test_manifest_lists_every_file_with_its_checksum(output: Path) -> None:
    import hashlib

    for folder, suffix in (
        ("shards", ".parquet"),
        ("tfrecord", ".tfrecord"),
        ("webdataset", ".tar"),
    ):
        manifest = json.loads((output / folder / "_manifest.json").read_text())
        assert manifest["total"] == 13
        names = {e["shard"] for e in manifest["shards"]}
        on_disk = {p.name for p in (output / folder).iterdir() if p.name.endswith(suffix)}
        assert names == on_disk
        for e in manifest["shards"]:
            data = (output / folder / e["shard"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == e["sha256"] and len(data) == e["bytes"]
        # shard_size 5 and 13 records: 3 shards, named {shard:05d}
        assert sorted(names) == [f"0000{i}{suffix}" for i in range(3)]
    # The same records in shard i of every format.
    by_format = {
        folder: json.loads((output / folder / "_manifest.json").read_text())["shards"]
        for folder in ("shards", "tfrecord", "webdataset")
    }
    counts = {f: [e["count"] for e in entries] for f, entries in by_format.items()}
    assert counts["shards"] == counts["tfrecord"] == counts["webdataset"]


def test_parquet_with_pyarrow_dataset(output: Path) -> None:
    table = ds.dataset(output / "shards", format="parquet").to_table()
    assert table.num_rows == 13
    for col in ("key", "url", "caption", "width", "height", "original_width", "original_height"):
        assert col in table.column_names
    rows = table.to_pylist()
    assert all(r["key"] == r["uid"] and r["caption"] == r["alt_text"] for r in rows)
    assert all(Image.open(io.BytesIO(r["image"])).size == (r["width"], r["height"]) for r in rows)


def test_webdataset_with_the_webdataset_library(output: Path) -> None:
    tars = sorted(str(p) for p in (output / "webdataset").glob("*.tar"))
    samples = list(wds.WebDataset(tars, shardshuffle=False, empty_check=False))
    assert len(samples) == 13
    for s in samples:
        image_key = next(k for k in s if k in ("jpg", "png", "webp", "gif"))
        Image.open(io.BytesIO(s[image_key])).load()
        meta = json.loads(s["json"])
        assert meta["uid"] == s["__key__"] and s["txt"].decode() == meta["caption"]


def read_tfrecords(path: Path) -> list[bytes]:
    """A reader of our own that checks both CRCs of every record."""
    data, pos, records = path.read_bytes(), 0, []
    while pos < len(data):
        header = data[pos : pos + 8]
        (length,) = struct.unpack("<Q", header)
        (crc_len,) = struct.unpack("<I", data[pos + 8 : pos + 12])
        assert crc_len == masked_crc32c(header)
        record = data[pos + 12 : pos + 12 + length]
        (crc_data,) = struct.unpack("<I", data[pos + 12 + length : pos + 16 + length])
        assert crc_data == masked_crc32c(record)
        records.append(record)
        pos += 16 + length
    return records


def test_tfrecord_crcs_and_examples(output: Path) -> None:
    records = [
        r for p in sorted((output / "tfrecord").glob("*.tfrecord")) for r in read_tfrecords(p)
    ]
    assert len(records) == 13
    for raw in records:
        ex = example_pb2.Example()
        ex.ParseFromString(raw)
        f = ex.features.feature
        image = f["image/encoded"].bytes_list.value[0]
        im = Image.open(io.BytesIO(image))
        assert im.size == (
            f["image/width"].int64_list.value[0],
            f["image/height"].int64_list.value[0],
        )
        assert f["image/format"].bytes_list.value[0] in (b"jpg", b"png")
        assert f["caption"].bytes_list.value[0].decode()
        assert len(f["key"].bytes_list.value[0]) == 32
        assert 0.0 <= f["nsfw_score"].float_list.value[0] < 1.0


def test_tfrecord_with_the_tfrecord_package(output: Path) -> None:
    from tfrecord.reader import tfrecord_loader

    path = sorted((output / "tfrecord").glob("*.tfrecord"))[0]
    items = list(tfrecord_loader(str(path), None, {"caption": "byte", "image/width": "int"}))
    assert items and all(int(x["image/width"][0]) > 200 for x in items)


def test_example_encoding_matches_protobuf() -> None:
    raw = encode_example({"a": b"xy", "n": -3, "f": 0.5, "list": [1, 2, 300], "skip": None})
    ex = example_pb2.Example()
    ex.ParseFromString(raw)
    f = ex.features.feature
    assert f["a"].bytes_list.value == [b"xy"]
    assert f["n"].int64_list.value == [-3]
    assert f["f"].float_list.value == [0.5]
    assert f["list"].int64_list.value == [1, 2, 300]
    assert "skip" not in f


def test_crc32c_and_framing() -> None:
    assert google_crc32c.value(b"123456789") == 0xE3069283  # the CRC-32C check value
    frame = tfrecord_frame(b"hello")
    assert len(frame) == 8 + 4 + 5 + 4


def test_tar_members_are_safe_and_deterministic() -> None:
    row = {
        "uid": "ab" * 16,
        "image_format": "JPEG",
        "image": b"\xff\xd8\xff",
        "alt_text": "../../etc/passwd",
        "image_url": "http://x/../../a.jpg",
        "page_url": "",
    }
    data = webdataset_bytes([row])
    assert data == webdataset_bytes([row])
    import tarfile

    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        names = tar.getnames()
    assert names == [f"{'ab' * 16}.jpg", f"{'ab' * 16}.txt", f"{'ab' * 16}.json"]
    with pytest.raises(AssertionError):
        webdataset_bytes([{**row, "uid": "../evil"}])


@pytest.mark.parametrize("chunk_bytes", [1 << 31, 100])
def test_arrow_table_is_from_pylists_table(chunk_bytes: int) -> None:
    """The binary columns built in one exact-size buffer (split below Arrow's 2 GiB offset
    limit, here forced at 100 bytes) give from_pylist's table, and the same Parquet bytes;
    nulls, missing keys, empty bytes and large_binary too."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from curation.shards import arrow_table, write_parquet

    schema = pa.schema(
        [
            pa.field("uid", pa.string()),
            pa.field("image", pa.binary()),
            pa.field("thumb", pa.large_binary()),
            pa.field("maybe", pa.binary()),
            pa.field("width", pa.int64()),
        ]
    )
    rows = [
        {"uid": f"u{i}", "image": bytes([i]) * (i * 2), "thumb": b"t" * i, "width": i}
        | ({"maybe": b"m"} if i % 2 else {"maybe": None})
        for i in range(40)
    ]
    rows[3].pop("width")  # a missing key is null, as in from_pylist
    ours = arrow_table(rows, schema, chunk_bytes=chunk_bytes)
    theirs = pa.Table.from_pylist(rows, schema=schema)
    assert ours.schema == schema and ours.equals(theirs)
    if chunk_bytes == 100:
        assert ours.column("image").num_chunks > 1
        for chunk in ours.column("image").chunks:  # under the limit, or one value alone
            assert len(chunk) == 1 or sum(map(len, chunk.to_pylist())) <= 100
    a, b = pa.BufferOutputStream(), pa.BufferOutputStream()
    write_parquet(rows, schema, a)
    pq.write_table(
        theirs,
        b,
        compression={"uid": "zstd", "image": "none", "thumb": "none", "maybe": "none"}
        | {"width": "zstd"},
        use_dictionary=["uid", "width"],
        write_statistics=["uid", "width"],
    )
    assert a.getvalue() == b.getvalue()
    assert arrow_table([], schema).num_rows == 0
    # What the fast path does not take goes to Arrow's conversion: str, bytearray; a view
    # of bytes takes the fast path, with the same result.
    odd = [{"uid": "a", "image": "text", "thumb": bytearray(b"t"), "maybe": memoryview(b"m")}]
    assert arrow_table(odd, schema).equals(pa.Table.from_pylist(odd, schema=schema))


def test_row_groups_close_at_the_byte_limit_whatever_holds_the_bytes() -> None:
    from curation.record import BlobRef
    from curation.shards import row_groups

    schema = CANDIDATE_SCHEMA
    sizes = [60, 60, 30, 200, 10]
    rows = [
        {"uid": str(i), "image": b"x" * n if i % 2 else BlobRef("spool", 0, n)}
        for i, n in enumerate(sizes)
    ]
    groups = row_groups(rows, schema, limit=100)
    assert [[r["uid"] for r in g] for g in groups] == [["0", "1"], ["2", "3"], ["4"]]
    assert row_groups([], schema, limit=100) == [[]]
    assert row_groups(rows, schema) == [rows]  # the default limit is megabytes


def _kept_rows(n: int) -> list[dict]:
    return [
        {
            **{f.name: None for f in CANDIDATE_SCHEMA},
            "uid": f"{i:032x}",
            "page_url": "",
            "image_url": f"http://127.0.0.1/{i}.jpg",
            "alt_text": f"a photo numbered {i}",
            "source_kind": "table",
            "source_file": "urls.tsv",
            "source_offset": i,
            "image_format": "JPEG",
            "image": bytes([i]) * (1000 + i),
        }
        for i in range(n)
    ]


@pytest.mark.parametrize("fmt", ["parquet", "tfrecord", "webdataset"])
def test_images_as_views_of_a_mapped_spool_make_the_same_shard(fmt: str, tmp_path: Path) -> None:
    """The shard writer gets a local spool's images as views of the mapped file
    (pipelines/spool.py): every format writes the bytes it writes from bytes."""
    from pipelines.spool import SpoolWriter, with_image_bytes

    rows = _kept_rows(12)
    writer = SpoolWriter(str(tmp_path))
    spooled = [{**r, "image": writer.put(r["image"])} for r in rows]
    writer.close()
    viewed = with_image_bytes(spooled)
    assert all(type(r["image"]) is memoryview for r in viewed)

    def write(rows: list[dict]) -> bytes:
        sink = io.BytesIO()
        shards.write_shard(fmt, rows, CANDIDATE_SCHEMA, sink)
        return sink.getvalue()

    assert write(viewed) == write(rows)


@pytest.mark.parametrize("fmt", ["parquet", "tfrecord", "webdataset"])
def test_a_shard_written_in_row_groups_is_the_same_shard(fmt: str, monkeypatch) -> None:
    """TFRecord and WebDataset bytes do not depend on the grouping; Parquet holds one row
    group per group, and the same table."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from curation import shards

    rows = _kept_rows(12)

    def write(limit: int) -> bytes:
        monkeypatch.setattr(shards, "ROW_GROUP_BYTES", limit)
        sink = io.BytesIO()
        shards.write_shard(fmt, rows, CANDIDATE_SCHEMA, sink)
        return sink.getvalue()

    whole, grouped = write(1 << 30), write(3000)  # 3,000 bytes: 3 images a group
    if fmt == "parquet":
        assert pq.ParquetFile(pa.BufferReader(grouped)).num_row_groups == 4
        back = pq.read_table(pa.BufferReader(grouped)).to_pylist()
        assert [r["image"] for r in back] == [r["image"] for r in rows]
        assert pq.read_table(pa.BufferReader(whole)).equals(pq.read_table(pa.BufferReader(grouped)))
    else:
        assert grouped == whole
    if fmt == "webdataset":
        assert whole == shards.webdataset_bytes(rows)


def test_atomic_writes_hash_and_write_behind_the_encoder(tmp_path: Path) -> None:
    """write_atomic_with hands the sha256 and the file writes to a background thread: the
    file, its size and its sha256 are those of the bytes written, in order, whatever their
    sizes and buffer types; a buffer changed after write() returned is written as it was."""
    import hashlib

    from pipelines.io import write_atomic_with

    parts = [b"a" * 10, bytearray(b"b" * 3_000_000), memoryview(b"c" * 700), b"", b"d" * 5]
    expected = b"".join(bytes(p) for p in parts)

    def write(sink) -> None:
        for part in parts:
            assert sink.write(part) == len(part)
        parts[1][:1] = b"X"  # the caller reuses its buffer: the file keeps the old bytes
        assert sink.tell() == len(expected)

    path = tmp_path / "out.bin"
    size, digest = write_atomic_with(str(path), write)
    assert path.read_bytes() == expected
    assert (size, digest) == (len(expected), hashlib.sha256(expected).hexdigest())
    # Thousands of small writes (a tar writer's) are batched before they cross threads.
    small = [bytes([i % 251]) * 37 for i in range(20_000)]
    size, digest = write_atomic_with(str(path), lambda sink: [sink.write(b) for b in small])
    assert path.read_bytes() == b"".join(small) and size == 37 * 20_000


def test_a_failed_write_behind_fails_the_file_and_leaves_no_thread(
    tmp_path: Path, monkeypatch
) -> None:
    import threading

    from pipelines import io as pio

    class Broken:
        def __init__(self, fh) -> None:
            self.fh = fh

        def write(self, data) -> int:
            raise OSError(28, "No space left on device")

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            self.fh.close()

    real_create = pio.FileSystems.create
    monkeypatch.setattr(pio.FileSystems, "create", lambda *a, **k: Broken(real_create(*a, **k)))
    before = threading.active_count()
    path = tmp_path / "out.bin"
    with pytest.raises(OSError, match="No space left"):
        pio.write_atomic_with(
            str(path), lambda sink: [sink.write(b"x" * 400_000) for _ in range(50)]
        )
    assert not path.exists()  # the temporary file is never renamed into place
    assert threading.active_count() == before


def test_write_behind_holds_bounded_bytes_and_the_writers_own_error_wins(
    tmp_path: Path, monkeypatch
) -> None:
    import threading

    from pipelines import io as pio

    monkeypatch.setattr(pio, "_QUEUED_BYTES", 3_000_000)
    gate, most = threading.Event(), [0]

    class Slow:  # a file that stalls until the writer has queued all it may
        def __init__(self) -> None:
            self.data = bytearray()

        def write(self, chunk: bytes) -> None:
            gate.wait(5)
            self.data += chunk

    fh = Slow()
    sink = pio._Digest(fh)
    writer = threading.Thread(target=lambda: [sink.write(b"x" * 1_000_000) for _ in range(12)])
    writer.start()
    deadline = time.monotonic() + 5
    while writer.is_alive() and time.monotonic() < deadline:
        most[0] = max(most[0], sink._queued)
        time.sleep(0.01)
        if sink._queued >= 3_000_000:
            break
    assert writer.is_alive()  # it waits for room: the bytes in flight stay bounded
    gate.set()
    writer.join(5)
    sink.finish()
    assert most[0] <= 3_000_000 and bytes(fh.data) == b"x" * 12_000_000
    with pytest.raises(ValueError, match="finished"):
        sink.write(b"late")
    odd = pio._Digest(Slow())
    with pytest.raises(TypeError):
        odd.write(5)  # not a buffer: an error, not 5 NUL bytes
    odd.finish()

    # The encoder's own error is the one raised, even when the file failed too.
    class Broken:
        def write(self, chunk: bytes) -> None:
            raise OSError(5, "I/O error")

    def encode(sink) -> None:
        sink.write(b"y" * 2_000_000)
        raise ValueError("the encoder failed")

    monkeypatch.setattr(pio.FileSystems, "create", lambda *a, **k: contextlib.nullcontext(Broken()))
    with pytest.raises(ValueError, match="the encoder failed"):
        pio.write_atomic_with(str(tmp_path / "out.bin"), encode)


def test_a_cut_tfrecord_file_is_not_counted_as_whole() -> None:
    import io
    import struct

    from curation.shards import count_records

    record = b"x" * 100
    whole = struct.pack("<Q", len(record)) + b"\0" * 4 + record + b"\0" * 4
    assert count_records("tfrecord", io.BytesIO(whole * 3)) == 3
    with pytest.raises(ValueError, match="cut inside a record"):
        count_records("tfrecord", io.BytesIO(whole * 2 + whole[:50]))
