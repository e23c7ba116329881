"""The team setup, end to end with real processes: every stage tracked on a real MLflow
tracking server, and queued experiments (`dvc queue start -j 2`: two workers) writing to the
default SQLite store at the repository root."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import ROOT, VARIANT, make_repo, mlflow_server, one_variant

pytestmark = pytest.mark.slow

TINY = {
    "data": {"source": "digits"},
    "teacher": {"members": {
        "a": {"arch": "mlp", "knobs": {"depth": 1, "width": 32}, "train": {"epochs": 2}},
    }},
    "export": {"rows_per_shard": 500, "row_group_size": 250},
    "student": one_variant({"arch": "mlp", "knobs": {"depth": 1, "width": 8},
                "train": {"epochs": 2, "batch_size": 64}}),
    "baseline": {"epochs": 2},
}
STAGES = ("prepare", "transfer", "teacher@a", "export", "baseline@s", "student@s", "deploy",
          "report")
GIT = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]


def clean_env(**extra: str) -> dict[str, str]:
    """This environment's bin directory first, and no tracking settings but `extra`."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MLFLOW_", "KD_", "DVC_"))}
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    return {**env, **extra}


def sh(args: list[str], cwd: Path, env: dict[str, str], check: bool = True,
       timeout: float = 300) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({result.returncode}):\n"
                             f"{result.stdout}\n{result.stderr}")
    return result


def new_repo(base: Path) -> Path:
    """The project in a fresh git + DVC repository, with its .gitignore (which ignores
    mlflow.db and mlartifacts/) and the tiny params."""
    return make_repo(base / "repo", TINY, extra_gitignore=(ROOT / ".gitignore").read_text())


def test_every_stage_is_one_run_on_a_real_tracking_server(tmp_path):
    import mlflow
    from mlflow.tracking import MlflowClient

    from kd.models import load_model
    from kd.prepared import read_split

    repo = new_repo(tmp_path)
    with mlflow_server(tmp_path) as uri:
        sh(["dvc", "repro"], repo, clean_env(KD_TRACKING="1", MLFLOW_TRACKING_URI=uri))
        assert not (repo / "mlflow.db").exists()  # everything went to the server
        assert not (repo / "mlruns").exists() and not (repo / "mlartifacts").exists()

        client = MlflowClient(uri)
        exp = client.get_experiment_by_name("kd-pipeline")
        assert exp is not None
        runs = client.search_runs([exp.experiment_id], max_results=1000)
        assert Counter(r.data.tags.get("kd.stage_name") for r in runs) == Counter(STAGES)
        assert {r.info.status for r in runs} == {"FINISHED"}
        by_stage = {r.data.tags["kd.stage_name"]: r for r in runs}
        assert by_stage["teacher@a"].data.tags["kd.stage"] == "teacher"

        # an artifact travels through the server, byte for byte
        student = by_stage[f"student@{VARIANT}"]
        assert student.info.artifact_uri.startswith("mlflow-artifacts:"), \
            student.info.artifact_uri
        names = {f.path for f in client.list_artifacts(student.info.run_id)}
        assert {"metrics.json", "model.safetensors", "model.json"} <= names, names
        got = client.download_artifacts(student.info.run_id, "metrics.json",
                                        str(tmp_path / "download"))
        assert Path(got).read_bytes() == (repo / "data/student/s/metrics.json").read_bytes()
        got = client.download_artifacts(by_stage["report"].info.run_id, "metrics.json",
                                        str(tmp_path / "download_report"))
        assert Path(got).read_bytes() == (repo / "data/report/metrics.json").read_bytes()
        stored = list((tmp_path / "artifacts").rglob("model.safetensors"))
        assert stored, "the server stored no artifacts under --artifacts-destination"

        # the student's pyfunc model, loaded through the server, is the trained student
        test, _ = read_split(repo / "data/prepared", "test")
        previous = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
        mlflow.set_tracking_uri(uri)
        try:
            model = mlflow.pyfunc.load_model(f"runs:/{student.info.run_id}/student")
        finally:
            mlflow.set_tracking_uri(previous)
        local, spec = load_model(repo / "data/student/s")
        # the logged signature takes flat rows (N, F), as the prepared data stores them
        x = test.x.astype(np.float32)
        probs = np.asarray(model.predict(x))
        n_classes = len(yaml.safe_load((repo / "data/student/s/model.json").read_text())
                        ["class_names"])
        assert probs.shape == (len(x), n_classes)
        assert np.allclose(probs.sum(1), 1, atol=1e-5)
        import torch

        with torch.no_grad():
            want = torch.softmax(local(torch.from_numpy(x)), dim=1).numpy()
        np.testing.assert_allclose(probs, want, rtol=1e-5, atol=1e-6)


def queue_states(repo: Path, env: dict[str, str]) -> dict[str, str]:
    """{experiment name: Queued | Running | Success | Failed} from `dvc queue status`."""
    out = sh(["dvc", "queue", "status"], repo, env).stdout
    states = {}
    for line in out.splitlines():
        m = re.match(r"^\s*\S+\s+(t2|t8)\s+.*?\b(Queued|Running|Success|Failed)\b", line)
        if m:
            states[m.group(1)] = m.group(2)
    return states


def stop_workers(repo: Path, env: dict[str, str]) -> None:
    """Stop the queue's workers (they run detached) and wait until none is left."""
    sh(["dvc", "queue", "stop", "--kill"], repo, env, check=False)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        out = sh(["dvc", "queue", "status"], repo, env, check=False).stdout
        if "Worker status: 0 active, 0 idle" in out:
            return
        time.sleep(1)


@pytest.fixture(scope="module")
def queued(tmp_path_factory):
    """The tiny pipeline tracked in the default store (`<repo>/mlflow.db`), committed, then
    two temperature variants run by `dvc queue start -j 2`. Whether the two workers overlap in
    time is the scheduler's business, so no assertion depends on it. Returns the repository,
    each variant's final queue state and each variant's `dvc queue logs`."""
    env = clean_env(KD_TRACKING="1")  # no MLFLOW_TRACKING_URI: the default store
    repo = new_repo(tmp_path_factory.mktemp("queue"))
    sh(["dvc", "repro"], repo, env)
    assert (repo / "mlflow.db").is_file()
    sh(["git", "add", "-A"], repo, env)
    sh([*GIT, "commit", "-qm", "run"], repo, env)
    for t in ("2", "8"):
        sh(["dvc", "exp", "run", "--queue", "-S", f"student.defaults.temperature={t}", "-n",
            f"t{t}"], repo, env)
    logs: dict[str, str] = {}
    try:
        # the workers are daemons that inherit stdout/stderr: captured pipes would make
        # this call wait until they exit
        subprocess.run(["dvc", "queue", "start", "-j", "2"], cwd=repo, env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
        deadline = time.monotonic() + 900  # a hang guard: a loaded machine is slow, not stuck
        states = queue_states(repo, env)
        while not (set(states) == {"t2", "t8"}
                   and set(states.values()) <= {"Success", "Failed"}):
            assert time.monotonic() < deadline, f"queue not done in 900 s: {states}"
            time.sleep(2)
            states = queue_states(repo, env)
        for name in ("t2", "t8"):
            logs[name] = sh(["dvc", "queue", "logs", name], repo, env, check=False).stdout
    finally:
        stop_workers(repo, env)
    return repo, states, logs


def variant_runs(repo: Path) -> dict[str, list]:
    """{variant: its MLflow runs} from the repository's default store."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    exp = client.get_experiment_by_name("kd-pipeline")
    out: dict[str, list] = {"": [], "t2": [], "t8": []}
    for r in client.search_runs([exp.experiment_id], max_results=1000):
        out[r.data.tags.get("dvc.exp_name", "")].append(r)
    return out


def test_queued_variants_write_concurrently_to_the_default_sqlite_store(queued):
    repo, states, logs = queued
    for name, log in logs.items():  # the logs hold the stages' output, so the check bites
        assert "Running stage 'report'" in log, (name, log)
    locked = {n: [ln for ln in log.splitlines()
                  if "database is locked" in ln or "OperationalError" in ln]
              for n, log in logs.items()}
    assert not any(locked.values()), f"SQLite errors under the queue: {locked}"
    assert states == {"t2": "Success", "t8": "Success"}, (states, logs)

    runs = variant_runs(repo)
    assert {r.info.status for rs in runs.values() for r in rs} == {"FINISHED"}
    assert Counter(r.data.tags["kd.stage_name"] for r in runs[""]) == Counter(STAGES)
    for variant, temp in (("t2", "2"), ("t8", "8")):
        reports = [r for r in runs[variant] if r.data.tags["kd.stage"] == "report"]
        students = [r for r in runs[variant] if r.data.tags["kd.stage"] == "student"]
        assert len(reports) == 1 and len(students) == 1, runs[variant]
        # the report logs params.yaml as written (`-S` writes 2); the student its resolved 2.0
        assert reports[0].data.params["student.defaults.temperature"] == temp
        assert students[0].data.params["student.temperature"] == f"{temp}.0"
        # artifacts beside the database, not in the worker's deleted temporary copy
        uri = reports[0].info.artifact_uri
        assert uri.startswith((repo / "mlartifacts").as_uri() + "/"), uri
        local = Path(uri.removeprefix("file://"))
        assert (local / "report.md").is_file(), list(local.rglob("*"))
        metrics = json.loads((local / "metrics.json").read_text())
        assert metrics["student_temperature"] == float(temp), metrics
    assert not list((repo / ".dvc").rglob("mlflow.db"))
    assert not (repo / "mlruns").exists()


def test_a_queued_temperature_variant_reruns_only_student_deploy_and_report(queued):
    runs = variant_runs(queued[0])
    for variant in ("t2", "t8"):  # the deployed files are the student's: they follow it;
        # the baseline does not (it depends on its resolved spec, which T is not part of)
        assert sorted(r.data.tags["kd.stage_name"] for r in runs[variant]) == \
            ["deploy", "report", f"student@{VARIANT}"], variant
