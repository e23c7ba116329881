"""Benchmark MUNGE transfer sets: KD on the labeled rows alone vs KD with 10x and 50x MUNGE rows
vs (digits) real unlabeled rows, over several seeds; and the time MUNGE takes.

    python benchmarks/munge.py                  # ~4 min at 1 thread; --quick: 1 seed
    python benchmarks/munge.py --seeds 5 --out benchmarks/results/munge.json

Data sets, each seed drawing its own splits, teachers, MUNGE rows and student initialisation:
- digits: scikit-learn's 8x8 digits with `unlabeled_fraction: U` (default 0.7, so labeled rows
  are scarce). Every arm uses the same labeled rows and the same teachers; the arms without
  real unlabeled rows get a copy of the prepared data whose unlabeled split is empty (what
  `unlabeled_fraction: 0` would give with these labeled rows), and the upper bound exports the
  real unlabeled rows.
- tabular: scikit-learn's bundled breast-cancer data (569 rows, 30 scalar columns) written as
  Parquet files (`data.source: parquet`, one column per attribute, `normalize: per_feature`).
  No real unlabeled rows exist, so no upper bound.

Each arm runs the stages in-process in a temp dir with tracking off (stages.prepare/teacher/
transfer/export/student .run). Students get the same number of optimizer steps in every arm
(`--steps`), so 50x is not simply "more training". Test accuracy only reports; the MUNGE
params are the defaults of params.yaml, not tuned on test rows.

Also timed: `stages.transfer.run` generating 100,000 rows from the digits labeled rows and from
the default MNIST-1D labeled rows, against one teacher member's training in this run (digits)
and in benchmarks/results/teacher.json (the default cnn1d member, ~28 s).

Prints and writes JSON: per data set and arm, test accuracy per seed, mean, std; the gap
recovered; times; the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ["KD_TRACKING"] = "0"  # a benchmark is not an experiment: no MLflow runs
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402

from kd.config import parse_config  # noqa: E402
from kd.prepared import split_rows  # noqa: E402
from stages import export, prepare, student, teacher, transfer  # noqa: E402

# teachers: a small conv net for the 8x8 images (stronger than any MLP the student could copy
# from a few rows), an MLP for the scalar columns
MEMBERS = {"digits": {"arch": "cnn2d", "knobs": {"channels": 32, "depth": 2, "kernel": 3},
                      "train": {"epochs": 60, "batch_size": 32, "lr": 0.003}},
           "tabular": {"arch": "mlp", "knobs": {"depth": 2, "width": 256, "dropout": 0.2},
                       "train": {"epochs": 60, "batch_size": 64, "lr": 0.003}}}
STUDENT = {"arch": "mlp", "knobs": {"depth": 1, "width": 16},
           "train": {"epochs": 1, "batch_size": 64, "lr": 0.01}}
VARIANT = "student"  # the one student variant every arm trains


def params(kind: str, data: dict, seed: int, members: int) -> dict:
    member = MEMBERS[kind]
    return {"data": {**data, "split_seed": seed},
            "teacher": {"members": {f"m{i}": {**member, "train": {**member["train"],
                                                                   "seed": 10 * seed + i}}
                                    for i in range(members)}},
            "export": {"rows_per_shard": 50_000, "row_group_size": 4096, "batch_size": 2048},
            "student": {"defaults": {**STUDENT, "temperature": 4.0, "alpha": 0.5,
                                     "train": {**STUDENT["train"], "seed": seed}},
                        "variants": {VARIANT: {}}},
            "transfer": {"seed": seed}, "tracking": {"enabled": False},
            "runtime": {"threads": 1, "device": "cpu"}}


def breast_cancer_files(root: Path, seed: int) -> dict:
    """labeled.parquet / test.parquet (80/20, stratified by `seed`), one column per attribute."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    d = load_breast_cancer()
    cols = [f"f{i:02d}" for i in range(d.data.shape[1])]
    lab, test = train_test_split(np.arange(len(d.target)), test_size=0.2, random_state=seed,
                                 stratify=d.target)
    for name, idx in (("labeled", lab), ("test", test)):
        table = pa.table({**{c: d.data[idx, i] for i, c in enumerate(cols)},
                          "y": d.target[idx].astype(np.int64), "id": idx.astype(np.int64)})
        pq.write_table(table, root / f"{name}.parquet")
    return {"source": "parquet", "labeled": str(root / "labeled.parquet"),
            "test": str(root / "test.parquet"), "features": cols, "label": "y", "id": "id",
            "normalize": "per_feature"}


def without_unlabeled(prepared: Path, out: Path) -> Path:
    """A copy of the prepared data whose unlabeled split is empty (same labeled rows)."""
    shutil.copytree(prepared, out)
    t = pq.read_table(prepared / "unlabeled.parquet")
    pq.write_table(t.slice(0, 0), out / "unlabeled.parquet")
    return out


def ensemble_accuracy(cfg, prepared: Path, teachers: Path) -> float:
    from kd.models import load_model
    from kd.prepared import read_split
    from kd.train.loop import predict

    test, _ = read_split(prepared, "test")
    probs = []
    for name in cfg.teacher.members:
        model, spec = load_model(teachers / name)
        x = torch.from_numpy(test.x).view(len(test.x), *spec["input_shape"])  # (N, *shape)
        probs.append(predict(model, x).softmax(1))
    return float((torch.stack(probs).mean(0).argmax(1).numpy() == test.y).mean())


def student_arm(cfg, work: Path, name: str, prepared: Path, steps: int,
                size: int = 0) -> dict:
    """Transfer set (size rows of MUNGE, or none) -> export -> student; its test accuracy."""
    arm = work / name
    tr = {**cfg.transfer.model_dump(), "method": "munge" if size else "none",
          "rows": max(size, 1)}
    c = cfg.model_copy(update={"transfer": cfg.transfer.model_validate(tr)})
    t0 = time.perf_counter()
    transfer.run(c, arm / "transfer", prepared)
    gen_s = time.perf_counter() - t0
    export.run(c, arm / "shards", prepared, work / "teachers", transfer=arm / "transfer")
    rows = split_rows(arm / "transfer", "synthetic") + split_rows(prepared, "unlabeled") + \
        split_rows(prepared, "labeled") - json.loads((prepared / "meta.json").read_text())[
            "rows"]["val"]
    st = c.student.variant(VARIANT)
    epochs = max(1, round(steps / max(1, -(-rows // st.train.batch_size))))
    c = c.model_copy(update={"student": c.student.model_copy(
        update={"variants": {VARIANT: {"train": {"epochs": epochs}}}})})
    m = student.run(c, VARIANT, arm / "student", arm / "shards", prepared)
    shutil.rmtree(arm, ignore_errors=True)
    return {"test_accuracy": m["test_accuracy"], "val_accuracy": m.get("val_accuracy"),
            "train_rows": rows, "epochs": epochs, "transfer_s": round(gen_s, 3)}


def run_seed(kind: str, seed: int, args, work: Path) -> dict:
    work.mkdir(parents=True)
    os.chdir(work)  # checkpoints go under ./data/.checkpoints
    if kind == "digits":
        data = {"source": "digits", "unlabeled_fraction": args.unlabeled_fraction}
    else:
        data = breast_cancer_files(work, seed)
    cfg = parse_config(params(kind, data, seed, args.members))
    full = work / "prepared"
    meta = prepare.run(cfg, full)
    n_train = meta["rows"]["labeled"] - meta["rows"]["val"]
    t0 = time.perf_counter()
    for member in cfg.teacher.members:
        teacher.run(cfg, member, work / "teachers", full)
    member_s = (time.perf_counter() - t0) / len(cfg.teacher.members)
    labeled_only = without_unlabeled(full, work / "prepared-labeled")
    out = {"ensemble_test_accuracy": ensemble_accuracy(cfg, full, work / "teachers"),
           "teacher_member_train_s": round(member_s, 3), "labeled_train_rows": n_train}
    arms = {"kd_labeled_only": (labeled_only, 0)}
    arms |= {f"munge_{k}x": (labeled_only, k * n_train) for k in args.multiples}
    if kind == "digits" and meta["rows"]["unlabeled"]:
        arms["real_unlabeled"] = (full, 0)
    for name, (prepared, size) in arms.items():
        out[name] = student_arm(cfg, work, name, prepared, args.steps, size)
        print(f"[{kind} seed {seed}] {name}: {out[name]}", flush=True)
    return out


def summarise(runs: list[dict]) -> dict:
    arms = [k for k, v in runs[0].items() if isinstance(v, dict)]
    res = {}
    for a in arms:
        acc = np.array([r[a]["test_accuracy"] for r in runs])
        res[a] = {"test_accuracy": acc.round(4).tolist(), "mean": round(float(acc.mean()), 4),
                  "std": round(float(acc.std(ddof=1)) if len(acc) > 1 else 0.0, 4),
                  "train_rows": runs[0][a]["train_rows"], "epochs": runs[0][a]["epochs"]}
    ens = np.array([r["ensemble_test_accuracy"] for r in runs])
    res["ensemble"] = {"mean": round(float(ens.mean()), 4), "test_accuracy": ens.round(4).tolist()}
    if "real_unlabeled" in res:  # share of the (labeled-only -> real unlabeled) gap recovered
        lo, hi = res["kd_labeled_only"]["mean"], res["real_unlabeled"]["mean"]
        for a in arms:
            if a.startswith("munge"):
                res[a]["gap_recovered"] = round((res[a]["mean"] - lo) / (hi - lo), 3) \
                    if hi > lo else None
        # paired, per seed: the same teachers, splits and student seed in every arm
        per_seed = [(r[a]["test_accuracy"] - r["kd_labeled_only"]["test_accuracy"])
                    for r in runs for a in ["munge_50x"] if a in r]
        res["paired_munge_50x_minus_labeled"] = [round(v, 4) for v in per_seed]
    return res


def time_generation(work: Path) -> dict:
    """stages.transfer.run making 100,000 rows (NN search, passes, Parquet write)."""
    out = {}
    for source in ("digits", "mnist1d"):
        cfg = parse_config({"data": {"source": source}, "tracking": {"enabled": False},
                            "transfer": {"method": "munge", "rows": 100_000}})
        prepared = work / f"time-{source}"
        prepare.run(cfg, prepared)
        t0 = time.perf_counter()
        info = transfer.run(cfg, work / f"time-{source}-transfer", prepared)
        out[source] = {"rows": info["rows"], "source_rows": info["source_rows"],
                       "features": len(np.zeros(json.loads((prepared / "meta.json").read_text())
                                                ["feature_shape"]).ravel()),
                       "seconds": round(time.perf_counter() - t0, 3),
                       "changed_fraction": info["changed_fraction"]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="1 seed, 2 members")
    ap.add_argument("--members", type=int, default=3, help="teacher ensemble members")
    ap.add_argument("--steps", type=int, default=1500, help="student optimizer steps per arm")
    ap.add_argument("--multiples", type=int, nargs="+", default=[10, 50])
    ap.add_argument("--unlabeled-fraction", type=float, default=0.7)
    ap.add_argument("--datasets", nargs="+", default=["digits", "tabular"])
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.quick:
        args.seeds, args.members = 1, 2
    out_path = (args.out or ROOT / "benchmarks/results" /
                ("munge-quick.json" if args.quick else "munge.json")).resolve()
    torch.set_num_threads(1)
    cwd, work = os.getcwd(), Path(tempfile.mkdtemp(prefix="kd-bench-munge-"))
    t_all = time.perf_counter()
    result: dict = {"args": {k: v for k, v in vars(args).items() if k != "out"}}
    try:
        for kind in args.datasets:
            runs = [run_seed(kind, s, args, work / f"{kind}-{s}") for s in range(args.seeds)]
            result[kind] = {"summary": summarise(runs), "runs": runs}
        os.chdir(work)
        result["generation_100k"] = time_generation(work)
    finally:
        os.chdir(cwd)
        shutil.rmtree(work, ignore_errors=True)
    member = {k: np.mean([r["teacher_member_train_s"] for r in result[k]["runs"]])
              for k in args.datasets}
    default = json.loads((ROOT / "benchmarks/results/teacher.json").read_text())
    result["teacher_member_train_s"] = {
        **{k: round(float(v), 3) for k, v in member.items()},
        "default_cnn1d_from_teacher_json": default["members"]["cnn_0"]["train_time_s"]}
    if "digits" in result:
        s = result["digits"]["summary"]
        result["targets"] = {
            "munge_recovers_half_the_gap_digits": any(
                (s[a].get("gap_recovered") or 0) >= 0.5 for a in s if a.startswith("munge")),
            "generation_under_a_teacher_member": result["generation_100k"]["digits"]["seconds"]
            < result["teacher_member_train_s"]["digits"]}
    result["elapsed_s"] = round(time.perf_counter() - t_all, 1)
    result["machine"] = {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                         "torch_version": torch.__version__,
                         "python": platform.python_version(),
                         "load_avg_1m_at_end": round(os.getloadavg()[0], 2)}
    text = json.dumps(result, indent=2)
    print(json.dumps({k: v for k, v in result.items() if k not in ("digits", "tabular")} | {
        k: result[k]["summary"] for k in args.datasets}, indent=2))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(text + "\n")


if __name__ == "__main__":
    main()
