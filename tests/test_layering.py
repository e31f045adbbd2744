"""The seam: filters/ and curation/ never import Beam or torch (STYLE.md, 'Where things live')."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest

from tests.conftest import ROOT

FORBIDDEN = ("apache_beam", "torch")
PURE = ("curation", "filters")
# Who may import whom among our packages: the arrows run one way.
ALLOWED = {
    "curation": set(),
    "filters": {"curation"},
    "pipelines": {"curation", "filters"},
    "trainer": {"curation", "filters"},
}


def _imports(path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_follow_the_layers(package: str) -> None:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files
    for path in files:
        imported = _imports(path)
        ours = imported & set(ALLOWED)
        assert ours - {package} <= ALLOWED[package], f"{path}: imports {sorted(ours)}"
        if package in PURE:
            assert not imported & set(FORBIDDEN), f"{path} imports {imported & set(FORBIDDEN)}"


def test_pure_packages_import_without_beam_or_torch() -> None:
    code = (
        "import sys, importlib, pkgutil\n"
        "for pkg in ('curation', 'filters'):\n"
        "    m = importlib.import_module(pkg)\n"
        "    for info in pkgutil.iter_modules(m.__path__):\n"
        "        importlib.import_module(f'{pkg}.{info.name}')\n"
        "bad = [n for n in sys.modules if n.split('.')[0] in ('apache_beam', 'torch')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_the_nsfw_stage_imports_run_inference_without_torch() -> None:
    # With the trainer's extra installed, Beam's RunInference module would import torch and
    # scipy for a ModelManager the NSFW stage never uses (2.2-2.5 s of every run's start).
    pytest.importorskip("torch")
    code = (
        "import resource, sys\n"
        "import pipelines.nsfw\n"
        "base = sys.modules['apache_beam.ml.inference.base']\n"
        "heavy = [n for n in ('torch', 'scipy') if n in sys.modules]\n"
        "assert not heavy, heavy\n"
        # RunInference's memory metrics still see the resource module.
        "assert base.resource is resource\n"
        # Only the import was skipped: the module itself still imports when asked for.
        "assert 'apache_beam.ml.inference.model_manager' not in sys.modules\n"
        "from apache_beam.ml.inference.model_manager import ModelManager\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
