"""Stage modules stay thin (docs/architecture.md): each reads its inputs, calls kd and writes its
outputs in under MAX_LINES lines, and none imports another stage (what two stages share has
one home in kd). Each rule is also run on a broken copy of stages/, so it can fail."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.imports import ROOT, all_modules, imports_of

MAX_LINES = 120


def stage_problems(root: Path = ROOT) -> list[str]:
    """Every stage module that is too long or imports another stage, one line each."""
    imports_of.cache_clear()
    out = []
    for path in sorted((root / "stages").glob("*.py")):
        if (n := len(path.read_text().splitlines())) >= MAX_LINES:
            out.append(f"stages/{path.name}: {n} lines (a stage stays under {MAX_LINES})")
    for m in all_modules(root):
        if m.startswith("stages.") and (other := sorted(
                d for d in imports_of(m, root) if d.startswith("stages") and d != m)):
            out.append(f"{m} imports {other}")
    return out


def test_every_stage_is_thin_and_imports_no_other_stage():
    assert len(list((ROOT / "stages").glob("*.py"))) > 10  # the stages were really seen
    assert stage_problems() == []


@pytest.fixture
def stages_copy(tmp_path):
    shutil.copytree(ROOT / "stages", tmp_path / "stages",
                    ignore=shutil.ignore_patterns("__pycache__"))
    yield tmp_path
    imports_of.cache_clear()


def test_a_long_stage_or_a_stage_importing_a_stage_is_caught(stages_copy):
    imports = stages_copy / "stages/imports.py"
    imports.write_text(imports.read_text() + "\nfrom stages.source import run\n")
    report = stages_copy / "stages/report.py"
    report.write_text(report.read_text() + "\n" * MAX_LINES)
    found = stage_problems(stages_copy)
    assert "stages.imports imports ['stages.source']" in found, found
    assert any(f.startswith("stages/report.py: ") for f in found), found
    assert len(found) == 2, found
