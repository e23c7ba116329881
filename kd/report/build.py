"""The report stage's work: every model scored on the same test rows, the figures of
metrics.json and timing.json, and the documents, into one directory.

    report = build(cfg, Inputs())          # reads and scores every input; writes nothing
    report.write(tmp_dir)                  # metrics.json, details.json, timing.json, report.md,
                                           # report.html, plots/, confusion/

Evaluates the teacher ensemble, each member, every student variant and its baseline, and the
deployed ONNX files on the test split (accuracy, NLL, ECE, per-class accuracy, confusion, the
students' agreement with the teacher), and times them side by side on the same threads. The
keys `student` and `baseline` are the variant that kd/evaluate/choose.py picks on validation
rows, the one deploy ships. Everything in metrics.json is a function of the models and the
data, so two runs give the same bytes; wall-clock figures (latency, throughput, speedup) and
the machine they were measured on go to `timing.json` alone.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from kd.config import Config
from kd.deploy.export import deployed_files, read_metadata
from kd.deploy.runtime import CHECK_THREADS, onnx_forward, open_session
from kd.deploy.runtime import run as onnx_run
from kd.errors import ArtifactError
from kd.evaluate import stats
from kd.evaluate.choose import choose_variant
from kd.evaluate.metrics import (
    agreement,
    compression,
    ensemble_probs,
    kl_from,
    machine,
    quality,
    softmax,
    speed_ratios,
    speed_rounds,
    speeds,
    validation_accuracy,
)
from kd.evaluate.sanity import pipeline_warnings, validation_chance
from kd.io.atomic import read_json, write_json
from kd.models import check_fits, load_model
from kd.prepared import load_meta, read_split
from kd.progress import Progress
from kd.report import plots
from kd.report.figures import tree_figures, write_figures
from kd.report.headline import HEADLINE, HEADLINE_FILE
from kd.report.render import render_html, render_markdown
from kd.report.variants import (
    controls_rows,
    frontier_points,
    frontier_rows,
    omit_rows,
    size_rows,
    variant_figures,
)
from kd.targets.manifest import MANIFEST, check_members, read_manifest
from kd.targets.provenance import check_same_test_split
from kd.targets.shardset import describe_targets, summary, verify
from kd.teachers.members import load_member, member_bytes, member_output, member_params

TIMING = "timing.json"  # wall-clock figures: not cached, differ between identical runs
FRONTIER_LATENCY = "frontier_latency.png"  # drawn from timing.json's latencies: not cached
VARIANT_KEYS = ("accuracy", "val_accuracy", "params", "baseline_accuracy", "retained",
                "gap_recovered")
SIZES = "sizes.json"  # the rows of dvc.yaml's "Accuracy against size" plot (variants.size_rows)


def headline(metrics: dict) -> dict:
    """The few flat keys a user compares variants by; validation first (choices are made on
    validation rows, test rows only report)."""
    s, c = metrics["student"], metrics["compression"]
    return dict(zip(HEADLINE, (s["val_accuracy"], s["accuracy"], c["accuracy_retained"],
                               c["gap_recovered"]), strict=True))


def describe(cfg: Config, metrics: dict) -> str:
    """One line for the report run's description in the MLflow UI."""
    st, m = cfg.student.variant(metrics["chosen_variant"]), metrics
    val = "n/a" if m["val_acc"] is None else f"{m['val_acc']:.2%}"
    return (f"student '{m['chosen_variant']}' {st.arch} T={st.temperature:g} "
            f"alpha={st.alpha:g}: validation accuracy {val}, test {m['test_acc']:.2%} "
            f"(teacher {m['teacher']['accuracy']:.2%}, baseline "
            f"{m['baseline']['accuracy']:.2%}); {m['compression']['params_ratio']:.1f}x fewer "
            f"parameters")


def check_shards(shards: Path, members: list[str], meta: dict, prepared: Path) -> dict:
    """Every input is checked before any output is written: the shards' checksums, that they
    come from this ensemble and these classes (the entropy plot reads them), and that the test
    split is the one they were made beside."""
    verify(shards)
    manifest = read_manifest(shards)
    check_members(shards, manifest, members)
    check_same_test_split(manifest, prepared / "test.parquet", str(shards / MANIFEST))
    if manifest["class_names"] != meta["class_names"]:
        raise ArtifactError(f"{shards / MANIFEST}: class_names {manifest['class_names']} differ "
                            f"from the prepared data's {meta['class_names']}; rerun `kd export`")
    return manifest


def learned_from(manifest: dict) -> dict:
    """The rows the student learned from, by kind, from the shards' manifest: labeled training
    rows (validation rows are held out), real unlabeled rows, synthetic rows and how they
    were made (the transfer stage's method and params, recorded by export)."""
    t = manifest["totals"]
    made = manifest.get("extra", {}).get("transfer", {})
    return {"labeled": t["splits"]["labeled"] - t["val"], "validation": t["val"],
            "unlabeled": t["splits"]["unlabeled"], "synthetic": t["splits"].get("synthetic", 0),
            "method": made.get("method", "none"), "params": made.get("params", {})}


@dataclass(frozen=True)
class Inputs:
    """Where the report reads: every earlier stage's output."""
    prepared: Path = Path("data/prepared")
    teachers: Path = Path("data/teachers")
    student_root: Path = Path("data/student")
    baseline_root: Path = Path("data/baseline")
    shards: Path = Path("data/soft_targets")
    deploy_dir: Path = Path("data/deploy")


@dataclass
class Report:
    """What `build` found: the figures, and what writing the documents needs."""
    metrics: dict  # metrics.json
    timing: dict  # timing.json
    choice: dict  # kd.evaluate.choose's answer
    inputs: dict[str, Path]  # the file each input run wrote, for kd.tracking.link_input_runs
    context: dict  # what render.py reads
    _draw: dict = field(repr=False)  # what the plots read

    def write(self, out: Path) -> None:
        """Every file of the report into `out` (a temporary directory: the stage publishes
        it whole)."""
        d, chosen = self._draw, self.metrics["chosen_variant"]
        figures, t_acc = d["figures"], self.metrics["teacher"]["accuracy"]
        points = {n: (p, d["evals"][n]["accuracy"]) for n, p in d["params"].items()
                  if p is not None and n in ("teacher", "student", "baseline", *d["members"])}
        write_figures(out, d["st"], d["meta"], d["evals"], d["probs"], d["test"].y, points,
                      {n: p for n, p in d["dirs"].items() if "@" not in n}, d["shards"])
        write_json(out / SIZES, size_rows(figures, points, d["members"]))
        plots.frontier(frontier_points(figures, {v: f["params"] for v, f in figures.items()},
                                       "params"), t_acc, "params", "parameters (log scale)",
                       out / "plots" / "frontier.png", chosen)
        # against latency: a wall-clock figure, so beside timing.json, not a cached plot
        plots.frontier(frontier_points(figures, {v: self.timing["variants"][v]["latency_ms"]
                                                 for v in figures}, "latency"),
                       t_acc, "latency", "batch-1 latency, ms (log scale)",
                       out / FRONTIER_LATENCY, chosen)
        self.context["tree"] = tree_figures(out / "plots", d["models"], d["specs"], d["test"],
                                            d["meta"])
        write_json(out / "metrics.json", self.metrics)
        write_json(out / HEADLINE_FILE, {k: self.metrics[k] for k in HEADLINE}
                   | {"variant": chosen})
        write_json(out / "details.json", {k: {"per_class_accuracy": v["per_class_accuracy"],
                                              "confusion": v["confusion"]}
                                          for k, v in d["evals"].items()}
                   | {"variants": figures, "choice": self.context["variants"]["choice"]})
        write_json(out / TIMING, self.timing)
        (out / "report.md").write_text(render_markdown(self.context))
        (out / "report.html").write_text(render_html(self.context, out / "plots"))


def timing_figures(speed: dict, members: list[str], variants: list[str],
                   onnx_files: dict[str, Path], load: dict) -> dict:
    """timing.json: the same keys as metrics.json, so `dvc metrics show
    data/report/metrics.json data/report/timing.json` lines them up
    (student.latency_ms_median, compression.speedup, ...)."""
    return {name: speed[name] for name in ("teacher", "student", "baseline", *onnx_files)} | {
        "members": {m: speed[m] for m in members},
        "variants": {v: {"latency_ms": speed[f"student@{v}"]["latency_ms_median"]}
                     for v in variants},
        "compression": speed_ratios(speed["teacher"], speed["student"])
        | {"deployed": speed_ratios(speed["teacher"], speed["student_int8"]),
           "onnx_vs_eager": speed_ratios(speed["student"], speed["student_onnx"])},
        "machine": machine() | {"loadavg_1_5_15": load},
    }


def build(cfg: Config, at: Inputs = Inputs()) -> Report:
    """Check every input, score and time every model, and assemble the figures."""
    meta = load_meta(at.prepared)
    test, _ = read_split(at.prepared, "test")
    shape, n_classes = tuple(meta["feature_shape"]), meta["n_classes"]
    x = torch.from_numpy(test.x).view(len(test.x), *shape)  # (N, *shape)
    members = cfg.teacher.names()
    manifest = check_shards(at.shards, members, meta, at.prepared)
    transfer = learned_from(manifest)
    # the variant deploy shipped, chosen on validation rows by the same function
    choice = choose_variant(cfg, at.student_root, at.shards)
    chosen, variants = choice["variant"], list(cfg.student.variants)
    st = cfg.student.variant(chosen)
    dirs = {name: at.teachers / name for name in members}
    for v in variants:
        dirs.update({f"student@{v}": at.student_root / v, f"baseline@{v}": at.baseline_root / v})
    # members of any kind (trained here or imported) load alike, checked against the data
    models, specs = {name: load_member(dirs[name], meta) for name in members}, {}
    for name, d in dirs.items():
        if name not in members:
            models[name], specs[name] = load_model(d)
            check_fits(specs[name], d, meta, name.replace("@", " '") + "'")
    with torch.no_grad():
        logits = {name: m(x) for name, m in models.items()}  # each (N, C)
    probs = {name: softmax(lg) for name, lg in logits.items()}
    probs["teacher"] = ensemble_probs([logits[m] for m in members], cfg.student.shared().combine)
    # the keys "student" and "baseline" are the chosen variant's
    for kind in ("student", "baseline"):
        for d in (dirs, models, specs, probs):
            d[kind] = d[f"{kind}@{chosen}"]

    evals = {name: quality(p, test.y, n_classes) for name, p in probs.items()}
    params = {name: member_params(m) for name, m in models.items()}  # None: unknown (sklearn)
    params["teacher"] = sum(params[m] or 0 for m in members)  # of the members that say
    size = {name: member_bytes(d) for name, d in dirs.items()}
    size["teacher"] = sum(size[m] for m in members)
    # the deployed files, scored on one ONNX Runtime thread (the same figures anywhere)
    onnx_files = deployed_files(at.deploy_dir, specs["student"])
    for name, path in onnx_files.items():
        probs[name] = onnx_run(open_session(path, CHECK_THREADS), test.x)[1]  # (N, C)
        evals[name] = quality(probs[name], test.y, n_classes)
        params[name], size[name] = params["student"], path.stat().st_size
    load_before = os.getloadavg()
    # every model side by side, round by round: a burst of load hits them all alike; the ONNX
    # files under ONNX Runtime on as many threads as torch has
    threads = torch.get_num_threads()
    timed = [*members, *(f"student@{v}" for v in variants), f"baseline@{chosen}"]
    with Progress(speed_rounds(), "report: timing", unit="rounds") as bar:
        speed = speeds({"teacher": [models[m] for m in members]}
                       | {name: [models[name]] for name in timed}
                       | {name: onnx_forward(path, threads) for name, path in onnx_files.items()},
                       x.numpy(), tick=bar.update)
    for kind in ("student", "baseline"):
        speed[kind] = speed[f"{kind}@{chosen}"]
    load = {"before": [round(v, 2) for v in load_before],
            "after": [round(v, 2) for v in os.getloadavg()]}

    right = {n: p.argmax(1) == test.y for n, p in probs.items()}
    val = validation_accuracy(at.prepared,
                              {n: models[n] for n in dirs if "@" in n or n in members},
                              members, cfg.student.shared().combine, shape)
    for kind in ("student", "baseline"):
        if val:
            val[kind] = val[f"{kind}@{chosen}"]
    figures = variant_figures(cfg, right, params, val, evals["teacher"]["accuracy"])
    metrics = assemble(cfg, chosen, members, figures, evals, probs, right, params, size, val,
                       {n: read_metadata(p).get("quantization", "none")
                        for n, p in onnx_files.items()}, transfer)
    if manifest.get("top_k"):  # a dense set's metrics.json keeps its keys
        metrics["targets"] = {"top_k": manifest["top_k"], "fidelity": manifest.get("fidelity")}
    choice_info = {k: choice[k] for k in ("reason", "meets_target", "threshold",
                                          "ensemble_val_accuracy", "retain_target")}
    # the stages' warnings again, by the headline: near chance, an ensemble no better than a member
    warnings = pipeline_warnings(val, members, variants,
                                 validation_chance(at.prepared, n_classes) if val else None)
    context = {"metrics": metrics, "evals": evals, "members": members, "warnings": warnings,
               "deploy_gate": read_json(at.deploy_dir / "metrics.json",
                                        ArtifactError)["int8"].get("gate"),
               "variants": {"chosen": chosen, "choice": choice_info,
                            "frontier": frontier_rows(cfg, figures, params["teacher"], chosen),
                            "controls": controls_rows(cfg, figures),
                            "omit": omit_rows({v: read_json(at.student_root / v / "metrics.json",
                                                            ArtifactError) for v in variants})},
               "class_names": meta["class_names"], "test_rows": len(test.y),
               "transfer": transfer, "test_overlap": meta.get("test_overlap"),
               "targets": describe_targets(summary(at.shards), st.temperature)}
    inputs = (dict(member_output(dirs[m]) for m in members)
              | {name: d / "model.safetensors" for name, d in dirs.items() if "@" in name}
              | {"export": at.shards / MANIFEST, "deploy": onnx_files["student_int8"]})
    return Report(metrics, timing_figures(speed, members, variants, onnx_files, load), choice,
                  inputs, context,
                  {"st": st, "meta": meta, "test": test, "members": members, "dirs": dirs,
                   "models": models, "specs": specs, "evals": evals, "probs": probs,
                   "params": params, "figures": figures, "shards": at.shards})


def assemble(cfg: Config, chosen: str, members: list[str], figures: dict, evals: dict,
             probs: dict, right: dict, params: dict, size: dict, val: dict,
             quantization: dict[str, str], transfer: dict) -> dict:
    """metrics.json: the chosen student, its baseline, the ensemble and each member, the
    deployed files, paired comparisons and every variant in a few keys."""
    def summary(name: str) -> dict:
        e = evals[name]
        out = {"accuracy": e["accuracy"], "nll": e["nll"], "ece": e["ece"],
               "errors": e["errors"], "params": params[name], "bytes": size[name],
               "val_accuracy": val.get(name)}
        if name != "teacher":  # fidelity to the ensemble, on the test rows: every model
            out |= {"agreement": agreement(probs[name], probs["teacher"]),
                    "kl_from_teacher": kl_from(probs["teacher"], probs[name])}
        return out

    st = cfg.student.variant(chosen)
    metrics = {
        "teacher": summary("teacher"),
        "student": summary("student"),
        "baseline": summary("baseline"),
        "members": {m: summary(m) for m in members},
    }
    for name, kind in quantization.items():
        metrics[name] = {**summary(name), "quantization": kind}
    metrics["validation_rows"] = val.get("rows", 0)
    # every comparison the report states, with a paired 95% interval and McNemar's p
    metrics["compare"] = {f"{a}_vs_{b}": stats.compare(right[a], right[b])
                          for a, b in (("student", "baseline"), ("student", "teacher"),
                                       ("teacher", "baseline"))}
    ratios = stats.ratio_intervals(right["student"], right["teacher"], right["baseline"])
    metrics |= {
        "compression": compression(metrics["teacher"], metrics["student"], metrics["baseline"])
        | {"accuracy_retained_ci": ratios["retained_ci"],
           "gap_recovered": ratios["gap_recovered"],
           "gap_recovered_ci": ratios["gap_recovered_ci"],
           "gap_meaningful": ratios["gap_meaningful"],
           "deployed": compression(metrics["teacher"], metrics["student_int8"],
                                   metrics["baseline"])},
        "student_temperature": st.temperature, "student_alpha": st.alpha,
        "transfer_set": {k: transfer[k] for k in ("labeled", "unlabeled", "synthetic")},
        # every variant in a few keys; the intervals, recipes and comparisons are in
        # details.json
        "chosen_variant": chosen,
        "variants": {v: {k: f[k] for k in VARIANT_KEYS} for v, f in figures.items()},
    }
    return metrics | headline(metrics)
