"""Stage `report`: what distillation bought — smaller, faster, and how much accuracy kept.

    kd report                         # or: dvc repro report; then open data/report/report.html

Evaluates the teacher ensemble, each member, the distilled student and the baseline on the
test split (accuracy, NLL, ECE, per-class accuracy, confusion, the student's agreement with the
teacher), measures size and speed of each on the same threads, and writes
`data/report/metrics.json` (DVC metrics), `report.md`, a self-contained `report.html`,
`plots/*.png` (DVC plots) and `confusion/*.json` (DVC's confusion template). Its MLflow run holds
every key metric and every param, and links to the runs that produced its inputs.

Four short, flat keys of metrics.json are what variants are compared by (`dvc exp show`, the
MLflow compare view): `val_acc` (the student's validation accuracy: choose by it), `test_acc`,
`acc_retained` and `gap_recovered` (copies of `student.val_accuracy`, `student.accuracy` and
the `compression.*` keys of those names). The MLflow run logs them first, so they lead its
metric lists.

Everything above is a function of the models and the data, so two runs give the same bytes.
Wall-clock figures (latency, throughput, speedup) and the machine they were measured on go to
`timing.json` alone: a DVC metric with `cache: false`, left out of the determinism contract.
"""

from __future__ import annotations

import hashlib
import os
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
    machine,
    quality,
    softmax,
    speed_ratios,
    speed_rounds,
    speeds,
    validation_accuracy,
)
from kd.evaluate.sanity import pipeline_warnings, validation_chance
from kd.io.atomic import atomic_dir, write_json
from kd.io.faults import failpoint
from kd.models import check_fits, load_model
from kd.prepared import load_meta, read_split
from kd.progress import Progress, plural
from kd.report import plots
from kd.report.figures import tree_figures, write_figures
from kd.report.render import kept_phrase, render_html, render_markdown
from kd.report.variants import controls_rows, frontier_points, frontier_rows, variant_figures
from kd.targets.shards import MANIFEST, check_members, check_same_test_split, read_manifest
from kd.targets.shardset import verify
from kd.teachers.members import load_member, member_bytes, member_output, member_params
from kd.tracking import COMPARE_BY, flatten, link_input_runs, stage_run

TIMING = "timing.json"  # wall-clock figures: not cached, differ between identical runs
FRONTIER_LATENCY = "frontier_latency.png"  # drawn from timing.json's latencies: not cached
VARIANT_KEYS = ("accuracy", "val_accuracy", "params", "baseline_accuracy", "retained",
                "gap_recovered")
HEADLINE = (COMPARE_BY, "test_acc", "acc_retained", "gap_recovered")  # what variants differ by


def headline(metrics: dict) -> dict:
    """The few flat keys a user compares variants by; validation first (choices are made on
    validation rows, test rows only report)."""
    s, c = metrics["student"], metrics["compression"]
    return {COMPARE_BY: s["val_accuracy"], "test_acc": s["accuracy"],
            "acc_retained": c["accuracy_retained"], "gap_recovered": c["gap_recovered"]}


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


def transfer_set(manifest: dict) -> dict:
    """The rows the student learned from, by kind, from the shards' manifest: labeled training
    rows (validation rows are held out), real unlabeled rows, synthetic rows and how they
    were made (the transfer stage's method and params, recorded by export)."""
    t = manifest["totals"]
    made = manifest.get("extra", {}).get("transfer", {})
    return {"labeled": t["splits"]["labeled"] - t["val"], "validation": t["val"],
            "unlabeled": t["splits"]["unlabeled"], "synthetic": t["splits"].get("synthetic", 0),
            "method": made.get("method", "none"), "params": made.get("params", {})}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run(cfg: Config, out_dir: Path = Path("data/report"), prepared: Path = Path("data/prepared"),
        teachers: Path = Path("data/teachers"), student_root: Path = Path("data/student"),
        baseline_root: Path = Path("data/baseline"), shards: Path = Path("data/soft_targets"),
        deploy_dir: Path = Path("data/deploy")) -> dict:
    meta = load_meta(prepared)
    test, _ = read_split(prepared, "test")
    shape, n_classes = tuple(meta["feature_shape"]), meta["n_classes"]
    x = torch.from_numpy(test.x).view(len(test.x), *shape)  # (N, *shape)
    members = cfg.teacher.names()
    transfer = transfer_set(check_shards(shards, members, meta, prepared))
    # the variant deploy shipped, chosen on validation rows by the same function
    choice = choose_variant(cfg, student_root, shards)
    chosen, variants = choice["variant"], list(cfg.student.variants)
    st = cfg.student.variant(chosen)
    dirs = {name: teachers / name for name in members}
    for v in variants:
        dirs.update({f"student@{v}": student_root / v, f"baseline@{v}": baseline_root / v})
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
    # today's keys ("student", "baseline") are the chosen variant's
    for kind in ("student", "baseline"):
        for d in (dirs, models, specs, probs):
            d[kind] = d[f"{kind}@{chosen}"]

    evals = {name: quality(p, test.y, n_classes) for name, p in probs.items()}
    params = {name: member_params(m) for name, m in models.items()}  # None: unknown (sklearn)
    params["teacher"] = sum(params[m] or 0 for m in members)  # of the members that say
    size = {name: member_bytes(d) for name, d in dirs.items()}
    size["teacher"] = sum(size[m] for m in members)
    # the deployed files, scored on one ONNX Runtime thread (the same figures anywhere)
    onnx_files = deployed_files(deploy_dir, specs["student"])
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

    def summary(name: str) -> dict:
        e = evals[name]
        return {"accuracy": e["accuracy"], "nll": e["nll"], "ece": e["ece"],
                "errors": e["errors"], "params": params[name], "bytes": size[name],
                "val_accuracy": val.get(name)}

    t_acc, s_acc, b_acc = (evals[n]["accuracy"] for n in ("teacher", "student", "baseline"))
    right = {n: p.argmax(1) == test.y for n, p in probs.items()}
    val = validation_accuracy(prepared, {n: models[n] for n in dirs if "@" in n or n in members},
                              members, cfg.student.shared().combine, shape)
    for kind in ("student", "baseline"):
        if val:
            val[kind] = val[f"{kind}@{chosen}"]
    figures = variant_figures(cfg, right, params, val, t_acc)
    metrics = {
        "teacher": summary("teacher"),
        "student": {**summary("student"), "agreement": agreement(probs["student"],
                                                                 probs["teacher"])},
        "baseline": {**summary("baseline"), "agreement": agreement(probs["baseline"],
                                                                   probs["teacher"])},
        "members": {m: summary(m) for m in members},
    }
    for name, path in onnx_files.items():
        metrics[name] = {**summary(name), "agreement": agreement(probs[name], probs["teacher"]),
                         "quantization": read_metadata(path).get("quantization", "none")}
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
        # every variant in a few keys (`dvc exp show` gets a column per key); the intervals,
        # recipes and comparisons are in details.json
        "chosen_variant": chosen,
        "variants": {v: {k: f[k] for k in VARIANT_KEYS} for v, f in figures.items()},
    }
    metrics |= headline(metrics)
    # the same keys as metrics.json, so `dvc metrics show` lines them up (student.accuracy,
    # student.latency_ms_median, compression.speedup, ...)
    timing = {name: speed[name] for name in ("teacher", "student", "baseline", *onnx_files)} | {
        "members": {m: speed[m] for m in members},
        "variants": {v: {"latency_ms": speed[f"student@{v}"]["latency_ms_median"]}
                     for v in variants},
        "compression": speed_ratios(speed["teacher"], speed["student"])
        | {"deployed": speed_ratios(speed["teacher"], speed["student_int8"]),
           "onnx_vs_eager": speed_ratios(speed["student"], speed["student_onnx"])},
        "machine": machine() | {"loadavg_1_5_15": load},
    }
    choice_info = {k: choice[k] for k in ("reason", "meets_target", "threshold",
                                          "ensemble_val_accuracy", "retain_target")}
    # the stages' warnings again, by the headline: near chance, an ensemble no better than a member
    warnings = pipeline_warnings(val, members, variants,
                                 validation_chance(prepared, n_classes) if val else None)
    context = {"metrics": metrics, "evals": evals, "members": members, "warnings": warnings,
               "variants": {"chosen": chosen, "choice": choice_info,
                            "frontier": frontier_rows(cfg, figures, params["teacher"], chosen),
                            "controls": controls_rows(cfg, figures)},
               "class_names": meta["class_names"], "test_rows": len(test.y),
               "transfer": transfer, "test_overlap": meta.get("test_overlap")}

    with stage_run(cfg, "report", params=flatten(cfg.model_dump())) as tracking:
        failpoint("report.write")
        with atomic_dir(out_dir) as tmp:
            write_figures(tmp, st, meta, evals, probs, test.y,  # today's models' points
                          {n: p for n, p in params.items() if n in ("teacher", "student",
                                                                   "baseline", *members)},
                          {n: d for n, d in dirs.items() if "@" not in n}, members, shards)
            plots.frontier(frontier_points(figures, {v: f["params"] for v, f in figures.items()},
                                           "params"), t_acc, "params", "parameters (log scale)",
                           tmp / "plots" / "frontier.png", chosen)
            # against latency: a wall-clock figure, so beside timing.json, not a cached plot
            plots.frontier(frontier_points(figures, {v: timing["variants"][v]["latency_ms"]
                                                     for v in variants}, "latency"),
                           t_acc, "latency", "batch-1 latency, ms (log scale)",
                           tmp / FRONTIER_LATENCY, chosen)
            context["tree"] = tree_figures(tmp / "plots", models, specs, test, meta)
            write_json(tmp / "metrics.json", metrics)
            write_json(tmp / "details.json", {k: {"per_class_accuracy": v["per_class_accuracy"],
                                                  "confusion": v["confusion"]}
                                              for k, v in evals.items()}
                       | {"variants": figures, "choice": choice_info})
            write_json(tmp / TIMING, timing)
            (tmp / "report.md").write_text(render_markdown(context))
            (tmp / "report.html").write_text(render_html(context, tmp / "plots"))
        # the compared keys first: MLflow keeps the order they were logged in, and its compare
        # view plots the first metric the runs share
        tracking.log_metrics({k: metrics[k] for k in HEADLINE})
        tracking.log_metrics({k: v for k, v in metrics.items() if k not in HEADLINE})
        tracking.log_metrics(timing)  # the MLflow run keeps the speed figures next to the rest
        tracking.describe(describe(cfg, metrics))
        tracking.set_tags({f"kd.machine.{k}": v for k, v in timing["machine"].items()})
        lock = Path("dvc.lock")
        tracking.set_tags({"kd.dvc_lock_sha256": sha256(lock) if lock.exists() else "none"})
        tracking.set_tags({"kd.variant": chosen})
        link_input_runs(tracking, dict(member_output(dirs[m]) for m in members)
                        | {name: d / "model.safetensors" for name, d in dirs.items() if "@" in name}
                        | {"export": shards / MANIFEST,
                           "deploy": onnx_files["student_int8"]})
        tracking.log_artifact(out_dir)
    c = metrics["compression"]
    for w in warnings:
        print(f"warning: {w}")
    print(f"report: {plural(len(variants), 'student variant')}; chosen '{chosen}' on validation "
          f"rows ({choice['reason']})")
    print(f"report: teacher {t_acc:.4f} ({params['teacher']:,} params), student {s_acc:.4f} "
          f"({params['student']:,}), baseline {b_acc:.4f}; {c['params_ratio']:.1f}x fewer "
          f"parameters, {timing['compression']['speedup']:.1f}x faster (median batch-1 latency, "
          f"{timing['machine']['torch_threads']} torch thread(s), load average "
          f"{load['before'][0]:.1f}), "
          f"student {kept_phrase(s_acc, t_acc)} -> {out_dir}/report.html")
    return metrics | {"timing": timing}
