"""The DVC pipeline, run with real `dvc` commands in a temporary repository."""

from __future__ import annotations

import pytest

from tests.conftest import run_cmd

pytestmark = pytest.mark.slow

SMALL = {"data": {"source": "digits"}}


def test_repro_prepare_then_up_to_date(dvc_repo):
    repo = dvc_repo(SMALL)
    run_cmd(["dvc", "repro", "prepare"], repo, env={"KD_TRACKING": "0"})
    for name in ("labeled.parquet", "unlabeled.parquet", "test.parquet", "meta.json"):
        assert (repo / "data/prepared" / name).is_file()
    again = run_cmd(["dvc", "repro", "prepare"], repo, env={"KD_TRACKING": "0"})
    assert "didn't change, skipping" in again.stdout or "up to date" in again.stdout
    status = run_cmd(["dvc", "status", "prepare"], repo)
    assert "up to date" in status.stdout.lower()


def _write_user_split(path, n: int, seed: int, labels: bool = True) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    cols = {"x": pa.array(rng.normal(size=(n, 4)).astype("float32").tolist(),
                          pa.list_(pa.float32()))}
    if labels:
        cols["y"] = pa.array([i % 2 for i in range(n)])
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(cols), path)


def test_editing_a_user_file_reruns_prepare(tmp_path):
    """The user's own Parquet files are dependencies of prepare: cutting the test file's rows
    and running `dvc repro prepare` reruns it (it used to say "up to date" and keep 119 rows)."""
    import json

    from tests.conftest import make_repo

    files = {"labeled": "data/inputs/lab.parquet", "test": "data/inputs/test.parquet"}
    data = {"source": "parquet", "inputs": "data/inputs", "features": "x", "label": "y", **files}
    repo = tmp_path / "repo"
    make_repo(repo, {"data": data})
    _write_user_split(repo / files["labeled"], 40, seed=0)
    _write_user_split(repo / files["test"], 119, seed=1)
    env = {"KD_TRACKING": "0"}
    run_cmd(["dvc", "repro", "prepare"], repo, env=env)
    meta = repo / "data/prepared/meta.json"
    assert json.loads(meta.read_text())["rows"]["test"] == 119
    again = run_cmd(["dvc", "repro", "prepare"], repo, env=env)
    assert "Running stage 'prepare'" not in again.stdout  # nothing changed: nothing reruns

    _write_user_split(repo / files["test"], 60, seed=1)  # the user edits their test file
    status = run_cmd(["dvc", "status", "prepare"], repo)
    assert "data/inputs" in status.stdout and "modified" in status.stdout, status.stdout
    rerun = run_cmd(["dvc", "repro", "prepare"], repo, env=env)
    assert "Running stage 'prepare'" in rerun.stdout, rerun.stdout
    assert json.loads(meta.read_text())["rows"]["test"] == 60
