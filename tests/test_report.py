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


def readme_command(prefix: str) -> list[str]:
    """The README's command line that starts with `prefix`, split as a shell would."""
    import shlex

    from tests.conftest import ROOT

    lines = [ln.strip() for ln in (ROOT / "README.md").read_text().splitlines()
             if ln.strip().startswith(prefix)]
    assert len(lines) == 1, f"README.md: {len(lines)} lines start with {prefix!r}"
    return shlex.split(lines[0].split("  #")[0])


def test_the_readme_exp_show_recipe_fits_120_columns(pipeline):
    """Plain `dvc exp show` is 160+ columns, every cell an ellipsis; the README's recipe shows
    each variant's name, the param it varies and the four compared figures in 120."""
    repo, _, _ = pipeline
    cmd = readme_command("dvc exp show --hide-workspace")
    shown = run_cmd([*cmd, "--no-pager"], repo, env={"COLUMNS": "120"}).stdout
    lines = shown.rstrip("\n").splitlines()
    assert max(len(ln) for ln in lines) <= 120, shown
    assert "…" not in shown, shown  # no column cut or collapsed
    header = next(ln for ln in lines if "Experiment" in ln).split()
    # DVC's order: metrics by name, then params; a column null in every row (gap_recovered
    # when the baseline matches the teacher) is left out
    assert header[0] == "Experiment" and header[-1] == "student.temperature", shown
    assert {"val_acc", "test_acc", "acc_retained"} <= set(header[1:-1]) <= {
        "val_acc", "test_acc", "acc_retained", "gap_recovered"}, shown
    rows = {name: ln.split() for ln in lines for name in ("[t2]", "[t8]") if name in ln}
    assert set(rows) == {"[t2]", "[t8]"}, shown
    assert rows["[t2]"][-1] == "2" and rows["[t8]"][-1] == "8", shown  # their temperatures
    metrics = json.loads((repo / "data/report/metrics.json").read_text())
    assert metrics["test_acc"] == metrics["student"]["accuracy"]
    assert metrics["acc_retained"] == metrics["compression"]["accuracy_retained"]
    assert metrics["val_acc"] == metrics["student"]["val_accuracy"] is not None


def test_variant_runs_are_named_and_lead_with_the_compared_metrics(pipeline):
    from mlflow.tracking import MlflowClient

    from stages.report import HEADLINE

    _, uri, _ = pipeline
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("kd-pipeline")
    # MLflow 3's UI opens an experiment of training runs on its runs, not on GenAI traces
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    assert exp.tags["mlflow.experiment.primaryMetric.name"] == "val_acc" == HEADLINE[0]
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    names = {(r.data.tags["dvc.exp_name"], r.data.tags["kd.stage_name"]): r.info.run_name
             for r in runs}
    assert names[("", "report")] == "report" and names[("", "teacher@a")] == "teacher@a"
    assert names[("t2", "report")] == "report · t2"
    assert names[("t8", "student")] == "student · t8"
    report = client.get_run(next(r.info.run_id for r in runs
                                 if r.info.run_name == "report · t8"))
    # the compare view plots the first metric the runs share: the compared ones come first
    logged = [k for k in report.data.metrics if k in HEADLINE]
    assert logged and list(report.data.metrics)[: len(logged)] == logged, \
        list(report.data.metrics)[:6]
    assert logged == [k for k in HEADLINE if k in logged]
    assert "T=8" in report.data.tags["mlflow.note.content"]
    assert "validation accuracy" in report.data.tags["mlflow.note.content"]
