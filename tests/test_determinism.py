"""Two `dvc repro` runs from scratch, in two separate repositories, give identical hashes in
dvc.lock for every output and dependency. The report's wall-clock timing file (latency and
throughput differ between any two runs) is no stage output, so it is in no hash.

The pipeline is the tiny one of tests/repro.py (about 25 s per run on 2 cores); the first run
is the session's shared reference, which the fault-injection suite reuses.
"""

from __future__ import annotations

import json
import re
import shutil

import pytest
import yaml

from tests.conftest import run_cmd
from tests.repro import TIMING, WALL_CLOCK, fresh_run, lock_hashes, output_bytes, reference, repro

pytestmark = pytest.mark.slow


def test_two_runs_from_scratch_give_identical_dvc_lock_hashes(tmp_path_factory, tmp_path):
    first = reference(tmp_path_factory)
    second = fresh_run(tmp_path / "second")
    a, b = lock_hashes(first), lock_hashes(second)
    assert a.keys() == b.keys()
    assert not [k for k in a if k.endswith(tuple(f"/{n}" for n in WALL_CLOCK))]  # in no hash
    differing = sorted(k for k in a if a[k] != b[k])
    assert not differing, f"outputs that differ between two identical runs: {differing}"
    # every stage ran in both, and every output besides the timing file is in the lock
    stages = yaml.safe_load((first / "dvc.lock").read_text())["stages"]
    assert set(stages) == {"prepare", "transfer", "teacher@a", "teacher@b", "index@teachers",
                           "export", "baseline_specs", "baseline@s", "student@s",
                           "index@student", "index@baseline", "deploy", "report"}
    # the bytes themselves, too (this also catches files inside directory outputs)
    ours, theirs = output_bytes(first), output_bytes(second)
    assert ours.keys() == theirs.keys()
    assert [p for p in ours if ours[p] != theirs[p]] == []


def test_timing_file_is_no_stage_output_and_no_metric_with_the_speed_figures(tmp_path_factory):
    repo = reference(tmp_path_factory)
    dvc = yaml.safe_load((repo / "dvc.yaml").read_text())
    # no output of any stage, and no DVC metric: its columns would fill `dvc exp show`
    assert "timing.json" not in yaml.safe_dump(dvc)
    assert "timing.json" not in (repo / "data/report/.gitignore").read_text()
    report = repo / "data/report"
    timing = json.loads((report / TIMING).read_text())
    assert timing["compression"]["speedup"] > 0 and timing["student"]["latency_ms_median"] > 0
    assert set(timing["members"]) == {"a", "b"} and timing["machine"]["cpu_count"] >= 1
    # none of it in the cached outputs
    metrics = json.loads((report / "metrics.json").read_text())
    assert "speedup" not in metrics["compression"]
    assert "latency_ms_median" not in metrics["student"]
    assert "machine" not in json.loads((report / "details.json").read_text())
    md = (report / "report.md").read_text()
    assert "latency ms" not in md and "rows/s" not in md and "timing.json" in md
    # `dvc metrics show` names it as a target, beside the cached figures
    shown = json.loads(run_cmd(["dvc", "metrics", "show", "--json", "data/report/timing.json",
                                "data/report/metrics.json"], repo).stdout)
    files = next(iter(shown.values()))["data"]
    assert files["data/report/timing.json"]["data"]["compression"]["speedup"] > 0
    assert "params_ratio" in files["data/report/metrics.json"]["data"]["compression"]


# what derives small files from params.yaml and the output folders: a second each, no training
CHEAP = {"baseline_specs", "index@teachers", "index@student", "index@baseline"}


def ran(result) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", result.stdout))


def test_trying_other_params_and_switching_back_reruns_nothing(tmp_path_factory, tmp_path):
    """Copying an example over params.yaml, `dvc repro`, then the default back and `dvc repro`
    retrained export, the students, deploy and the report to the same bytes: the folders they
    depended on (data/teachers, data/student) still held the example's member and variant, and
    the .gitignore files DVC wrote beside them, so neither dvc.lock nor the run cache matched.
    Here the example is the default plus one teacher member and one student variant."""
    repo = tmp_path / "repo"  # the reference with its run cache, as a user's repository has it
    shutil.copytree(reference(tmp_path_factory), repo, symlinks=True,
                    ignore=lambda d, names: ["tmp"] if d.endswith(".dvc") else [])
    before = output_bytes(repo)
    default = (repo / "params.yaml").read_text()
    params = yaml.safe_load(default)
    members = params["teacher"]["members"]
    members["t"] = {**members["a"], "train": {**members["a"]["train"], "seed": 2}}
    params["student"]["variants"]["x"] = {"knobs": {"width": 4}}
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    tried = repro(repo)
    assert {"teacher@t", "export", "student@s", "student@x", "baseline@x"} <= ran(tried)

    (repo / "params.yaml").write_text(default)
    back = repro(repo)
    assert ran(back) <= CHEAP, back.stdout
    assert "export' is cached" in back.stdout  # restored from the run cache, not retrained
    after = output_bytes(repo)
    assert {p: after.get(p) for p in before} == before
    assert {p.split("/")[1] for p in set(after) - set(before)} == {"t", "x"}  # the leftovers
    status = run_cmd(["dvc", "status"], repo).stdout
    assert "up to date" in status, status
