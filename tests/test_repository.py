"""The repository as a teammate clones it: what git must hold for DVC's folder hashes to match
dvc.lock after `dvc pull`."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.imports import ROOT


def dvc_gitignores(root: Path) -> dict[str, list[str]]:
    """The .gitignore files `dvc repro` writes in `root`: for every cached output declared in
    dvc.yaml (foreach stages expanded), a `/name` line in its folder's .gitignore."""
    from dvc.repo import Repo

    want: dict[str, list[str]] = {}
    with Repo(str(root)) as repo:
        for out in repo.index.outs:
            if out.use_cache:
                path = Path(out.fs_path).relative_to(root)
                want.setdefault((path.parent / ".gitignore").as_posix(), []).append(
                    f"/{path.name}")
    return want


def gitignore_problems(root: Path) -> list[str]:
    """What a fresh clone would lack: a folder's .gitignore that DVC writes but git does not
    hold, one that holds other names, or a held one under data/ that no output needs. Folder
    hashes (deploy and the report depend on data/student, data/baseline) include these files,
    so a clone without them sees those stages as changed after `dvc pull`."""
    import subprocess

    tracked = set(subprocess.run(["git", "ls-files", "data"], cwd=root, check=True,
                                 capture_output=True, text=True).stdout.split())
    want = dvc_gitignores(root)
    problems = [f"{f}: not committed" for f in want if f not in tracked]
    problems += [f"{f}: lists {sorted(have)}, outputs are {sorted(want[f])}" for f in want
                 if f in tracked and (have := set((root / f).read_text().split()))
                 != set(want[f])]
    problems += [f"{f}: no output needs it" for f in tracked
                 if f.endswith("/.gitignore") and f not in want]
    return problems


def test_every_gitignore_dvc_writes_is_committed():
    assert gitignore_problems(ROOT) == []


def test_a_missing_or_stale_gitignore_is_caught(tmp_path):
    import subprocess

    repo = tmp_path / "repo"  # this tree's pipeline and ignore files, one of each kind broken
    repo.mkdir()
    for name in ("dvc.yaml", "params.yaml", ".dvcignore"):
        shutil.copy(ROOT / name, repo / name)
    for f in dvc_gitignores(ROOT):
        if f != "data/student/small/.gitignore":
            (repo / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / f, repo / f)
    (repo / "data/student/stale").mkdir()
    (repo / "data/student/stale/.gitignore").write_text("/model.json\n")
    (repo / "data/baseline/small/.gitignore").write_text("/model.json\n")
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run(["dvc", "init", "-q"], cwd=repo, check=True)
    subprocess.run(["git", "add", "-A", "-f"], cwd=repo, check=True)
    problems = gitignore_problems(repo)
    assert "data/student/small/.gitignore: not committed" in problems
    assert "data/student/stale/.gitignore: no output needs it" in problems
    assert any(p.startswith("data/baseline/small/.gitignore: lists") for p in problems)
    assert len(problems) == 3, problems


def stale_lock_stages(root: Path) -> list[str]:
    """Stages dvc.lock records that dvc.yaml (foreach stages expanded with params.yaml) no longer
    has: their outputs are files no stage writes, and `dvc status` never looks at them."""
    import yaml
    from dvc.repo import Repo

    locked = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    with Repo(str(root)) as repo:
        declared = {stage.name for stage in repo.index.stages}
    return sorted(set(locked) - declared)


def test_every_stage_in_dvc_lock_is_in_dvc_yaml():
    assert stale_lock_stages(ROOT) == []


def test_a_stage_left_in_dvc_lock_is_caught(tmp_path):
    import subprocess

    import yaml

    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("dvc.yaml", "params.yaml", "dvc.lock"):
        shutil.copy(ROOT / name, repo / name)
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    lock["stages"]["student"] = lock["stages"]["student@small"]  # the flat layout's name
    (repo / "dvc.lock").write_text(yaml.safe_dump(lock))
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run(["dvc", "init", "-q"], cwd=repo, check=True)
    assert stale_lock_stages(repo) == ["student"]
