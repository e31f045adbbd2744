"""The image spool: bytes written once, read back by the shard writer, removed at the end;
shards byte-identical to those of a run whose records carry the bytes."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from curation.config import ConfigError, CurationConfig
from curation.record import BlobRef, image_size
from pipelines.cli import main
from pipelines.run import spool_directory
from pipelines.runtime import plan_run
from pipelines.spool import (
    SPOOL_PREFIX,
    SpoolWriter,
    image_bytes,
    new_spool_directory,
    read_blobs,
    remove_spool,
    with_image_bytes,
)
from tests.conftest import SAMPLE_WARC, ImageServer, jpeg_bytes, serve
from tests.test_cli import check_invariant


def test_round_trip_across_files_and_in_any_order(tmp_path: Path) -> None:
    folder = new_spool_directory(str(tmp_path))
    assert Path(folder).parent == tmp_path and Path(folder).name.startswith(SPOOL_PREFIX)
    first, second = SpoolWriter(folder), SpoolWriter(folder)
    blobs = [bytes([i]) * (1000 + i) for i in range(6)]
    refs = [(first if i % 2 else second).put(b) for i, b in enumerate(blobs)]
    first.close()
    second.close()
    assert len({r.path for r in refs}) == 2  # one file per writer
    assert [image_size(r) for r in refs] == [len(b) for b in blobs]
    found = read_blobs(reversed(refs))
    assert [found[r] for r in refs] == blobs
    assert image_bytes(refs[3]) == blobs[3]
    assert image_bytes(b"as is") == b"as is" and image_bytes(None) is None
    # A ref survives pickling (it crosses shuffles) and still reads.
    assert read_blobs([pickle.loads(pickle.dumps(refs[0]))])[refs[0]] == blobs[0]


def test_a_writer_starts_a_new_file_after_close(tmp_path: Path) -> None:
    writer = SpoolWriter(str(tmp_path / "spool"))
    a = writer.put(b"first bundle")
    writer.close()
    b = writer.put(b"second bundle")
    writer.close()
    writer.close()  # twice is harmless
    assert a.path != b.path and (a.offset, b.offset) == (0, 0)
    assert read_blobs([a, b]) == {a: b"first bundle", b: b"second bundle"}


def test_rows_get_their_bytes_and_others_stay_as_they_are(tmp_path: Path) -> None:
    writer = SpoolWriter(str(tmp_path))
    ref = writer.put(b"\xff\xd8 jpeg")
    writer.close()
    rows = [{"uid": "a", "image": ref}, {"uid": "b", "image": b"inline"}, {"uid": "c"}]
    assert with_image_bytes(rows) == [
        {"uid": "a", "image": b"\xff\xd8 jpeg"},
        {"uid": "b", "image": b"inline"},
        {"uid": "c"},
    ]
    plain = [{"uid": "b", "image": b"inline"}]
    assert with_image_bytes(plain) is plain  # nothing to read: no copy


def test_the_shard_writer_gets_views_of_the_mapped_spool_file(tmp_path: Path) -> None:
    first, second = SpoolWriter(str(tmp_path)), SpoolWriter(str(tmp_path))
    refs = [(first, second)[i % 2].put(bytes([65 + i]) * (10 + i)) for i in range(5)]
    empty = SpoolWriter(str(tmp_path))
    nothing = empty.put(b"")  # an empty file cannot be mapped: read as before
    for w in (first, second, empty):
        w.close()
    rows = [{"uid": str(i), "image": r} for i, r in enumerate([*refs, nothing])]
    got = with_image_bytes(rows)
    views = [r["image"] for r in got[:5]]
    assert all(type(v) is memoryview and v.readonly for v in views)
    assert [bytes(v) for v in views] == [bytes([65 + i]) * (10 + i) for i in range(5)]
    assert got[5]["image"] == b""
    remove_spool(str(tmp_path))  # the views outlive the files' names
    assert [bytes(v) for v in views] == [bytes([65 + i]) * (10 + i) for i in range(5)]


def test_past_the_cap_spool_files_are_copied_not_mapped(tmp_path: Path, monkeypatch) -> None:
    # Each mapping holds a file descriptor: a shard never maps more than the cap.
    import pipelines.spool as spool

    monkeypatch.setattr(spool, "MAX_MAPPED_FILES", 2)
    refs = []
    for i in range(4):
        writer = SpoolWriter(str(tmp_path))
        refs.append(writer.put(bytes([97 + i]) * 20))
        writer.close()
    got = with_image_bytes([{"uid": str(i), "image": r} for i, r in enumerate(refs)])
    by_path = {r.path: row["image"] for r, row in zip(refs, got, strict=True)}
    kinds = [type(by_path[p]) for p in sorted(by_path)]  # files are taken in path order
    assert kinds == [memoryview, memoryview, bytes, bytes]
    assert [bytes(row["image"]) for row in got] == [bytes([97 + i]) * 20 for i in range(4)]


def test_a_truncated_spool_file_is_an_error_not_short_bytes(tmp_path: Path) -> None:
    writer = SpoolWriter(str(tmp_path))
    ref = writer.put(b"x" * 100)
    writer.close()
    Path(ref.path).write_bytes(b"x" * 60)
    with pytest.raises(OSError, match="ends before byte 100"):
        read_blobs([ref])
    with pytest.raises(OSError, match="ends before byte 100"):
        with_image_bytes([{"uid": "a", "image": ref}])  # the mapped path checks too
    with pytest.raises(FileNotFoundError):
        read_blobs([BlobRef(str(tmp_path / "gone.blobs"), 0, 1)])


def test_remove_spool_deletes_its_files_and_folder(tmp_path: Path) -> None:
    folder = new_spool_directory(str(tmp_path))
    writer = SpoolWriter(folder)
    for _ in range(3):
        writer.put(b"bytes")
        writer.close()
    (tmp_path / "keep.txt").write_text("not the spool's")
    assert remove_spool(folder) == 3
    assert not Path(folder).exists()
    assert (tmp_path / "keep.txt").exists()
    assert remove_spool(folder) == 0  # already gone: nothing to do


def test_transport_setting_is_checked_and_auto_settles_by_runner(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="image_transport"):
        CurationConfig(image_transport="carrier pigeon")
    cfg = CurationConfig()
    assert cfg.image_transport == "auto"
    local = plan_run(cfg, PipelineOptions([]))
    assert local.image_transport == "spool"
    workers = plan_run(cfg, PipelineOptions(["--direct_running_mode=multi_processing"]))
    assert workers.image_transport == "spool"  # every local worker sees the folder
    cluster = plan_run(cfg, PipelineOptions(["--runner=DataflowRunner"]))
    assert cluster.image_transport == "shuffle"
    # Flink's batch GroupByKey cannot carry a shard's images in one record.
    flink = plan_run(cfg, PipelineOptions(["--runner=FlinkRunner"]))
    assert (flink.image_transport, flink.measure_processes) == ("spool", 0)
    chosen = CurationConfig(image_transport="shuffle")
    assert plan_run(chosen, PipelineOptions([])).image_transport == "shuffle"
    # A plan whose transport is the shuffle keeps the bytes in the records.
    assert spool_directory(str(tmp_path), cluster) is None
    spooled = spool_directory("relative/out", local)
    assert spooled is not None and Path(spooled).is_absolute()


@pytest.fixture
def server():
    s = ImageServer()
    for i in range(6):
        s.images[f"/photo-{i}.jpg"] = jpeg_bytes((320 + 16 * i, 240), colour=30 * i)
    with serve(s):
        yield s


def test_spool_and_shuffle_write_identical_files(
    tmp_path: Path, server: ImageServer, monkeypatch
) -> None:
    """The same run both ways, NSFW model and WebDataset included: the same bytes in every
    shard, the report's previews too, and no spool left behind."""
    spooled_images: list[int] = []
    put = SpoolWriter.put

    def counted(self: SpoolWriter, data: bytes) -> BlobRef:
        spooled_images.append(len(data))
        return put(self, data)

    monkeypatch.setattr(SpoolWriter, "put", counted)  # the in-process runner sees it
    rows = [(f"/photo-{i}.jpg", f"a striped wall painted in shade number {i}") for i in range(6)]
    rows.append(("/photo-0.jpg", "the first striped wall seen from another page"))
    rows.append(("/404.jpg", "a picture that is no longer there"))
    table = tmp_path / "urls.tsv"
    table.write_text("url\tcaption\n" + "".join(f"{server.base}{p}\t{t}\n" for p, t in rows))
    outputs = {}
    for transport in ("spool", "shuffle"):
        out = tmp_path / transport
        args = ["run", "--input", str(table), "--output", str(out), "--images-from", "http"]
        args += ["--allow-private-network", "true", "--max-retries", "0"]
        args += ["--near-dup-distance", "-1", "--formats", "parquet,webdataset"]
        args += ["--image-transport", transport]
        assert main(args) == 0
        kept, rejected, _ = check_invariant(out)
        assert len(kept) == 7 and [r["reason"] for r in rejected] == ["http_404"]
        assert not list(out.glob(SPOOL_PREFIX + "*"))
        outputs[transport] = out
        # Each unique image went to the spool once, in the spool run (the list is for both
        # runs: the shuffle run adds nothing).
        assert len(spooled_images) == 6
        assert sum(spooled_images) == sum(len(b) for b in server.images.values())
    for folder in ("shards", "webdataset", "rejects"):
        files = sorted(p.name for p in (outputs["spool"] / folder).iterdir())
        assert files == sorted(p.name for p in (outputs["shuffle"] / folder).iterdir())
        for name in files:
            spooled = (outputs["spool"] / folder / name).read_bytes()
            assert spooled == (outputs["shuffle"] / folder / name).read_bytes(), name
    for name in ("stats.json", "report_samples.parquet"):
        assert (outputs["spool"] / name).read_bytes() == (outputs["shuffle"] / name).read_bytes()
    kept, _, _ = check_invariant(outputs["spool"])
    assert {r["image"] for r in kept} == set(server.images.values())


def test_a_spool_left_by_a_dead_run_counts_as_a_run(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    stale = out / f"{SPOOL_PREFIX}0123456789ab"
    stale.mkdir(parents=True)
    (stale / "f.blobs").write_bytes(b"images of a run that was killed")
    args = ["run", "--input", str(SAMPLE_WARC), "--output", str(out), "--stop-after", "text"]
    assert main(args) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert stale.exists()
    assert main([*args, "--overwrite"]) == 0
    assert not stale.exists()


def test_a_failed_write_abandons_its_file_and_earlier_refs_stay_good(tmp_path: Path) -> None:
    writer = SpoolWriter(str(tmp_path))
    before = writer.put(b"a" * 10)
    real = writer._fh

    class HalfThenFull:  # a disk that fills up in the middle of a write
        def write(self, data: bytes) -> None:
            real.write(data[: len(data) // 2])
            raise OSError(28, "No space left on device")

        def close(self) -> None:
            real.close()

    writer._fh = HalfThenFull()
    with pytest.raises(OSError, match="No space"):
        writer.put(b"b" * 10)
    after = writer.put(b"c" * 10)
    writer.close()
    assert after.path != before.path and after.offset == 0
    assert read_blobs([before, after]) == {before: b"a" * 10, after: b"c" * 10}


def test_a_batch_that_fails_does_not_keep_its_images_from_later_batches(
    tmp_path: Path, monkeypatch
) -> None:
    """Beam drops every output of a batch that raises (it becomes a dead letter): an image
    it would have sent must still go out with the next URL that has it."""
    import apache_beam as beam

    from pipelines.fetch_images import BLOBS, FetchImagesFn, Measurer

    fn = FetchImagesFn(CurationConfig(), None, spool=str(tmp_path / "spool"))
    fn.measurer = Measurer(None, None)  # no measuring processes to start
    fn.start_bundle()
    blob = beam.pvalue.TaggedOutput(BLOBS, ("sha-1", b"jpeg bytes"))
    puts = []
    put = SpoolWriter.put

    def fails_once(self: SpoolWriter, data: bytes) -> BlobRef:
        puts.append(data)
        if len(puts) == 1:
            raise OSError(5, "Input/output error")
        return put(self, data)

    monkeypatch.setattr(SpoolWriter, "put", fails_once)

    class Reader:  # reads one URL of an image, then maybe fails the rest of its batch
        def __init__(self, then_raise: bool) -> None:
            self.then_raise = then_raise

        def read(self, _batch, _then):
            yield [("url", "info"), blob]
            if self.then_raise:
                raise RuntimeError("a later image of the batch")

    fn.reader = Reader(then_raise=False)  # the spool write itself fails
    with pytest.raises(OSError):
        list(fn.process([]))
    fn.reader = Reader(then_raise=True)  # the bytes are out, then the batch fails
    with pytest.raises(RuntimeError):
        list(fn.process([]))
    fn.reader = Reader(then_raise=False)
    (sent,) = [o for o in fn.process([]) if isinstance(o, beam.pvalue.TaggedOutput)]
    assert sent.value[0] == "sha-1" and isinstance(sent.value[1], BlobRef)
    assert list(fn.process([])) == [("url", "info")]  # once out, sent once per bundle
    fn.finish_bundle()
    assert read_blobs([sent.value[1]])[sent.value[1]] == b"jpeg bytes"


def test_output_paths_are_checked_for_patterns_and_other_spool_names(
    tmp_path: Path, capsys
) -> None:
    args = ["run", "--input", str(SAMPLE_WARC), "--stop-after", "text", "--output"]
    for odd in ("o[1]", "o?x", "o*x"):
        assert main([*args, str(tmp_path / odd)]) == 2
        assert "not allowed in an output path" in capsys.readouterr().err
        assert not (tmp_path / odd).exists()
    out = tmp_path / "out"
    out.mkdir()
    (out / "_spool-notes.txt").write_text("a file of the user's, not a spool")
    (out / "_spool-mine").mkdir()  # nor is a folder of another name
    assert main([*args, str(out)]) == 0
    assert (out / "_spool-notes.txt").exists() and (out / "_spool-mine").exists()
