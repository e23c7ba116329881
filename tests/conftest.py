"""Shared fixtures: small params files, a CLI runner, and tracking off unless a test wants it."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from kd.cli import cli

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _no_tracking(monkeypatch):
    # Tests that exercise MLflow turn it back on against a store in their tmp_path.
    monkeypatch.setenv("KD_TRACKING", "0")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture
def write_params(tmp_path):
    def write(params: dict | str, name: str = "params.yaml") -> Path:
        path = tmp_path / name
        path.write_text(params if isinstance(params, str) else yaml.safe_dump(params))
        return path

    return write


@pytest.fixture
def kd():
    """Run `kd ...` in-process; returns the click Result (exit_code, output)."""
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(cli, [str(a) for a in args], catch_exceptions=True)

    return invoke


def assert_user_error(result, *needles: str) -> str:
    """Exit 2, one line of output, no traceback, and the line names each needle."""
    out = result.output.strip()
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output
    assert len(out.splitlines()) == 1, out
    for needle in needles:
        assert needle in out, (needle, out)
    return out


def run_cmd(args: list[str], cwd: Path, env: dict | None = None, check: bool = True):
    """Run a real command (dvc, kd, git) from this environment's bin directory."""
    import os
    import subprocess
    import sys

    bindir = Path(sys.executable).parent
    full_env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}", **(env or {})}
    result = subprocess.run(args, cwd=cwd, env=full_env, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({result.returncode}):\n"
                             f"{result.stdout}\n{result.stderr}")
    return result


VARIANT = "s"  # the one student variant a test pipeline trains unless it lists its own


def one_variant(student: dict) -> dict:
    """A flat student section (one student's settings) as the params' `student` section: those
    settings as the defaults of the single variant VARIANT."""
    return {"defaults": student, "variants": {VARIANT: {}}}


def project_params(overrides: dict) -> dict:
    """The repository's params.yaml with `overrides` merged in (sections merge, values replace;
    `teacher.members`, `student.variants` and the student's knobs are replaced whole so a test
    controls the models). A flat `student` override is one student's settings: the repository's
    student defaults with it on top, as the single variant VARIANT; without a `student`
    override the pipeline also trains the default student as that one variant."""
    from kd.config import deep_merge

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    overrides = dict(overrides)
    student = overrides.pop("student", {})
    if not {"defaults", "variants"} & set(student):
        student = one_variant(student)
    members = overrides.get("teacher", {}).get("members")
    merged = deep_merge(params, overrides)
    if members is not None:
        merged["teacher"]["members"] = members
    defaults = deep_merge(merged["student"]["defaults"], student.get("defaults", {}))
    if "knobs" in student.get("defaults", {}):  # another architecture's knobs: replace whole
        defaults["knobs"] = student["defaults"]["knobs"]
    merged["student"] = {"defaults": defaults,
                         "variants": student.get("variants", {VARIANT: {}})}
    return merged


def make_repo(repo: Path, overrides: dict, extra_gitignore: str = "") -> Path:
    """A real git + DVC repository at `repo` holding this project's kd/, stages/, dvc.yaml and
    .dvcignore, with the project's params.yaml plus `overrides`, committed."""
    import shutil

    repo.mkdir(parents=True)
    for pkg in ("kd", "stages", "data/inputs"):  # the code deps of dvc.yaml, the inputs folder
        shutil.copytree(ROOT / pkg, repo / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    run_cmd(["git", "init", "-q"], repo)
    run_cmd(["dvc", "init", "-q"], repo)
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(ROOT / name, repo / name)
    (repo / "params.yaml").write_text(yaml.safe_dump(project_params(overrides)))
    if extra_gitignore:
        (repo / ".gitignore").write_text(extra_gitignore)
    run_cmd(["dvc", "config", "core.analytics", "false"], repo)
    run_cmd(["git", "add", "-A"], repo)
    run_cmd(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "init"], repo)
    return repo


@pytest.fixture
def dvc_repo(tmp_path):
    """make_repo in this test's tmp_path: `dvc_repo(overrides) -> path`."""
    return lambda overrides: make_repo(tmp_path / "repo", overrides)


# stages write checkpoints under data/.checkpoints relative to the working directory
cwd = contextlib.chdir


def build_pipeline(root: Path, params: dict, stages: tuple[str, ...] = ("prepare", "teacher",
                                                                        "export")) -> Path:
    """Run pipeline stages in-process, in order, in `root` (which gets the params.yaml). A flat
    `student` section is the single variant VARIANT (one_variant)."""
    from kd.config import parse_config
    from stages import baseline, baseline_specs, deploy, export, prepare, student, teacher, transfer

    root.mkdir(parents=True, exist_ok=True)
    if "student" in params and not {"defaults", "variants"} & set(params["student"]):
        params = {**params, "student": one_variant(params["student"])}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    cfg = parse_config(params)
    steps = {"prepare": lambda: prepare.run(cfg, Path("data/prepared")),
             "transfer": lambda: transfer.run(cfg),
             "teacher": lambda: [teacher.run(cfg, m) for m in cfg.teacher.members],
             "export": lambda: export.run(cfg),
             "student": lambda: [student.run(cfg, v) for v in cfg.student.variants],
             "baseline": lambda: [baseline_specs.run(cfg), *(baseline.run(cfg, v)
                                                             for v in cfg.student.variants)],
             "deploy": lambda: deploy.run(cfg)}
    with cwd(root), pytest.MonkeyPatch.context() as mp:
        mp.setenv("KD_TRACKING", "0")
        for name in stages:
            steps[name]()
    return root


def run_to_failpoint(args: list[str], cwd: Path, point: str, env: dict | None = None,
                     timeout: float = 300):
    """Run a real command with `KD_FAILPOINT=point` armed (kd/io/faults.py) and check that the
    failpoint killed it: its stderr says so and it did not succeed. The kill happens at an exact
    point of the code, whatever the machine's speed. Returns the CompletedProcess; a process
    killed directly has returncode -9, a torchrun launcher whose ranks were killed exits 1."""
    import subprocess

    bindir = Path(sys.executable).parent
    full_env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}", **(env or {}),
                "KD_FAILPOINT": point}
    result = subprocess.run(args, cwd=cwd, env=full_env, capture_output=True, text=True,
                            timeout=timeout)
    name = point.split("@")[0]
    assert f"failpoint {name} hit" in result.stderr, \
        f"{point} was not reached ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    assert result.returncode != 0, result
    return result


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def loopback_server(cmd: list[str], url: str, *, cwd: Path | None = None,
                    env: dict | None = None, log: Path | None = None, timeout: float = 180):
    """Start a server process, wait until `url` answers, yield the process, and always stop
    its whole process group (workers included) afterwards."""
    import signal
    import subprocess
    import time
    import urllib.request

    out = log.open("wb") if log else subprocess.DEVNULL
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                urllib.request.urlopen(url, timeout=2).close()
                break
            except OSError:
                detail = log.read_text() if log else ""
                assert proc.poll() is None, f"{cmd} exited before serving {url}\n{detail}"
                assert time.monotonic() < deadline, f"{url} not up in {timeout} s\n{detail}"
                time.sleep(0.3)
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):  # workers that outlived their parent
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=20)
        if log:
            out.close()


@contextlib.contextmanager
def mlflow_server(base: Path) -> Iterator[str]:
    """A real `mlflow server` on 127.0.0.1 (SQLite backend, proxied artifacts, files under
    `base`), started without this process's MLflow/KD/DVC settings; yields its URI."""
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "KD_", "DVC_"))}
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"  # its workers' commands
    with loopback_server(
        [sys.executable, "-m", "mlflow", "server",
         "--backend-store-uri", f"sqlite:///{base / 'server.db'}",
         "--artifacts-destination", str(base / "artifacts"),
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        f"{uri}/health", cwd=base, env=env, log=base / "server.log"):
        yield uri


@pytest.fixture
def s3_server():
    """moto's S3-compatible server on a free loopback port, with a bucket `kd-team`; stopped
    after. Yields the endpoint URL (credentials: testing/testing)."""
    import sys

    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    with loopback_server([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                          str(port)], endpoint, timeout=120):
        import boto3

        boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing",
                     aws_secret_access_key="testing", region_name="us-east-1").create_bucket(
            Bucket="kd-team")
        yield endpoint
