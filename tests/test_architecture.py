"""The layout's rules (docs/architecture.md), held by the import graph (tests/imports.py) and
dvc.yaml. Each rule is also run on a deliberately broken copy of the tree, so it can fail."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from tests.imports import (
    ROOT,
    all_modules,
    closure_files,
    find_cycle,
    imports_of,
    third_party_imports,
)

# who may talk to MLflow: the tracking module, the callbacks, the pyfunc wrapper, the stages,
# the CLI (its `kd ui` opens the store) and the MLflow member kind (kd/teachers/mlflow_source.py)
MLFLOW_OK = ("kd.tracking", "kd.pyfunc_model", "kd.train.callbacks", "kd.cli", "stages",
             "kd.teachers.mlflow_source")  # an MLflow member: resolve, download, pyfunc
# `kd import` (a keyword) runs stages/imports.py; a command of two words, the module with "_"
MODULES = {"import": "imports", "baseline-specs": "baseline_specs"}
PURE = ("kd.models", "kd.targets", "kd.distill", "kd.transfer", "kd.deploy")  # no tracking


def _under(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def violations(root: Path = ROOT) -> list[str]:
    """Every broken rule, one line each."""
    imports_of.cache_clear()
    out = []
    if cycle := find_cycle(root):
        out.append("import cycle: " + " -> ".join(cycle))
    for m in all_modules(root):
        deps = imports_of(m, root)
        if _under(m, ("kd.runtime",)) and (bad := [d for d in deps if _under(d, ("kd.train",))]):
            out.append(f"{m} (runtime) imports training: {sorted(bad)}")
        if _under(m, PURE):
            bad = [d for d in deps if _under(d, ("kd.tracking", "kd.runtime", "kd.train"))]
            if bad or "mlflow" in third_party_imports(m, root):
                out.append(f"{m} must import neither tracking nor the runtime: {sorted(bad)}")
        if not _under(m, MLFLOW_OK) and ("kd.tracking" in deps
                                          or "mlflow" in third_party_imports(m, root)):
            out.append(f"{m} touches MLflow; only callbacks and stage modules may")
        if _under(m, ("kd",)) and m != "kd.cli" and (up := [d for d in deps if
                                                            _under(d, ("stages",))]):
            out.append(f"{m} (library) imports the stages: {sorted(up)}")
    return out


def uncovered_deps(root: Path = ROOT) -> list[str]:
    """Every stage's transitive code imports against its dvc.yaml deps, both ways: a file it
    runs that no dep covers (a change would not rerun it), and a code dep it never runs."""
    dvc = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    out = []
    for name, stage in dvc.items():
        body = stage.get("do", stage)
        command = body["cmd"].split()[1]  # `kd <stage> ...`
        deps = [d for d in body.get("deps", []) if d.startswith(("kd", "stages"))]
        module = MODULES.get(command, command)
        files = closure_files(f"stages.{module}", root)
        for f in files:
            if not any(f == d or f.startswith(d.rstrip("/") + "/") for d in deps):
                out.append(f"{name}: runs {f}, which no dep covers")
        for d in deps:
            if not any(f == d or f.startswith(d.rstrip("/") + "/") for f in files):
                out.append(f"{name}: depends on {d}, which it never imports")
    return out


def test_the_tree_keeps_the_dependency_rules():
    assert len(all_modules()) > 30  # the graph really saw the packages
    assert violations() == []


def test_every_stage_depends_on_exactly_the_code_it_runs():
    assert uncovered_deps() == []


@pytest.fixture
def tree(tmp_path):
    """A copy of kd/, stages/ and dvc.yaml to break."""
    for name in ("kd", "stages"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    yield tmp_path
    imports_of.cache_clear()


def _append(path: Path, text: str) -> None:
    path.write_text(path.read_text() + "\n" + text + "\n")


@pytest.mark.parametrize("file, line, expected", [
    ("kd/runtime/distributed.py", "from kd.train.loop import fit", "runtime) imports training"),
    ("kd/models/registry.py", "from kd.tracking import stage_run", "neither tracking"),
    ("kd/targets/shards.py", "import kd.runtime.distributed", "neither tracking"),
    ("kd/distill/losses.py", "import mlflow", "neither tracking"),
    ("kd/train/loop.py", "import mlflow", "touches MLflow"),
    ("kd/datasets.py", "from stages import prepare", "imports the stages"),
    ("kd/io/faults.py", "def f():\n    from kd.train.loop import fit", "import cycle"),
])
def test_a_broken_rule_is_caught(tree, file, line, expected):
    _append(tree / file, line)
    found = violations(tree)
    assert any(expected in v for v in found), found


def test_a_missing_or_stale_code_dep_is_caught(tree):
    text = (tree / "dvc.yaml").read_text()
    # the student no longer depends on the losses it imports ...
    at = text.index("\n  student:\n")
    (tree / "dvc.yaml").write_text(text[:at] + text[at:].replace("      - kd/distill\n", "", 1))
    # ... and the report imports a module that none of its deps cover
    _append(tree / "stages/report.py", "from kd.train import runner")
    found = uncovered_deps(tree)
    assert "student: runs kd/distill/losses.py, which no dep covers" in found, found
    assert any(f.startswith("report: runs kd/train/runner.py") for f in found), found
    (tree / "dvc.yaml").write_text(text.replace("      - stages/report.py\n",
                                                "      - stages/report.py\n      - kd/transfer\n"))
    imports_of.cache_clear()
    assert any("depends on kd/transfer, which it never imports" in f
               for f in uncovered_deps(tree))


def shadowing(folder: Path) -> list[str]:
    """Scripts in `folder` named like a standard-library module: run as `python folder/x.py`,
    the folder comes first on sys.path and the script replaces that module for every import."""
    import sys

    return sorted(p.name for p in folder.glob("*.py") if p.stem in sys.stdlib_module_names)


def test_no_script_folder_shadows_a_standard_library_module(tmp_path):
    for folder in ("benchmarks", "examples", "stages"):
        assert shadowing(ROOT / folder) == [], folder
    (tmp_path / "queue.py").write_text("")  # what once broke every benchmark (torch imports queue)
    assert shadowing(tmp_path) == ["queue.py"]
