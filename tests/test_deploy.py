"""Dataflow option checks and the Dockerfile (no Docker engine here: what can be read is
checked; building and running the image is not tested on these machines)."""

from __future__ import annotations

import re
import tomllib

import pytest

from pipelines.cli import main
from tests.conftest import ROOT, SAMPLE_WARC

DOCKERFILE = (ROOT / "Dockerfile").read_text()
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_dockerfile_beam_version_matches_pyproject() -> None:
    pinned = next(d for d in PYPROJECT["project"]["dependencies"] if d.startswith("apache-beam"))
    version = pinned.split("==")[1]
    assert re.search(rf"^ARG BEAM_VERSION={re.escape(version)}$", DOCKERFILE, re.M)
    assert "FROM apache/beam_python3.11_sdk:${BEAM_VERSION}" in DOCKERFILE
    assert PYPROJECT["project"]["requires-python"].startswith(">=3.11")
    assert PYPROJECT["project"]["optional-dependencies"]["gcp"] == [f"apache-beam[gcp]=={version}"]


def test_dockerfile_installs_every_package_and_keeps_the_harness() -> None:
    # Subpackages (trainer.configs) come with their top-level folder.
    for package in {p.split(".")[0] for p in PYPROJECT["tool"]["setuptools"]["packages"]}:
        assert f"COPY {package} ./{package}" in DOCKERFILE
    assert 'pip install --no-cache-dir ".[gcp]"' in DOCKERFILE
    assert "NSFWClassifier()" in DOCKERFILE  # the model is loaded at build time
    assert 'ENTRYPOINT ["/opt/apache/beam/boot"]' in DOCKERFILE


@pytest.mark.parametrize(
    ("extra", "missing"),
    [
        ([], ["--project", "--region", "--temp_location", "--sdk_container_image"]),
        (["--project", "p", "--region", "us-central1"], ["--temp_location"]),
        (
            ["--project", "p", "--region", "r", "--temp_location", "gs://b/tmp"],
            ["--sdk_container_image"],
        ),
    ],
)
def test_dataflow_options_are_checked_before_submitting(capsys, extra, missing) -> None:
    args = ["run", "--input", "gs://b/in/*.warc.gz", "--output", "gs://b/out"]
    assert main([*args, "--runner", "DataflowRunner", *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("curate: error: DataflowRunner needs:")
    for option in missing:
        assert option in err


def test_dataflow_refuses_local_paths(capsys) -> None:
    args = [
        "run",
        "--input",
        str(SAMPLE_WARC),
        "--output",
        "gs://b/out",
        "--runner",
        "DataflowRunner",
    ]
    args += ["--project", "p", "--region", "r", "--temp_location", "gs://b/tmp"]
    args += ["--sdk_container_image", "example/image:1"]
    assert main(args) == 2
    assert "must be gs:// paths" in capsys.readouterr().err
