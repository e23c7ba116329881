"""MLflow tracking: the store's location, failing fast on a dead server (and only then: a
transient 5xx while logging is retried), and `kd ui`."""

from __future__ import annotations

import contextlib
import http.client
import os
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from kd.config import parse_config
from kd.tracking import flatten, repo_root, tracking_uri
from tests.conftest import assert_user_error, free_port, loopback_server, mlflow_server


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


# ------------------------------------------------------------ a transient 5xx while logging

HOP = {"connection", "keep-alive", "transfer-encoding", "content-length"}


@contextlib.contextmanager
def flaky_proxy(upstream: str, fail: str, status: int = 503) -> Iterator[tuple[str, list]]:
    """A pass-through HTTP proxy on 127.0.0.1 in front of `upstream` that answers `status`,
    without forwarding, to the first request whose path ends with `fail` (once more after the
    log is cleared). Yields its URI and the log of (method, path, status) it answered."""
    host, port = upstream.removeprefix("http://").split(":")
    seen: list[tuple[str, str, int]] = []
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the MLflow client's session expects

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                out = b""
                while size := int(self.rfile.readline().split(b";")[0], 16):
                    out += self.rfile.read(size)
                    self.rfile.readline()
                self.rfile.readline()
                return out
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _answer(self, code: int, headers: list[tuple[str, str]], body: bytes) -> None:
            self.send_response(code)
            for k, v in headers:
                if k.lower() not in HOP:
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _any(self) -> None:
            body = self._body()
            path = self.path.split("?")[0]
            with lock:
                failing = path.endswith(fail) and not any(s[2] == status for s in seen)
                if failing:
                    seen.append((self.command, path, status))
            if failing:
                return self._answer(status, [("Content-Type", "text/plain")], b"try again")
            conn = http.client.HTTPConnection(host, int(port), timeout=60)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
            conn.request(self.command, self.path, body=body, headers=headers)
            r = conn.getresponse()
            data = r.read()
            conn.close()
            with lock:
                seen.append((self.command, path, r.status))
            self._answer(r.status, r.getheaders(), data)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _any

        def log_message(self, *args) -> None:  # quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


LOG_BATCH = "/api/2.0/mlflow/runs/log-batch"


@pytest.mark.slow
def test_one_503_while_logging_is_retried_and_the_stage_succeeds(write_params, kd, monkeypatch,
                                                                  tmp_path):
    from mlflow.tracking import MlflowClient

    params = write_params({"data": {"source": "digits"}})
    monkeypatch.setenv("KD_TRACKING", "1")
    for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        monkeypatch.delenv(k, raising=False)  # MLflow's defaults, as a user has them
    with mlflow_server(tmp_path) as upstream:
        # the first log-batch is the stage's params, after the reachability check and the
        # run's creation: a server that was up and answers one 503 in the middle of the run
        with flaky_proxy(upstream, LOG_BATCH) as (uri, seen):
            monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
            result = kd("prepare", "--params", params, "--out", tmp_path / "ok")
            assert result.exit_code == 0, (result.output, result.exception)
            batches = [s for s in seen if s[1] == LOG_BATCH]
            assert batches[:2] == [("POST", LOG_BATCH, 503), ("POST", LOG_BATCH, 200)], seen
            # the same fault with retries turned off fails the stage: it is what is tested
            monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
            seen.clear()  # the proxy answers one more 503
            failed = kd("prepare", "--params", params, "--out", tmp_path / "no_retry")
            assert failed.exit_code != 0 and ("POST", LOG_BATCH, 503) in seen, failed.output
            assert "too many 503 error responses" in str(failed.exception)
        client = MlflowClient(upstream)
        exp = client.get_experiment_by_name("kd-pipeline")
        runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time"])
        assert [r.info.status for r in runs] == ["FINISHED", "FAILED"]
        run = runs[0]
        assert run.data.params["data.source"] == "digits"  # the batch that got the 503
        assert run.data.metrics  # and everything logged after it
        names = [a.path for a in client.list_artifacts(run.info.run_id)]
        assert "meta.json" in names, names
