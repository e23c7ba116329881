"""The bad-input catalogue: every user mistake the project recognises, as runnable cases.

    python -m tests.catalogue          # rewrite docs/errors.md from the cases' actual messages

A `Case` breaks something in a fresh directory (a params key, a data file, an artifact of a
small built pipeline), runs one real `kd` command there in-process, and expects exit status 2,
one line naming `names`, no traceback, and not one byte written, changed or removed in the
directory. tests/test_catalogue.py (params, data, CLI), tests/test_corrupt.py (artifacts) and
tests/test_byot_cases.py (imported members, custom architectures)
hold the cases and check each printed line against docs/errors.md, so the page cannot drift
from what the program prints: change a message, rerun this script, review the diff.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import hashlib
import io
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from click.testing import CliRunner, Result

from kd.cli import cli
from tests.conftest import one_variant

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "errors.md"
GROUPS = {
    "params": "Params (`params.yaml`)",
    "data": "Your data (`data.source: parquet`)",
    "artifacts": "Corrupt or mismatched artifacts",
    "cli": "Commands and tracking",
}


@dataclass(frozen=True)
class Case:
    id: str  # stable, unique: the doc's row key
    group: str  # a key of GROUPS
    mistake: str  # what the user did, in words, for the doc
    argv: tuple[str, ...]  # the kd command, run in the case's directory
    setup: Callable[[Path], None]  # makes the mistake inside the (fresh) directory
    names: tuple[str, ...]  # what the one line must name: key, file, column, row
    base: str = "empty"  # "empty" or "pipeline": a copy of the small built pipeline
    env: dict[str, str] = field(default_factory=dict)


# ------------------------------------------------------------------------------ running

# The small pipeline the artifact cases corrupt copies of: digits, two tiny MLP members, a tiny
# student and baseline, one epoch each (about 3 s on 2 cores). Shards: 1,437 rows in 3 files.
PIPELINE_PARAMS = {
    "data": {"source": "digits"},
    "teacher": {"members": {
        "a": {"arch": "mlp", "knobs": {"depth": 1, "width": 8},
              "train": {"epochs": 1, "batch_size": 64}},
        "b": {"arch": "mlp", "knobs": {"depth": 1, "width": 8},
              "train": {"epochs": 1, "batch_size": 64, "seed": 1}}}},
    "export": {"rows_per_shard": 500, "row_group_size": 250, "batch_size": 512},
    "student": one_variant({"arch": "mlp", "knobs": {"depth": 1, "width": 8},
                            "train": {"epochs": 1, "batch_size": 64}}),
    "baseline": {"epochs": 1},
    "deploy": {"max_accuracy_drop": 0.5},  # a 1-epoch student: int8 may flip validation rows
    "tracking": {"enabled": False},
}


@functools.cache
def pipeline() -> Path:
    """Build the small pipeline once per process (every stage but the report)."""
    from tests.conftest import build_pipeline

    root = Path(tempfile.mkdtemp(prefix="kd-catalogue-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    quiet = io.StringIO()  # the stages' progress lines are not what the catalogue is about
    with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
        return build_pipeline(root / "p", PIPELINE_PARAMS,
                              ("prepare", "teacher", "export", "student", "baseline",
                               "deploy"))


def snapshot(d: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under `d` (and '<dir>' for every directory)."""
    out = {}
    for p in sorted(d.rglob("*")):
        rel = str(p.relative_to(d))
        out[rel] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "<dir>"
    return out


@dataclass
class Outcome:
    result: Result
    line: str  # the printed output, stripped, with the directory's path normalised
    before: dict[str, str]
    after: dict[str, str]


def run_case(case: Case, d: Path) -> Outcome:
    """Make the case's mistake in a fresh directory `d`, run its command there in-process."""
    if case.base == "pipeline":
        shutil.copytree(pipeline(), d, ignore=shutil.ignore_patterns(".checkpoints"))
    else:
        d.mkdir(parents=True)
    case.setup(d)
    before = snapshot(d)
    old = os.getcwd()
    os.chdir(d)  # stages read and write paths relative to the working directory
    try:
        env = {"KD_TRACKING": "0", "MLFLOW_TRACKING_URI": None, **case.env}
        result = CliRunner().invoke(cli, list(case.argv), env=env, catch_exceptions=True)
    finally:
        os.chdir(old)
    line = result.output.strip()
    for form in {str(d.resolve()), str(d)}:
        line = line.replace(form, "<dir>")
    return Outcome(result, line, before, snapshot(d))


def check(case: Case, outcome: Outcome) -> None:
    """The contract of a user error: status 2, one line naming `names`, no traceback, and
    nothing written, changed or deleted."""
    r = outcome.result
    assert r.exit_code == 2, (case.id, r.exit_code, r.output, r.exception)
    assert "Traceback" not in r.output, r.output
    assert len(outcome.line.splitlines()) == 1, outcome.line
    assert outcome.line.startswith("Error: "), outcome.line
    for name in case.names:
        assert name in outcome.line, (case.id, name, outcome.line)
    assert outcome.after == outcome.before, "the failed command changed files"


def assert_case(case: Case, tmp_path: Path) -> None:
    """Run `case`, check the user-error contract, and compare its line with docs/errors.md."""
    outcome = run_case(case, tmp_path / "case")
    check(case, outcome)
    documented = read_doc().get(case.id)
    assert outcome.line == documented, (
        f"{case.id}: printed {outcome.line!r}, docs/errors.md says {documented!r}; rerun "
        "`python -m tests.catalogue` if the new message is right")


# -------------------------------------------------------------------------------- the doc

_CELL_SPLIT = re.compile(r"(?<!\\)\|")


def _code(text: str) -> str:
    text = text.replace("|", "\\|")
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def _uncode(cell: str) -> str:
    cell = cell.strip()
    inner = cell[3:-3] if cell.startswith("`` ") else cell[1:-1]
    return inner.replace("\\|", "|")


@functools.cache
def read_doc(path: Path = DOC) -> dict[str, str]:
    """id -> message, from the tables of docs/errors.md."""
    rows: dict[str, str] = {}
    if not path.is_file():
        return rows
    for line in path.read_text().splitlines():
        if not line.startswith("| `"):
            continue
        cells = _CELL_SPLIT.split(line.strip())[1:-1]  # id | mistake | command | message
        case_id, message = _uncode(cells[0]), _uncode(cells[-1])
        assert case_id not in rows, f"{path}: {case_id} listed twice"
        rows[case_id] = message
    return rows


HEADER = """\
# Bad-input catalogue

Every user mistake kd-pipeline recognises, with the one line it prints. Each stops the command
with exit status 2, before any output is written: outputs of an earlier run stay as they were.
Paths are relative to the directory the command runs in (the repository root); `<dir>` stands
for an absolute path.

This page is generated: `python -m tests.catalogue` runs every case of
`tests/test_catalogue.py` (params, data, commands) and `tests/test_corrupt.py` (artifacts) and
writes what each printed. `pytest tests/test_catalogue.py tests/test_corrupt.py` fails when a
message differs from this page, when a case has no row here, or a row no case.

Not listed: mistakes in the command line itself (an unknown option, `--port 0`) are click's
usage errors, also exit status 2, printed with a usage hint.
"""


def render(cases: list[Case], messages: dict[str, str]) -> str:
    parts = [HEADER]
    for group, title in GROUPS.items():
        rows = [c for c in cases if c.group == group]
        parts.append(f"\n## {title} ({len(rows)})\n\n| id | mistake | command | message |\n"
                     "| --- | --- | --- | --- |\n")
        for c in rows:
            cmd = " ".join(("kd", *c.argv))
            parts.append(f"| `{c.id}` | {c.mistake} | {_code(cmd)} | {_code(messages[c.id])} |\n")
    return "".join(parts)


def all_cases() -> list[Case]:
    from tests.test_byot_cases import CASES as BYOT_CASES
    from tests.test_catalogue import CASES as INPUT_CASES
    from tests.test_corrupt import CASES as ARTIFACT_CASES

    cases = [*INPUT_CASES, *ARTIFACT_CASES, *BYOT_CASES]
    ids = [c.id for c in cases]
    assert len(set(ids)) == len(ids), "duplicate case ids"
    assert all(c.group in GROUPS for c in cases)
    return cases


def main() -> None:
    cases, messages = all_cases(), {}
    with tempfile.TemporaryDirectory(prefix="kd-catalogue-") as tmp:
        for i, case in enumerate(cases):
            outcome = run_case(case, Path(tmp) / f"case{i}")
            check(case, outcome)  # never document a message the tests would reject
            messages[case.id] = outcome.line
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text(render(cases, messages))
    print(f"{DOC}: {len(cases)} cases")


if __name__ == "__main__":
    main()
