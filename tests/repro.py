"""A tiny whole pipeline in a real git + DVC repository, run by real `dvc repro` processes:
shared by the determinism test and the fault-injection suite.

The uninterrupted reference run is built once per pytest session (in the session's base temp
directory, behind a marker file) and copied, never retrained, by every test that needs it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from tests.conftest import make_repo, one_variant, run_cmd

ENV = {"KD_TRACKING": "0"}
MLP = {"arch": "mlp", "knobs": {"depth": 1, "width": 16}}
TINY = {
    "data": {"source": "digits"},
    "teacher": {"members": {
        "a": {**MLP, "train": {"epochs": 2, "batch_size": 64, "lr": 0.02, "seed": 0}},
        "b": {**MLP, "train": {"epochs": 2, "batch_size": 64, "lr": 0.02, "seed": 1}},
    }},
    # 1,437 exported rows at 300 per shard: 5 shards, so a kill can land between two of them
    "export": {"rows_per_shard": 300, "row_group_size": 100, "batch_size": 128},
    "student": one_variant({"arch": "mlp", "knobs": {"depth": 1, "width": 8}, "shuffle_buffer": 512,
                "train": {"epochs": 2, "batch_size": 64, "lr": 0.02}}),
    "baseline": {"epochs": 2},
    # a 2-epoch student near chance: int8 may flip a few of the 72 validation rows
    "deploy": {"max_accuracy_drop": 0.5},
}
# wall-clock figures: the one kind of output allowed to differ between identical runs
TIMING = "timing.json"
# every file the report derives from wall-clock figures: timing.json and the frontier against
# latency drawn from it (kd/report/build.py FRONTIER_LATENCY)
WALL_CLOCK = (TIMING, "frontier_latency.png")


def fresh_run(repo: Path) -> Path:
    """make_repo + `dvc repro` from scratch: every stage runs, in its own process."""
    make_repo(repo, TINY)
    repro(repo)
    return repo


def repro(repo: Path, *args: str, env: dict | None = None, check: bool = True):
    return run_cmd(["dvc", "repro", *args], repo, env={**ENV, **(env or {})}, check=check)


def reference(tmp_path_factory) -> Path:
    """The uninterrupted run, built once per session and shared read-only."""
    root = tmp_path_factory.getbasetemp() / "kd-reference"
    done = root / "DONE"
    if not done.exists():
        shutil.rmtree(root, ignore_errors=True)
        fresh_run(root / "repo")
        done.touch()
    return root / "repo"


def copy_repo(src: Path, dst: Path) -> Path:
    """A working copy of a reproduced repo without DVC's run cache and state: a stage rerun in
    it really runs its command (the run cache would restore the reference's outputs instead),
    and every file is rehashed."""
    def skip(d: str, names: list[str]) -> list[str]:
        where = Path(d)
        return [n for n in names if (where.name == ".dvc" and n == "tmp")
                or (where.name == "cache" and where.parent.name == ".dvc" and n == "runs")]

    shutil.copytree(src, dst, symlinks=True, ignore=skip)
    return dst


def lock_hashes(repo: Path) -> dict[str, str]:
    """'<stage> <outs|deps> <path>' -> md5, for every output and dependency in dvc.lock."""
    stages = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    return {f"{stage} {kind} {entry['path']}": entry["md5"]
            for stage, lock in stages.items() for kind in ("deps", "outs")
            for entry in lock.get(kind, [])}


def output_bytes(repo: Path) -> dict[str, bytes]:
    """Every file under data/ but wall-clock files (WALL_CLOCK), hidden files and checkpoints."""
    data = repo / "data"
    return {str(p.relative_to(data)): p.read_bytes() for p in sorted(data.rglob("*"))
            if p.is_file() and p.name not in WALL_CLOCK
            and not any(part.startswith(".") for part in p.relative_to(data).parts)}


def debris(repo: Path) -> list[str]:
    """What killed writes leave: `.tmp-*` and `.old-*` anywhere under data/."""
    data = repo / "data"
    return sorted(str(p.relative_to(data)) for p in data.rglob("*")
                  if p.name.startswith((".tmp-", ".old-")))


def lock_outs(repo: Path, stage: str) -> dict[str, str]:
    """path -> md5 of one stage's outputs, as dvc.lock records them."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"][stage]
    return {entry["path"]: entry["md5"] for entry in lock["outs"]}


def uncache(repo: Path, stage: str) -> None:
    """Drop one stage's outputs from the DVC cache, so `dvc repro` must run its command again
    (with them cached, DVC checks them out instead, even without the run cache)."""
    for md5 in lock_outs(repo, stage).values():
        (repo / ".dvc/cache/files/md5" / md5[:2] / md5[2:]).unlink(missing_ok=True)
