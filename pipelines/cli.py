"""`curate`: the command line. It parses and dispatches; the work is done by
pipelines/runtime.py (the runner and its plan), pipelines/inputs.py, pipelines/outputs.py
and pipelines/run.py.

curate run --input PATH_OR_GLOB... --output DIR [--config FILE] [--stop-after STAGE]
           [--overwrite] [--<config-key> VALUE ...] [Beam pipeline options ...]
curate report OUTPUT [OTHER_OUTPUT]
curate eval-index --images SOURCE... --output FILE
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings
from collections.abc import Callable
from typing import Any

from curation import reasons
from curation.config import ConfigError, CurationConfig, config_fields
from pipelines.errors import CurateError

EXIT_USAGE = 2

__all__ = ["CurateError", "build_parser", "main"]


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
        # metadata server for them (on a real GCE VM the probe is how they are found).
        os.environ.setdefault("NO_GCE_CHECK", "true")
    # Our I/O module primes anonymous access for an emulator (see pipelines/io.py) before
    # the first gs:// path is listed.
    import pipelines.io  # noqa: F401


def _config_flag(name: str) -> str:
    return "--" + name.replace("_", "-")


# Other names a config key's flag answers to: what users of img2dataset type.
_ALIASES = {"formats": ("--format",)}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for `curate`."""
    # No abbreviations anywhere: a prefix (--min-unigram) must not silently mean a flag.
    parser = argparse.ArgumentParser(
        prog="curate",
        description="ALIGN-style curation of web crawls into image/alt-text pairs (Apache Beam).",
        allow_abbrev=False,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run",
        allow_abbrev=False,
        help="extract, filter and write a dataset",
        description=(
            "Read web archives (WARC/ARC, .gz or plain) and/or URL tables (Parquet, CSV, TSV, "
            "JSONL), extract image/alt-text candidates, apply ALIGN's filters, and write "
            "OUTPUT/shards (kept), OUTPUT/rejects (ledger), OUTPUT/dead_letter (exceptions "
            "that escaped a step, with tracebacks), OUTPUT/stats.json, OUTPUT/report.html and "
            "OUTPUT/config.yaml. Apache Beam's own options (--runner, "
            "--direct_running_mode=multi_processing, --direct_num_workers, ...) pass through "
            "to Beam; any other unknown option is an error."
        ),
        epilog="Example: curate run --input sample/crawl.warc.gz --output out/sample",
    )
    run.add_argument(
        "--input",
        nargs="+",
        metavar="PATH_OR_GLOB",
        help="archives (WARC/ARC), WAT files, URL tables or Common Crawl manifests "
        "(warc.paths.gz, wat.paths.gz); globs, folders, gs:// and http(s):// paths work",
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
        help="print a progress line this often on local runs; 0: never (default: %(default)s)",
    )
    group = run.add_argument_group(
        "config keys", "each also settable in the --config file; flags win over the file"
    )
    for f in config_fields():
        default = f.default
        if isinstance(default, tuple):
            default = ",".join(default) if len(default) <= 8 else f"{len(default)} entries"
        # argparse formats help with %: escape the sources' own percent signs.
        text = f"{f.metadata['help']} (default: {default}; {f.metadata['source']})"
        names = [_config_flag(f.name), *_ALIASES.get(f.name, ())]
        if f.type in (bool, "bool"):
            # A switch (--nsfw), with its negation (--no-nsfw); --nsfw false works too.
            group.add_argument(
                *names,
                dest=f"cfg_{f.name}",
                nargs="?",
                const="true",
                metavar="BOOL",
                help=text.replace("%", "%%"),
            )
            group.add_argument(
                "--no-" + f.name.replace("_", "-"),
                dest=f"cfg_{f.name}",
                action="store_const",
                const="false",
                help=argparse.SUPPRESS,
            )
        else:
            group.add_argument(
                *names, dest=f"cfg_{f.name}", metavar="VALUE", help=text.replace("%", "%%")
            )
    rep = sub.add_parser(
        "report",
        allow_abbrev=False,
        help="print a run's funnel and rebuild its report.html; with two runs, compare them",
        description=(
            "With one OUTPUT: print the funnel as a table and rebuild OUTPUT/report.html from "
            "stats.json and report_samples.parquet. With two: print both funnels side by "
            "side (for example two thresholds)."
        ),
    )
    rep.add_argument("outputs", nargs="+", metavar="OUTPUT", help="one or two run folders")
    ev = sub.add_parser(
        "eval-index",
        allow_abbrev=False,
        help="index evaluation images once, for `curate run --eval-index FILE`",
        description=(
            "Read evaluation images from folders (recursively), globs and tar archives "
            "(ImageNet's validation tar is read as a stream, never unpacked), and write the "
            "index that the eval-duplicate rule matches web images against. Entries are "
            "named SET/FILE: SET is the folder's, the glob's folder's or the archive's name, "
            "or the one given as SET=SOURCE."
        ),
        epilog="Example: curate eval-index --images imagenet-val=ILSVRC2012_img_val.tar "
        "coco=val2014/ flickr30k=flickr30k-test/ --output eval.index",
    )
    ev.add_argument(
        "--images", nargs="+", required=True, metavar="SOURCE", help="folders, globs or tars"
    )
    ev.add_argument("--output", required=True, metavar="FILE", help="the index file to write")
    ev.add_argument(
        "--processes",
        type=int,
        default=0,
        metavar="N",
        help="processes that compute the features (default: one per core)",
    )
    return parser


def cmd_report(args: argparse.Namespace) -> int:
    """`curate report`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from curation.report import REPORT_FILE, SAMPLES_FILE, build_html, compare_table, funnel_table
    from pipelines.io import join, read_bytes, write_atomic
    from pipelines.outputs import STATS_FILE

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


def cmd_eval_index(args: argparse.Namespace) -> int:
    """`curate eval-index`."""
    import tempfile

    from filters.eval_index import build_eval_index
    from pipelines.runtime import usable_cpus

    processes = args.processes or usable_cpus()
    remote = "://" in args.output
    target = args.output
    if remote:  # built locally, then copied to the object store
        target = os.path.join(tempfile.mkdtemp(prefix="curate-eval-index-"), "eval.index")
    try:
        summary = build_eval_index(args.images, target, processes)
    except (OSError, ValueError) as e:
        raise CurateError(f"eval-index: {e}") from e
    for name, why in summary.skipped[:20]:
        print(f"  skipped {name}: {why}", file=sys.stderr)
    if len(summary.skipped) > 20:
        print(f"  ... and {len(summary.skipped) - 20} more skipped", file=sys.stderr)
    if not summary.entries:
        raise CurateError(
            f"eval-index: no usable image in the sources ({len(summary.skipped)} file(s) "
            f"skipped); nothing written to {args.output}"
        )
    if remote:
        from pipelines.io import write_atomic

        with open(target, "rb") as fh:
            write_atomic(args.output, fh.read())
        os.remove(target)
    sets = ", ".join(f"{name} {n:,}" for name, n in summary.per_set.items())
    print(f"eval index: {summary.entries:,} images ({sets}) -> {args.output}")
    return 0


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {
        k.removeprefix("cfg_"): v
        for k, v in vars(args).items()
        if k.startswith("cfg_") and v is not None
    }


def _config(path: str | None, overrides: dict[str, Any], base: dict[str, Any] | None = None):
    try:
        return CurationConfig.load(path, overrides, base=base)
    except ConfigError as e:
        raise CurateError(str(e)) from e


def cmd_run(args: argparse.Namespace, beam_args: list[str]) -> int:
    """`curate run`."""
    from pipelines.inputs import check_inputs, expand_inputs
    from pipelines.runtime import pipeline_options, plan_run, tune_allocator

    tune_allocator()
    if args.retry_failed:
        return cmd_retry(args, beam_args)
    if not args.input:
        raise CurateError("--input is required (or --retry-failed PREVIOUS_OUTPUT)")
    cfg = _config(args.config, _overrides(args))
    if args.stop_after != reasons.STAGE_IMAGE and set(cfg.formats) - {"parquet"}:
        raise CurateError(
            f"--formats {','.join(cfg.formats)} needs the images: "
            f"drop --stop-after {args.stop_after}, or write parquet only"
        )
    # Options first: a Dataflow submission missing --region fails before anything is read.
    options = pipeline_options(beam_args, [*args.input, args.output])
    plan = plan_run(cfg, options)
    inputs = expand_inputs(args.input, cfg)
    check_inputs(inputs, cfg)

    def execute() -> None:
        from pipelines.run import run

        run(inputs, args.output, cfg, options, stop_after=args.stop_after, plan=plan)

    return _launch(args, cfg, plan, f"{len(inputs)} input file(s)", execute)


def cmd_retry(args: argparse.Namespace, beam_args: list[str]) -> int:
    """`curate run --retry-failed PREVIOUS --output NEW`."""
    from curation.stats import Funnel
    from pipelines.io import join, read_bytes
    from pipelines.outputs import CONFIG_FILE, STATS_FILE
    from pipelines.runtime import pipeline_options, plan_run

    previous = args.retry_failed
    if args.input:
        raise CurateError("--retry-failed takes its candidates from the earlier run: drop --input")
    if os.path.abspath(previous) == os.path.abspath(args.output):
        raise CurateError("--retry-failed writes a new output: choose another --output")
    try:
        origin = f"{previous}/{CONFIG_FILE}"
        base = CurationConfig.yaml_mapping(read_bytes(join(previous, CONFIG_FILE)), origin)
        stats = json.loads(read_bytes(join(previous, STATS_FILE)))
    except Exception as e:
        raise CurateError(f"--retry-failed {previous!r}: not a finished run ({e})") from e
    cfg = _config(args.config, _overrides(args), base=base)
    options = pipeline_options(beam_args, [previous, args.output])
    # A retry runs no text rules: its measuring processes detect no languages.
    plan = plan_run(cfg, options, languages=False)

    def execute() -> None:
        from pipelines.run import run_retry

        run_retry(previous, args.output, cfg, Funnel.from_json_dict(stats), options, plan)

    return _launch(args, cfg, plan, f"retrying transient failures of {previous}", execute)


def _launch(
    args: argparse.Namespace, cfg: CurationConfig, plan: Any, what: str, execute: Callable
) -> int:
    """Make room in the output folder, record the config, run, and print the summary."""
    from pipelines.io import join, write_atomic
    from pipelines.outputs import CONFIG_FILE, prepare_output, summarize
    from pipelines.progress import Reporter

    prepare_output(args.output, args.overwrite)
    # As given, 'auto' kept: a rerun or a retry elsewhere settles it for its own runner.
    write_atomic(join(args.output, CONFIG_FILE), cfg.to_yaml().encode())
    print(f"curate: {what} -> {args.output} ({plan.describe()})", file=sys.stderr)
    if not plan.local and "://" not in args.output:
        # Shards, ledger and the image spool are written by whichever worker the runner picks.
        print(
            f"curate: note: --output {args.output} is a local path; on a cluster of several "
            "machines every worker must see it (a shared mount), or use gs://, s3://, hdfs://",
            file=sys.stderr,
        )
    interval = args.progress_interval
    if not plan.local and interval > 0:
        # The counters are files in a folder of this machine, which a cluster's workers do
        # not write to: the runner's own UI shows a distributed run's progress.
        print(
            "curate: no progress lines off the local runners; see the runner's UI "
            "(Flink's web UI, Dataflow's job page)",
            file=sys.stderr,
        )
        interval = 0
    with Reporter(interval=interval):
        execute()
    text, ok, empty = summarize(args.output, cfg.formats)
    print(text)
    if empty:  # the files are written (and balance), but there is nothing in them
        print(f"curate: error: {empty}", file=sys.stderr)
        return 1
    return 0 if ok else 1


def _folder(path: str) -> str:
    return path.rstrip("/") or path


def _known_flags(parser: argparse.ArgumentParser) -> list[str]:
    """Every option string of `curate run`, for suggestions."""
    run = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[
        "run"
    ]
    return [flag for action in run._actions for flag in action.option_strings]


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `curate` console script."""
    parser = build_parser()
    args, beam_args = parser.parse_known_args(argv)
    # One spelling of a folder (the report's title is its path): "out/" is "out".
    if getattr(args, "output", None) and args.command == "run":
        args.output = _folder(args.output)
    if args.command == "report":
        args.outputs = [_folder(o) for o in args.outputs]
    _quiet_beam()
    try:
        if args.command == "run":
            from pipelines.runtime import check_beam_args

            check_beam_args(beam_args, _known_flags(parser))
            return cmd_run(args, beam_args)
        if beam_args:
            raise CurateError(f"unrecognized arguments: {' '.join(beam_args)}")
        if args.command == "report":
            return cmd_report(args)
        if args.command == "eval-index":
            return cmd_eval_index(args)
    except CurateError as e:
        print(f"curate: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
