"""The report stage in a real DVC repository with a real MLflow store: metrics, plots,
experiments side by side, and the report run's links to the runs that made its inputs."""

from __future__ import annotations

import json

import pytest

from tests.conftest import make_repo, run_cmd

pytestmark = pytest.mark.slow

TINY = {
    "data": {"source": "digits"},
    "teacher": {"members": {
        "a": {"arch": "mlp", "knobs": {"depth": 1, "width": 32}, "train": {"epochs": 3}},
        "b": {"arch": "cnn2d", "knobs": {"channels": 4, "depth": 2},
              "train": {"epochs": 3, "seed": 1}},
    }},
    "export": {"rows_per_shard": 500, "row_group_size": 250},
    "student": {"arch": "mlp", "knobs": {"depth": 1, "width": 8},
                "train": {"epochs": 2, "batch_size": 64}},
    "baseline": {"epochs": 2},
    "deploy": {"max_accuracy_drop": 0.5},  # a 2-epoch student: int8 may flip validation rows
}


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """The whole tiny pipeline, tracked in a SQLite store, then two temperature variants."""
    repo = make_repo(tmp_path_factory.mktemp("report") / "repo", TINY,
                     extra_gitignore="mlflow.db\nmlartifacts/\n")
    uri = f"sqlite:///{repo / 'mlflow.db'}"
    env = {"KD_TRACKING": "1", "MLFLOW_TRACKING_URI": uri}
    run_cmd(["dvc", "repro"], repo, env=env)
    run_cmd(["git", "add", "-A"], repo)
    run_cmd(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "run"], repo)
    for t in ("2", "8"):
        run_cmd(["dvc", "exp", "run", "-S", f"student.temperature={t}", "-n", f"t{t}"], repo,
                env=env)
    return repo, uri, env


def test_report_outputs_and_metrics(pipeline):
    repo, _, _ = pipeline
    report = repo / "data/report"
    metrics = json.loads((report / "metrics.json").read_text())
    for key in ("accuracy", "params", "bytes", "ece", "nll"):
        assert key in metrics["teacher"] and key in metrics["student"], key
    # wall-clock figures live in the uncached timing.json, under the same model keys
    timing = json.loads((report / "timing.json").read_text())
    for key in ("latency_ms_median", "latency_ms_p95", "throughput_rows_per_s"):
        assert timing["teacher"][key] > 0 and timing["student"][key] > 0, key
        assert key not in metrics["teacher"], key
    assert timing["compression"]["speedup"] == pytest.approx(
        timing["teacher"]["latency_ms_median"] / timing["student"]["latency_ms_median"])
    c = metrics["compression"]
    assert c["params_ratio"] == pytest.approx(metrics["teacher"]["params"] /
                                              metrics["student"]["params"])
    assert 0 <= metrics["student"]["agreement"] <= 1
    assert set(metrics["members"]) == {"a", "b"}
    assert "Compression report" in (report / "report.md").read_text()
    # the deployed files: scored like the rest, timed under ONNX Runtime beside PyTorch eager
    deploy = json.loads((repo / "data/deploy/metrics.json").read_text())
    for name, precision in (("student_onnx", "fp32"), ("student_int8", "int8")):
        assert metrics[name]["bytes"] == deploy[precision]["bytes"]
        assert metrics[name]["accuracy"] == deploy[precision]["accuracy"]
        assert timing[name]["latency_ms_median"] > 0, name
    assert metrics["student_onnx"]["accuracy"] == metrics["student"]["accuracy"]
    md = (report / "report.md").read_text()
    assert "student, ONNX int8 (dynamic)" in md and "Deployed as int8 ONNX" in md
    assert (report / "report.html").read_text().count("data:image/png;base64,") >= 5
    confusion = json.loads((report / "confusion/student.json").read_text())
    assert len(confusion) == json.loads((repo / "data/prepared/meta.json").read_text())[
        "rows"]["test"]


def test_dvc_metrics_plots_and_experiments_work(pipeline):
    repo, _, _ = pipeline
    shown = run_cmd(["dvc", "metrics", "show", "--json"], repo).stdout
    assert "compression" in shown and "params_ratio" in shown and "speedup" in shown
    run_cmd(["dvc", "plots", "show", "-o", str(repo / "plots_html")], repo)
    assert (repo / "plots_html" / "index.html").is_file()
    exps = run_cmd(["dvc", "exp", "show", "--json"], repo).stdout
    assert "t2" in exps and "t8" in exps


def test_variants_are_two_mlflow_report_runs_that_differ_in_temperature(pipeline):
    from mlflow.tracking import MlflowClient

    _, uri, _ = pipeline
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("kd-pipeline")
    reports = client.search_runs([exp.experiment_id], "tags.`kd.stage` = 'report'")
    temps = {r.data.params["student.temperature"]: r for r in reports}
    assert {"2.0", "8.0"} <= set(temps)
    assert temps["2.0"].data.tags["dvc.exp_name"] == "t2"
    assert temps["8.0"].data.tags["dvc.exp_name"] == "t8"
    for r in (temps["2.0"], temps["8.0"]):  # every key metric is on the report's run
        assert "compression.params_ratio" in r.data.metrics
        assert r.data.metrics["compression.speedup"] > 0  # from timing.json: still logged
        assert "student.latency_ms_median" in r.data.metrics
        assert "student.accuracy" in r.data.metrics
        assert r.data.tags["kd.dvc_lock_sha256"] != "none"


def test_report_run_links_to_the_runs_that_made_its_inputs(pipeline):
    from mlflow.tracking import MlflowClient

    _, uri, _ = pipeline
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("kd-pipeline")
    report = client.search_runs([exp.experiment_id], "tags.`dvc.exp_name` = 't8' and "
                                "tags.`kd.stage` = 'report'")[0]
    links = {k.removeprefix("kd.input_run.").replace("/", "@"): v
             for k, v in report.data.tags.items()
             if k.startswith("kd.input_run.")}
    assert set(links) == {"teacher@a", "teacher@b", "export", "student", "baseline", "deploy"}
    for stage, run_id in links.items():
        linked = client.get_run(run_id)  # raises if the run does not exist
        assert linked.data.tags["kd.stage_name"] == stage
    # the student that fed the t8 report is the t8 student
    assert client.get_run(links["student"]).data.params["student.temperature"] == "8.0"
