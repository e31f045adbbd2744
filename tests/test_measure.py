"""The measuring processes (pipelines/measure_pool.py): the same answers as measuring in this
process, and a child that crashes, hangs or raises costs one image a named outcome, not the
run. Children are real processes; every wait here is bounded by the pool's timeout."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from curation import reasons
from curation.config import ConfigError, CurationConfig
from curation.record import Rejection
from filters.language import detect_languages
from filters.measure import MeasureSettings, measure_bytes
from pipelines import measure_pool
from pipelines.cli import main
from pipelines.measure_pool import (
    MeasureError,
    MeasurePool,
    PoolUnavailable,
    WorkerPool,
    take_pool,
    warm_pool,
)
from pipelines.run import run
from pipelines.runtime import pipeline_options, plan_run
from tests.conftest import LAION_PARQUET, SAMPLE_WARC, SHARED_DATA, jpeg_bytes, require
from tests.test_cli import check_invariant

FAULTY = "tests.conftest:measure_or_fail"


def _run_measuring(out: Path, processes: int, target: str) -> None:
    """The sample through the whole pipeline, its measuring processes running `target`."""
    cfg = CurationConfig(images_from="archive", measure_processes=processes)
    options = pipeline_options([])
    plan = plan_run(cfg, options)
    if plan.workers is not None:
        plan = dataclasses.replace(plan, workers=dataclasses.replace(plan.workers, target=target))
    run([str(SAMPLE_WARC)], str(out), cfg, options, plan=plan)


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
        # Original bytes kept (JPEG, PNG, WebP) are not sent back: the caller's own object
        # is returned. The other formats come back transcoded.
        pairs = [(g, data) for g, (_, data) in zip(got, items, strict=True) if g in kept]
        as_fetched = [(g, data) for g, data in pairs if g[1] == data]
        assert as_fetched and all(g[1] is data for g, data in as_fetched)
        assert all(g[0].image_format in ("JPEG", "PNG", "WEBP") for g, _ in pairs)


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


def test_a_child_that_cannot_start_makes_the_pool_unavailable_once() -> None:
    """A function that does not import: one child is tried, and every call then raises
    PoolUnavailable at once (the fetch step measures in its threads instead), with no
    new interpreter per image."""
    pool = MeasurePool(1, CurationConfig(), timeout=30, target="no_such_module:f")
    with pool:
        for _ in range(10):
            with pytest.raises(PoolUnavailable, match=r"could not start.*no_such_module"):
                pool.measure("http://a.example/x.jpg", b"")
        assert len(pool._started) == 1
    with pytest.raises(ValueError, match="at least one process"):
        MeasurePool(0, CurationConfig())
    with pytest.raises(ValueError, match="timeout above 0"):
        MeasurePool(1, CurationConfig(), timeout=0)
    with pytest.raises(ConfigError, match="measure_timeout"):
        CurationConfig(measure_timeout=0)


def test_one_hang_costs_one_image() -> None:
    """A hung image queued with good ones on one child: the good ones are measured (again,
    alone), the hung one alone is rejected; no good image is lost to the killed child."""
    cfg = CurationConfig()
    good = [(f"http://a.example/{i}.jpg", jpeg_bytes((300 + i, 250))) for i in range(7)]
    items = [("http://a.example/hang.jpg", good[0][1]), *good]
    with MeasurePool(1, cfg, timeout=1.0, target=FAULTY) as pool, ThreadPoolExecutor(8) as ex:
        got = list(ex.map(lambda item: pool.measure(*item), items))
    assert [g.reason for g in got if isinstance(g, Rejection)] == [reasons.IMAGE_DECODER_CRASHED]
    assert isinstance(got[0], Rejection)
    assert got[1:] == [measure_bytes(url, data, cfg) for url, data in good]


def test_an_unreadable_answer_is_that_calls_error() -> None:
    with MeasurePool(1, CurationConfig(), timeout=30, target=FAULTY) as pool:
        with pytest.raises(MeasureError, match="unreadable answer"):
            pool.measure("http://a.example/unpicklable.jpg", b"")
        data = jpeg_bytes((300, 250))
        assert not isinstance(pool.measure("http://a.example/x.jpg", data), Rejection)


def test_close_during_calls_leaves_no_process() -> None:
    """close() while threads are still sending images: every call ends (an answer or an
    error), and no child, the quarantine one included, is left running."""
    pool = MeasurePool(2, CurationConfig(), timeout=30)
    data = jpeg_bytes((2000, 1500))

    def call(i: int) -> object:
        try:
            return pool.measure(f"http://a.example/{i}.jpg", data)
        except RuntimeError as e:
            return e

    with ThreadPoolExecutor(8) as ex:
        futures = [ex.submit(call, i) for i in range(200)]
        time.sleep(0.5)
        pool.close(wait=0.2)
        done = [f.result(timeout=60) for f in futures]
    assert len(done) == 200
    for proc in pool._started:
        assert proc.wait(timeout=10) is not None


def test_a_child_leaves_when_its_parent_is_killed(tmp_path) -> None:
    """The parent killed outright (no close, no atexit): a child stuck on an image exits
    by itself within seconds instead of running on."""
    script = tmp_path / "parent.py"
    script.write_text(
        "import os, sys, threading, time\n"
        "from curation.config import CurationConfig\n"
        "from pipelines.measure_pool import MeasurePool\n"
        f"pool = MeasurePool(1, CurationConfig(), timeout=600, target={FAULTY!r})\n"
        "threading.Thread(target=pool.measure, args=('http://a/hang.jpg', b'x'),"
        " daemon=True).start()\n"
        "time.sleep(1.5)\n"
        "print(pool._started[0].pid, flush=True)\n"
        "os._exit(0)\n"
    )
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=60
    )
    child = int(out.stdout.split()[0])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _alive(child):
        time.sleep(0.2)
    assert not _alive(child)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"  # a zombie has exited; init reaps it


def test_close_stops_every_child() -> None:
    pool = MeasurePool(2, CurationConfig(), timeout=30)
    data = jpeg_bytes((300, 250))
    pool.measure("http://a.example/x.jpg", data)
    procs = [c.proc for c in pool._children]
    pool.close()
    assert all(p.poll() is not None for p in procs)
    with pytest.raises(RuntimeError, match="closed"):
        pool.measure("http://a.example/x.jpg", data)


def test_a_warm_pool_is_taken_once_with_its_own_arguments_and_closed_if_untaken() -> None:
    cfg, data = CurationConfig(), jpeg_bytes((300, 250))

    def spec(processes: int, cfg: CurationConfig) -> WorkerPool:
        return WorkerPool(processes, MeasureSettings.of(cfg), 30, measure_pool.DEFAULT_TARGET)

    with warm_pool(spec(2, cfg)):
        warm = measure_pool._WARM[0][1]
        other = take_pool(spec(2, dataclasses.replace(cfg, min_image_side=100)))
        assert other is not warm  # another config: a new pool
        other.close()
        # Settings that measuring does not read make the same pool.
        with take_pool(spec(2, CurationConfig(images_from="http"))) as taken:
            assert taken is warm and not measure_pool._WARM
            assert taken.measure("http://a.example/x.jpg", data) == measure_bytes(
                "http://a.example/x.jpg", data, cfg
            )
            again = take_pool(spec(2, cfg))
            assert again is not warm  # taken once
            again.close()
    with warm_pool(spec(1, cfg)):
        untaken = measure_pool._WARM[0][1]
        procs = [c.proc for c in untaken._children]
    assert not measure_pool._WARM
    assert all(p.poll() is not None for p in procs)  # closed on leaving


def test_the_local_runner_fetches_with_the_pool_started_while_it_built(
    tmp_path, monkeypatch, pools_made
) -> None:
    warmed, taken = [], []

    def spy_warm(*args):
        warmed.append(args)
        return warm_pool(*args)

    def spy_take(*args):
        taken.append(take_pool(*args))
        return taken[-1]

    monkeypatch.setattr(measure_pool, "warm_pool", spy_warm)
    monkeypatch.setattr(measure_pool, "take_pool", spy_take)
    out = tmp_path / "out"
    args = ["run", "--input", str(SAMPLE_WARC), "--output", str(out), "--images-from", "archive"]
    assert main([*args, "--measure-processes", "2"]) == 0
    assert len(check_invariant(out)[0]) == 13
    assert len(warmed) == 1 and warmed[0][0].processes == 2
    # One pool made, before the run, and the fetch step took it; it is closed at the end.
    assert len(pools_made) == 1 and taken == pools_made
    assert all(c.proc.poll() is not None for c in taken[0]._children)
    pools_made.clear()
    # Stopping before the images: nothing is started.
    assert main([*args, "--measure-processes", "2", "--stop-after", "text", "--overwrite"]) == 0
    assert len(warmed) == 1 and not pools_made


def test_auto_is_one_child_per_core_on_the_local_runner_only() -> None:
    cfg = CurationConfig()
    assert cfg.measure_processes == -1
    local = plan_run(cfg, PipelineOptions([]))
    assert local.measure_processes >= 1
    remote = plan_run(cfg, PipelineOptions(["--runner", "DataflowRunner"]))
    assert remote.measure_processes == 0
    mine = dataclasses.replace(cfg, measure_processes=3)
    assert plan_run(mine, PipelineOptions([])).measure_processes == 3
    with pytest.raises(ConfigError, match="measure_processes"):
        CurationConfig(measure_processes=-2)


def test_pipeline_faults_in_children_end_in_one_place(tmp_path, monkeypatch) -> None:
    """End to end, children on: the image whose child dies is rejected by name, the one
    whose measuring raises is a dead letter with the child's traceback, the rest as usual."""
    out = tmp_path / "out"
    _run_measuring(out, 2, FAULTY)
    kept, rejected, stats = check_invariant(out)
    by_file = {r["image_url"].rsplit("/", 1)[-1]: r for r in rejected}
    assert by_file["fox.jpg"]["reason"] == reasons.IMAGE_DECODER_CRASHED
    assert by_file["owl.png"]["reason"] == reasons.INTERNAL_ERROR
    dead = pq.read_table(out / "dead_letter").to_pylist()
    assert [d["stage"] for d in dead] == ["measure"]
    assert "measure_or_fail" in dead[0]["traceback"] + dead[0]["error"]
    # Without the faults the sample keeps 13 (README); these two are the difference.
    assert len(kept) == 11
    assert stats["rejected"]["image"][reasons.IMAGE_DECODER_CRASHED] == 1


def test_pipeline_without_children_measures_in_its_threads(tmp_path, monkeypatch, caplog) -> None:
    """Children that cannot start: the run says so once and measures every image itself,
    with the same outcome as a run that never asked for children."""
    runs = {}
    for name, processes in (("broken", 2), ("none", 0)):
        out = tmp_path / name
        _run_measuring(out, processes, "no_such_module:f")
        runs[name] = check_invariant(out)
        assert not (out / "dead_letter").exists() or not pq.read_table(out / "dead_letter")
    warnings = [r for r in caplog.records if "could not start" in r.getMessage()]
    assert len(warnings) == 1 and "no_such_module" in warnings[0].getMessage()
    kept = {name: sorted(r["uid"] for r in run[0]) for name, run in runs.items()}
    assert kept["broken"] == kept["none"] and len(kept["none"]) == 13


# --- Language detection in the measuring processes (the in-memory runner's text rules).


def _caption_items() -> list[tuple[str, str | None]]:
    texts = pq.read_table(require(LAION_PARQUET), columns=["TEXT"]).column(0).to_pylist()
    hints = [None, "en", "de-DE", "fr", None, "xx"]
    return [(t or "", hints[i % len(hints)]) for i, t in enumerate(texts)]


@pytest.mark.parametrize("detector", ["langdetect", "cld2"])
def test_children_detect_languages_as_this_process_does(detector: str) -> None:
    items = _caption_items()
    with MeasurePool(2, CurationConfig(), timeout=120) as pool:
        pool.prepare_languages(detector)
        got = pool.detect_languages(items, detector)
        assert pool.detect_languages([], detector) == []
        assert pool.detect_languages(items[:1], detector) == got[:1]  # one child's part
    want = detect_languages(items, detector)
    assert got == want and len(set(want)) > 3  # English and others, some undetermined


def test_a_language_child_that_dies_is_an_error_then_replaced() -> None:
    items = _caption_items() * 20  # seconds of work: the kill lands mid-request
    with MeasurePool(1, CurationConfig(), timeout=120) as pool:
        pool.detect_languages(items[:2], "langdetect")  # up, model loaded
        child = pool._children[0]
        killer = threading.Timer(0.3, child.proc.kill)
        killer.start()
        started = time.monotonic()
        with pytest.raises(MeasureError, match="language detection"):
            pool.detect_languages(items, "langdetect")
        assert time.monotonic() - started < 60
        killer.join()
        # The next call starts a new child and answers.
        assert pool.detect_languages(items[:4], "langdetect") == detect_languages(items[:4])
        assert pool._children[0] is not child


def test_text_rules_detect_in_the_warm_children_with_the_same_answers(
    tmp_path, monkeypatch, caplog
) -> None:
    calls = []
    real = MeasurePool.detect_languages

    def counted(self, items, detector):
        calls.append(len(items))
        return real(self, items, detector)

    monkeypatch.setattr(MeasurePool, "detect_languages", counted)
    langs = {}
    for name, processes in (("children", "2"), ("here", "0")):
        out = tmp_path / name
        args = ["run", "--input", str(SAMPLE_WARC), "--output", str(out), "--images-from"]
        assert main([*args, "archive", "--measure-processes", processes]) == 0
        kept, _, _ = check_invariant(out)
        langs[name] = sorted((r["uid"], r["text_lang"]) for r in kept)
    assert calls and langs["children"] == langs["here"]
    assert any(lang for _, lang in langs["here"])

    # Children whose detection fails: the stage says so once and detects here.
    def failing(self, items, detector):
        raise MemoryError()  # no message: the warning names the type

    monkeypatch.setattr(MeasurePool, "detect_languages", failing)
    out = tmp_path / "failing"
    args = ["run", "--input", str(SAMPLE_WARC), "--output", str(out), "--images-from"]
    assert main([*args, "archive", "--measure-processes", "2"]) == 0
    kept, _, _ = check_invariant(out)
    assert sorted((r["uid"], r["text_lang"]) for r in kept) == langs["here"]
    warned = [r for r in caplog.records if "language detection in the measuring" in r.getMessage()]
    assert len(warned) == 1 and "MemoryError" in warned[0].getMessage()
