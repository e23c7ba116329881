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
    # two sizes and the two controls on the larger one (docs/students.md)
    "student": {"defaults": {"arch": "mlp", "knobs": {"depth": 1, "width": 8},
                             "train": {"epochs": 2, "batch_size": 64}},
                "variants": {"w8": {}, "w4": {"knobs": {"width": 4}},
                             "w8_hard": {"targets": "hard"}, "w8_labeled": {"rows": "labeled"}}},
    "baseline": {"epochs": 2},
    "deploy": {"max_accuracy_drop": 0.5},  # a 2-epoch student: int8 may flip validation rows
}


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """The whole tiny pipeline (T = 4), tracked in a SQLite store, then a T = 8 experiment."""
    repo = make_repo(tmp_path_factory.mktemp("report") / "repo", TINY,
                     extra_gitignore="mlflow.db\nmlartifacts/\n")
    uri = f"sqlite:///{repo / 'mlflow.db'}"
    env = {"KD_TRACKING": "1", "MLFLOW_TRACKING_URI": uri}
    run_cmd(["dvc", "repro"], repo, env=env)
    run_cmd(["git", "add", "-A"], repo)
    run_cmd(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "run"], repo)
    run_cmd(["dvc", "exp", "run", "-S", "student.defaults.temperature=8", "-n", "t8"], repo,
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


def test_the_report_has_the_frontier_the_controls_and_the_variant_chosen_on_validation(
        pipeline):
    from kd.evaluate.choose import pick

    repo, _, _ = pipeline
    report = repo / "data/report"
    metrics = json.loads((report / "metrics.json").read_text())
    details = json.loads((report / "details.json").read_text())
    timing = json.loads((report / "timing.json").read_text())
    variants = metrics["variants"]
    assert set(variants) == {"w8", "w4", "w8_hard", "w8_labeled"}
    for v, f in variants.items():
        assert set(f) == {"accuracy", "val_accuracy", "params", "baseline_accuracy", "retained",
                          "gap_recovered"}, v
        assert f["retained"] == pytest.approx(f["accuracy"] / metrics["teacher"]["accuracy"])
        lo, hi = details["variants"][v]["accuracy_ci"]
        assert lo <= f["accuracy"] <= hi, v  # the frontier's error bars
        assert timing["variants"][v]["latency_ms"] > 0, v
    assert variants["w4"]["params"] < variants["w8"]["params"] == variants["w8_hard"]["params"]
    # the chosen variant: the rule on validation accuracy alone; today's keys are its figures
    chosen = metrics["chosen_variant"]
    choice = details["choice"]
    assert chosen == pick({v: f["val_accuracy"] for v, f in variants.items()},
                          {v: f["params"] for v, f in variants.items()},
                          choice["ensemble_val_accuracy"], 0.99)["variant"]
    assert metrics["student"]["accuracy"] == variants[chosen]["accuracy"]
    assert metrics["student"]["params"] == variants[chosen]["params"]
    assert json.loads((repo / "data/deploy/metrics.json").read_text())["variant"] == chosen
    # the pictures and tables a reader looks at
    assert (report / "plots/frontier.png").stat().st_size > 1000
    assert (report / "frontier_latency.png").stat().st_size > 1000  # beside timing.json
    md = (report / "report.md").read_text()
    assert f"Chosen student variant: **{chosen}**" in md
    assert "## Student variants: the compression frontier" in md
    controls = md.split("## Controls")[1].split("##")[0]
    rows = [ln for ln in controls.splitlines() if ln.startswith("| mlp")]
    assert [r.split(" | ")[1] for r in rows] == [
        "labels alone (baseline)", "soft targets, labeled rows only",
        "hard pseudo-labels, all rows", "soft targets, all rows"], controls
    assert "w4" not in controls  # one network per group: w4 has no controls


def test_dvc_metrics_plots_and_experiments_work(pipeline):
    repo, _, _ = pipeline
    # the DVC metric is the headline; every figure is one target away
    shown = json.loads(run_cmd(["dvc", "metrics", "show", "--json"], repo).stdout)
    files = next(iter(shown.values()))["data"]
    assert set(files) == {"data/report/headline.json"}, files
    # gap_recovered is null (left out) unless the teacher clearly beats the baseline
    assert {"val_acc", "test_acc", "acc_retained", "variant"} <= set(
        files["data/report/headline.json"]["data"]) <= {
        "val_acc", "test_acc", "acc_retained", "gap_recovered", "variant"}
    full = run_cmd(["dvc", "metrics", "show", "--json", "data/report/metrics.json",
                    "data/report/timing.json"], repo).stdout
    assert "params_ratio" in full and "speedup" in full and '"members"' in full
    run_cmd(["dvc", "plots", "show", "-o", str(repo / "plots_html")], repo)
    assert (repo / "plots_html" / "index.html").is_file()
    exps = run_cmd(["dvc", "exp", "show", "--json"], repo).stdout
    assert "t8" in exps


def test_kd_compare_shows_the_headline_and_the_changed_param_in_120_columns(pipeline):
    """Plain `dvc exp show` has a column per param and per dependency (160-odd); `kd compare`
    keeps the headline keys and the params that differ between the rows."""
    repo, _, _ = pipeline
    shown = run_cmd(["kd", "compare", "--no-pager"], repo, env={"COLUMNS": "120"}).stdout
    lines = shown.rstrip("\n").splitlines()
    assert max(len(ln) for ln in lines) <= 120 and "…" not in shown, shown
    header = next(ln for ln in lines if "Experiment" in ln).split()
    assert header[:2] == ["Experiment", "Created"], shown
    assert header[-1] == "student.defaults.temperature", shown  # the one param that differs
    assert {"val_acc", "test_acc", "acc_retained", "variant"} <= set(header[2:-1]) <= {
        "val_acc", "test_acc", "acc_retained", "gap_recovered", "variant"}, shown
    # `dvc plots diff`: both runs' accuracies against size on one pair of axes
    plots = json.loads(run_cmd(["dvc", "plots", "diff", "HEAD", "t8", "--json"], repo).stdout)
    [sizes] = plots["data"]["Accuracy against size (test)"]
    assert sizes["type"] == "vega" and len(sizes["revisions"]) == 2, sizes["revisions"]
    rows = sizes["content"]["data"]["values"]
    assert {r["rev"] for r in rows} == set(sizes["revisions"])
    assert {r["kind"] for r in rows} == {"student", "control", "baseline", "ensemble", "member"}


def test_variants_are_two_mlflow_report_runs_that_differ_in_temperature(pipeline):
    from mlflow.tracking import MlflowClient

    _, uri, _ = pipeline
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("kd-pipeline")
    reports = client.search_runs([exp.experiment_id], "tags.`kd.stage` = 'report'")
    # the report logs params as written (`-S` writes 2, not 2.0)
    temps = {r.data.params["student.defaults.temperature"]: r for r in reports}
    assert {"4.0", "8"} <= set(temps)  # params.yaml's 4.0; `-S` writes 8, not 8.0
    assert temps["4.0"].data.tags["dvc.exp_name"] == ""  # the workspace's dvc repro
    assert temps["8"].data.tags["dvc.exp_name"] == "t8"
    for r in (temps["4.0"], temps["8"]):  # every key metric is on the report's run
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
    variants = ("w8", "w4", "w8_hard", "w8_labeled")
    assert set(links) == {"teacher@a", "teacher@b", "export", "deploy",
                          *(f"{k}@{v}" for k in ("student", "baseline") for v in variants)}
    for stage, run_id in links.items():
        linked = client.get_run(run_id)  # raises if the run does not exist
        assert linked.data.tags["kd.stage_name"] == stage
        if "@w" in stage:  # every variant's run says which variant it is
            assert linked.data.tags["kd.variant"] == stage.split("@")[1]
    # the students that fed the t8 report are the t8 students (the hard control runs at T=1,
    # but records the temperature it was given)
    for v in variants:
        run = client.get_run(links[f"student@{v}"])
        assert run.data.params["student.temperature"] == "8.0"
        assert run.data.tags["dvc.exp_name"] == "t8"


def readme_command(prefix: str) -> list[str]:
    """The documented command line (README.md or docs/*.md) that starts with `prefix`, split as
    a shell would."""
    import shlex

    from tests.conftest import ROOT

    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    lines = [ln.strip() for page in pages for ln in page.read_text().splitlines()
             if ln.strip().startswith(prefix)]
    assert len(lines) == 1, f"README.md, docs/: {len(lines)} lines start with {prefix!r}"
    return shlex.split(lines[0].split("  #")[0])


def test_the_readme_exp_show_recipe_fits_120_columns(pipeline):
    """Plain `dvc exp show` is 160+ columns, every cell an ellipsis; the documented recipe
    (docs/tracking.md) shows each variant's name, the param it varies and the four compared
    figures in 120."""
    repo, _, _ = pipeline
    cmd = readme_command("dvc exp show --hide-workspace")
    shown = run_cmd([*cmd, "--no-pager"], repo, env={"COLUMNS": "120"}).stdout
    lines = shown.rstrip("\n").splitlines()
    assert max(len(ln) for ln in lines) <= 120, shown
    assert "…" not in shown, shown  # no column cut or collapsed
    header = next(ln for ln in lines if "Experiment" in ln).split()
    # DVC's order: metrics by name, then params; a column null in every row (gap_recovered
    # when the baseline matches the teacher) is left out
    assert header[0] == "Experiment" and header[-1] == "student.defaults.temperature", shown
    assert {"val_acc", "test_acc", "acc_retained"} <= set(header[1:-1]) <= {
        "val_acc", "test_acc", "acc_retained", "gap_recovered"}, shown
    rows = [ln.split() for ln in lines if "[t8]" in ln]
    assert len(rows) == 1 and rows[0][-1] == "8", shown  # the experiment's temperature
    metrics = json.loads((repo / "data/report/metrics.json").read_text())
    assert metrics["test_acc"] == metrics["student"]["accuracy"]
    assert metrics["acc_retained"] == metrics["compression"]["accuracy_retained"]
    assert metrics["val_acc"] == metrics["student"]["val_accuracy"] is not None


def test_variant_runs_are_named_and_lead_with_the_compared_metrics(pipeline):
    from mlflow.tracking import MlflowClient

    from kd.report.build import HEADLINE

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
    assert names[("t8", "report")] == "report · t8"
    assert names[("t8", "student@w8")] == "student@w8 · t8"
    report = client.get_run(next(r.info.run_id for r in runs
                                 if r.info.run_name == "report · t8"))
    # the compare view plots the first metric the runs share: the compared ones come first
    logged = [k for k in report.data.metrics if k in HEADLINE]
    assert logged and list(report.data.metrics)[: len(logged)] == logged, \
        list(report.data.metrics)[:6]
    assert logged == [k for k in HEADLINE if k in logged]
    assert "T=8" in report.data.tags["mlflow.note.content"]
    assert "validation accuracy" in report.data.tags["mlflow.note.content"]
