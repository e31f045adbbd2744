"""The measuring processes (pipelines/measure_pool.py): the same answers as measuring in this
process, and a child that crashes, hangs or raises costs one image a named outcome, not the
run. Children are real processes; every wait here is bounded by the pool's timeout."""

from __future__ import annotations

import dataclasses
import time
from concurrent.futures import ThreadPoolExecutor

import pyarrow.parquet as pq
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from curation import reasons
from curation.config import ConfigError, CurationConfig
from curation.record import Rejection
from filters.measure import measure_bytes
from pipelines import images
from pipelines.cli import main, resolve_runtime_defaults
from pipelines.measure_pool import MeasureError, MeasurePool
from tests.conftest import SAMPLE_WARC, SHARED_DATA, jpeg_bytes, require
from tests.test_cli import check_invariant

FAULTY = "tests.measure_faults:measure_or_fail"


def _real_images() -> list[tuple[str, bytes]]:
    folder = require(SHARED_DATA / "images")
    return [
        (f"file:///{p.name}", p.read_bytes())
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.suffix not in (".md", ".csv")
    ]


@pytest.mark.parametrize("resize_mode", ["none", "keep_ratio"])
def test_children_answer_as_this_process_does(resize_mode: str) -> None:
    """Every real image (CMYK, 16-bit, bombs, truncated, animated, ...): the same record or
    rejection as measure_bytes here, from 8 threads at once."""
    cfg = dataclasses.replace(CurationConfig(), resize_mode=resize_mode, resize_max_side=256)
    items = _real_images()
    with MeasurePool(2, cfg, timeout=60) as pool, ThreadPoolExecutor(8) as threads:
        got = list(threads.map(lambda item: pool.measure(*item), items))
    want = [measure_bytes(url, data, cfg) for url, data in items]
    assert got == want
    kept = [g for g in got if not isinstance(g, Rejection)]
    assert kept and any(isinstance(g, Rejection) for g in got)
    if resize_mode == "none":
        # The original bytes are not sent back: the caller's own object is returned.
        assert all(g[1] is data for g, (_, data) in zip(got, items, strict=True) if g in kept)


def test_a_crash_costs_one_image() -> None:
    """A child killed mid-image (as by a decoder's segfault): the images queued with it are
    measured again, alone, and only the one that kills its child again is rejected."""
    cfg = CurationConfig()
    good = [(f"http://a.example/{i}.jpg", jpeg_bytes((300 + i, 250))) for i in range(24)]
    items = [*good[:12], ("http://a.example/crash.jpg", good[0][1]), *good[12:]]
    with MeasurePool(1, cfg, timeout=30, target=FAULTY) as pool, ThreadPoolExecutor(16) as ex:
        got = list(ex.map(lambda item: pool.measure(*item), items))
        again = pool.measure(*good[3])  # the pool goes on with a new child
    crashed = got.pop(12)
    assert isinstance(crashed, Rejection)
    assert (crashed.stage, crashed.reason) == ("image", reasons.IMAGE_DECODER_CRASHED)
    assert "SIGKILL" in crashed.detail
    assert got == [measure_bytes(url, data, cfg) for url, data in good]
    assert again == measure_bytes(*good[3], cfg)


def test_a_hang_is_stopped_by_the_timeout() -> None:
    cfg = CurationConfig()
    data = jpeg_bytes((300, 250))
    with MeasurePool(1, cfg, timeout=1.0, target=FAULTY) as pool:
        started = time.monotonic()
        got = pool.measure("http://a.example/hang.jpg", data)
        assert time.monotonic() - started < 20  # two tries of 1 s, plus starting children
        assert got == Rejection("image", reasons.IMAGE_DECODER_CRASHED, "no answer within 1 s")
        assert pool.measure("http://a.example/ok.jpg", data) == measure_bytes(
            "http://a.example/ok.jpg", data, cfg
        )


def test_an_exception_comes_back_with_the_childs_traceback() -> None:
    with MeasurePool(1, CurationConfig(), timeout=30, target=FAULTY) as pool:
        with pytest.raises(MeasureError) as info:
            pool.measure("http://a.example/raise.jpg", b"")
        assert "boom in a measuring process" in str(info.value)
        assert "measure_or_fail" in str(info.value)  # the child's traceback
        # The child survives an exception and goes on.
        data = jpeg_bytes((300, 250))
        assert pool.measure("http://a.example/x.jpg", data) == measure_bytes(
            "http://a.example/x.jpg", data, CurationConfig()
        )


def test_a_child_that_cannot_start_says_so() -> None:
    pool = MeasurePool(1, CurationConfig(), timeout=30, target="no_such_module:f")
    with pool, pytest.raises(RuntimeError, match=r"could not load its function.*no_such_module"):
        pool.measure("http://a.example/x.jpg", b"")
    with pytest.raises(ValueError, match="at least one process"):
        MeasurePool(0, CurationConfig())


def test_close_stops_every_child() -> None:
    pool = MeasurePool(2, CurationConfig(), timeout=30)
    data = jpeg_bytes((300, 250))
    pool.measure("http://a.example/x.jpg", data)
    procs = [c.proc for c in pool._children]
    pool.close()
    assert all(p.poll() is not None for p in procs)
    with pytest.raises(RuntimeError, match="closed"):
        pool.measure("http://a.example/x.jpg", data)


def test_auto_is_one_child_per_core_on_the_local_runner_only() -> None:
    cfg = CurationConfig()
    assert cfg.measure_processes == -1
    local = resolve_runtime_defaults(cfg, PipelineOptions([]))
    assert local.measure_processes >= 1
    remote = resolve_runtime_defaults(cfg, PipelineOptions(["--runner", "DataflowRunner"]))
    assert remote.measure_processes == 0
    mine = dataclasses.replace(cfg, measure_processes=3)
    assert resolve_runtime_defaults(mine, PipelineOptions([])).measure_processes == 3
    with pytest.raises(ConfigError, match="measure_processes"):
        CurationConfig(measure_processes=-2)


def test_pipeline_faults_in_children_end_in_one_place(tmp_path, monkeypatch) -> None:
    """End to end, children on: the image whose child dies is rejected by name, the one
    whose measuring raises is a dead letter with the child's traceback, the rest as usual."""
    monkeypatch.setattr(images, "MEASURE_TARGET", FAULTY)
    out = tmp_path / "out"
    args = ["run", "--input", str(SAMPLE_WARC), "--output", str(out)]
    assert main([*args, "--images-from", "archive", "--measure-processes", "2"]) == 0
    kept, rejected, stats = check_invariant(out)
    by_file = {r["image_url"].rsplit("/", 1)[-1]: r for r in rejected}
    assert by_file["fox.jpg"]["reason"] == reasons.IMAGE_DECODER_CRASHED
    assert by_file["owl.png"]["reason"] == reasons.INTERNAL_ERROR
    dead = pq.read_table(out / "dead_letter").to_pylist()
    assert [d["stage"] for d in dead] == ["measure"]
    assert "measure_or_fail" in dead[0]["traceback"] + dead[0]["error"]
    # Without the faults the sample keeps 12 (README); these two are the difference.
    assert len(kept) == 10
    assert stats["rejected"]["image"][reasons.IMAGE_DECODER_CRASHED] == 1
