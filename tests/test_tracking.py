"""MLflow tracking: the store's location, failing fast on a dead server, and `kd ui`."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from kd.config import parse_config
from kd.tracking import flatten, repo_root, tracking_uri
from tests.conftest import assert_user_error, free_port, loopback_server


def test_default_store_is_absolute_and_shared_by_queued_experiments(monkeypatch, tmp_path):
    repo = tmp_path / "repo"
    queued = repo / ".dvc" / "tmp" / "exps" / "tmpabc123"
    queued.mkdir(parents=True)
    monkeypatch.setenv("DVC_ROOT", str(queued))  # what DVC sets inside a queued experiment
    assert repo_root() == repo.resolve()
    assert tracking_uri(parse_config({})) == f"sqlite:///{repo.resolve() / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    assert tracking_uri(parse_config({})) == "http://127.0.0.1:1"


def test_flatten_nested_params():
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": "x"}) == {"a.b": 1, "a.c.d": [1, 2],
                                                                     "e": "x"}


def test_dead_tracking_server_fails_fast_with_one_line(write_params, kd, monkeypatch, tmp_path):
    port = free_port()  # nothing listens here
    uri = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("KD_TRACKING", "1")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    out = tmp_path / "prepared"
    t0 = time.monotonic()
    result = kd("prepare", "--params", write_params({"data": {"source": "digits"}}), "--out", out)
    assert time.monotonic() - t0 < 15
    assert_user_error(result, uri, "unreachable")
    assert not out.exists()  # nothing was prepared before the check


def test_tracking_can_be_switched_off(write_params, kd, monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")  # would fail if used
    params = write_params({"data": {"source": "digits"}, "tracking": {"enabled": False}})
    monkeypatch.setenv("KD_TRACKING", "1")
    result = kd("prepare", "--params", params, "--out", tmp_path / "p")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "p" / "meta.json").is_file()


@pytest.mark.slow
def test_kd_ui_serves_the_store_on_loopback(tmp_path):
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    (tmp_path / "params.yaml").write_text("{}\n")
    cmd = [sys.executable, "-m", "kd.cli", "ui", "--port", str(port)]
    with loopback_server(cmd, f"http://127.0.0.1:{port}/health", cwd=tmp_path, env=env):
        # bound to loopback only: the port is not open on another local address
        listening = Path("/proc/net/tcp").read_text()
        hex_port = f"{port:04X}"
        local = [line.split()[1] for line in listening.splitlines()[1:]
                 if line.split()[1].endswith(f":{hex_port}") and line.split()[3] == "0A"]
        assert local and all(addr.startswith("0100007F") for addr in local), local


def test_sqlite_store_keeps_artifacts_beside_the_database(write_params, kd, monkeypatch,
                                                          tmp_path):
    from mlflow.tracking import MlflowClient

    store, work = tmp_path / "store", tmp_path / "work"
    store.mkdir()
    work.mkdir()
    uri = f"sqlite:///{store / 'mlflow.db'}"
    monkeypatch.setenv("KD_TRACKING", "1")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(work)  # like a queued experiment's temporary copy
    result = kd("prepare", "--params", write_params({"data": {"source": "digits"}}),
                "--out", work / "prepared")
    assert result.exit_code == 0, result.output
    client = MlflowClient(uri)
    run = client.search_runs([client.get_experiment_by_name("kd-pipeline").experiment_id])[0]
    assert run.info.artifact_uri.startswith((store / "mlartifacts").as_uri())
    assert (store / "mlartifacts").is_dir() and not (work / "mlruns").exists()
