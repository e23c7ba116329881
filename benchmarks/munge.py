"""Benchmark MUNGE transfer sets: KD on the labeled rows alone vs KD with 10x and 50x MUNGE rows
vs (digits) real unlabeled rows, over several seeds, with MUNGE's p and s chosen on validation
rows; and the time MUNGE takes.

    python benchmarks/munge.py                  # 10 seeds, ~25 min at 1 thread
    python benchmarks/munge.py --quick --datasets digits --out /tmp/x.json   # 2 seeds, small grid

Each seed draws its own splits, teachers, MUNGE rows and student initialisation.
- digits: scikit-learn's 8x8 digits, the project's digits setup (examples/digits.yaml: cnn2d
  teachers, the cnn2d student of ~1,000 parameters, T = 4, alpha = 0.9), 3 members. Of the 1,797
  images, 360 are test rows; the other 1,437 (the pool an `unlabeled_fraction: 0` user would
  hold, all labeled) are split by `data.unlabeled_fraction` / `data.val_fraction` (defaults 0.6
  and 0.5) into ~1,078 real unlabeled rows, ~180 validation rows and ~179 labeled training
  rows. Every arm uses the same labeled training rows, validation rows and teachers; the arms
  without real unlabeled rows get a copy of the prepared data whose unlabeled split is empty
  (what `unlabeled_fraction: 0` gives with these labeled rows), the upper bound exports the real
  unlabeled rows. 180 validation rows (not the 18 of the first version of this benchmark) are
  what lets p and s be chosen.
- tabular: scikit-learn's bundled breast-cancer data (569 rows, 30 scalar columns) written as
  Parquet files (`data.source: parquet`, `normalize: per_feature`), MLP teachers, an MLP student
  with 16 hidden units. No real unlabeled rows exist, so no upper bound.

The choice of p and s: every (p, s) of the grid makes a 10x MUNGE set on every seed; the pair
with the best mean validation accuracy over the seeds (ties: validation agreement with the
ensemble, then validation NLL) is the one the 10x and 50x arms report; params.yaml's defaults
(p 0.5, s 10) are reported beside it. Test rows only report. Students get the same number of
optimizer steps in every arm (`--steps`), so 50x is not simply "more training".

Measured too, per arm: what an attribute swap does to a row (transfer meta.json's
`changed_fraction`, `mean_abs_change`), and how close the transfer set comes to inputs it never
saw: the mean distance from each validation row to its nearest training input of that arm
(Euclidean on min-max scaled features, as MUNGE's neighbour search). Also timed:
`stages.transfer.run` generating 100,000 rows from the digits labeled rows and from the default
MNIST-1D labeled rows, against one teacher member's training.

Prints and writes JSON: per data set and arm, test and validation accuracy per seed, mean, std;
paired per-seed differences from KD on labeled rows; the share of the gap recovered with a
bootstrap interval over seeds; the grid; times; the machine.
"""

from __future__ import annotations

import argparse
import itertools
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
import yaml  # noqa: E402
from sklearn.neighbors import NearestNeighbors  # noqa: E402

from kd.config import deep_merge, parse_config  # noqa: E402
from kd.prepared import read_split, split_rows  # noqa: E402
from stages import export, prepare, student, teacher, transfer  # noqa: E402

VARIANT = "student"  # the one student variant every arm trains
DIGITS = yaml.safe_load((ROOT / "examples/digits.yaml").read_text())
MLP16 = {"arch": "mlp", "knobs": {"depth": 1, "width": 16}, "temperature": 4.0, "alpha": 0.5,
         "train": {"epochs": 1, "batch_size": 64, "lr": 0.01}}
TABULAR_MEMBER = {"arch": "mlp", "knobs": {"depth": 2, "width": 256, "dropout": 0.2},
                  "train": {"epochs": 60, "batch_size": 64, "lr": 0.003}}
DEFAULT_PS = (0.5, 10.0)  # params.yaml's transfer.p, transfer.s


def params(kind: str, data: dict, seed: int, args) -> dict:
    """The raw params of one seed: data, teachers, the student variant, tracking off."""
    if kind == "digits":
        member, st = DIGITS["teacher"]["defaults"], DIGITS["student"]["defaults"]
        export_ = {**DIGITS["export"], "rows_per_shard": 50_000}
    else:
        member, st = TABULAR_MEMBER, MLP16
        export_ = {"rows_per_shard": 50_000, "row_group_size": 4096, "batch_size": 2048}
    if kind == "digits" and args.student == "mlp16":
        st = MLP16
    return {"data": {**data, "split_seed": seed},
            "teacher": {"defaults": member,
                        "members": {f"m{i}": {"train": {"seed": 10 * seed + i}}
                                    for i in range(args.members)}},
            "export": export_,
            "student": {"defaults": deep_merge(st, {"train": {"seed": seed}}),
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
    return {"source": "parquet", "inputs": str(root), "labeled": str(root / "labeled.parquet"),
            "test": str(root / "test.parquet"), "features": cols, "label": "y", "id": "id",
            "normalize": "per_feature"}


def without_unlabeled(prepared: Path, out: Path) -> Path:
    """A copy of the prepared data whose unlabeled split is empty (same labeled rows)."""
    shutil.copytree(prepared, out)
    t = pq.read_table(prepared / "unlabeled.parquet")
    pq.write_table(t.slice(0, 0), out / "unlabeled.parquet")
    return out


def ensemble_accuracy(cfg, prepared: Path, teachers: Path) -> dict:
    """The ensemble's (mean of member probabilities) accuracy on validation and test rows."""
    from kd.models import load_model
    from kd.train.loop import predict

    labeled, is_val = read_split(prepared, "labeled")
    test, _ = read_split(prepared, "test")
    out = {}
    for split, x, y in (("val", labeled.x[is_val], labeled.y[is_val]), ("test", test.x, test.y)):
        probs = []
        for name in cfg.teacher.members:
            model, spec = load_model(teachers / name)
            xt = torch.from_numpy(x).view(len(x), *spec["input_shape"])  # (N, *shape)
            probs.append(predict(model, xt).softmax(1))
        out[f"{split}_accuracy"] = float((torch.stack(probs).mean(0).argmax(1).numpy()
                                          == y).mean())
    return out


def val_coverage(prepared: Path, transfer_dir: Path) -> float:
    """Mean distance from each validation row to the nearest training input of this arm
    (labeled training, real unlabeled and synthetic rows), on features min-max scaled by the
    labeled training rows: how close the transfer set comes to inputs it never saw."""
    labeled, is_val = read_split(prepared, "labeled")
    parts = [labeled.x[~is_val], read_split(prepared, "unlabeled")[0].x,
             read_split(transfer_dir, "synthetic")[0].x]
    train = np.concatenate([p for p in parts if len(p)])  # (N, F)
    lo = labeled.x[~is_val].min(0)
    span = labeled.x[~is_val].max(0) - lo
    span[span == 0] = 1.0
    nn = NearestNeighbors(n_neighbors=1, algorithm="brute").fit((train - lo) / span)
    dist, _ = nn.kneighbors((labeled.x[is_val] - lo) / span)
    return float(dist.mean())


def student_arm(raw: dict, work: Path, name: str, prepared: Path, steps: int,
                munge: tuple[int, float, float] | None = None) -> dict:
    """Transfer set (MUNGE rows, p, s; or none) -> export -> student: its accuracies."""
    arm = work / name
    tr = ({"method": "munge", "rows": munge[0], "p": munge[1], "s": munge[2]} if munge
          else {"method": "none", "rows": 1})
    raw = deep_merge(raw, {"transfer": tr})
    c = parse_config(raw)
    t0 = time.perf_counter()
    info = transfer.run(c, arm / "transfer", prepared)
    gen_s = time.perf_counter() - t0
    export.run(c, arm / "shards", prepared, work / "teachers", transfer=arm / "transfer")
    val_rows = json.loads((prepared / "meta.json").read_text())["rows"]["val"]
    rows = split_rows(arm / "transfer", "synthetic") + split_rows(prepared, "unlabeled") + \
        split_rows(prepared, "labeled") - val_rows
    epochs = max(1, round(steps / max(1, -(-rows // c.student.variant(VARIANT).train.batch_size))))
    c = parse_config(deep_merge(raw, {"student": {"variants": {VARIANT: {
        "train": {"epochs": epochs}}}}}))
    m = student.run(c, VARIANT, arm / "student", arm / "shards", prepared)
    out = {"test_accuracy": m["test_accuracy"], "val_accuracy": m.get("val_accuracy"),
           "val_agreement": m.get("val_agreement"), "val_nll": m.get("val_nll"),
           "train_rows": rows, "epochs": epochs, "transfer_s": round(gen_s, 3),
           "val_nn_distance": round(val_coverage(prepared, arm / "transfer"), 4)}
    out |= {k: info[k] for k in ("changed_fraction", "mean_abs_change") if k in info}
    shutil.rmtree(arm, ignore_errors=True)
    return out


def grid_name(p: float, s: float, multiple: int) -> str:
    return f"munge_{multiple}x_p{p:g}_s{s:g}"


def setup_seed(kind: str, seed: int, args, work: Path) -> dict:
    """Prepare, teachers, and the arms that do not depend on the choice of p and s."""
    work.mkdir(parents=True)
    os.chdir(work)  # checkpoints go under ./data/.checkpoints
    if kind == "digits":
        data = {**DIGITS["data"], "unlabeled_fraction": args.unlabeled_fraction,
                "val_fraction": args.val_fraction}
    else:
        data = breast_cancer_files(work, seed)
    raw = params(kind, data, seed, args)
    cfg = parse_config(raw)
    full = work / "prepared"
    meta = prepare.run(cfg, full)
    n_train = meta["rows"]["labeled"] - meta["rows"]["val"]
    t0 = time.perf_counter()
    for member in cfg.teacher.members:
        teacher.run(cfg, member, work / "teachers", full)
    member_s = (time.perf_counter() - t0) / len(cfg.teacher.members)
    labeled_only = without_unlabeled(full, work / "prepared-labeled")
    ens = ensemble_accuracy(cfg, full, work / "teachers")
    out = {"ensemble_test_accuracy": ens["test_accuracy"],
           "ensemble_val_accuracy": ens["val_accuracy"],
           "teacher_member_train_s": round(member_s, 3), "labeled_train_rows": n_train,
           "val_rows": meta["rows"]["val"], "unlabeled_rows": meta["rows"]["unlabeled"],
           "arms": {}}
    arms: dict = {"kd_labeled_only": (labeled_only, None)}
    if kind == "digits" and meta["rows"]["unlabeled"]:
        arms["real_unlabeled"] = (full, None)
    for p, s in itertools.product(args.p, args.s):
        arms[grid_name(p, s, args.select_multiple)] = (labeled_only,
                                                       (args.select_multiple * n_train, p, s))
    run_arms(kind, seed, args, work, raw, arms, out)
    out["raw"] = raw
    return out


def run_arms(kind, seed, args, work, raw, arms, out) -> None:
    os.chdir(work)
    for name, (prepared, munge) in arms.items():
        if name not in out["arms"]:
            out["arms"][name] = student_arm(raw, work, name, prepared, args.steps, munge)
            a = out["arms"][name]
            print(f"[{kind} seed {seed}] {name}: test {a['test_accuracy']:.4f} val "
                  f"{a['val_accuracy']:.4f} agree {a['val_agreement']:.4f} "
                  f"({a['train_rows']} rows, {a['epochs']} epochs)", flush=True)


def choose(runs: list[dict], args) -> dict:
    """The (p, s) with the best mean validation accuracy over seeds at the selection multiple
    (ties: mean validation agreement with the ensemble, then mean validation NLL). Test rows
    are not read."""
    table = []
    for p, s in itertools.product(args.p, args.s):
        arm = [r["arms"][grid_name(p, s, args.select_multiple)] for r in runs]
        table.append({"p": p, "s": s,
                      "val_accuracy": float(np.mean([a["val_accuracy"] for a in arm])),
                      "val_agreement": float(np.mean([a["val_agreement"] for a in arm])),
                      "val_nll": float(np.mean([a["val_nll"] for a in arm])),
                      "test_accuracy": float(np.mean([a["test_accuracy"] for a in arm])),
                      "changed_fraction": float(np.mean([a["changed_fraction"] for a in arm])),
                      "val_nn_distance": float(np.mean([a["val_nn_distance"] for a in arm]))})
    best = max(table, key=lambda t: (t["val_accuracy"], t["val_agreement"], -t["val_nll"]))
    return {"p": best["p"], "s": best["s"], "grid": table,
            "rule": f"best mean validation accuracy of the {args.select_multiple}x MUNGE students "
                    f"over {len(runs)} seeds (ties: validation agreement, then "
                    "validation NLL)"}


def final_arms(runs: list[dict], chosen: dict, args) -> dict:
    """Arm name -> grid arm for the reported MUNGE arms: the chosen and the default (p, s)."""
    out = {}
    for label, (p, s) in (("", (chosen["p"], chosen["s"])), ("_default", DEFAULT_PS)):
        for k in args.multiples:
            out[f"munge_{k}x{label}"] = (grid_name(p, s, k), (k, p, s))
    return out


def stats(v: np.ndarray) -> dict:
    return {"per_seed": v.round(4).tolist(), "mean": round(float(v.mean()), 4),
            "std": round(float(v.std(ddof=1)) if len(v) > 1 else 0.0, 4)}


def gap_share(runs: list[dict], arm: str, n_boot: int = 10_000) -> dict:
    """Share of the (labeled-only -> real unlabeled) gap the arm recovers: mean paired gain over
    mean paired gap, with a percentile bootstrap interval over seeds (resampled together)."""
    acc = {a: np.array([r["arms"][a]["test_accuracy"] for r in runs])
           for a in (arm, "kd_labeled_only", "real_unlabeled")}
    gain = acc[arm] - acc["kd_labeled_only"]
    gap = acc["real_unlabeled"] - acc["kd_labeled_only"]
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(gain), (n_boot, len(gain)))
    num, den = gain[idx].mean(1), gap[idx].mean(1)
    ok = den > 0  # a resample with no gap has no share
    shares = num[ok] / den[ok]
    return {"share": round(float(gain.mean() / gap.mean()), 3) if gap.mean() > 0 else None,
            "interval_95": [round(float(q), 3) for q in np.percentile(shares, [2.5, 97.5])]
            if ok.any() else None,
            "resamples_without_gap": int((~ok).sum()),
            "p_share_at_least_half": round(float((shares >= 0.5).mean()), 3) if ok.any() else None}


def summarise(runs: list[dict], reported: list[str]) -> dict:
    res: dict = {}
    lo = np.array([r["arms"]["kd_labeled_only"]["test_accuracy"] for r in runs])
    for a in reported:
        test = np.array([r["arms"][a]["test_accuracy"] for r in runs])
        val = np.array([r["arms"][a]["val_accuracy"] for r in runs])
        first = runs[0]["arms"][a]
        res[a] = {"test_accuracy": stats(test), "val_accuracy": stats(val),
                  "val_agreement": stats(np.array([r["arms"][a]["val_agreement"] for r in runs])),
                  "val_nn_distance": round(float(np.mean([r["arms"][a]["val_nn_distance"]
                                                          for r in runs])), 4),
                  "train_rows": first["train_rows"], "epochs": first["epochs"]}
        if "changed_fraction" in first:
            res[a]["changed_fraction"] = round(float(np.mean(
                [r["arms"][a]["changed_fraction"] for r in runs])), 4)
        if a != "kd_labeled_only":  # paired: same splits, teachers and student seed
            res[a]["minus_labeled_only"] = {**stats(test - lo),
                                            "wins": int((test > lo).sum()),
                                            "losses": int((test < lo).sum())}
        if a.startswith("munge") and "real_unlabeled" in runs[0]["arms"]:
            res[a]["gap_recovered"] = gap_share(runs, a)
    ens = {k: np.array([r[f"ensemble_{k}_accuracy"] for r in runs]) for k in ("val", "test")}
    res["ensemble"] = {f"{k}_accuracy": stats(v) for k, v in ens.items()}
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
                       "features": int(np.prod(json.loads((prepared / "meta.json").read_text())
                                               ["feature_shape"])),
                       "seconds": round(time.perf_counter() - t0, 3),
                       "changed_fraction": info["changed_fraction"]}
    return out


def run_dataset(kind: str, args, work: Path) -> dict:
    runs = [setup_seed(kind, s, args, work / f"{kind}-{s}") for s in args.seed_list]
    chosen = choose(runs, args)
    print(f"[{kind}] chosen on validation: p={chosen['p']:g} s={chosen['s']:g}", flush=True)
    final = final_arms(runs, chosen, args)
    for seed, r in zip(args.seed_list, runs, strict=True):
        labeled_only = work / f"{kind}-{seed}" / "prepared-labeled"
        todo = {g: (labeled_only, (k * r["labeled_train_rows"], p, s))
                for g, (k, p, s) in final.values()}
        run_arms(kind, seed, args, work / f"{kind}-{seed}", r["raw"], todo, r)
        for name, (g, _) in final.items():
            r["arms"][name] = r["arms"][g]
    reported = ["kd_labeled_only", *final, *(["real_unlabeled"] if "real_unlabeled"
                                             in runs[0]["arms"] else [])]
    for r in runs:
        r.pop("raw")
    return {"chosen": chosen, "summary": summarise(runs, reported), "runs": runs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--quick", action="store_true", help="2 seeds, 2 members, a 2x2 grid")
    ap.add_argument("--members", type=int, default=3, help="teacher ensemble members")
    ap.add_argument("--student", choices=["cnn2d", "mlp16"], default="cnn2d",
                    help="digits student: examples/digits.yaml's cnn2d, or an MLP of 16 units")
    ap.add_argument("--steps", type=int, default=1500, help="student optimizer steps per arm")
    ap.add_argument("--multiples", type=int, nargs="+", default=[10, 50])
    ap.add_argument("--select-multiple", type=int, default=10,
                    help="the MUNGE multiple at which p and s are chosen")
    ap.add_argument("--p", type=float, nargs="+", default=[0.2, 0.5, 0.8])
    ap.add_argument("--s", type=float, nargs="+", default=[1.0, 3.0, 10.0])
    ap.add_argument("--unlabeled-fraction", type=float, default=0.6)
    ap.add_argument("--val-fraction", type=float, default=0.5)
    ap.add_argument("--datasets", nargs="+", default=["digits", "tabular"])
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.quick:
        args.seeds, args.members, args.p, args.s = 2, 2, [0.5, 0.8], [1.0, 10.0]
    args.seed_list = list(range(args.seeds))
    out_path = (args.out or ROOT / "benchmarks/results" /
                ("munge-quick.json" if args.quick else "munge.json")).resolve()
    torch.set_num_threads(1)
    cwd, work = os.getcwd(), Path(tempfile.mkdtemp(prefix="kd-bench-munge-"))
    t_all = time.perf_counter()
    result: dict = {"args": {k: v for k, v in vars(args).items() if k != "out"}}
    try:
        for kind in args.datasets:
            result[kind] = run_dataset(kind, args, work)
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
                (s[a]["gap_recovered"]["share"] or 0) >= 0.5 for a in s
                if a.startswith("munge")),
            "generation_under_a_teacher_member": result["generation_100k"]["digits"]["seconds"]
            < result["teacher_member_train_s"]["digits"]}
    result["elapsed_s"] = round(time.perf_counter() - t_all, 1)
    result["machine"] = {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                         "torch_version": torch.__version__,
                         "python": platform.python_version(),
                         "load_avg_1m_at_end": round(os.getloadavg()[0], 2)}
    print(json.dumps({k: v for k, v in result.items() if k not in args.datasets} | {
        k: {"chosen": {c: result[k]["chosen"][c] for c in ("p", "s")},
            "summary": result[k]["summary"]} for k in args.datasets}, indent=2))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
