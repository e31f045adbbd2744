"""An exception escaping a step goes to OUTPUT/dead_letter/ with its traceback, is counted,
and the candidate it hit is still accounted for (internal_error). Nothing is swallowed."""

from __future__ import annotations

import dataclasses
import json

import pyarrow.parquet as pq

from curation import inputs, reasons
from pipelines import dataset_rules, fetch_images, transforms
from pipelines.cli import main
from tests.conftest import SAMPLE_WARC
from tests.test_cli import check_invariant


def test_exceptions_become_dead_letters(tmp_path, monkeypatch) -> None:
    real_check = transforms.check_candidate
    real_measure = fetch_images.measure
    real_read = inputs.ARCHIVE.read_candidates

    def flaky_check(candidate, cfg):
        if candidate.alt_text == "a red fox sitting in the snow at dawn":
            raise RuntimeError("boom in a text rule")
        return real_check(candidate, cfg)

    def flaky_measure(url, result, cfg):
        if url.endswith("/owl.png"):
            raise ValueError("boom while measuring")
        return real_measure(url, result, cfg)

    def flaky_read(stream, path, cfg, funnel):
        if path.endswith("broken.warc.gz"):
            raise OSError("boom while reading a file")
        return real_read(stream, path, cfg, funnel)

    unlucky = "fish & chips served with mushy peas and lemon"
    real_batch, real_one = dataset_rules.detect_languages, dataset_rules.detect_language

    def flaky_batch(items, detector):
        if any(text == unlucky for text, _ in items):
            raise RuntimeError("boom in a batch")
        return real_batch(items, detector)

    def flaky_one(text, hint, detector):
        if text == unlucky:
            raise RuntimeError("boom in language ID")
        return real_one(text, hint, detector)

    # The in-process runner runs the DoFns in this process, so the patches apply.
    # Language ID detects a batch at a time; when a batch raises, it retries each text
    # alone, so only the text that raises is a dead letter.
    monkeypatch.setattr(dataset_rules, "detect_languages", flaky_batch)
    monkeypatch.setattr(dataset_rules, "detect_language", flaky_one)
    monkeypatch.setattr(transforms, "check_candidate", flaky_check)
    monkeypatch.setattr(fetch_images, "measure", flaky_measure)
    flaky_archive = dataclasses.replace(inputs.ARCHIVE, read_candidates=flaky_read)
    monkeypatch.setattr(inputs, "INPUT_KINDS", (inputs.TABLE, flaky_archive))
    broken = tmp_path / "broken.warc.gz"
    broken.write_bytes(SAMPLE_WARC.read_bytes())
    out = tmp_path / "out"
    args = ["run", "--input", str(SAMPLE_WARC), str(broken), "--output", str(out)]
    assert main([*args, "--images-from", "archive", "--measure-processes", "0"]) == 0

    _, rejected, stats = check_invariant(out)
    internal = {r["alt_text"]: r for r in rejected if r["reason"] == reasons.INTERNAL_ERROR}
    assert set(internal) == {
        "a red fox sitting in the snow at dawn",
        "a barn owl perched on a fence post at dusk",
        unlucky,
    }
    assert internal[unlucky]["stage"] == "language"
    assert internal["a red fox sitting in the snow at dawn"]["stage"] == "text"
    assert "boom in a text rule" in internal["a red fox sitting in the snow at dawn"]["detail"]
    dead = pq.read_table(out / "dead_letter").to_pylist()
    by_stage = {r["stage"]: r for r in dead}
    assert set(by_stage) == {"text", "measure", "extract", "language"}
    assert "flaky_one" in by_stage["language"]["traceback"]
    assert "RuntimeError" in by_stage["text"]["error"]
    assert "flaky_check" in by_stage["text"]["traceback"]
    assert "broken.warc.gz" in by_stage["extract"]["element"]
    assert stats["dead_letter"] == {"extract": 1, "language": 1, "measure": 1, "text": 1}
    assert stats["read"][reasons.FILE_FAILED] == 1
    report = (out / "report.html").read_text()
    assert "dead letters" in report
    assert json.loads((out / "dead_letter" / "_manifest.json").read_text())["total"] == 4
