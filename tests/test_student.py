"""The student stage (and the baseline beside it): outputs, determinism, reading only the
shards, MLflow tracking and the pyfunc model, resume after SIGKILL, and DVC's granularity
(a new temperature reruns only the student) in a real repository.

The pipeline (digits, two tiny MLP members, a tiny MLP student) is built once per module.
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
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from kd.config import parse_config
from kd.errors import ConfigError
from kd.models import count_params, load_model
from kd.prepared import read_split, to_table
from kd.targets.manifest import read_manifest
from kd.tracking import run_name
from kd.train.loop import predict
from stages import student
from tests.conftest import (
    VARIANT,
    assert_user_error,
    build_pipeline,
    cwd,
    one_variant,
    run_cmd,
    run_to_failpoint,
)

TRAIN = {"epochs": 2, "batch_size": 64}
MLP = {"arch": "mlp", "knobs": {"depth": 1, "width": 16}, "train": TRAIN}
STUDENT = {"arch": "mlp", "knobs": {"depth": 1, "width": 8}, "train": TRAIN,
           "temperature": 3.0, "alpha": 0.7}
PARAMS = {
    "data": {"source": "digits"},
    "teacher": {"members": {"a": MLP, "b": {**MLP, "train": {**TRAIN, "seed": 1}}}},
    "export": {"rows_per_shard": 300, "row_group_size": 100, "batch_size": 128},
    "student": one_variant(STUDENT),
    "baseline": {"epochs": 3},
    "tracking": {"enabled": False},
}
OUT_FILES = ("model.safetensors", "model.json", "history.json", "metrics.json")


def with_params(**sections) -> dict:
    """PARAMS with whole sections replaced; a flat `student` is the one variant VARIANT."""
    if "student" in sections:
        sections["student"] = one_variant(sections["student"])
    return {**PARAMS, **sections}


@pytest.fixture(scope="module")
def pipe(tmp_path_factory) -> Path:
    """prepare, teachers, export, student and baseline, in-process, in one directory."""
    return build_pipeline(tmp_path_factory.mktemp("student") / "p", PARAMS,
                          ("prepare", "teacher", "export", "student", "baseline"))


def shards_only(pipe: Path, dst: Path) -> Path:
    """What the student needs and nothing else: the shards and the prepared test split."""
    (dst / "data/prepared").mkdir(parents=True)
    shutil.copytree(pipe / "data/soft_targets", dst / "data/soft_targets")
    shutil.copy(pipe / "data/prepared/test.parquet", dst / "data/prepared/test.parquet")
    return dst


def run_student(d: Path, params: dict = PARAMS) -> dict:
    with cwd(d):
        return student.run(parse_config(params), VARIANT)


def outputs(d: Path) -> dict[str, bytes]:
    return {n: (d / n).read_bytes() for n in OUT_FILES}


# ------------------------------------------------------------------ end to end


def test_student_and_baseline_outputs(pipe):
    test, _ = read_split(pipe / "data/prepared", "test")
    for stage, epochs in (("student", 2), ("baseline", 3)):
        d = pipe / "data" / stage / VARIANT
        for name in OUT_FILES:
            assert (d / name).is_file(), (stage, name)
        metrics = json.loads((d / "metrics.json").read_text())
        model, spec = load_model(d)  # rebuilt from model.json alone
        assert spec["arch"] == "mlp" and spec["knobs"]["width"] == 8
        assert tuple(spec["input_shape"]) == (8, 8) and spec["n_classes"] == 10
        assert metrics["params"] == count_params(model) == 64 * 8 + 8 + 8 * 10 + 10
        assert metrics["epochs"] == epochs
        assert len(json.loads((d / "history.json").read_text())) == epochs
        # the saved weights are the ones that were evaluated
        acc = (predict(model, test.x.reshape(-1, 8, 8)).argmax(1).numpy() == test.y).mean()
        assert metrics["test_accuracy"] == pytest.approx(acc, abs=1e-6)
    m = json.loads((pipe / "data/student/s/metrics.json").read_text())
    assert m["temperature"] == 3.0 and m["alpha"] == 0.7
    assert 0.0 <= m["test_accuracy"] <= 1.0 and np.isfinite(m["train_loss"])


def test_student_twice_gives_identical_bytes(pipe, tmp_path):
    # whatever random work ran before in the process must not matter
    a, b = shards_only(pipe, tmp_path / "a"), shards_only(pipe, tmp_path / "b")
    torch.manual_seed(1)
    run_student(a)
    torch.manual_seed(2)
    torch.rand(123)
    run_student(b)
    assert outputs(a / "data/student/s") == outputs(b / "data/student/s")
    assert outputs(a / "data/student/s") == outputs(pipe / "data/student/s")  # the fixture's run


def test_student_reads_only_the_shards_and_the_test_split(pipe, tmp_path):
    # no labeled/unlabeled prepared rows, no meta.json, no teachers: the shards are enough
    d = shards_only(pipe, tmp_path / "w")
    assert sorted(p.name for p in (d / "data").iterdir()) == ["prepared", "soft_targets"]
    assert [p.name for p in (d / "data/prepared").iterdir()] == ["test.parquet"]
    metrics = run_student(d)
    for name in OUT_FILES:
        assert (d / "data/student/s" / name).is_file()
    history = json.loads((d / "data/student/s/history.json").read_text())
    manifest = read_manifest(d / "data/soft_targets")
    # every non-validation row of the shards, unlabeled ones included, was trained on
    assert history[0]["samples"] == manifest["totals"]["rows"] - manifest["totals"]["val"] == 1365
    assert 0.0 <= metrics["test_accuracy"] <= 1.0


# ------------------------------------------------------------------ MLflow


@pytest.fixture(scope="module")
def tracked(pipe, tmp_path_factory) -> tuple[str, str, Path]:
    """The student run once with MLflow on (sqlite in tmp): (uri, run_id, its directory)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    tmp = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    d = shards_only(pipe, tmp / "w")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KD_TRACKING", "1")
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        try:
            run_student(d, with_params(tracking={"enabled": True, "experiment": "kd-test"}))
        finally:
            mlflow.set_tracking_uri(None)  # the stage sets the process-wide URI
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("kd-test")
    runs = client.search_runs([exp.experiment_id], "tags.`kd.stage` = 'student'")
    assert len(runs) == 1
    return uri, runs[0].info.run_id, d


def test_student_is_one_mlflow_run_with_its_params(tracked):
    from mlflow.tracking import MlflowClient

    uri, run_id, d = tracked
    run = MlflowClient(tracking_uri=uri).get_run(run_id)
    assert run.info.run_name == run_name("student@s") and run.info.status == "FINISHED"
    assert run.data.tags["kd.stage"] == "student" and run.data.tags["kd.stage_name"] == "student@s"
    assert run.data.tags["kd.variant"] == "s"  # runs of one variant are found together
    assert run.data.params["student.temperature"] == "3.0"
    assert run.data.params["student.alpha"] == "0.7"
    saved = json.loads((d / "data/student/s/metrics.json").read_text())
    assert run.data.metrics["test_accuracy"] == pytest.approx(saved["test_accuracy"])


def test_student_run_has_one_train_loss_per_epoch(tracked):
    from mlflow.tracking import MlflowClient

    uri, run_id, d = tracked
    history = MlflowClient(tracking_uri=uri).get_metric_history(run_id, "train_loss")
    want = json.loads((d / "data/student/s/history.json").read_text())
    assert sorted((h.step, h.value) for h in history) == [
        (e["epoch"], pytest.approx(e["train_loss"])) for e in want]
    assert len(history) == TRAIN["epochs"]


def test_student_pyfunc_model_predicts_probabilities(pipe, tracked):
    import mlflow

    uri, run_id, d = tracked
    test, _ = read_split(pipe / "data/prepared", "test")
    x = test.x  # flat rows (N, F), as the prepared data and the logged signature have them
    mlflow.set_tracking_uri(uri)
    try:
        pyfunc = mlflow.pyfunc.load_model(f"runs:/{run_id}/student")
        probs = np.asarray(pyfunc.predict(x))
    finally:
        mlflow.set_tracking_uri(None)
    assert probs.shape == (len(x), 10)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    model, _ = load_model(d / "data/student/s")
    want = torch.softmax(predict(model, x), dim=1).numpy()
    np.testing.assert_allclose(probs, want, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ resume after SIGKILL

RESUME = with_params(student={**STUDENT, "train": {"epochs": 6, "batch_size": 32}})


def kd_student(d: Path) -> subprocess.Popen:
    env = {**os.environ, "KD_TRACKING": "0"}
    return subprocess.Popen([sys.executable, "-m", "kd.cli", "student", VARIANT], cwd=d, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_student_resumes_after_sigkill_with_the_same_bytes(pipe, tmp_path):
    ref = shards_only(pipe, tmp_path / "ref")
    run_student(ref, RESUME)
    d = shards_only(pipe, tmp_path / "killed")
    (d / "params.yaml").write_text(yaml.safe_dump(RESUME))
    state = d / "data/.checkpoints/student@s/state.json"

    # 1,365 training rows / 32 = 43 steps an epoch: step 100 is in the third epoch
    killed = run_to_failpoint([sys.executable, "-m", "kd.cli", "student", VARIANT], d, "train.batch@100",
                              env={"KD_TRACKING": "0"})
    assert killed.returncode == -signal.SIGKILL
    assert json.loads(state.read_text())["epoch"] == 1  # 0-based: two epochs checkpointed
    assert not (d / "data/student/s/metrics.json").exists()

    proc = kd_student(d)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "resuming from epoch 2 of 6" in err
    assert not state.exists()  # removed on success
    assert outputs(d / "data/student/s") == outputs(ref / "data/student/s")


def job_fingerprints(d: Path, dist=None) -> dict[str, str]:
    """The checkpoint keys of baseline@s (the teachers' job) and student@s, as the stages
    build them in `d`."""
    from kd.runtime.distributed import SINGLE
    from kd.train.student import distill_job
    from kd.train.supervised import supervised_job

    cfg, prepared = parse_config(PARAMS), Path("data/prepared")
    with cwd(d):
        base = supervised_job(cfg, "baseline@s", cfg.baseline_spec(VARIANT), prepared,
                              dist or SINGLE)
        stud = distill_job(cfg, VARIANT, Path("data/soft_targets"), prepared, dist or SINGLE)
    return {"baseline": base.fingerprint, "student": stud.fingerprint}


def test_a_checkpoint_key_changes_with_the_data_read_the_code_threads_and_device(
        pipe, tmp_path, monkeypatch):
    from kd.runtime.distributed import Dist
    from kd.train import checkpoints
    from stages import export

    key = job_fingerprints(pipe)
    assert job_fingerprints(pipe) == key  # the same run: the checkpoint is resumed

    def differ(new: dict[str, str]) -> list[str]:
        return [k for k in key if new[k] == key[k]]

    assert differ(job_fingerprints(pipe, Dist(device=torch.device("meta")))) == []
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads + 1)
        assert differ(job_fingerprints(pipe)) == []
    finally:
        torch.set_num_threads(threads)
    with monkeypatch.context() as mp:
        mp.setattr(checkpoints, "code_digest", lambda: "another tree")
        assert differ(job_fingerprints(pipe)) == []

    # another split, meta.json unchanged: other validation rows, other shards
    d = tmp_path / "p"
    shutil.copytree(pipe / "data/prepared", d / "data/prepared")
    shutil.copytree(pipe / "data/teachers", d / "data/teachers")
    labeled, is_val = read_split(d / "data/prepared", "labeled")
    pq.write_table(to_table(labeled, np.roll(is_val, 1)), d / "data/prepared/labeled.parquet")
    with cwd(d):
        export.run(parse_config(PARAMS))
    assert differ(job_fingerprints(d)) == []


# ------------------------------------------------------------------ config


def test_student_augmentation_is_rejected_naming_student_train(tmp_path, kd, monkeypatch):
    bad = with_params(student={**STUDENT, "train": {**TRAIN, "augment": {"shift": 2}}})
    with pytest.raises(ConfigError) as e:
        parse_config(bad)
    assert str(e.value).startswith("student.defaults.train: ") and "shift=2" in str(e.value)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(bad))
    monkeypatch.chdir(tmp_path)
    assert_user_error(kd("student", VARIANT), "student.defaults.train", "shift=2")
    assert not (tmp_path / "data").exists()  # stopped before any work


# ------------------------------------------------------------------ DVC granularity


def ran(result) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", result.stdout))


def changed(repo: Path) -> set[str]:
    out = run_cmd(["dvc", "status"], repo).stdout
    return set(re.findall(r"^(\S[^:\n]*):\s*$", out, flags=re.M))


def edit_params(repo: Path, edit) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    edit(params)
    (repo / "params.yaml").write_text(yaml.safe_dump(params))


@pytest.mark.slow
def test_dvc_reruns_only_the_variants_whose_params_changed(dvc_repo):
    env = {"KD_TRACKING": "0"}
    tiny = {**STUDENT, "knobs": STUDENT["knobs"]}
    repo = dvc_repo({**{k: v for k, v in PARAMS.items() if k != "student"},
                     "student": {"defaults": tiny, "variants": {"a": {}, "b": {"alpha": 0.5}}},
                     "baseline": {"augment": {"shift": 0}, "epochs": 2}})
    stages = ["student@a", "student@b", "baseline@a", "baseline@b"]
    first = run_cmd(["dvc", "repro", *stages], repo, env=env)
    assert ran(first) == {"prepare", "transfer", "teacher@a", "teacher@b", "index@teachers",
                          "export", "baseline_specs", *stages}
    # they read every variant: not run yet
    later = {"index@student", "index@baseline", "deploy", "report"}
    assert changed(repo) == later

    # editing one variant's distillation settings reruns that variant's student, and the cheap
    # stage that rewrites the baseline specs (the same bytes: no baseline reruns)
    edit_params(repo, lambda p: p["student"]["variants"]["a"].update(temperature=8.0))
    assert changed(repo) == {"student@a", "baseline_specs"} | later
    again = run_cmd(["dvc", "repro", "student@a", "baseline@a"], repo, env=env)
    assert ran(again) == {"student@a", "baseline_specs"}
    assert json.loads((repo / "data/student/a/metrics.json").read_text())["temperature"] == 8.0
    assert changed(repo) == later

    # a variant's network: its student and its baseline; the other variant is untouched
    edit_params(repo, lambda p: p["student"]["variants"]["b"].update(knobs={"width": 4}))
    assert changed(repo) == {"student@b", "baseline_specs"} | later
    run_cmd(["dvc", "repro", "baseline_specs"], repo, env=env)
    assert changed(repo) == {"student@b", "baseline@b"} | later
    edit_params(repo, lambda p: p["student"]["variants"]["b"].pop("knobs"))
    run_cmd(["dvc", "repro", "baseline_specs"], repo, env=env)
    assert changed(repo) == later

    # adding a variant: its own two stages (and what reads every variant), nothing else
    edit_params(repo, lambda p: p["student"]["variants"].update(c={"targets": "hard"}))
    run_cmd(["dvc", "repro", "baseline_specs"], repo, env=env)
    assert changed(repo) == {"student@c", "baseline@c"} | later

    # the shared defaults reach every variant: every student, and every baseline where they
    # reach what it trains (not train.epochs: `baseline.epochs` replaces it here)
    edit_params(repo, lambda p: p["student"]["defaults"]["train"].update(epochs=3))
    run_cmd(["dvc", "repro", "baseline_specs"], repo, env=env)
    assert {"student@a", "student@b"} <= changed(repo)
    assert not {"baseline@a", "baseline@b"} & changed(repo)
    edit_params(repo, lambda p: p["student"]["defaults"]["train"].update(lr=0.02))
    run_cmd(["dvc", "repro", "baseline_specs"], repo, env=env)
    assert {"student@a", "student@b", "baseline@a", "baseline@b"} <= changed(repo)


@pytest.mark.slow
def test_a_baseline_reruns_for_what_it_trains_and_nothing_else(dvc_repo):
    """`dvc exp run -S student.defaults.temperature=8` retrained every baseline: each declared
    the whole student params. T, alpha, combine, targets and rows never enter a baseline."""
    env = {"KD_TRACKING": "0"}
    repo = dvc_repo({**{k: v for k, v in PARAMS.items() if k != "student"},
                     "student": {"defaults": STUDENT, "variants": {"a": {}, "b": {}}},
                     "baseline": {"augment": {"shift": 0}, "epochs": 2}})
    baselines = {"baseline@a", "baseline@b"}
    run_cmd(["dvc", "repro", *baselines], repo, env=env)  # prepare and the baselines, no teacher

    def rerun(edit) -> set[str]:
        """The baselines `dvc repro` reruns after `edit`, checked to be up to date after."""
        edit_params(repo, edit)
        result = run_cmd(["dvc", "repro", *baselines], repo, env=env)
        assert not changed(repo) & baselines
        return ran(result) & baselines

    def distillation_only(p: dict) -> None:
        p["student"]["defaults"].update(temperature=8.0, alpha=0.3, combine="mean_logits")
        p["student"]["variants"]["a"] = {"targets": "hard", "temperature": 2.0}
        p["student"]["variants"]["b"] = {"rows": "labeled", "alpha": 0.5}

    assert rerun(distillation_only) == set()
    assert rerun(lambda p: p["student"]["variants"]["b"].update(knobs={"width": 4})) \
        == {"baseline@b"}
    assert rerun(lambda p: p["student"]["defaults"]["train"].update(lr=0.02)) == baselines
    assert rerun(lambda p: p["baseline"].update(epochs=1)) == baselines


def test_a_baseline_trains_the_spec_its_file_holds(tmp_path):
    """The baseline reads its spec from data/baseline_specs/<variant>.json, DVC's record of
    what it trains, and refuses one that params.yaml no longer gives (an edit since)."""
    from kd.errors import ArtifactError
    from kd.specs import read_baseline_spec, write_baseline_specs

    def config(defaults: dict, variants: dict):
        return parse_config({**PARAMS, "student": {"defaults": defaults, "variants": variants}})

    cfg = config(STUDENT, {"a": {}, "b": {}})
    write_baseline_specs(cfg, tmp_path)
    assert read_baseline_spec(cfg, "a", tmp_path) == cfg.baseline_spec("a")
    # the same bytes for the same spec: what keeps the baselines' DVC status unchanged
    before = (tmp_path / "a.json").read_bytes()
    write_baseline_specs(config({**STUDENT, "temperature": 9.0}, {"a": {}, "b": {}}), tmp_path)
    assert (tmp_path / "a.json").read_bytes() == before

    wider = config(STUDENT, {"a": {"knobs": {"width": 4}}})
    with pytest.raises(ArtifactError, match=r"a\.json: not the spec params.yaml gives "):
        read_baseline_spec(wider, "a", tmp_path)
    (tmp_path / "b.json").unlink()
    with pytest.raises(ArtifactError, match=r"b\.json: file not found: run `kd baseline-specs`"):
        read_baseline_spec(cfg, "b", tmp_path)
    # a removed variant's file goes with the folder
    write_baseline_specs(wider, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_kd_baseline_without_its_spec_file_is_one_line(tmp_path, kd, monkeypatch):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(with_params(student=STUDENT)))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KD_TRACKING", "0")
    assert_user_error(kd("baseline", VARIANT), f"data/baseline_specs/{VARIANT}.json",
                      "kd baseline-specs")
    assert kd("baseline-specs").exit_code == 0
    assert json.loads((tmp_path / f"data/baseline_specs/{VARIANT}.json").read_text()) \
        == parse_config(with_params(student=STUDENT)).baseline_spec(VARIANT).model_dump(
            mode="json")


@pytest.mark.slow
def test_kd_student_prints_no_mlflow_warning(pipe, tmp_path):
    """Logging the pyfunc model used to print MLflow's "Add type hints to the `predict`
    method" UserWarning three times per student run."""
    d = shards_only(pipe, tmp_path / "w")
    (d / "params.yaml").write_text(yaml.safe_dump(with_params(tracking={"enabled": True})))
    env = {"KD_TRACKING": "1", "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    result = run_cmd(["kd", "student", VARIANT], d, env=env)
    assert "student@s: test accuracy" in result.stdout, result.stdout
    assert "Warning" not in result.stderr and "type hint" not in result.stderr, result.stderr
