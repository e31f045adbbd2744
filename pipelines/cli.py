"""`curate`: the command line.

curate run --input PATH_OR_GLOB... --output DIR [--config FILE] [--stop-after STAGE]
           [--overwrite] [--<config-key> VALUE ...] [Beam pipeline options ...]
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import re
import sys
import warnings
from typing import Any

from curation import reasons
from curation.config import ConfigError, CurationConfig, config_fields
from curation.report import (
    REPORT_FILE,
    SAMPLES_FILE,
    build_html,
    compare_table,
    funnel_table,
)

EXIT_USAGE = 2


class CurateError(Exception):
    """A user error, printed as one line without a traceback."""


def _quiet_beam() -> None:
    # Importing Beam without the GCP extra logs a warning about apitools on the root logger,
    # and the FnApiRunner logs INFO chatter; a newcomer should see only our summary.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    noise = (
        "apitools not found",
        "Resource module is not available",
        # with_outputs() combined with with_exception_handling(): a type-hint notice only.
        "requested in with_outputs() but not declared",
    )
    logging.getLogger().addFilter(lambda r: not any(n in r.getMessage() for n in noise))
    for name in ("apache_beam", "apache_beam.runners", "apache_beam.io"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="apache_beam")
    if os.environ.get("STORAGE_EMULATOR_HOST"):
        # Against an emulator there are no credentials to find: never probe the cloud
        # metadata server for them. (On a real GCE VM the probe is how credentials are found,
        # so it is left alone otherwise.)
        os.environ.setdefault("NO_GCE_CHECK", "true")
    # Importing our I/O module primes anonymous access for an emulator (see pipelines/io.py)
    # before the first gs:// path is listed.
    import pipelines.io  # noqa: F401


# glibc's malloc returns large freed blocks to the kernel (mmap above a threshold that
# adapts up to 32 MB; heap trimming above twice that), so every new buffer of the local
# runner's data plane (image bytes between stages, copied several times a step) is faulted
# in again, page by page. Held by the allocator instead: malloc alone took a 2,000-image
# run (bench/bench_images.py's URL list) from 0.8M to 0.3M minor faults and 15.1 to 13.6 s
# (median of 3, at 1a09eb1). Arrow's own pool faults in fresh pages the same way when a
# shard is encoded; on the tuned system allocator the shard's Parquet encoding and file
# write take 0.25 s instead of 0.8-1.1 s (cProfile). Both, against neither, at 0564a7a:
# 0.9M -> 0.3M faults, 13.5 -> 12.1 s (median of 3, /usr/bin/time on `curate run`).
MALLOC_MMAP_THRESHOLD = 256 << 20
MALLOC_TRIM_THRESHOLD = 512 << 20


def tune_allocator() -> bool:
    """Keep freed memory for reuse (see above), in this process and the worker processes
    it starts, and let Arrow allocate from it. Left alone where the user set glibc's
    variables, or CURATE_TUNE_MALLOC=0, and off glibc; Arrow's pool is left alone where
    ARROW_DEFAULT_MEMORY_POOL is set. True when applied."""
    if os.environ.get("CURATE_TUNE_MALLOC") == "0" or any(
        k in os.environ for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
    ):
        return False
    try:
        import ctypes

        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):  # not glibc: macOS, musl, Windows
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's malloc.h
    if not (
        mallopt(m_mmap_threshold, MALLOC_MMAP_THRESHOLD)
        and mallopt(m_trim_threshold, MALLOC_TRIM_THRESHOLD)
    ):
        return False
    os.environ["MALLOC_MMAP_THRESHOLD_"] = str(MALLOC_MMAP_THRESHOLD)
    os.environ["MALLOC_TRIM_THRESHOLD_"] = str(MALLOC_TRIM_THRESHOLD)
    if "ARROW_DEFAULT_MEMORY_POOL" not in os.environ:
        import pyarrow as pa

        os.environ["ARROW_DEFAULT_MEMORY_POOL"] = "system"  # read by worker processes
        pa.set_memory_pool(pa.system_memory_pool())
    return True


def _config_flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for `curate`."""
    parser = argparse.ArgumentParser(
        prog="curate",
        description="ALIGN-style curation of web crawls into image/alt-text pairs (Apache Beam).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run",
        help="extract, filter and write a dataset",
        description=(
            "Read web archives (WARC/ARC, .gz or plain) and/or URL tables (Parquet, CSV, TSV, "
            "JSONL), extract image/alt-text candidates, apply ALIGN's filters, and write "
            "OUTPUT/shards (kept), OUTPUT/rejects (ledger), OUTPUT/stats.json and "
            "OUTPUT/config.yaml. Options not listed here are passed to Apache Beam "
            "(e.g. --runner, --direct_running_mode=multi_processing, --direct_num_workers)."
        ),
        epilog="Example: curate run --input sample/crawl.warc.gz --output out/sample",
    )
    run.add_argument(
        "--input",
        nargs="+",
        metavar="PATH_OR_GLOB",
        help="archives or tables; globs, folders and gs:// paths work",
    )
    run.add_argument(
        "--retry-failed",
        metavar="PREVIOUS_OUTPUT",
        help="re-run only the candidates of an earlier run whose fetch failed for a transient "
        "reason (timeout, 429, 5xx, DNS, connection), and write a new complete output to "
        "--output; the earlier run's config is the base, flags override it",
    )
    run.add_argument("--output", required=True, metavar="DIR", help="output folder")
    run.add_argument("--config", metavar="FILE", help="YAML file of config keys (see below)")
    run.add_argument(
        "--stop-after",
        choices=reasons.STAGES,
        default=reasons.STAGES[-1],
        help="last stage to run: 'extract' keeps every candidate; 'text' ends after the text "
        "rules (default: %(default)s)",
    )
    run.add_argument(
        "--overwrite", action="store_true", help="replace a run already in the output folder"
    )
    run.add_argument(
        "--progress-interval",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="print a progress line this often on local runs (default: %(default)s)",
    )
    group = run.add_argument_group(
        "config keys", "each also settable in the --config file; flags win over the file"
    )
    for f in config_fields():
        default = f.default
        if isinstance(default, tuple):
            default = ",".join(default) if len(default) <= 8 else f"{len(default)} entries"
        group.add_argument(
            _config_flag(f.name),
            dest=f"cfg_{f.name}",
            metavar="VALUE",
            # argparse formats help with %: escape the sources' own percent signs.
            help=f"{f.metadata['help']} (default: {default}; {f.metadata['source']})".replace(
                "%", "%%"
            ),
        )
    rep = sub.add_parser(
        "report",
        help="print a run's funnel and rebuild its report.html; with two runs, compare them",
        description=(
            "With one OUTPUT: print the funnel as a table and rebuild OUTPUT/report.html from "
            "stats.json and report_samples.parquet. With two: print both funnels side by "
            "side (for example two thresholds)."
        ),
    )
    rep.add_argument("outputs", nargs="+", metavar="OUTPUT", help="one or two run folders")
    return parser


def cmd_report(args: argparse.Namespace) -> int:
    """`curate report`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines.io import join, read_bytes, write_atomic
    from pipelines.run import STATS_FILE

    if len(args.outputs) > 2:
        raise CurateError("curate report takes one run folder, or two to compare")
    docs = []
    for output in args.outputs:
        try:
            docs.append(json.loads(read_bytes(join(output, STATS_FILE))))
        except Exception as e:
            raise CurateError(f"{output}: no readable {STATS_FILE} ({e})") from e
    if len(docs) == 2:
        print(compare_table(docs[0], docs[1], (args.outputs[0], args.outputs[1])))
        return 0
    output = args.outputs[0]
    print(funnel_table(docs[0]))
    try:
        samples = pq.read_table(pa.BufferReader(read_bytes(join(output, SAMPLES_FILE)))).to_pylist()
    except Exception:
        samples = []  # a run stopped before the image stage has no galleries
    write_atomic(join(output, REPORT_FILE), build_html(docs[0], samples, title=output).encode())
    print(f"wrote {join(output, REPORT_FILE)}", file=sys.stderr)
    return 0


def expand_inputs(patterns: list[str]) -> list[str]:
    """Every file named by the patterns (globs, folders, gs:// paths), each matched once."""
    from apache_beam.io.filesystems import FileSystems

    found: list[str] = []
    for pattern in patterns:
        if "://" not in pattern and os.path.isdir(pattern):
            pattern = os.path.join(pattern, "*")
        try:
            matched = FileSystems.match([pattern])[0].metadata_list
        except Exception as e:  # Beam raises BeamIOError subclasses per filesystem
            raise CurateError(f"--input {pattern!r}: cannot list ({e})") from e
        files = sorted(
            m.path
            for m in matched
            if not os.path.basename(m.path).startswith(".") and not m.path.endswith(".md")
        )
        if not files:
            raise CurateError(f"--input {pattern!r} matches no file")
        found.extend(files)
    return sorted(set(found))


def prepare_output(output: str, overwrite: bool) -> None:
    """Refuse an output folder holding a run, unless overwriting; then clear our files."""
    from apache_beam.io.filesystems import FileSystems

    from pipelines.run import CONFIG_FILE, REJECTS_DIR, SHARDS_DIR, STATS_FILE

    bad = sorted(set(_GLOB_CHARS) & set(output))
    if bad:
        # Beam's filesystems read these as a pattern wherever the path is listed or
        # deleted: files written there could not be found again.
        raise CurateError(
            f"--output {output!r}: the characters {' '.join(bad)} are not allowed in an "
            "output path (Beam takes them for a file pattern)"
        )
    names = (CONFIG_FILE, STATS_FILE, SHARDS_DIR, REJECTS_DIR, "tfrecord", "webdataset")
    names += (REPORT_FILE, SAMPLES_FILE, "dead_letter")
    existing = []
    for name in names:
        path = FileSystems.join(output, name)
        # Object stores have no folders: a folder of ours is whatever lies under its prefix.
        patterns = [path] if "://" not in output else [path, path + "/**"]
        for result in FileSystems.match(patterns):
            existing.extend(m.path for m in result.metadata_list)
        if "://" not in output and os.path.isdir(path):
            existing.append(path)
    existing.extend(_leftover_spools(output))
    if existing and not overwrite:
        raise CurateError(
            f"--output {output!r} already holds a run ({existing[0]}); "
            "pass --overwrite to replace it"
        )
    if existing:
        FileSystems.delete(sorted(set(existing)))


_GLOB_CHARS = "*?["


def _leftover_spools(output: str) -> list[str]:
    """Image spools of runs that died (a finished run removes its own): folders named as
    pipelines/spool.py names them, or on an object store, the objects under one."""
    from apache_beam.io.filesystems import FileSystems

    from pipelines.spool import SPOOL_PREFIX

    named = re.compile(re.escape(SPOOL_PREFIX) + "[0-9a-f]{12}")
    pattern = FileSystems.join(output, SPOOL_PREFIX + "*")
    if "://" not in output:
        return sorted(
            p
            for p in glob.glob(pattern)
            if os.path.isdir(p) and named.fullmatch(os.path.basename(p))
        )
    found = []
    for result in FileSystems.match([pattern + "/**"]):
        for m in result.metadata_list:
            folder = m.path[len(output) :].lstrip("/").split("/", 1)[0]
            if named.fullmatch(folder):
                found.append(m.path)
    return sorted(found)


def check_tables(inputs: list[str], cfg: CurationConfig) -> None:
    """Fail before the run if a URL table lacks the configured columns."""
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    from curation.extract import is_table_path
    from curation.tables import TableError, resolve_columns, table_columns

    for path in inputs:
        if not is_table_path(path):
            continue
        try:
            with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as fh:
                columns = table_columns(fh, path)
            resolve_columns(columns, cfg.url_column, cfg.caption_column, path)
        except TableError as e:
            raise CurateError(str(e)) from e
        except Exception as e:
            raise CurateError(f"{path}: cannot read as a table ({e})") from e


def _row_count(folder: str) -> int:
    import pyarrow.parquet as pq
    from apache_beam.io.filesystems import FileSystems

    total = 0
    for m in FileSystems.match([FileSystems.join(folder, "*.parquet")])[0].metadata_list:
        with FileSystems.open(m.path) as fh:
            total += pq.ParquetFile(fh).metadata.num_rows
    return total


def summarize(output: str) -> tuple[str, bool]:
    """The end-of-run summary, and whether the files satisfy extracted = kept + rejected."""
    from pipelines.io import join, read_bytes
    from pipelines.run import REJECTS_DIR, SHARDS_DIR, STATS_FILE

    stats = json.loads(read_bytes(join(output, STATS_FILE)))
    totals = stats["totals"]
    kept = _row_count(join(output, SHARDS_DIR))
    rejected = _row_count(join(output, REJECTS_DIR))
    ok = totals["extracted"] == kept + rejected and kept == totals["kept"]
    lines = [
        f"read: {_fmt(stats['read'])}",
        f"extract: {_fmt(stats['extract'])}",
    ]
    for stage, by_reason in stats["rejected"].items():
        lines.append(f"rejected at {stage}: {_fmt(by_reason)}")
    if stats.get("dead_letter"):
        lines.append(
            f"DEAD LETTERS (exceptions, see {output}/dead_letter/): {_fmt(stats['dead_letter'])}"
        )
    mark = "OK" if ok else "MISMATCH"
    lines.append(
        f"invariant {mark}: extracted {totals['extracted']} = kept {kept} + rejected {rejected}"
        f"  (from the files in {output})"
    )
    return "\n".join(lines), ok


def _fmt(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items()) or "-"


def cmd_run(args: argparse.Namespace, beam_args: list[str]) -> int:
    """`curate run`."""
    overrides: dict[str, Any] = {
        k.removeprefix("cfg_"): v
        for k, v in vars(args).items()
        if k.startswith("cfg_") and v is not None
    }
    tune_allocator()
    if args.retry_failed:
        return cmd_retry(args, beam_args, overrides)
    if not args.input:
        raise CurateError("--input is required (or --retry-failed PREVIOUS_OUTPUT)")
    try:
        cfg = CurationConfig.load(args.config, overrides)
    except ConfigError as e:
        raise CurateError(str(e)) from e
    if args.stop_after != reasons.STAGE_IMAGE and set(cfg.formats) - {"parquet"}:
        raise CurateError(
            f"--formats {','.join(cfg.formats)} needs the images: "
            f"drop --stop-after {args.stop_after}, or write parquet only"
        )
    # Options first: a Dataflow submission missing --region fails before anything is read.
    options = _pipeline_options(beam_args, [*args.input, args.output])
    given, cfg = cfg, resolve_runtime_defaults(cfg, options)
    inputs = expand_inputs(args.input)
    check_tables(inputs, cfg)
    prepare_output(args.output, args.overwrite)

    from pipelines.io import join, write_atomic
    from pipelines.run import CONFIG_FILE, run

    # As given, 'auto' kept: a rerun or a retry elsewhere settles it for its own runner.
    write_atomic(join(args.output, CONFIG_FILE), given.to_yaml().encode())
    print(f"curate: {len(inputs)} input file(s) -> {args.output}{_settled(cfg)}", file=sys.stderr)
    from pipelines.progress import Reporter

    with Reporter(interval=args.progress_interval):
        run(inputs, args.output, cfg, options, stop_after=args.stop_after)
    text, ok = summarize(args.output)
    print(text)
    return 0 if ok else 1


def _settled(cfg: CurationConfig) -> str:
    # What the runner's speed settings came to (config.yaml keeps them as given).
    return (
        f" (image transport {cfg.image_transport}, measuring processes "
        f"{cfg.measure_processes}, NSFW threads {cfg.nsfw_threads or 'all cores'})"
    )


def resolve_runtime_defaults(cfg: CurationConfig, options: Any) -> CurationConfig:
    """Settle the config's 'auto' values once the runner is known (at the entry point)."""
    import dataclasses

    from apache_beam.options.pipeline_options import DirectOptions, StandardOptions

    if cfg.nsfw_threads != -1 and cfg.measure_processes != -1 and cfg.image_transport != "auto":
        return cfg
    runner = (options.view_as(StandardOptions).runner or "DirectRunner").lower()
    mode = options.view_as(DirectOptions).direct_running_mode or "in_memory"
    on_this_machine = runner in ("directrunner", "direct", "fnapirunner")
    local = on_this_machine and mode == "in_memory"
    # In memory, one bundle runs at a time in one process: the model and the measuring may
    # use every core. Elsewhere several SDK threads or processes share the cores, and one
    # thread each, measuring in the fetch threads, avoids oversubscription.
    changes = {}
    if cfg.nsfw_threads == -1:
        changes["nsfw_threads"] = 0 if local else 1
    if cfg.measure_processes == -1:
        # More children than fetch threads would never all be busy.
        wanted = min(_usable_cpus(), max(1, cfg.fetch_threads))
        changes["measure_processes"] = wanted if local else 0
    if cfg.image_transport == "auto":
        # Every local worker sees the spool (a folder under the output); on a cluster the
        # shuffle service moves the bytes, and the writers' ranged reads of a shared spool
        # have not been measured there.
        changes["image_transport"] = "spool" if on_this_machine else "shuffle"
    return dataclasses.replace(cfg, **changes)


def _usable_cpus() -> int:
    # The CPUs this process may run on (a container's or taskset's share), where known.
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _pipeline_options(beam_args: list[str], paths: list[str] = ()):
    from apache_beam.options.pipeline_options import PipelineOptions

    # Beam checks the graph's type hints as it is built: ~0.45 s of every run (1.3 -> 0.85 s
    # to build the image pipeline, median of 6), for a graph that is the same every run and
    # that the tests check (test_whole_graph_passes_beams_type_checks). Without the checks
    # Beam also infers no element types, so every collection takes its default coder
    # (FastPrimitivesCoder; pickle for our records): the sample run's files are
    # byte-identical either way. Beam has only the flag that turns it off; ours,
    # --pipeline_type_check, keeps it on.
    if "--pipeline_type_check" in beam_args:
        beam_args = [a for a in beam_args if a != "--pipeline_type_check"]
    elif "--no_pipeline_type_check" not in beam_args:
        beam_args = [*beam_args, "--no_pipeline_type_check"]
    try:
        options = PipelineOptions(beam_args)
        options.get_all_options(retain_unknown_options=False)
    except (SystemExit, ValueError) as e:
        raise CurateError(f"bad Beam pipeline options {beam_args}: {e}") from e
    check_dataflow_options(options, paths)
    return options


def check_dataflow_options(options: Any, paths: list[str]) -> None:
    """Before submitting to Dataflow, name every missing or unusable option in one message."""
    from apache_beam.options.pipeline_options import (
        GoogleCloudOptions,
        SetupOptions,
        StandardOptions,
        WorkerOptions,
    )

    runner = (options.view_as(StandardOptions).runner or "").lower()
    if runner not in ("dataflowrunner", "dataflow"):
        return
    gcp = options.view_as(GoogleCloudOptions)
    setup = options.view_as(SetupOptions)
    problems = []
    if not gcp.project:
        problems.append("--project: the Google Cloud project to run in")
    if not gcp.region:
        problems.append("--region: where the workers run, e.g. us-central1")
    if not (gcp.temp_location or "").startswith("gs://"):
        problems.append("--temp_location gs://BUCKET/tmp: Dataflow stages files there")
    image = options.view_as(WorkerOptions).sdk_container_image
    if not image and not setup.setup_file:
        problems.append(
            "--sdk_container_image IMAGE (built from the Dockerfile, with the NSFW model "
            "inside), or --setup_file ./setup.py to install the package on each worker"
        )
    local = [p for p in paths if "://" not in p]
    if local:
        problems.append(f"inputs and --output must be gs:// paths workers can read: {local[0]}")
    if problems:
        raise CurateError("DataflowRunner needs: " + "; ".join(problems))


def cmd_retry(args: argparse.Namespace, beam_args: list[str], overrides: dict[str, Any]) -> int:
    """`curate run --retry-failed PREVIOUS --output NEW`."""
    from curation.stats import Funnel
    from pipelines.io import join, read_bytes, write_atomic
    from pipelines.progress import Reporter
    from pipelines.run import CONFIG_FILE, STATS_FILE, run_retry

    previous = args.retry_failed
    if args.input:
        raise CurateError("--retry-failed takes its candidates from the earlier run: drop --input")
    if os.path.abspath(previous) == os.path.abspath(args.output):
        raise CurateError("--retry-failed writes a new output: choose another --output")
    try:
        base = yaml_load(read_bytes(join(previous, CONFIG_FILE)))
        stats = json.loads(read_bytes(join(previous, STATS_FILE)))
    except Exception as e:
        raise CurateError(f"--retry-failed {previous!r}: not a finished run ({e})") from e
    try:
        cfg = CurationConfig.from_mapping({**base, **_file_overrides(args.config), **overrides})
    except ConfigError as e:
        raise CurateError(str(e)) from e
    options = _pipeline_options(beam_args, [previous, args.output])
    given, cfg = cfg, resolve_runtime_defaults(cfg, options)
    prepare_output(args.output, args.overwrite)
    write_atomic(join(args.output, CONFIG_FILE), given.to_yaml().encode())
    print(
        f"curate: retrying transient failures of {previous} -> {args.output}{_settled(cfg)}",
        file=sys.stderr,
    )
    with Reporter(interval=args.progress_interval):
        run_retry(previous, args.output, cfg, Funnel.from_json_dict(stats), options)
    text, ok = summarize(args.output)
    print(text)
    return 0 if ok else 1


def yaml_load(data: bytes) -> dict[str, Any]:
    """A YAML mapping from bytes."""
    import yaml

    loaded = yaml.safe_load(data) or {}
    if not isinstance(loaded, dict):
        raise ValueError("expected a mapping")
    return loaded


def _file_overrides(path: str | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        with open(path, encoding="utf-8") as fh:
            return yaml_load(fh.read().encode())
    except (OSError, ValueError) as e:
        raise CurateError(f"config file {path}: {e}") from e


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `curate` console script."""
    parser = build_parser()
    args, beam_args = parser.parse_known_args(argv)
    _quiet_beam()
    try:
        if args.command == "run":
            return cmd_run(args, beam_args)
        if beam_args:
            raise CurateError(f"unrecognized arguments: {' '.join(beam_args)}")
        if args.command == "report":
            return cmd_report(args)
    except CurateError as e:
        print(f"curate: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
