"""Bring your own teacher: what a heterogeneous ensemble gives, and what an imported member costs.

    OMP_NUM_THREADS=1 python benchmarks/byot.py                 # both parts, ~10 min here
    OMP_NUM_THREADS=1 python benchmarks/byot.py --skip digits   # (a) only, ~1 min

(a) Throughput. An ONNX member (a cnn1d of the default teacher's size, exported from torch)
    imported into a prepared MNIST-1D directory (4,000 labeled + 20,000 unlabeled rows), then
    `stages.export.run` with that member alone against ONNX Runtime alone on the same rows,
    already in memory, in batches of `export.batch_size`, with the same session settings and
    threads. Rounds alternate (export, bare, export, ...), medians. Target: the export's forward
    rows/s >= 0.9 x bare (no per-row Python); the whole export's rows/s (Parquet writing
    included) is printed beside it.
(b) Digits, examples/byot_digits.yaml: three cnn2d members trained here plus a scikit-learn
    HistGradientBoostingClassifier registered in a local MLflow store (examples/
    log_digits_hgb.py), imported, exported, distilled into the example's small CNN; the
    baseline is that CNN on labels. Validation and test accuracy and NLL of every member and of
    the ensemble (mean of probabilities, the student's combine rule); student and baseline with
    train seeds 0, 1, 2 (the example's one student variant, `cnn`; `--variant` names another).
    Targets: the ensemble beats each member on validation accuracy or NLL; the student beats the
    baseline (mean over seeds, validation and test).

Everything runs in a temporary directory, MLflow tracking off (the registry is a temporary
SQLite store). Writes benchmarks/results/byot.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("KD_TRACKING", "0")  # benchmarks never write MLflow runs

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

from kd.config import deep_merge, parse_config  # noqa: E402
from kd.deploy.runtime import open_session  # noqa: E402
from kd.evaluate.metrics import ensemble_probs, quality, softmax  # noqa: E402
from kd.models import build_model  # noqa: E402
from kd.prepared import load_meta, read_split  # noqa: E402
from kd.teachers.members import load_members  # noqa: E402
from stages import baseline, baseline_specs, export, imports, prepare, source, student, teacher  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples/byot_digits.yaml"
sys.path.insert(0, str(ROOT / "examples"))


def onnx_cnn(path: Path, shape: tuple[int, ...], n_classes: int) -> None:
    """The default teacher's architecture (random weights: speed only) as ONNX, dynamic batch."""
    torch.manual_seed(0)
    net = build_model("cnn1d", shape, n_classes, {"channels": 64, "depth": 4, "kernel": 5,
                                                  "batchnorm": True, "pool_every": 2}).eval()
    torch.onnx.export(net, (torch.zeros(2, *shape),), str(path), dynamo=False,
                      input_names=["x"], output_names=["logits"],
                      dynamic_axes={"x": {0: "b"}, "logits": {0: "b"}})


def throughput_params() -> dict:
    return {"data": {"source": "mnist1d", "unlabeled_size": 20_000},
            "teacher": {"members": {}, "imports": {"onx": {
                "kind": "onnx", "source": "cnn.onnx", "inputs": "prepared"}}},
            "tracking": {"enabled": False}}


def throughput(work: Path, rounds: int) -> dict:
    cfg = parse_config(throughput_params())
    os.chdir(work)
    prepare.run(cfg, Path("data/prepared"))
    meta = load_meta("data/prepared")
    onnx_cnn(Path("cnn.onnx"), tuple(meta["feature_shape"]), meta["n_classes"])
    source.run(cfg, "onx")
    imports.run(cfg, "onx")
    x = np.concatenate([read_split("data/prepared", s)[0].x for s in ("labeled", "unlabeled")])
    sess = open_session("cnn.onnx", threads=torch.get_num_threads())
    name = sess.get_inputs()[0].name
    bs = cfg.export.batch_size
    x = x.reshape(len(x), *meta["feature_shape"])  # (N, *shape): the file's input

    def bare() -> float:
        t0 = time.perf_counter()
        for i in range(0, len(x), bs):
            sess.run(None, {name: x[i:i + bs]})
        return len(x) / (time.perf_counter() - t0)

    bare()  # warm-up
    out = {"forward": [], "export": [], "bare": []}
    for r in range(rounds):
        m = export.run(cfg, out_dir=Path(f"shards-{r}"))
        out["forward"].append(m["forward_rows_per_s"])
        out["export"].append(m["rows_per_s"])
        out["bare"].append(bare())
    med = {k: statistics.median(v) for k, v in out.items()}
    return {"rows": len(x), "batch_size": bs, "runs": out, "median_rows_per_s": med,
            "forward_vs_bare": med["forward"] / med["bare"],
            "export_vs_bare": med["export"] / med["bare"],
            "target_forward_vs_bare": 0.9, "met": med["forward"] / med["bare"] >= 0.9}


def evaluate(cfg, meta: dict) -> dict:
    """Validation and test accuracy / NLL of each member and of the ensemble."""
    labeled, is_val = read_split("data/prepared", "labeled")
    test, _ = read_split("data/prepared", "test")
    sets = {"val": (labeled.x[is_val], labeled.y[is_val]), "test": (test.x, test.y)}
    models = load_members(cfg, meta, Path("data/teachers"))
    shape, n = tuple(meta["feature_shape"]), meta["n_classes"]
    out: dict = {}
    for split, (x, y) in sets.items():
        with torch.no_grad():
            logits = {m: model(torch.from_numpy(x).view(len(x), *shape))
                      for m, model in models.items()}
        probs = {m: softmax(lg) for m, lg in logits.items()}
        # the ensemble as the report measures it: the combine rule the variants share
        probs["ensemble"] = ensemble_probs(list(logits.values()), cfg.student.shared().combine)
        for m, p in probs.items():
            q = quality(p, y, n)
            out.setdefault(m, {})[split] = {"accuracy": q["accuracy"], "nll": q["nll"]}
    return out


def digits_params(work: Path, variant: str | None = None, seed: int | None = None) -> dict:
    """The example's params, tracking off (its registry in `work`); with `seed`, student
    variant `variant` (and its baseline) train with that seed."""
    params = yaml.safe_load(EXAMPLE.read_text())
    params["tracking"] = {"enabled": False, "uri": f"sqlite:///{work / 'mlflow.db'}"}
    if seed is not None:
        variants = params["student"]["variants"]
        variants[variant] = deep_merge(variants[variant] or {}, {"train": {"seed": seed}})
    return params


def digits(work: Path, seeds: list[int], variant: str | None) -> dict:
    from log_digits_hgb import fit_and_register

    cfg = parse_config(digits_params(work))
    variant = variant or next(iter(cfg.student.variants))
    cfg.student.variant(variant)  # an unknown name: one line, before any training
    os.chdir(work)
    t0 = time.perf_counter()
    prepare.run(cfg, Path("data/prepared"))
    meta = load_meta("data/prepared")
    for m in cfg.teacher.members:
        teacher.run(cfg, m)
    fit_and_register(Path("data/prepared"), cfg.tracking.uri)
    source.run(cfg, "hgb")
    imports.run(cfg, "hgb")
    export.run(cfg)
    members = evaluate(cfg, meta)
    runs = []
    for seed in seeds:
        c = parse_config(digits_params(work, variant, seed))
        s = student.run(c, variant)
        baseline_specs.run(c)
        b = baseline.run(c, variant)
        runs.append({"seed": seed, "student": {k: s[k] for k in ("val_accuracy",
                                                                  "test_accuracy")},
                     "baseline": {k: b[k] for k in ("val_accuracy", "test_accuracy")}})
    ens = members["ensemble"]["val"]
    beats = {m: ens["accuracy"] > v["val"]["accuracy"] or ens["nll"] < v["val"]["nll"]
             for m, v in members.items() if m != "ensemble"}
    mean = {who: {k: statistics.mean(r[who][k] for r in runs) for k in runs[0][who]}
            for who in ("student", "baseline")}
    return {"variant": variant, "members": members,
            "ensemble_beats_each_member_on_val_acc_or_nll": beats, "runs": runs, "mean": mean,
            "student_beats_baseline": all(mean["student"][k] > mean["baseline"][k]
                                          for k in mean["student"]),
            "elapsed_s": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--skip", choices=["throughput", "digits"], action="append", default=[])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--variant", default=None,
                    help="(b) the example's student variant (default: its first, `cnn`)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/byot.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    result = {"machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                          "torch": torch.__version__, "python": platform.python_version(),
                          "loadavg": os.getloadavg()}}
    here = os.getcwd()
    try:
        if "throughput" not in args.skip:
            with tempfile.TemporaryDirectory(prefix="kd-byot-") as tmp:
                result["throughput"] = t = throughput(Path(tmp), args.rounds)
                os.chdir(here)
            print(f"(a) ONNX member: export forward {t['median_rows_per_s']['forward']:.0f} "
                  f"rows/s, whole export {t['median_rows_per_s']['export']:.0f}, ONNX Runtime "
                  f"alone {t['median_rows_per_s']['bare']:.0f}: forward/bare "
                  f"{t['forward_vs_bare']:.3f} (target >= 0.9), export/bare "
                  f"{t['export_vs_bare']:.3f}")
        if "digits" not in args.skip:
            with tempfile.TemporaryDirectory(prefix="kd-byot-") as tmp:
                result["digits"] = d = digits(Path(tmp), args.seeds, args.variant)
                os.chdir(here)
            for m, v in d["members"].items():
                print(f"(b) {m:9s} val acc {v['val']['accuracy']:.4f} NLL {v['val']['nll']:.4f}"
                      f"   test acc {v['test']['accuracy']:.4f} NLL {v['test']['nll']:.4f}")
            for who, v in d["mean"].items():
                print(f"(b) {who:9s} ({d['variant']}) mean over seeds {args.seeds}: val acc "
                      f"{v['val_accuracy']:.4f}, test acc {v['test_accuracy']:.4f}")
    finally:
        os.chdir(here)
    result["machine"]["loadavg_after"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
