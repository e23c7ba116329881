"""Fault injection: every stage SIGKILLed at exact points (kd/io/faults.py failpoints), then
rerun; the result must be the uninterrupted run's bytes, and nothing in between may look done.

Each case copies the session's reference repository (tests/repro.py: a tiny pipeline, run once
by `dvc repro`), drops the target stage's outputs from the DVC cache so DVC must run it again,
and then:

1. `KD_FAILPOINT=<point> dvc repro` -> the stage is killed at <point> (its stderr says so);
   no stage after it ran; every declared output of the killed stage is absent or complete
   (byte-identical to the reference); every other stage's files and dvc.lock are untouched;
2. `dvc repro` -> only the killed stage runs again (resuming where it can), and every output
   under data/ and every hash in dvc.lock equal the reference's (the uncached timing file
   aside); no `.tmp-*` / `.old-*` debris and no checkpoint is left.

Two more cases run `kd` directly over a complete earlier output, which must survive a kill.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from kd.targets.shardset import verify
from tests.conftest import build_pipeline, one_variant, run_cmd, run_to_failpoint
from tests.repro import (
    ENV,
    WALL_CLOCK,
    copy_repo,
    debris,
    lock_hashes,
    lock_outs,
    output_bytes,
    reference,
    repro,
    uncache,
)

pytestmark = pytest.mark.slow

RAN = re.compile(r"Running stage '([^']+)'")


@dataclass(frozen=True)
class Case:
    stage: str
    point: str  # KD_FAILPOINT value
    why: str
    resumes: str | None = None  # expected in the rerun's stderr

    def __str__(self) -> str:
        return f"{self.stage}-{self.point}"


# teacher: 646 training rows / 64 = 11 steps per epoch; student: 1,365 / 64 = 22 steps
CASES = [
    Case("prepare", "atomic.dir:prepared", "the whole set written, not yet renamed into place"),
    Case("transfer", "atomic.dir:transfer", "the rows and meta.json written, not yet in place"),
    Case("teacher@a", "train.start", "before the first batch"),
    Case("teacher@a", "train.batch@16", "mid second epoch", "resuming from epoch 1 of 2"),
    Case("teacher@a", "checkpoint.between@2",
         "epoch 2's checkpoint weights written, its JSON still epoch 1's: a torn checkpoint"),
    Case("teacher@a", "atomic.rename:metrics.json", "every file but the done marker",
         "resuming from epoch 2 of 2"),
    Case("baseline@s", "train.batch@3", "mid first epoch, no checkpoint yet"),
    Case("baseline@s", "train.epoch@1", "first epoch checkpointed", "resuming from epoch 1 of 2"),
    Case("baseline@s", "atomic.rename:history.json", "weights and model.json in place"),
    Case("export", "shard.done@2", "two of five shards in place"),
    Case("export", "export.manifest", "every shard in place, no manifest"),
    Case("export", "atomic.dir:soft_targets", "the complete set, before its rename"),
    Case("student@s", "train.start", "before the first batch"),
    Case("student@s", "train.batch@30", "mid second epoch", "resuming from epoch 1 of 2"),
    Case("student@s", "atomic.rename:model.json", "weights in place, not their spec",
         "resuming from epoch 2 of 2"),
    Case("report", "atomic.swap:report", "the old report moved aside, the new not yet in"),
]


@pytest.fixture(scope="module")
def ref(tmp_path_factory) -> dict:
    repo = reference(tmp_path_factory)
    return {"repo": repo, "bytes": output_bytes(repo), "lock": lock_hashes(repo)}


def snapshot(repo: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every file under data/: (inode, mtime, bytes), to tell untouched from rewritten."""
    out = {}
    for p in sorted((repo / "data").rglob("*")):
        if p.is_file() and ".checkpoints" not in p.parts:
            st = p.stat()
            out[str(p.relative_to(repo))] = (st.st_ino, st.st_mtime_ns, p.read_bytes())
    return out


WALL = tuple(f"/{name}" for name in WALL_CLOCK)  # files of wall-clock figures: in no hash


def same_lock(lock: dict, ref_lock: dict) -> list[str]:
    return sorted(k for k in ref_lock.keys() | lock.keys()
                  if not k.endswith(WALL) and lock.get(k) != ref_lock.get(k))


def assert_absent_or_complete(repo: Path, ref_repo: Path, outs: list[str]) -> None:
    """Each declared output is missing, or exactly the reference's (the complete version)."""
    for out in outs:
        path, want = repo / out, ref_repo / out
        if not path.exists():
            continue
        if want.is_dir():
            got = {p.relative_to(path): p.read_bytes() for p in path.rglob("*") if p.is_file()}
            exp = {p.relative_to(want): p.read_bytes() for p in want.rglob("*") if p.is_file()}
            assert got == exp, f"{out}: a partial or different directory is visible"
            if out == "data/soft_targets":
                verify(path)  # what the student stage checks first
        else:
            assert path.read_bytes() == want.read_bytes(), f"{out}: a partial file is visible"


@pytest.mark.parametrize("case", CASES, ids=str)
def test_killed_stage_reruns_to_the_uninterrupted_bytes(case: Case, ref, tmp_path):
    repo = copy_repo(ref["repo"], tmp_path / "repo")
    uncache(repo, case.stage)
    outs = sorted(lock_outs(repo, case.stage))
    before = snapshot(repo)
    own = {k for k in before if any(k == o or k.startswith(o + "/") for o in outs)}

    killed = repro(repo, env={"KD_FAILPOINT": case.point}, check=False)
    log = killed.stdout + killed.stderr
    assert killed.returncode != 0, f"{case}: the stage was not killed\n{log}"
    assert f"failpoint {case.point.split('@')[0]} hit" in log, log
    # SIGKILL: dvc reports -9 when the shell execs kd, 128 + 9 when a shell (dash) waits on it
    assert re.search(r"exited with (-9|137)\b", log), log
    assert RAN.findall(killed.stdout) == [case.stage], "a stage after the killed one ran"

    # nothing a later stage could read is partial; nobody else's files moved
    assert_absent_or_complete(repo, ref["repo"], outs)
    after = snapshot(repo)
    # (DVC rewrites .gitignore files; a killed trainer may have rewritten its timing.json)
    touched = sorted(k for k in before.keys() - own if after.get(k) != before[k]
                     and not k.endswith(("/.gitignore", *WALL)))
    assert touched == [], f"files of other stages changed: {touched}"
    assert same_lock(lock_hashes(repo), ref["lock"]) == []

    rerun = repro(repo)
    assert RAN.findall(rerun.stdout) == [case.stage], rerun.stdout
    if case.resumes:
        assert case.resumes in rerun.stderr, rerun.stderr
    got = output_bytes(repo)
    differing = sorted(k for k in ref["bytes"].keys() | got.keys()
                       if got.get(k) != ref["bytes"].get(k))
    assert differing == [], f"{case}: after the rerun these differ from the reference"
    assert same_lock(lock_hashes(repo), ref["lock"]) == []
    assert debris(repo) == [], "killed writes left debris behind"
    assert not (repo / "data/.checkpoints" / case.stage).exists()


# ------------------------------------------------------------ `kd` over a complete output


def kd(repo: Path, *args: str, point: str | None = None):
    env = {**ENV, **({"KD_FAILPOINT": point} if point else {})}
    return run_cmd(["kd", *args], repo, env=env, check=point is None)


# killed while a complete earlier output is in place (no DVC to delete it first)
OVER_COMPLETE = [("export", "shard.done@3"), ("export", "atomic.rename:manifest.json"),
                 ("report", "report.write"), ("report", "atomic.dir:report")]


def test_kd_killed_over_a_complete_output_leaves_it_as_it_was(ref, tmp_path):
    repo = copy_repo(ref["repo"], tmp_path / "repo")
    for stage, point in OVER_COMPLETE:
        result = kd(repo, stage, point=point)
        assert result.returncode == -9, (point, result.stderr)
        assert output_bytes(repo) == ref["bytes"], f"{point}: an output changed"
        verify(repo / "data/soft_targets")
    for stage in ("export", "report"):
        kd(repo, stage)
    assert output_bytes(repo) == ref["bytes"]
    assert debris(repo) == []


def test_kill_mid_swap_leaves_none_and_the_rerun_cleans_up(ref, tmp_path):
    """Between moving the old directory aside and moving the new one in, the output is
    absent (never half of each); the next run removes the set that was moved aside."""
    repo = copy_repo(ref["repo"], tmp_path / "repo")
    result = kd(repo, "prepare", point="atomic.swap:prepared")
    assert result.returncode == -9, result.stderr
    assert not (repo / "data/prepared").exists()
    # the complete old set moved aside, the complete new one not yet in its place
    assert [d.split(".")[1] for d in debris(repo)] == ["old-prepared", "tmp-prepared"]
    kd(repo, "prepare")
    assert output_bytes(repo) == ref["bytes"]
    assert debris(repo) == []


# ------------------------------------------------------------ the mechanism itself


def test_failpoint_counts_hits_and_names_details(tmp_path):
    import subprocess
    import sys

    code = ("from kd.io.faults import failpoint\n"
            "for i in range(4):\n"
            "    failpoint('p', 'a.json'); failpoint('p', 'b.json'); print(i, flush=True)\n")

    def run(spec: str) -> subprocess.CompletedProcess:
        import os
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              env={**os.environ, "KD_FAILPOINT": spec}, cwd=tmp_path)

    r = run("p:b.json@3")  # the third b.json, after three a.json: i == 2
    assert r.returncode == -9 and r.stdout.split() == ["0", "1"], r
    assert "failpoint p:b.json hit (3): SIGKILL" in r.stderr
    r = run("p@3")  # any detail: a.json (i=0), b.json (i=0), a.json (i=1)
    assert r.returncode == -9 and r.stdout.split() == ["0"], r
    assert run("q").returncode == 0  # a point that is never reached


def test_atomic_write_removes_dead_writers_temp_files_only(tmp_path):
    import os
    import subprocess
    import sys

    from kd.io.atomic import write_json

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    for name in (f".tmp-m.json.{dead}.x1", ".tmp-m.json.x2", f".tmp-m.json.{os.getpid()}.x3",
                 ".tmp-other.json.1.x4"):
        (tmp_path / name).write_text("partial")
    write_json(tmp_path / "m.json", {"a": 1})
    # a live writer of the same path (here: this process) keeps its file; others of m.json go
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f".tmp-m.json.{os.getpid()}.x3", ".tmp-other.json.1.x4", "m.json"]


def test_bad_failpoint_spec_is_a_one_line_error(tmp_path):
    (tmp_path / "params.yaml").write_text("data: {source: digits}\n")
    result = run_cmd(["kd", "prepare"], tmp_path, env={**ENV, "KD_FAILPOINT": "x@0"},
                     check=False)
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "Error: KD_FAILPOINT: expected <name>[:<detail>][@<n>] with n >= 1, got 'x@0'"]
    assert not (tmp_path / "data/prepared").exists() and debris(tmp_path) == []


# ------------------------------------------------------------ a split changed between kill and rerun

# normalize: none keeps meta.json byte-identical across split seeds: only the Parquet files
# say which rows are validation or test rows (the case where a resume once trained on them)
MLP = {"arch": "mlp", "knobs": {"depth": 1, "width": 8}}
SPLIT = {
    "data": {"source": "digits", "normalize": "none", "split_seed": 0},
    "teacher": {"members": {"a": {**MLP, "train": {"epochs": 2, "batch_size": 64}}}},
    "export": {"rows_per_shard": 600, "row_group_size": 200, "batch_size": 128},
    "student": one_variant({**MLP, "train": {"epochs": 2, "batch_size": 64}}),
    "baseline": {"epochs": 2},
}


@pytest.fixture(scope="module")
def split_pipe(tmp_path_factory) -> Path:
    return build_pipeline(tmp_path_factory.mktemp("split") / "p", SPLIT)


@pytest.mark.parametrize("stage", ["teacher@a", "baseline@s", "student@s"])
def test_a_split_change_between_a_kill_and_the_rerun_starts_over(stage, split_pipe, tmp_path):
    """A checkpoint from before a change of data.split_seed must not be resumed: its epochs
    trained on rows that are now validation or test rows."""
    d = tmp_path / "p"
    shutil.copytree(split_pipe, d, symlinks=True)
    cmd = ["kd", *stage.split("@")]
    if stage.startswith("baseline"):  # what the baseline trains: its resolved spec file
        run_cmd(["kd", "baseline-specs"], d, env=ENV)
    killed = run_to_failpoint(cmd, d, "train.epoch@1", env=ENV)  # epoch 1 checkpointed
    assert killed.returncode == -9, killed.stderr
    # the control: with the same split the checkpoint is resumed (killed before any batch)
    again = run_to_failpoint(cmd, d, "train.start", env=ENV)
    assert "resuming from epoch 1 of 2" in again.stderr, again.stderr

    meta = (d / "data/prepared/meta.json").read_bytes()
    labeled = (d / "data/prepared/labeled.parquet").read_bytes()
    params = yaml.safe_load((d / "params.yaml").read_text())
    params["data"]["split_seed"] = 1
    (d / "params.yaml").write_text(yaml.safe_dump(params))
    run_cmd(["kd", "prepare"], d, env=ENV)
    assert (d / "data/prepared/meta.json").read_bytes() == meta  # what the old key saw
    assert (d / "data/prepared/labeled.parquet").read_bytes() != labeled  # another split
    if stage.startswith("student"):
        run_cmd(["kd", "export"], d, env=ENV)

    rerun = run_cmd(cmd, d, env=ENV)
    assert "resuming" not in rerun.stderr, rerun.stderr
    assert (d / "data" / stage.split("@")[0].replace("teacher", "teachers")
            / stage.split("@")[1] / "metrics.json").is_file()
