"""Benchmark stored views (export.views, kd/augment.py): the same student with and without the
ensemble's logits on augmented views of its rows, over several seeds, paired.

    python benchmarks/views.py --target mnist1d --seeds 0 1 2          # issue 27's target 1
    python benchmarks/views.py --target digits --seeds 0 1 2           # target 2
    python benchmarks/views.py --quick --target mnist1d --out /tmp/v.json

Each seed draws its own validation split, teachers and student initialisation; within a seed
every arm reads the same teachers and the same shard set (one export with views), so the
per-seed differences are paired.
- mnist1d: the default data and teacher recipe (cnn1d members, shift 6) with fewer members,
  epochs and unlabeled rows than params.yaml (what this machine affords; the flags say how
  many); the student is `small`'s network (cnn1d, 8 channels: 1,874 parameters). Arms:
  `no_views` (student.views: none, the control), `views` (one of K + 1 views a row each epoch:
  as many steps as no_views; the label term on the stored row alone), `views_unmixed_labels`
  (the same, with the label term on every view without a mixup partner too) and, with `--all`,
  `views_all` (every view each epoch: K + 1 times the steps) beside `no_views_as_many_steps`
  (the control with as many steps). With --mixup, `views_mixed_labels` (student.view_labels:
  mixed: a mixup view of two labeled rows trains on both labels, weighed by lam) instead of
  `views_unmixed_labels`.
- The default recipe itself (params.yaml's 5 members, 40,000 unlabeled rows, the teachers
  trained once and every student seed paired on them, as benchmarks/frontier.py does), the
  online-distillation arm and the loader's throughput: benchmarks/views_default.py.
- digits: the setting of benchmarks/munge.py: digits with no real unlabeled rows (the
  labeled training rows alone), the cnn2d recipe of examples/digits.yaml. Arms: labeled rows
  alone, views with mixup partners from the labeled rows (export.partners: labeled), MUNGE at
  the same number of teacher forward passes (K x the labeled rows), and the real unlabeled
  rows (the upper bound). The share of the gap (labeled alone -> real unlabeled) recovered.
Choices read validation rows; test rows only report. One torch thread.

Prints and writes JSON: per arm, validation and test accuracy per seed, mean and std; paired
per-seed test differences from the control with a t interval; shard bytes per row and per view;
export and student times; the machine.
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
os.environ["KD_TRACKING"] = "0"  # a benchmark is not an experiment: no MLflow runs
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

from kd.config import deep_merge, parse_config  # noqa: E402
from kd.targets.manifest import read_manifest  # noqa: E402
from kd.targets.reader import ShardReader  # noqa: E402
from stages import export, prepare, student, teacher, transfer  # noqa: E402

VARIANT = "student"
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())
DIGITS = yaml.safe_load((ROOT / "examples/digits.yaml").read_text())
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
        9: 2.262, 10: 2.228, 11: 2.201, 12: 2.179, 14: 2.145, 19: 2.093}


def paired(diffs: list[float]) -> dict:
    """Mean of per-seed differences, std, and a 95% t interval over the seeds."""
    n, mean = len(diffs), statistics.fmean(diffs)
    sd = statistics.stdev(diffs) if n > 1 else 0.0
    half = T975.get(n - 1, 2.0) * sd / n ** 0.5 if n > 1 else float("nan")
    return {"mean": mean, "std": sd, "ci95": [mean - half, mean + half],
            "wins": sum(d > 0 for d in diffs), "per_seed": diffs}


def summary(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0, "per_seed": values}


def raw_params(args, seed: int) -> dict:
    epochs = {"train": {"epochs": args.teacher_epochs}}
    if args.target == "mnist1d":
        member = deep_merge(PARAMS["teacher"]["defaults"], epochs)
        st = deep_merge(PARAMS["student"]["defaults"], {"knobs": {"channels": 8}})
        data = {**PARAMS["data"], "unlabeled_size": args.unlabeled, "split_seed": seed}
        export_ = {**PARAMS["export"], "augment": {"shift": args.shift, "noise": args.noise}}
    else:
        member = deep_merge(DIGITS["teacher"]["defaults"], epochs)
        st = DIGITS["student"]["defaults"]
        data = {**DIGITS["data"], "split_seed": seed, "unlabeled_fraction": 0.6,
                "val_fraction": 0.5}  # benchmarks/munge.py's split: ~179 labeled training rows
        export_ = {**DIGITS["export"], "augment": {"shift": args.shift, "noise": args.noise},
                   "partners": "labeled"}
    export_ |= {"rows_per_shard": 200_000, "row_group_size": 4096, "views": args.views,
                "mixup": args.mixup, "seed": seed}
    st = deep_merge(st, {"train": {"seed": seed, "epochs": args.student_epochs}})
    return {"data": data, "teacher": {"defaults": member, "members": {
                f"m{i}": {"train": {"seed": 10 * seed + i}} for i in range(args.members)}},
            "export": export_, "student": {"defaults": st, "variants": {VARIANT: {}}},
            "tracking": {"enabled": False}, "runtime": {"threads": 1, "device": "cpu"}}


def train_student(raw: dict, work: Path, name: str, shards: Path, prepared: Path,
                  steps: int = 0, **variant) -> dict:
    """One student arm; with `steps`, as many epochs as make about that many optimizer steps
    over the rows this arm reads an epoch (arms with more rows get no more training)."""
    c = parse_config(deep_merge(raw, {"student": {"variants": {VARIANT: variant}}}))
    if steps:
        views = {"none": "base"}.get(variant.get("views", "sample"), variant.get("views", "sample"))
        rows = ShardReader(shards, views=views).num_rows(drop_val=True)
        per_epoch = -(-rows // c.student.variant(VARIANT).train.batch_size)
        variant = deep_merge(variant, {"train": {"epochs": max(1, round(steps / per_epoch))}})
        c = parse_config(deep_merge(raw, {"student": {"variants": {VARIANT: variant}}}))
    t0 = time.perf_counter()
    m = student.run(c, VARIANT, work / name, shards, prepared)
    return {"test_accuracy": m["test_accuracy"], "val_accuracy": m.get("val_accuracy"),
            "val_agreement": m.get("val_agreement"), "train_s": time.perf_counter() - t0,
            "epochs": c.student.variant(VARIANT).train.epochs}


def shard_bytes(shards: Path) -> dict:
    """Bytes per stored row and per view: the views' columns measured apart."""
    m = read_manifest(shards)
    views = sum(m["totals"].get("views", {}).values())
    rows = m["totals"]["rows"] - views
    total = sum(s["bytes"] for s in m["shards"])
    cols = {}
    for s in m["shards"]:
        meta = pq.ParquetFile(shards / s["file"]).metadata
        for g in range(meta.num_row_groups):
            rg = meta.row_group(g)
            for c in range(rg.num_columns):
                col = rg.column(c)
                key = col.path_in_schema.split(".")[0]
                cols[key] = cols.get(key, 0) + col.total_compressed_size
    return {"rows": rows, "views": views, "bytes": total, "column_bytes": cols}


def one_seed(args, seed: int, work: Path) -> dict:
    work.mkdir(parents=True)
    os.chdir(work)
    raw = raw_params(args, seed)
    cfg = parse_config(raw)
    prepared = work / "prepared"
    prepare.run(cfg, prepared)
    t0 = time.perf_counter()
    for member in cfg.teacher.members:
        teacher.run(cfg, member, work / "teachers", prepared)
    out = {"teacher_s": time.perf_counter() - t0, "arms": {}}
    arms = out["arms"]
    if args.target == "digits":
        labeled_only = work / "prepared-labeled"
        shutil.copytree(prepared, labeled_only)
        t = pq.read_table(prepared / "unlabeled.parquet")
        pq.write_table(t.slice(0, 0), labeled_only / "unlabeled.parquet")
        real = work / "real"
        export.run(parse_config({**raw, "export": {**raw["export"], "views": 0}}), real,
                   prepared, work / "teachers")
        arms["real_unlabeled"] = train_student(raw, work, "s-real", real, prepared, args.steps)
        prepared = labeled_only
    t0 = time.perf_counter()
    shards = work / "shards"
    em = export.run(cfg, shards, prepared, work / "teachers")
    out["export_s"], out["shards"] = time.perf_counter() - t0, shard_bytes(shards)
    # target 4: the export's rows/s over its members' forward rows/s (1: all forward)
    out["export_vs_forward"] = em["rows_per_s"] / em["forward_rows_per_s"]
    arms["no_views"] = train_student(raw, work, "s-none", shards, prepared, args.steps,
                                     views="none")
    arms["views"] = train_student(raw, work, "s-sample", shards, prepared, args.steps,
                                  views="sample")
    if not args.mixup:  # with mixup every view is mixed: the same arm as `views`
        arms["views_unmixed_labels"] = train_student(raw, work, "s-unmixed", shards, prepared,
                                                     args.steps, views="sample",
                                                     view_labels="unmixed")
    else:  # a mixup view of two labeled rows: lam * CE(row's label) + (1 - lam) * CE(partner's)
        arms["views_mixed_labels"] = train_student(raw, work, "s-mixed", shards, prepared,
                                                   args.steps, views="sample", view_labels="mixed")
    if args.all:  # every view each epoch: K + 1 times the steps; the control gets as many
        arms["views_all"] = train_student(raw, work, "s-all", shards, prepared, args.steps,
                                          views="all")
        long = {"train": {"epochs": (args.views + 1) * args.student_epochs}}
        arms["no_views_as_many_steps"] = train_student(
            raw, work, "s-none-long", shards, prepared, (args.views + 1) * args.steps,
            views="none", **({} if args.steps else long))
    if args.target == "digits":  # MUNGE at the same teacher forward passes as the views
        n_train = out["shards"]["rows"] - read_manifest(shards)["totals"]["val"]
        mr = deep_merge(raw, {"export": {"views": 0}, "transfer": {
            "method": "munge", "rows": args.views * n_train, "seed": seed}})
        transfer.run(parse_config(mr), work / "transfer", prepared)
        munge = work / "munge"
        export.run(parse_config(mr), munge, prepared, work / "teachers", transfer=work / "transfer")
        arms["munge"] = train_student(mr, work, "s-munge", munge, prepared, args.steps)
    for name, a in arms.items():
        print(f"[{args.target} seed {seed}] {name}: val {a['val_accuracy']:.4f} test "
              f"{a['test_accuracy']:.4f} ({a['train_s']:.0f} s)", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", choices=["mnist1d", "digits"], default="mnist1d")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--members", type=int, default=3)
    ap.add_argument("--teacher-epochs", type=int, default=30)
    ap.add_argument("--student-epochs", type=int, default=20)
    ap.add_argument("--unlabeled", type=int, default=4000, help="mnist1d unlabeled rows")
    ap.add_argument("--steps", type=int, default=0,
                    help="student optimizer steps per arm (0: --student-epochs for every arm)")
    ap.add_argument("--views", type=int, default=4)
    ap.add_argument("--shift", type=int, default=6)
    ap.add_argument("--noise", type=float, default=0.0)
    ap.add_argument("--mixup", type=float, default=0.0)
    ap.add_argument("--all", action="store_true", help="also train on every view each epoch")
    ap.add_argument("--quick", action="store_true", help="2 members, few epochs: a smoke run")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/views.json")
    args = ap.parse_args()
    if args.quick:
        args.members, args.teacher_epochs, args.student_epochs = 2, 3, 3
    torch.set_num_threads(1)
    runs, t0 = {}, time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            runs[seed] = one_seed(args, seed, Path(tmp) / f"seed{seed}")
        os.chdir(ROOT)
    arms = runs[args.seeds[0]]["arms"]
    result = {"settings": {k: (str(v) if isinstance(v, Path) else v)
                           for k, v in vars(args).items()}, "arms": {}, "paired": {}}
    for name in arms:
        result["arms"][name] = {k: summary([runs[s]["arms"][name][k] for s in args.seeds])
                                for k in ("val_accuracy", "test_accuracy")}
    base = "no_views"
    for name in arms:
        if name != base:
            for split in ("val", "test"):
                result["paired"][f"{name}-{base}.{split}"] = paired(
                    [runs[s]["arms"][name][f"{split}_accuracy"]
                     - runs[s]["arms"][base][f"{split}_accuracy"] for s in args.seeds])
    if "real_unlabeled" in arms:  # the share of the gap recovered, per arm (test, means)
        lo = result["arms"][base]["test_accuracy"]["mean"]
        hi = result["arms"]["real_unlabeled"]["test_accuracy"]["mean"]
        result["gap_recovered"] = {n: (result["arms"][n]["test_accuracy"]["mean"] - lo)
                                   / (hi - lo) if hi != lo else None for n in arms}
    result["runs"] = {str(s): {k: v for k, v in r.items()} for s, r in runs.items()}
    result["elapsed_s"] = time.perf_counter() - t0
    result["machine"] = {"python": platform.python_version(), "torch": torch.__version__,
                         "cpu": platform.processor() or platform.machine(), "threads": 1}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for k, v in result["paired"].items():
        print(f"{k}: {v['mean']:+.4f} (95% CI {v['ci95'][0]:+.4f} .. {v['ci95'][1]:+.4f}, "
              f"wins {v['wins']}/{len(args.seeds)})")
    print(f"-> {args.out} ({result['elapsed_s']:.0f} s)")


if __name__ == "__main__":
    main()
