"""The teacher@<member> stage: `kd teacher` end to end, determinism, resume after SIGKILL, and
DVC's per-member granularity (one `foreach` stage per member) in a real repository.

Tiny data (scikit-learn's 8x8 digits) and tiny members keep each test to seconds.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from kd.config import parse_config
from kd.models import count_params, load_model
from kd.prepared import read_split
from kd.train.loop import predict
from stages.prepare import run as prepare_run
from tests.conftest import assert_user_error, run_cmd, run_to_failpoint

DATA = {"source": "digits"}
MLP = {"arch": "mlp", "knobs": {"depth": 1, "width": 32}}
DEFAULTS = {**MLP, "train": {"epochs": 5, "batch_size": 64, "lr": 0.01}}
PARAMS = {
    "data": DATA,
    "teacher": {
        "defaults": DEFAULTS,
        "members": {
            "m": {"train": {"seed": 0}},
            "c": {"arch": "cnn2d", "knobs": {"channels": 8, "depth": 2, "kernel": 3}},
        },
    },
}
CHANCE = 0.1  # 10 balanced classes
ENV = {"KD_TRACKING": "0"}


@pytest.fixture(scope="module")
def prepared_digits(tmp_path_factory) -> Path:
    """data/prepared for DATA, built once and copied into each test's working directory."""
    out = tmp_path_factory.mktemp("digits") / "prepared"
    prepare_run(parse_config({"data": DATA, "tracking": {"enabled": False}}), out)
    return out


@pytest.fixture
def workdir(tmp_path, prepared_digits):
    """tmp_path as the working directory, with PARAMS and the prepared digits in place."""
    def make(params: dict = PARAMS, name: str = "w") -> Path:
        d = tmp_path / name
        d.mkdir()
        (d / "params.yaml").write_text(yaml.safe_dump(params))
        shutil.copytree(prepared_digits, d / "data" / "prepared")
        return d

    return make


def kd_subprocess(args: list[str], cwd: Path, **popen) -> subprocess.Popen:
    """`kd ...` as a real process (this interpreter, so this environment's packages)."""
    env = {**os.environ, **ENV}
    return subprocess.Popen([sys.executable, "-m", "kd.cli", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def outputs(d: Path, member: str) -> dict[str, bytes]:
    base = d / "data" / "teachers" / member
    return {n: (base / n).read_bytes()
            for n in ("model.safetensors", "model.json", "history.json", "metrics.json")}


# --------------------------------------------------------------------------- (a) end to end


def test_kd_teacher_end_to_end(tmp_path, monkeypatch, kd, write_params):
    monkeypatch.chdir(tmp_path)
    write_params(PARAMS)
    assert kd("prepare").exit_code == 0
    result = kd("teacher", "m")
    assert result.exit_code == 0, result.output
    assert "teacher@m: test accuracy" in result.output

    out = tmp_path / "data" / "teachers" / "m"
    for name in ("model.safetensors", "model.json", "history.json", "metrics.json"):
        assert (out / name).is_file(), name
    assert not (tmp_path / "data" / ".checkpoints" / "teacher@m").exists()  # removed on success

    metrics = json.loads((out / "metrics.json").read_text())
    assert {"test_accuracy", "val_accuracy", "params", "test_nll", "epochs"} <= metrics.keys()
    assert metrics["test_accuracy"] > max(0.5, 3 * CHANCE)
    assert metrics["val_accuracy"] > 3 * CHANCE
    assert metrics["epochs"] == 5

    # model.json alone rebuilds the network, and it is the network that was scored
    model, spec = load_model(out)
    assert spec["arch"] == "mlp" and spec["knobs"]["width"] == 32
    assert spec["input_shape"] == (8, 8) and spec["n_classes"] == 10
    assert metrics["params"] == count_params(model) == 64 * 32 + 32 + 32 * 10 + 10
    test, _ = read_split(tmp_path / "data" / "prepared", "test")
    x = torch.from_numpy(test.x).view(len(test.x), *spec["input_shape"])  # (N, 8, 8)
    acc = (predict(model, x).argmax(1).numpy() == test.y).mean()
    assert acc == pytest.approx(metrics["test_accuracy"], abs=1e-6)

    history = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3, 4, 5]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert all("epoch_time_s" not in h for h in history)  # wall-clock stays out of DVC outputs


def test_kd_teacher_cnn2d_member_on_images(workdir, monkeypatch, kd):
    """A cnn2d member trains on the (8, 8) digits: the prepared rows are flat, the model is not."""
    d = workdir()
    monkeypatch.chdir(d)
    result = kd("teacher", "c")
    assert result.exit_code == 0, (result.output, result.exception)
    metrics = json.loads((d / "data/teachers/c/metrics.json").read_text())
    assert metrics["test_accuracy"] > 3 * CHANCE
    model, spec = load_model(d / "data/teachers/c")
    assert spec["arch"] == "cnn2d" and metrics["params"] == count_params(model)


def test_unknown_member_is_a_user_error(tmp_path, monkeypatch, kd, write_params):
    monkeypatch.chdir(tmp_path)
    write_params(PARAMS)
    out = assert_user_error(kd("teacher", "nope"), "teacher.members", "'nope'")
    known = re.search(r"\(members: (.*)\)", out)
    assert known and set(known.group(1).split(", ")) == {"m", "c"}  # names the real members
    assert not (tmp_path / "data").exists()  # refused before any work


# --------------------------------------------------------------------------- (b) determinism


@pytest.mark.slow
def test_training_twice_gives_identical_bytes(workdir, monkeypatch, kd):
    # one run in its own process (as DVC runs it), one in this process after other random work
    a, b = workdir(name="a"), workdir(name="b")
    proc = kd_subprocess(["teacher", "m"], a)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    torch.rand(123)  # whatever ran before in the process must not matter
    monkeypatch.chdir(b)
    result = kd("teacher", "m")
    assert result.exit_code == 0, result.output
    first, second = outputs(a, "m"), outputs(b, "m")
    for name in first:
        assert first[name] == second[name], name


def test_members_with_other_seeds_differ(workdir, monkeypatch, kd):
    params = json.loads(json.dumps(PARAMS))
    params["teacher"]["members"] = {"s0": {"train": {"seed": 0}}, "s1": {"train": {"seed": 1}}}
    d = workdir(params)
    monkeypatch.chdir(d)
    assert kd("teacher", "s0").exit_code == 0
    assert kd("teacher", "s1").exit_code == 0
    assert outputs(d, "s0")["model.safetensors"] != outputs(d, "s1")["model.safetensors"]


# --------------------------------------------------------------------------- (c) SIGKILL


EPOCHS = 4
RESUME = {**PARAMS, "teacher": {"defaults": {
    "arch": "mlp", "knobs": {"depth": 1, "width": 32, "dropout": 0.1},
    "train": {"epochs": EPOCHS, "batch_size": 32, "lr": 0.003, "augment": {"shift": 1}},
}, "members": {"m": {"train": {"seed": 7}}}}}
# 646 training rows / 32 = 21 steps an epoch: step 50 is in the third epoch, after two
# checkpointed epochs, so the rerun must redo the third from its start
KILL = "train.batch@50"


@pytest.mark.slow
def test_resume_after_sigkill_matches_uninterrupted_run(workdir, monkeypatch, kd):
    killed, clean = workdir(RESUME, "killed"), workdir(RESUME, "clean")
    state = killed / "data" / ".checkpoints" / "teacher@m" / "state.json"
    result = run_to_failpoint([sys.executable, "-m", "kd.cli", "teacher", "m"], killed, KILL,
                              env=ENV)
    assert result.returncode == -signal.SIGKILL
    out = killed / "data" / "teachers" / "m"
    assert not (out / "metrics.json").exists()  # the "done" marker of the stage
    assert json.loads(state.read_text())["epoch"] == 1  # 0-based: epochs 1 and 2 are saved

    rerun = kd_subprocess(["teacher", "m"], killed)
    _, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, err
    assert f"resuming from epoch 2 of {EPOCHS}" in err
    # progress lines count epochs from 1: the one the kill interrupted runs again, none before
    assert f"teacher@m epoch 3/{EPOCHS}:" in err
    assert f"teacher@m epoch 2/{EPOCHS}:" not in err
    assert not state.parent.exists()  # the checkpoint is removed once the outputs are written
    assert len(json.loads((out / "history.json").read_text())) == EPOCHS

    monkeypatch.chdir(clean)
    assert kd("teacher", "m").exit_code == 0
    a, b = outputs(killed, "m"), outputs(clean, "m")
    for name in a:
        assert a[name] == b[name], name


# --------------------------------------------------------------------------- (d) DVC foreach


TINY = {"arch": "mlp", "knobs": {"depth": 1, "width": 16}}
DVC_OVERRIDES = {
    "data": DATA,
    # the project's defaults (cnn1d) stay; members bring their own arch, so their knobs are theirs
    "teacher": {"defaults": {"train": {"epochs": 2, "batch_size": 128}},
                "members": {"a": {**TINY, "train": {"seed": 0}},
                            "b": {**TINY, "train": {"seed": 1}}}},
}
RAN = re.compile(r"Running stage '([^']+)'")


def _repro(repo: Path) -> set[str]:
    # `teacher` is the foreach group: every teacher@<member> and what they depend on, not the
    # downstream stages (export, student...) whose own tests live elsewhere
    result = run_cmd(["dvc", "repro", "teacher"], repo, env=ENV)
    return set(RAN.findall(result.stdout))


def _changed(repo: Path) -> set[str]:
    result = run_cmd(["dvc", "status", "teacher", "--json"], repo, env=ENV)
    return set(json.loads(result.stdout or "{}"))


def _edit(repo: Path, fn) -> None:
    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text())
    fn(params)
    path.write_text(yaml.safe_dump(params))


@pytest.mark.slow
def test_dvc_reruns_only_the_members_that_changed(dvc_repo):
    repo = dvc_repo(DVC_OVERRIDES)
    assert _repro(repo) == {"prepare", "teacher@a", "teacher@b"}
    weights = {m: (repo / f"data/teachers/{m}/model.safetensors").read_bytes() for m in "ab"}

    # one member's settings: only that member
    _edit(repo, lambda p: p["teacher"]["members"]["a"]["train"].update(seed=5))
    assert _changed(repo) == {"teacher@a"}
    assert _repro(repo) == {"teacher@a"}
    assert (repo / "data/teachers/a/model.safetensors").read_bytes() != weights["a"]
    assert (repo / "data/teachers/b/model.safetensors").read_bytes() == weights["b"]

    # a new member: only the new one
    _edit(repo, lambda p: p["teacher"]["members"].update(c={**TINY, "train": {"seed": 2}}))
    assert _changed(repo) == {"teacher@c"}
    assert _repro(repo) == {"teacher@c"}
    assert (repo / "data/teachers/c/metrics.json").is_file()

    # the shared defaults: every member, and still not prepare
    _edit(repo, lambda p: p["teacher"]["defaults"]["train"].update(lr=0.01))
    assert _changed(repo) == {"teacher@a", "teacher@b", "teacher@c"}
    assert _repro(repo) == {"teacher@a", "teacher@b", "teacher@c"}
    assert _changed(repo) == set()

    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    assert {"teacher@a", "teacher@b", "teacher@c"} <= lock.keys()
    assert lock["teacher@a"]["params"]["params.yaml"]["teacher.members.a"]["train"]["seed"] == 5
    metrics = [json.loads((repo / f"data/teachers/{m}/metrics.json").read_text()) for m in "abc"]
    assert all(np.isfinite(m["test_accuracy"]) for m in metrics)
