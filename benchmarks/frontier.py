"""Every student variant and its baseline over several seeds: the frontier the README may claim.

    dvc repro export                                   # the teachers and shards, once
    python benchmarks/frontier.py --seeds 0 1 2 --out benchmarks/results/frontier.json
    python benchmarks/frontier.py --params candidates.yaml --variants tiny small   # a search

One seed on 1,000 test rows is one row per 0.1 point, so a variant "keeping 99% of the
ensemble" in one run says little. This trains each variant of the params file's
`student.variants` (from data/soft_targets) and its baseline (from data/prepared) once per seed,
exactly as `kd student` and `kd baseline` do with `train.seed` set, in a temporary directory
(MLflow off, data/ untouched), at one torch thread. The ensemble is scored once on the same
validation and test rows. The variant a user should ship is chosen as kd/evaluate/choose.py
does, on the seeds' mean validation accuracy; test rows only report.

Prints a table and writes JSON: {ensemble: {val_accuracy, test_accuracy, params}, variants:
{name: {params, fewer, student|baseline: {test_accuracy, val_accuracy: {mean, std,
per_seed}}, student_minus_baseline: {mean, std, wins}, val_retained, test_retained,
train_time_s}}, chosen, machine}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ["KD_TRACKING"] = "0"

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

from kd.config import deep_merge, parse_config  # noqa: E402
from kd.evaluate.choose import ensemble_val_accuracy, pick  # noqa: E402
from kd.evaluate.metrics import ensemble_probs  # noqa: E402
from kd.models import count_params  # noqa: E402
from kd.prepared import load_meta, read_split  # noqa: E402
from kd.teachers.members import load_members, member_logits  # noqa: E402
from stages import baseline, baseline_specs, student  # noqa: E402


def summary(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "per_seed": values}


def ensemble_figures(cfg, data: Path) -> dict:
    """The ensemble's validation (from the shards) and test accuracy, and its parameters."""
    meta = load_meta(data / "prepared")
    models = load_members(cfg, meta, data / "teachers")
    test, _ = read_split(data / "prepared", "test")
    logits = member_logits(models, test.x, tuple(meta["feature_shape"]))
    combine = cfg.student.shared().combine
    probs = ensemble_probs([torch.from_numpy(v) for v in logits.values()], combine)
    val, _ = ensemble_val_accuracy(data / "soft_targets", combine)
    return {"val_accuracy": val, "test_accuracy": float((probs.argmax(1) == test.y).mean()),
            "params": sum(count_params(m) for m in models.values())}


def seed_params(base: dict, names: list[str], seed: int) -> dict:
    """`base` with the variants `names` trained with `seed`, at one torch thread."""
    return deep_merge(base, {
        "student": {"variants": {v: deep_merge(base["student"]["variants"][v] or {},
                                                {"train": {"seed": seed}})
                                 for v in names}},
        "runtime": {"threads": 1}})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    ap.add_argument("--data", type=Path, default=ROOT / "data",
                    help="the pipeline's outputs: prepared/, teachers/, soft_targets/")
    ap.add_argument("--variants", nargs="+", default=None, help="default: every variant")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--no-baseline", action="store_true", help="students only (a search)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/frontier.json")
    args = ap.parse_args()
    torch.set_num_threads(1)

    base = yaml.safe_load(args.params.read_text())
    data = args.data.resolve()
    prepared, shards = data / "prepared", data / "soft_targets"
    for need in (prepared / "meta.json", shards / "manifest.json"):
        if not need.is_file():
            sys.exit(f"{need}: missing; run `dvc repro export` first")
    cfg0 = parse_config(base)
    names = args.variants or list(cfg0.student.variants)
    ensemble = ensemble_figures(cfg0, data)
    print(f"ensemble: val {ensemble['val_accuracy']:.4f} test {ensemble['test_accuracy']:.4f} "
          f"({ensemble['params']:,} params)", flush=True)
    kinds = ("student",) if args.no_baseline else ("student", "baseline")
    runs = {v: {k: {"test_accuracy": [], "val_accuracy": []} for k in kinds} for v in names}
    params, times = {}, {v: [] for v in names}
    work = Path(tempfile.mkdtemp(prefix="kd-bench-frontier-"))
    old = os.getcwd()
    os.chdir(work)  # checkpoints go under ./data/.checkpoints: keep them here
    try:
        for seed in args.seeds:
            cfg = parse_config(seed_params(base, names, seed))
            specs = work / "baseline_specs" / str(seed)  # what each baseline trains, this seed
            baseline_specs.run(cfg, specs)
            for v in names:
                t0 = time.perf_counter()
                for kind in kinds:
                    stage, kwargs = ((student, {"shards": shards}) if kind == "student"
                                     else (baseline, {"specs": specs}))
                    m = stage.run(cfg, v, out_root=work / kind / str(seed), prepared=prepared,
                                  **kwargs)
                    runs[v][kind]["test_accuracy"].append(m["test_accuracy"])
                    runs[v][kind]["val_accuracy"].append(m.get("val_accuracy"))
                    params[v] = m["params"]
                times[v].append(round(time.perf_counter() - t0, 1))
                print(f"seed {seed} {v}: " + ", ".join(
                    f"{k} test {runs[v][k]['test_accuracy'][-1]:.4f} val "
                    f"{runs[v][k]['val_accuracy'][-1]:.4f}" for k in kinds), flush=True)
    finally:
        os.chdir(old)
        shutil.rmtree(work, ignore_errors=True)

    out_variants = {}
    for v in names:
        s = runs[v]["student"]
        row = {"params": params[v], "fewer": ensemble["params"] / params[v],
               **{k: {m: summary(x) for m, x in runs[v][k].items()} for k in kinds},
               "val_retained": statistics.fmean(s["val_accuracy"]) / ensemble["val_accuracy"],
               "test_retained": statistics.fmean(s["test_accuracy"])
               / ensemble["test_accuracy"],
               "train_time_s": times[v]}
        if "baseline" in kinds:
            diff = list(np.subtract(s["test_accuracy"], runs[v]["baseline"]["test_accuracy"]))
            row["student_minus_baseline"] = {**summary([float(d) for d in diff]),
                                             "wins": int(sum(d > 0 for d in diff))}
        out_variants[v] = row
    shippable = [v for v in names if not cfg0.student.variant(v).is_control]  # as choose does
    choice = pick({v: out_variants[v]["student"]["val_accuracy"]["mean"] for v in shippable},
                  params, ensemble["val_accuracy"], cfg0.report.retain_target)
    out = {"seeds": args.seeds, "ensemble": ensemble, "variants": out_variants,
           "chosen": choice,
           "machine": {"cpu": platform.processor() or platform.machine(),
                       "cpu_count": os.cpu_count(), "torch_threads": 1,
                       "loadavg": [round(x, 2) for x in os.getloadavg()]}}
    print(f"\n{'variant':<16}{'params':>8}{'fewer':>8}  {'val (mean±sd)':>16}"
          f"{'test (mean±sd)':>18}{'baseline test':>16}{'val kept':>10}")
    for v, r in sorted(out_variants.items(), key=lambda kv: kv[1]["params"]):
        sv, st_ = r["student"]["val_accuracy"], r["student"]["test_accuracy"]
        b = (f"{100 * r['baseline']['test_accuracy']['mean']:.2f}" if "baseline" in r
             else "-")
        print(f"{v:<16}{r['params']:>8,}{r['fewer']:>7.1f}x  "
              f"{100 * sv['mean']:>8.2f} ± {100 * sv['std']:.2f}"
              f"{100 * st_['mean']:>10.2f} ± {100 * st_['std']:.2f}{b:>16}"
              f"{r['val_retained']:>10.4f}")
    print(f"chosen on validation: {choice['variant']} ({choice['reason']})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
