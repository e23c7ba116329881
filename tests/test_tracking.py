"""MLflow tracking: the store's location, failing fast on a dead server, and `kd ui`."""

from __future__ import annotations

import contextlib
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


def test_kd_ui_on_a_busy_port_exits_2_naming_the_port(tmp_path):
    """`mlflow ui` logs "Address already in use" and exits 0; `kd ui` checks first."""
    import socket
    import subprocess

    (tmp_path / "params.yaml").write_text("{}\n")
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "kd.cli", "ui", "--port", str(port)],
                                cwd=tmp_path, env=env, capture_output=True, text=True,
                                timeout=60)
    assert result.returncode == 2, result
    assert result.stderr.strip() == (f"Error: port {port} on 127.0.0.1 is already in use "
                                     "(another `kd ui` or MLflow server?); stop it or pass --port")
    assert not (tmp_path / "mlflow.db").exists()  # nothing started


def _start_ui(tmp_path: Path):
    """`kd ui` on a free port, in a session of its own (as a terminal would run it), against a
    store that already has the pipeline's experiment, made before it was marked as one of
    training runs. Returns (process, port, experiment id, log file) once the UI answers."""
    import subprocess
    import urllib.request

    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp_id = MlflowClient(uri).create_experiment("kd-pipeline")
    (tmp_path / "params.yaml").write_text("{}\n")
    port, log = free_port(), tmp_path / "ui.log"
    proc = subprocess.Popen([sys.executable, "-m", "kd.cli", "ui", "--port", str(port)],
                            cwd=tmp_path, env={**os.environ, "MLFLOW_TRACKING_URI": uri},
                            stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).close()
            return proc, port, exp_id, log
        except OSError:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.3)


def _server_pids(port: int) -> list[int]:
    """Processes of the MLflow server serving `port` (the ui parent, uvicorn, its workers)."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if str(port).encode() in args and any(b"mlflow" in a or b"uvicorn" in a for a in args):
            pids.append(int(cmdline.parent.name))
    return pids


def _answers(port: int) -> bool:
    import urllib.request

    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).close()
        return True
    except OSError:
        return False


@pytest.mark.slow
def test_kd_ui_opens_the_runs_and_sigterm_takes_its_server_down(tmp_path):
    import signal

    from mlflow.tracking import MlflowClient

    proc, port, exp_id, log = _start_ui(tmp_path)
    try:
        servers = _server_pids(port)
        assert servers and proc.pid not in servers
        proc.send_signal(signal.SIGTERM)  # to `kd ui` alone, not to its server
        assert proc.wait(timeout=60) == 0, log.read_text()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    out = log.read_text()
    # the UI opens on the experiment's training runs, not on the GenAI home or traces page
    url = f"http://127.0.0.1:{port}/#/experiments/{exp_id}/runs?workflowType=machine_learning"
    assert url in out, out
    exp = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_experiment(exp_id)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    assert exp.tags["mlflow.experiment.primaryMetric.name"] == "val_acc"
    assert out.strip().splitlines()[-1] == "MLflow UI stopped"
    assert not _answers(port)
    assert not [p for p in servers if Path(f"/proc/{p}").exists()
                and "Z" not in Path(f"/proc/{p}/stat").read_text().split()[2]]


@pytest.mark.slow
def test_kd_ui_fails_when_its_server_dies(tmp_path):
    import signal

    proc, port, _, log = _start_ui(tmp_path)
    try:
        for pid in _server_pids(port):  # the server crashes (or is killed) under the UI
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        status = proc.wait(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    last = log.read_text().strip().splitlines()[-1]
    assert status == 1, log.read_text()
    assert last.startswith(f"Error: the MLflow UI server on 127.0.0.1:{port} stopped by itself")
