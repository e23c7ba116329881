"""The layout's rules (docs/architecture.md), held by the import graph (tests/imports.py) and
dvc.yaml. The layer table is read from docs/architecture.md itself, so the page and the test say
the same thing. Each rule is also run on a deliberately broken copy of the tree, so it can fail."""

from __future__ import annotations

import json
import re
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
DOC = "docs/architecture.md"


def _under(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def layer_table(root: Path = ROOT) -> dict[str, int]:
    """{module prefix: layer} from the table of docs/architecture.md's dependency rule."""
    text = (root / DOC).read_text()
    section = text[text.index("## The dependency rule"):]
    section = section[: section.index("\n## ", 1)]
    table: dict[str, int] = {}
    for row in re.finditer(r"^\| (\d+) \| (.+?) \| .*\|$", section, re.M):
        for name in re.findall(r"`([\w.]+)`", row[2]):
            assert name not in table, f"{DOC}: {name} is in two layers"
            table[name] = int(row[1])
    return table


def _in_row(module: str, row: str) -> bool:
    # the row `kd` is the package's own __init__ alone: every other module needs a row of its own
    return module == row if row == "kd" else _under(module, (row,))


def layer_of(module: str, table: dict[str, int]) -> int | None:
    """The layer of the longest row name that `module` falls under, or None."""
    row = max((p for p in table if _in_row(module, p)), key=len, default=None)
    return None if row is None else table[row]


def layer_violations(root: Path = ROOT) -> list[str]:
    """Modules without a layer, rows without a module, and every import of a higher layer."""
    table, modules = layer_table(root), all_modules(root)
    out = [f"{DOC}: the layer row {row} matches no module" for row in table
           if not any(_in_row(m, row) for m in modules)]
    for m in modules:
        mine = layer_of(m, table)
        if mine is None:
            out.append(f"{m} has no layer in {DOC}")
            continue
        up = sorted(f"{d} ({layer_of(d, table)})" for d in imports_of(m, root)
                    if (layer_of(d, table) or 0) > mine)
        if up:
            out.append(f"{m} (layer {mine}) imports a higher layer: {', '.join(up)}")
    return out


def violations(root: Path = ROOT) -> list[str]:
    """Every broken rule, one line each."""
    imports_of.cache_clear()
    out = layer_violations(root)
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
        if _under(m, ("kd",)) and not _under(m, ("kd.cli",)) and (up := [d for d in deps if
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
    """A copy of kd/, stages/, dvc.yaml and docs/architecture.md to break."""
    for name in ("kd", "stages"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", DOC):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, tmp_path / name)
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
    # the layer table: config knows no model family, tracking no model, a model no loss
    ("kd/config/params.py", "def f():\n    from kd.models import check_arch",
     "kd.config.params (layer 2) imports a higher layer: kd.models (3)"),
    ("kd/tracking.py", "from kd.pyfunc_model import log_pyfunc_model",
     "kd.tracking (layer 5) imports a higher layer: kd.pyfunc_model (6)"),
    ("kd/models/io.py", "from kd.distill.losses import kd_loss", "imports a higher layer"),
    ("kd/evaluate/metrics.py", "from kd.train.loop import fit", "imports a higher layer"),
])
def test_a_broken_rule_is_caught(tree, file, line, expected):
    _append(tree / file, line)
    found = violations(tree)
    assert any(expected in v for v in found), found


def test_the_layer_table_is_the_documented_one():
    table = layer_table()
    assert table["kd.errors"] < table["kd.io"] < table["kd.config"] < table["kd.models"] \
        < table["kd.tracking"] < table["kd.train"] < table["stages"] < table["kd.cli"]
    assert layer_of("kd.evaluate.stats", table) == table["kd.evaluate"]


def test_a_module_without_a_layer_or_a_row_without_a_module_is_caught(tree):
    doc = tree / DOC
    text = doc.read_text()
    doc.write_text(text.replace(", `kd.serve` |", " |", 1))
    assert "kd.serve has no layer in docs/architecture.md" in violations(tree)
    doc.write_text(text.replace("| `kd.cli` |", "| `kd.cli`, `kd.gone` |", 1))
    assert f"{DOC}: the layer row kd.gone matches no module" in violations(tree)
    (tree / "kd/newpackage").mkdir()
    (tree / "kd/newpackage/__init__.py").write_text("")
    assert "kd.newpackage has no layer in docs/architecture.md" in violations(tree)


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
    (tmp_path / "queue.py").write_text("")  # torch imports queue: this would break every benchmark
    assert shadowing(tmp_path) == ["queue.py"]


def _stage_module(stage) -> str:
    command = stage.cmd.split()[1]  # `kd <stage> ...`
    return f"stages.{MODULES.get(command, command)}"


@pytest.mark.slow
@pytest.mark.parametrize("touched", ["kd/models/soft_tree.py", "kd/transfer/munge.py"])
def test_editing_a_file_changes_only_the_stages_that_import_it(tmp_path, touched):
    """Real DVC: every stage committed as up to date (placeholder outputs, nothing trained),
    then one line added to `touched`; `dvc status` must name exactly the stages whose import
    closure holds that file. A model family no default stage uses still changes the stages
    that build models, and never prepare or transfer."""
    from dvc.repo import Repo

    from tests.conftest import make_repo, run_cmd

    repo = make_repo(tmp_path / "repo", {})
    with Repo(str(repo)) as r:
        stages = list(r.index.stages)
        for out in (o for s in stages for o in s.outs):
            path = Path(out.fs_path)
            if path.suffix:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text("{}")
            else:  # a directory output
                path.mkdir(parents=True, exist_ok=True)
                (path / "placeholder").write_text("x")
        # deps inside a directory output (data/prepared/test.parquet, a variant's file in
        # data/baseline_specs/): a placeholder of their own
        for dep in (d for s in stages for d in s.deps if not Path(d.fs_path).exists()):
            Path(dep.fs_path).parent.mkdir(parents=True, exist_ok=True)
            Path(dep.fs_path).write_text("x")
        expected = {s.name for s in stages
                    if touched in closure_files(_stage_module(s))}
    run_cmd(["dvc", "commit", "--force", "--quiet"], repo)
    assert json.loads(run_cmd(["dvc", "status", "--json"], repo).stdout) == {}
    with (repo / touched).open("a") as f:
        f.write("\n# an edit\n")
    changed = set(json.loads(run_cmd(["dvc", "status", "--json"], repo).stdout))
    assert changed == expected
    assert expected and not {"prepare", "transfer"} & expected if "models" in touched \
        else expected == {"transfer"}
