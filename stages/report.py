"""Stage `report`: what distillation bought — smaller, faster, and how much accuracy kept.

    kd report                         # or: dvc repro report; then open data/report/report.html

Evaluates the teacher ensemble, each member, the distilled student and the baseline on the
test split (accuracy, NLL, ECE, per-class accuracy, confusion, the student's agreement with the
teacher), measures size and speed of each on the same threads, and writes
`data/report/metrics.json` (every figure), `headline.json` (the one DVC metric), `report.md`, a
self-contained `report.html`, `plots/*.png` (DVC plots) and `confusion/*.json` (DVC's confusion
template). Its MLflow run holds every key metric and every param, and links to the runs that
produced its inputs. The work is kd/report/build.py.

Four short, flat keys of metrics.json are what variants are compared by (`dvc exp show`, the
MLflow compare view): `val_acc` (the student's validation accuracy: choose by it), `test_acc`,
`acc_retained` and `gap_recovered` (copies of `student.val_accuracy`, `student.accuracy` and
the `compression.*` keys of those names). headline.json holds them and the chosen variant's
name, and is the report's only DVC metric, so `dvc exp show` stays narrow. The MLflow run logs
them first, so they lead its metric lists.

Everything above is a function of the models and the data, so two runs give the same bytes.
Wall-clock figures (latency, throughput, speedup) and the machine they were measured on go to
`timing.json` alone: no stage's output and no DVC metric, left out of the determinism contract.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from kd.config import Config
from kd.io.atomic import atomic_dir
from kd.io.faults import failpoint
from kd.progress import plural
from kd.report.build import HEADLINE, Inputs, build, describe
from kd.report.render import kept_phrase
from kd.tracking import flatten, link_input_runs, stage_run


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run(cfg: Config, out_dir: Path = Path("data/report"), prepared: Path = Path("data/prepared"),
        teachers: Path = Path("data/teachers"), student_root: Path = Path("data/student"),
        baseline_root: Path = Path("data/baseline"), shards: Path = Path("data/soft_targets"),
        deploy_dir: Path = Path("data/deploy")) -> dict:
    report = build(cfg, Inputs(prepared, teachers, student_root, baseline_root, shards,
                               deploy_dir))
    metrics, timing, chosen = report.metrics, report.timing, report.metrics["chosen_variant"]
    with stage_run(cfg, "report", params=flatten(cfg.model_dump())) as tracking:
        failpoint("report.write")
        with atomic_dir(out_dir) as tmp:
            report.write(tmp)
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
        link_input_runs(tracking, report.inputs)
        tracking.log_artifact(out_dir)
    c, t, load = metrics["compression"], metrics["teacher"], timing["machine"]["loadavg_1_5_15"]
    s, b = metrics["student"], metrics["baseline"]
    for w in report.context["warnings"]:
        print(f"warning: {w}")
    print(f"report: {plural(len(cfg.student.variants), 'student variant')}; chosen "
          f"'{chosen}' on validation rows ({report.choice['reason']})")
    print(f"report: teacher {t['accuracy']:.4f} ({t['params']:,} params), student "
          f"{s['accuracy']:.4f} ({s['params']:,}), baseline {b['accuracy']:.4f}; "
          f"{c['params_ratio']:.1f}x fewer parameters, {timing['compression']['speedup']:.1f}x "
          f"faster (median batch-1 latency, {timing['machine']['torch_threads']} torch "
          f"thread(s), load average {load['before'][0]:.1f}), "
          f"student {kept_phrase(s['accuracy'], t['accuracy'])} -> {out_dir}/report.html")
    return metrics | {"timing": timing}
