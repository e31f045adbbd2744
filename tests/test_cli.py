"""`curate run` end to end on the bundled sample, checked from the output files."""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import apache_beam as beam
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from curation import reasons
from curation.config import CurationConfig
from pipelines.cli import main
from tests.conftest import LAION_PARQUET, ROOT, SAMPLE_WARC, WARC_DIR, require

# From scripts/make_sample_warc.py's docstring: what each page must keep.
SAMPLE_KEPT = {
    "a red fox sitting in the snow at dawn",
    "a barn owl perched on a fence post at dusk",
    "a barn owl in flight over a frosty meadow",
    "fish & chips served with mushy peas and lemon",
    "a bowl of fresh strawberries on a wooden table",
    "homemade crème brûlée with a caramelised sugar crust",
    "sunset over the harbour with fishing boats",
    "a plate of pasta with tomato sauce and fresh basil",
    "a loaf of sourdough bread cooling on a wire rack",
    "snow covered peaks of the alps under a clear blue sky",
    "a wooden rowing boat on a calm mountain lake",
    "a narrow cobbled street in an old harbour town",
    "Ein alter Leuchtturm an der stürmischen Nordseeküste",
    "Zwei Wanderer auf einem schmalen Pfad im Hochgebirge",
    "une tasse de café crème sur une table en terrasse",
    "un croissant doré posé sur une assiette blanche",
    "Der „Große Wagen“ über einem verschneiten Dorf im Schwarzwald",
    "富士山と桜の花が咲く春の風景",
    "Красная площадь в Москве зимним вечером",
}
SAMPLE_REJECTED = {
    "logo": reasons.TEXT_PLACEHOLDER,
    "IMG_0042.JPG": reasons.TEXT_FILENAME,
    "spacer": reasons.TEXT_PLACEHOLDER,
    "a cat": reasons.TEXT_TOO_SHORT,
    "photo.png": reasons.TEXT_FILENAME,
    "224x224": reasons.TEXT_DIMENSIONS,
    "1920 x 1080": reasons.TEXT_DIMENSIONS,
    "https://example.com/a.jpg": reasons.TEXT_URL,
    "jpg": reasons.TEXT_FILENAME,
    "image": reasons.TEXT_PLACEHOLDER,
    "alt img": reasons.TEXT_PLACEHOLDER,
    "untitled": reasons.TEXT_PLACEHOLDER,
    "thumbnail": reasons.TEXT_PLACEHOLDER,
    "Bild": reasons.TEXT_TOO_SHORT,
    "café crème": reasons.TEXT_TOO_SHORT,
    "Foto": reasons.TEXT_TOO_SHORT,
    "фото": reasons.TEXT_TOO_SHORT,
}


def read_rows(folder: Path) -> list[dict]:
    rows: list[dict] = []
    for f in sorted(folder.glob("*.parquet")):
        rows.extend(pq.read_table(f).to_pylist())
    return rows


def check_invariant(out: Path) -> tuple[list[dict], list[dict], dict]:
    """extracted = kept + Σ rejected, each uid exactly once, checked from the files alone."""
    kept, rejected = read_rows(out / "shards"), read_rows(out / "rejects")
    stats = json.loads((out / "stats.json").read_text())
    uids = [r["uid"] for r in kept] + [r["uid"] for r in rejected]
    assert len(uids) == len(set(uids))
    assert stats["totals"]["extracted"] == len(kept) + len(rejected)
    assert stats["totals"]["kept"] == len(kept)
    by_reason: dict[tuple[str, str], int] = {}
    for r in rejected:
        assert r["reason"] and r["stage"]
        key = (r["stage"], r["reason"])
        by_reason[key] = by_reason.get(key, 0) + 1
    assert by_reason == {
        (stage, reason): n
        for stage, counts in stats["rejected"].items()
        for reason, n in counts.items()
    }
    assert stats["totals"]["balanced"] is True
    for folder in ("shards", "rejects"):
        manifest = json.loads((out / folder / "_manifest.json").read_text())
        for entry in manifest["shards"]:
            data = (out / folder / entry["shard"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == entry["sha256"]
        assert not list((out / folder).glob(".tmp-*"))
    assert not list(out.glob("_spool-*"))  # the image spool goes once the shards are out
    return kept, rejected, stats


def run_cli(*args: str) -> int:
    return main(["run", *args])


# From the same docstring: the image stage on the images the sample archive holds.
SAMPLE_IMAGE_REJECTED = {
    "a bowl of fresh strawberries on a wooden table": reasons.IMAGE_TOO_SMALL,
    "sunset over the harbour with fishing boats": reasons.IMAGE_ASPECT_RATIO,
    "a wooden rowing boat on a calm mountain lake": reasons.IMAGE_UNREADABLE,
    "a narrow cobbled street in an old harbour town": reasons.NOT_AN_IMAGE,
    "a barn owl in flight over a frosty meadow": reasons.NOT_IN_ARCHIVE,
    "un croissant doré posé sur une assiette blanche": reasons.NOT_IN_ARCHIVE,
}
FETCH_OR_IMAGE = ("fetch", "image")
NEAR_DUPLICATE_PAIR = {
    "homemade crème brûlée with a caramelised sugar crust",
    "a loaf of sourdough bread cooling on a wire rack",
}


def test_sample_text_stage(tmp_path, capsys) -> None:
    out = tmp_path / "out"
    assert run_cli("--input", str(SAMPLE_WARC), "--output", str(out), "--stop-after", "text") == 0
    kept, rejected, stats = check_invariant(out)
    assert {r["alt_text"] for r in kept} == SAMPLE_KEPT
    assert {r["alt_text"]: r["reason"] for r in rejected} == {
        **SAMPLE_REJECTED,
        next(r["alt_text"] for r in rejected if r["reason"] == reasons.TEXT_TOO_LONG): (
            reasons.TEXT_TOO_LONG
        ),
    }
    assert stats["extract"][reasons.DUPLICATE_CAPTURE] == 6
    assert stats["read"][reasons.HTML_PAGES] == 9
    printed = capsys.readouterr()
    assert "invariant OK: extracted 38 = kept 19 + rejected 19" in printed.out
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    # The written config is the one given: 'auto' stays auto, for whichever runner reruns
    # it; what this runner made of it is on stderr.
    assert CurationConfig.from_mapping(cfg) == CurationConfig()
    cores = len(os.sched_getaffinity(0))
    settled = f"(image transport spool, measuring processes {cores}, NSFW threads all cores)"
    assert settled in printed.err


def test_the_run_freezes_the_heap_while_it_runs_and_unfreezes_it(tmp_path, monkeypatch) -> None:
    """The graph and modules are frozen for the run's garbage collections (pipelines/run.py
    _RUN_FROZEN), then unfrozen, even when the run fails."""
    frozen_during = []
    real_freeze = gc.freeze

    def freeze() -> None:
        real_freeze()
        frozen_during.append(gc.get_freeze_count())

    monkeypatch.setattr(gc, "freeze", freeze)
    out = tmp_path / "out"
    assert run_cli("--input", str(SAMPLE_WARC), "--output", str(out), "--stop-after", "text") == 0
    assert len(frozen_during) == 1 and frozen_during[0] > 10_000
    assert gc.get_freeze_count() == 0

    def fail(*_exc) -> None:
        raise RuntimeError("the runner failed")

    monkeypatch.setattr(beam.Pipeline, "__exit__", fail)  # the run fails after the freeze
    with pytest.raises(RuntimeError, match="the runner failed"):
        run_cli("--input", str(SAMPLE_WARC), "--output", str(out), "--overwrite")
    assert len(frozen_during) == 2 and gc.get_freeze_count() == 0


def test_sample_end_to_end_with_images_from_the_archive(tmp_path) -> None:
    args = ["--input", str(SAMPLE_WARC), "--images-from", "archive"]
    # By default, as in ALIGN, near-duplicates within the run are kept: both of the pair.
    assert run_cli(*args, "--output", str(tmp_path / "default")) == 0
    kept, rejected, _ = check_invariant(tmp_path / "default")
    image_rejects = {r["alt_text"]: r["reason"] for r in rejected if r["stage"] in FETCH_OR_IMAGE}
    assert image_rejects == SAMPLE_IMAGE_REJECTED
    assert {r["alt_text"] for r in kept} == SAMPLE_KEPT - set(SAMPLE_IMAGE_REJECTED)
    # The opt-in rule removes one of the pair, and names the one it kept.
    out = tmp_path / "out"
    assert run_cli(*args, "--output", str(out), "--near-dup-distance", "4") == 0
    kept, rejected, _ = check_invariant(out)
    image_rejects = {r["alt_text"]: r for r in rejected if r["stage"] in FETCH_OR_IMAGE}
    near = [r for r in image_rejects.values() if r["reason"] == reasons.NEAR_DUPLICATE]
    assert len(near) == 1 and near[0]["alt_text"] in NEAR_DUPLICATE_PAIR
    survivor = next(r for r in kept if r["alt_text"] in NEAR_DUPLICATE_PAIR)
    assert near[0]["detail"] == survivor["uid"]  # the kept uid, as the ledger promises
    del image_rejects[near[0]["alt_text"]]
    assert {a: r["reason"] for a, r in image_rejects.items()} == SAMPLE_IMAGE_REJECTED
    assert {r["alt_text"] for r in kept} == (
        SAMPLE_KEPT - set(SAMPLE_IMAGE_REJECTED) - {near[0]["alt_text"]}
    )
    for r in kept:
        im = Image.open(io.BytesIO(r["image"]))
        im.load()
        assert (r["width"], r["height"]) == im.size == (r["original_width"], r["original_height"])
        assert r["sha256"] == hashlib.sha256(r["image"]).hexdigest()
        assert len(r["phash"]) == 16 and 0.0 <= r["nsfw_score"] < 0.8
    # The same bytes under two URLs: one image, both pairs kept.
    alps = [r for r in kept if r["image_url"].endswith(("alps.jpg", "pfad.jpg"))]
    assert len(alps) == 2 and alps[0]["sha256"] == alps[1]["sha256"]
    assert "image" not in pq.read_schema(next((out / "rejects").glob("*.parquet"))).names


def test_rerun_gives_identical_bytes_and_needs_overwrite(tmp_path, capsys) -> None:
    out = tmp_path / "out"
    args = ["--input", str(SAMPLE_WARC), "--output", str(out), "--images-from", "archive"]
    assert run_cli(*args) == 0
    first = {p.name: p.read_bytes() for p in (out / "shards").iterdir()}
    assert run_cli(*args) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert run_cli(*args, "--overwrite") == 0
    assert {p.name: p.read_bytes() for p in (out / "shards").iterdir()} == first


def test_multi_processing_gives_identical_shards(tmp_path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    # A small vocabulary puts the top-N boundary among tied tokens: the tie-break must not
    # depend on arrival order.
    args = ["--input", str(SAMPLE_WARC), "--vocab-size", "300", "--images-from", "archive"]
    assert run_cli(*args, "--output", str(a)) == 0
    assert (
        run_cli(
            *args,
            "--output",
            str(b),
            "--direct_running_mode=multi_processing",
            "--direct_num_workers=2",
        )
        == 0
    )
    stats = json.loads((a / "stats.json").read_text())
    assert 0 < stats["rejected"]["text"][reasons.TEXT_RARE_TOKEN] < 19
    assert stats["totals"]["kept"] > 0
    for folder in ("shards", "rejects"):
        assert (a / folder / "00000.parquet").read_bytes() == (
            b / folder / "00000.parquet"
        ).read_bytes()
    assert (a / "stats.json").read_text() == (b / "stats.json").read_text()


def test_stop_after_extract_keeps_every_candidate(tmp_path) -> None:
    out = tmp_path / "out"
    assert (
        run_cli("--input", str(SAMPLE_WARC), "--output", str(out), "--stop-after", "extract") == 0
    )
    kept, rejected, _ = check_invariant(out)
    assert (len(kept), len(rejected)) == (38, 0)


def test_config_file_and_flags(tmp_path) -> None:
    conf = tmp_path / "c.yaml"
    conf.write_text("min_unigrams: 1\ntext_rules: [text_too_short, text_too_long]\n")
    out = tmp_path / "out"
    args = ["--input", str(SAMPLE_WARC), "--output", str(out), "--config", str(conf)]
    args += ["--stop-after", "text"]
    assert run_cli(*args, "--max-unigrams", "5") == 0
    kept, rejected, _ = check_invariant(out)
    assert {r["reason"] for r in rejected} == {reasons.TEXT_TOO_LONG}
    assert "jpg" in {r["alt_text"] for r in kept}
    assert yaml.safe_load((out / "config.yaml").read_text())["max_unigrams"] == 5


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--input", "nowhere/*.warc.gz"], "matches no file"),
        (["--input", "{sample}", "--config", "{bad_config}"], "unknown key 'min_unigram'"),
        (["--input", "{sample}", "--min-unigrams", "many"], "key 'min_unigrams' expects int"),
        (["--input", "{csv}"], "no column 'url'"),
    ],
)
def test_errors_are_one_line(tmp_path, capsys, args: list[str], message: str) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("min_unigram: 3\n")
    csv = tmp_path / "t.csv"
    csv.write_text("link,text\nhttps://a.example/x.jpg,a photo of a cat\n")
    args = [a.format(sample=SAMPLE_WARC, bad_config=bad, csv=csv) for a in args]
    assert run_cli(*args, "--output", str(tmp_path / "out")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("curate: error: ") and message in err[0]
    assert not (tmp_path / "out" / "stats.json").exists()


def test_all_real_archives_and_a_table_together(tmp_path) -> None:
    require(WARC_DIR)
    require(LAION_PARQUET)
    out = tmp_path / "out"
    args = ["--input", str(WARC_DIR), str(LAION_PARQUET), "--output", str(out)]
    assert run_cli(*args, "--stop-after", "text") == 0
    kept, _, stats = check_invariant(out)
    assert stats["read"][reasons.FILES] == 18
    assert stats["read"][reasons.ARCHIVE_CORRUPT] == 1
    assert {r["source_kind"] for r in kept} == {"warc", "table"}
    assert len(kept) > 900


def test_laion_sample_yield_before_download(tmp_path) -> None:
    out = tmp_path / "out"
    args = ["--input", str(require(LAION_PARQUET)), "--output", str(out)]
    assert run_cli(*args, "--stop-after", "text", "--vocab-min-count", "2") == 0
    kept, rejected, stats = check_invariant(out)
    assert stats["extract"][reasons.TABLE_ROWS] == 1000
    assert stats["rejected"]["text"][reasons.TEXT_RARE_TOKEN] > 0
    assert all(r["text_lang"] for r in kept[:50])
    assert {r["stage"] for r in rejected} == {"text"}


def test_console_script_help_and_run(tmp_path) -> None:
    curate = Path(sys.executable).parent / "curate"
    if not curate.exists():
        pytest.skip("the curate console script is not installed in this environment")
    out = subprocess.run([curate, "run", "--help"], capture_output=True, text=True, check=True)
    assert "--stop-after" in out.stdout and "--min-unigrams" in out.stdout
    res = subprocess.run(
        [
            curate,
            "run",
            "--input",
            str(SAMPLE_WARC),
            "--output",
            str(tmp_path / "o"),
            "--images-from",
            "archive",
        ],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    assert "invariant OK" in res.stdout
    # A newcomer sees our summary, not Beam's log noise.
    assert "WARNING" not in res.stderr and "Traceback" not in res.stderr


def test_bundled_sample_is_reproducible(tmp_path) -> None:
    target = tmp_path / "crawl.warc.gz"
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "make_sample_warc.py"), "--output", str(target)],
        check=True,
        capture_output=True,
    )
    assert target.read_bytes() == SAMPLE_WARC.read_bytes()


_TUNE = (
    "import os; from pipelines.runtime import tune_allocator; "
    "import pyarrow as pa; "
    "print(tune_allocator(), os.environ.get('MALLOC_MMAP_THRESHOLD_'), "
    "pa.default_memory_pool().backend_name)"
)


_DEFAULT_POOL = "import pyarrow as pa; print(pa.default_memory_pool().backend_name)"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
@pytest.mark.parametrize(
    ("env", "applied", "threshold", "pool"),
    [
        ({}, "True", str(256 << 20), "system"),  # applied, and handed to worker processes
        ({"CURATE_TUNE_MALLOC": "0"}, "False", "None", "default"),  # opted out
        ({"MALLOC_MMAP_THRESHOLD_": "65536"}, "False", "65536", "default"),  # the user's own
        ({"ARROW_DEFAULT_MEMORY_POOL": "mimalloc"}, "True", str(256 << 20), "mimalloc"),
    ],
)
def test_allocator_tuning_respects_the_user(
    env: dict[str, str], applied: str, threshold: str, pool: str
) -> None:
    """`curate run` keeps freed memory for reuse, and has Arrow allocate from it, unless
    told not to (a fresh process each, so that this test's own allocator is untouched)."""
    import os

    import pyarrow as pa

    tuned = ("MALLOC_", "CURATE_", "ARROW_DEFAULT_MEMORY_POOL")
    base = {k: v for k, v in os.environ.items() if not k.startswith(tuned)}
    out = subprocess.run(
        [sys.executable, "-c", _TUNE],
        env={**base, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    default = subprocess.run(
        [sys.executable, "-c", _DEFAULT_POOL],
        env=base,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout.strip()
    assert default != "system" and pa.system_memory_pool().backend_name == "system"
    expected = [applied, threshold, default if pool == "default" else pool]
    assert out.stdout.split() == expected


def test_whole_graph_passes_beams_type_checks(tmp_path) -> None:
    """`curate run` skips Beam's construction-time type checks (and with them Beam's
    element-type inference), and every test that runs `main` runs that graph; here every
    variant of the graph is built with the checks on, so a type-hint mismatch still fails
    CI. The CLI default, and the flag that keeps the checks, are checked too."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions, TypeOptions

    from curation.stats import Funnel
    from pipelines.run import build_pipeline, build_retry_pipeline
    from pipelines.runtime import pipeline_options

    assert not pipeline_options([]).view_as(TypeOptions).pipeline_type_check
    kept_on = pipeline_options(["--pipeline_type_check"])
    assert kept_on.view_as(TypeOptions).pipeline_type_check

    evals = str(ROOT / "sample" / "*.warc.gz")  # a glob that matches; hashed only when run
    image, text = reasons.STAGE_IMAGE, reasons.STAGE_TEXT
    variants = [
        (CurationConfig(), image),
        (dataclasses.replace(CurationConfig(), nsfw=False, eval_images=(evals,)), image),
        (dataclasses.replace(CurationConfig(), near_dup_distance=-1), image),
        (CurationConfig(), text),
    ]
    for cfg, stop in variants:  # a type-hint mismatch raises here
        p = beam.Pipeline(options=PipelineOptions([]))
        assert p.options.view_as(TypeOptions).pipeline_type_check
        build_pipeline(p, [str(SAMPLE_WARC)], str(tmp_path / "out"), cfg, stop)
    p = beam.Pipeline(options=PipelineOptions([]))
    before, out = str(tmp_path / "before"), str(tmp_path / "out")
    build_retry_pipeline(p, before, out, CurationConfig(), Funnel())


# --- What a curator types: no silent typos, switches, aliases, empty inputs.


@pytest.mark.parametrize(
    ("typed", "said"),
    [
        (
            ["--nsfw-treshold", "0.5"],
            "unknown option --nsfw-treshold (did you mean --nsfw-threshold?)",
        ),
        (["--min-unigram", "5"], "unknown option --min-unigram (did you mean --min-unigrams?)"),
        (
            ["--nsfw_threshold=0.5"],
            "unknown option --nsfw_threshold (did you mean --nsfw-threshold?)",
        ),
        (["--typo-flag", "3"], "unknown option --typo-flag;"),
        (["--runer=DirectRunner"], "unknown option --runer (did you mean --runner?)"),
        (["stray"], "unexpected argument 'stray'"),
    ],
)
def test_unknown_options_are_errors_that_name_them(tmp_path, capsys, typed, said) -> None:
    out = tmp_path / "out"
    assert run_cli("--input", str(SAMPLE_WARC), "--output", str(out), *typed) == 2
    err = capsys.readouterr().err
    assert said in err and len(err.strip().splitlines()) == 1
    assert not out.exists()  # refused before anything was written


def test_switches_aliases_and_beam_options(tmp_path) -> None:
    out = tmp_path / "out"
    args = ["--input", str(SAMPLE_WARC), "--output", str(out), "--stop-after", "extract"]
    cases = [
        (["--allow-private-network", "--no-nsfw"], {"allow_private_network": True, "nsfw": False}),
        (["--nsfw", "false", "--detect-language"], {"nsfw": False, "detect_language": True}),
        (["--no-respect-robots", "--runner=DirectRunner"], {"respect_robots": False}),
        (["--direct_num_workers", "1", "--format", "parquet"], {"formats": ["parquet"]}),
    ]
    for flags, want in cases:
        assert run_cli(*args, "--overwrite", *flags) == 0, flags
        cfg = yaml.safe_load((out / "config.yaml").read_text())
        assert {k: cfg[k] for k in want} == want, flags


def test_format_is_an_alias_of_formats(tmp_path) -> None:
    from pipelines.cli import build_parser

    args, _ = build_parser().parse_known_args(
        ["run", "--output", "o", "--format", "parquet,tfrecord,webdataset"]
    )
    assert args.cfg_formats == "parquet,tfrecord,webdataset"


@pytest.mark.parametrize(
    ("content", "said"),
    [
        (b"\x8b\x1f random bytes named like an archive", "none of the 1 input file(s) is a WARC"),
        (None, "the 1 HTML page(s) hold no <img> tag"),
    ],
    ids=["not-an-archive", "no-img"],
)
def test_a_run_that_finds_no_candidate_fails_and_says_why(tmp_path, capsys, content, said):
    path = tmp_path / "in.warc.gz"
    if content is None:
        from tests.test_archives import _warc_response

        page = b"<html><body><p>words, and no picture at all</p></body></html>"
        content = _warc_response(page, "identity")
    path.write_bytes(content)
    out = tmp_path / "out"
    assert run_cli("--input", str(path), "--output", str(out)) == 1
    err = capsys.readouterr().err
    assert f"curate: error: no candidate: {said}" in err
    check_invariant(out)  # the (empty) outputs are still written and balance


def test_help_names_every_output_folder() -> None:
    from pipelines.cli import build_parser

    run = build_parser()._subparsers._group_actions[0].choices["run"]
    text = run.format_help()
    for name in ("OUTPUT/shards", "OUTPUT/rejects", "OUTPUT/dead_letter", "OUTPUT/stats.json"):
        assert name in text


def test_s3_paths_without_credentials_fail_at_once(tmp_path, capsys, monkeypatch) -> None:
    """Beam's S3 client would retry unsigned listings for minutes without a word."""
    pytest.importorskip("boto3")
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no probe of the metadata address
    args = ["--input", "s3://bucket/crawl/*.warc.gz", "--output", str(tmp_path / "out")]
    assert run_cli(*args) == 2
    assert "s3:// paths need AWS credentials" in capsys.readouterr().err


def test_a_format_asked_for_but_not_written_is_a_mismatch(tmp_path) -> None:
    from pipelines.outputs import summarize

    out = tmp_path / "out"
    args = ["--input", str(SAMPLE_WARC), "--output", str(out), "--stop-after", "extract"]
    assert run_cli(*args) == 0
    text, ok, _ = summarize(str(out), ["parquet"])
    assert ok and "invariant OK" in text
    text, ok, _ = summarize(str(out), ["parquet", "webdataset"])
    assert not ok
    assert "formats asked for but not written (no _manifest.json): ['webdataset']" in text
