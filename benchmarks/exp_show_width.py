"""How wide `dvc exp show` is: a tiny pipeline (tests/test_report.py's TINY: two teacher members,
four student variants) in a temporary DVC repository, committed, and a T = 8 experiment.

    python benchmarks/exp_show_width.py                          # this checkout, ~3 min
    python benchmarks/exp_show_width.py --root /path/to/other/checkout --out other.json
    python benchmarks/exp_show_width.py --baseline-root ../before  # the code before, beside this
    python benchmarks/exp_show_width.py --keep /tmp/r && \
        python benchmarks/exp_show_width.py --reuse /tmp/r      # measure kept repositories again

Copies `--root`'s kd/, stages/, dvc.yaml and .dvcignore (the project's params.yaml with TINY on
top), runs `dvc repro`, commits, runs `dvc exp run -S student.defaults.temperature=8 -n t8`,
then prints and writes, for each command below, its column count (from `--csv`), the width of
its table at COLUMNS=1000 (DVC squeezes a wider table into it), and the width and number of cut
cells ("…") at COLUMNS=200 and 120. `kd_compare` is the command `kd compare` runs (this
checkout's kd/report/headline.py), whichever checkout made the repository.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ["KD_TRACKING"] = "0"

import yaml  # noqa: E402

from kd.report.headline import exp_show_args  # noqa: E402
from tests.conftest import project_params  # noqa: E402
from tests.test_report import TINY  # noqa: E402

COMMANDS = {
    "plain": ["dvc", "exp", "show"],
    "only_changed": ["dvc", "exp", "show", "--only-changed"],
    "only_changed_hide_workspace": ["dvc", "exp", "show", "--only-changed", "--hide-workspace"],
    "kd_compare": exp_show_args(),
    "metrics_show": ["dvc", "metrics", "show"],
}


def run(args: list[str], cwd: Path, columns: int = 1000, code: Path | None = None) -> str:
    """`args` in `cwd`; with `code`, the stages' `kd` imports that checkout's kd (the venv's
    editable install would otherwise give every checkout the same code)."""
    bindir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}", "COLUMNS": str(columns)}
    if code is not None:
        env["PYTHONPATH"] = str(code)
    out = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{' '.join(args)} failed:\n{out.stdout}\n{out.stderr}")
    return out.stdout


def make(repo: Path, root: Path) -> None:
    repo.mkdir(parents=True)
    for pkg in ("kd", "stages", "data/inputs"):
        shutil.copytree(root / pkg, repo / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(root / name, repo / name)
    (repo / "params.yaml").write_text(yaml.safe_dump(project_params(TINY)))
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"],
                ["dvc", "config", "core.analytics", "false"], ["dvc", "repro"],
                ["git", "add", "-A"],
                ["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "run"],
                ["dvc", "exp", "run", "-S", "student.defaults.temperature=8", "-n", "t8"]):
        run(cmd, repo, code=root)


def measure(repo: Path) -> dict:
    out = {}
    for name, cmd in COMMANDS.items():
        pager = [] if cmd[1] == "metrics" else ["--no-pager"]
        wide = run([*cmd, *pager], repo)
        narrow = run([*cmd, *pager], repo, columns=200)
        at_120 = run([*cmd, *pager], repo, columns=120)
        entry = {"command": shlex.join(cmd), "width": max(map(len, wide.splitlines())),
                 "width_at_200": max(map(len, narrow.splitlines())),
                 "cut_cells_at_200": narrow.count("…"),
                 "width_at_120": max(map(len, at_120.splitlines())),
                 "cut_cells_at_120": at_120.count("…")}
        if cmd[1] == "exp":
            header = run([*cmd, "--csv"], repo).splitlines()[0].split(",")
            entry |= {"columns": len(header), "header": header}
        out[name] = entry
        print(f"{name:30s} columns {entry.get('columns', '-'):>4}  width {entry['width']:>5}  "
              f"at 200: {entry['width_at_200']} wide, {entry['cut_cells_at_200']} cut cells")
        print(narrow)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=ROOT, help="the checkout whose code to run")
    ap.add_argument("--baseline-root", type=Path,
                    help="a second checkout (before a change), measured beside --root")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/exp_show_width.json")
    ap.add_argument("--keep", type=Path, help="build the repositories under this folder and keep "
                                              "them (treatment/, baseline/)")
    ap.add_argument("--reuse", type=Path, help="measure the repositories --keep built, again")
    a = ap.parse_args()
    roots = {"treatment": a.root} | ({"baseline": a.baseline_root} if a.baseline_root else {})
    result = {"repo": "tests/test_report.py TINY, committed, and a T = 8 experiment"}
    with tempfile.TemporaryDirectory() as tmp:
        for name, root in roots.items():
            repo = (a.reuse or a.keep or Path(tmp)) / name
            if a.reuse is None:
                make(repo, root.resolve())
            print(f"== {name}: {root.resolve()}")
            # the checkout's role, not its path (a path names a machine, not the project)
            result[name] = {"root": "this checkout" if name == "treatment" else
                            "--baseline-root (the code before the change)",
                            "commands": measure(repo)}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
