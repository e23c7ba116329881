"""Benchmark the deployable student: PyTorch eager vs ONNX fp32 vs int8 dynamic vs int8 static.

    KD_TRACKING=0 OMP_NUM_THREADS=1 python benchmarks/deploy.py            # ~2 min on 2 cores
    KD_TRACKING=0 OMP_NUM_THREADS=1 python benchmarks/deploy.py --quick    # smoke run
    KD_TRACKING=0 OMP_NUM_THREADS=1 python benchmarks/deploy.py --variant medium

For two students: a variant of the pipeline's (data/student/<variant>: `--variant`, else the one
the pipeline chose and `kd deploy` ships, benchmarks/chosen.py) and an MLP (the `mlp`
family, trained here on the labeled training rows with hard labels: a few seconds; its
accuracy is beside the point, its operators are). For each: the fp32 ONNX file of
kd/deploy/export.py, and the int8 files of kd/deploy/quantize.py, dynamic and static (static
with calibration seeds 0, 1, 2 for accuracy; seed 0 is timed).

Measured, all on 1 thread (torch.set_num_threads(1), ONNX Runtime intra-op 1):
- file size (the eager row: model.safetensors);
- validation and test accuracy, max |logit - eager logit| on the test rows;
- batch-1 latency: `--rounds` rounds, each timing `--calls` single-row calls of every variant
  after a warm-up, variants in a rotated order per round (interleaved, so drift in the load of
  the shared machine hits all alike); the figure is the median over every call, with the
  median of per-round medians' spread;
- throughput: rows/s over the 1,000 test rows in one batch, median of the rounds.

Targets (issue 20): int8 file <= 0.35x fp32; int8 accuracy within 0.5 points of fp32; int8
batch-1 latency <= fp32 ONNX's; fp32 ONNX batch-1 latency <= PyTorch eager's.
Needs data/prepared and data/student/<variant> (`dvc repro`; a named variant: `dvc repro
student@<variant>`). Writes
benchmarks/results/deploy.json (deploy-quick.json with --quick).
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

os.environ.setdefault("KD_TRACKING", "0")

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from chosen import which_variant  # noqa: E402

from kd.config import parse_config  # noqa: E402
from kd.deploy.export import export_onnx  # noqa: E402
from kd.deploy.quantize import calibration_rows, quantize  # noqa: E402
from kd.deploy.runtime import open_session  # noqa: E402
from kd.models import build_model, load_model  # noqa: E402
from kd.prepared import load_meta, read_split  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def train_mlp(x: np.ndarray, y: np.ndarray, shape, n_classes: int, epochs: int) -> tuple:
    """An MLP on hard labels (Adam, fixed seed): a realistic MLP for the operators' sake."""
    torch.manual_seed(0)
    knobs = {"depth": 2, "width": 256}
    model = build_model("mlp", tuple(shape), n_classes, knobs)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(epochs):
        for idx in torch.randperm(len(xt)).split(128):
            loss = torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    spec = {"arch": "mlp", "knobs": knobs, "input_shape": list(shape), "n_classes": n_classes,
            "class_names": [str(i) for i in range(n_classes)]}
    return model.eval(), spec


def variants(model, spec, meta, prepared: Path, tmp: Path, weights_bytes: int) -> dict:
    """name -> {forward(x), bytes, probs on val/test, logits on test}."""
    fp32 = export_onnx(model, spec, meta["normalization"], tmp / "fp32.onnx")
    out = {"eager": {"bytes": weights_bytes, "forward": _eager(model)},
           "onnx_fp32": {"path": fp32}}
    out["int8_dynamic"] = {"path": quantize(fp32, tmp / "dyn.onnx", "dynamic")}
    for seed in (0, 1, 2):
        calib = calibration_rows(prepared, 1000, seed)
        out[f"int8_static_seed{seed}"] = {"path": quantize(fp32, tmp / f"st{seed}.onnx",
                                                           "static", calib)}
    for v in out.values():
        if "path" in v:
            sess = open_session(v["path"], 1)
            v["bytes"], v["session"] = v["path"].stat().st_size, sess
            v["forward"] = (lambda s: lambda x: s.run(["logits"], {"features": x})[0])(sess)
    return out


def _eager(model):
    def forward(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(x)).numpy()
    return forward


def measure(out: dict, x_val, y_val, x_test, y_test, rounds: int, calls: int) -> dict:
    timed = [k for k in out if not k.startswith("int8_static_seed") or k.endswith("seed0")]
    lat = {k: [] for k in timed}
    per_round = {k: [] for k in timed}
    thr = {k: [] for k in timed}
    one = np.ascontiguousarray(x_test[:1])
    for k in timed:  # warm-up
        for _ in range(50):
            out[k]["forward"](one)
    for r in range(rounds):
        order = timed[r % len(timed):] + timed[:r % len(timed)]
        for k in order:
            f, ts = out[k]["forward"], []
            for i in range(calls):
                row = np.ascontiguousarray(x_test[i % len(x_test):][:1])
                t0 = time.perf_counter()
                f(row)
                ts.append(time.perf_counter() - t0)
            lat[k] += ts
            per_round[k].append(statistics.median(ts) * 1e3)
            t0 = time.perf_counter()
            f(x_test)
            thr[k].append(len(x_test) / (time.perf_counter() - t0))
    ref = out["eager"]["forward"](x_test)  # (N, C) eager logits
    res = {}
    for k, v in out.items():
        lg_test, lg_val = v["forward"](x_test), v["forward"](x_val)
        res[k] = {"bytes": v["bytes"],
                  "val_accuracy": float((lg_val.argmax(1) == y_val).mean()),
                  "test_accuracy": float((lg_test.argmax(1) == y_test).mean()),
                  "max_abs_logit_diff_vs_eager": float(np.abs(lg_test - ref).max())}
        if k in lat:
            res[k] |= {"latency_ms_median": statistics.median(lat[k]) * 1e3,
                       "latency_ms_round_medians": [round(v, 5) for v in per_round[k]],
                       "throughput_rows_per_s": statistics.median(thr[k])}
    return res


def verdict(r: dict, kind: str) -> dict:
    fp, q, eager = r["onnx_fp32"], r[f"int8_{kind}"], r["eager"]
    return {"int8": kind,
            "int8_size_ratio": q["bytes"] / fp["bytes"],
            "int8_size_ok (<= 0.35)": q["bytes"] / fp["bytes"] <= 0.35,
            "int8_accuracy_drop_points": 100 * (fp["test_accuracy"] - q["test_accuracy"]),
            "int8_accuracy_ok (<= 0.5)": fp["test_accuracy"] - q["test_accuracy"] <= 0.005,
            "int8_latency_ratio_vs_fp32": q["latency_ms_median"] / fp["latency_ms_median"],
            "int8_latency_ok": q["latency_ms_median"] <= fp["latency_ms_median"],
            "onnx_fp32_latency_ratio_vs_eager": fp["latency_ms_median"]
            / eager["latency_ms_median"],
            "onnx_fp32_latency_ok": fp["latency_ms_median"] <= eager["latency_ms_median"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prepared", type=Path, default=ROOT / "data/prepared")
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    ap.add_argument("--student", type=Path, default=ROOT / "data/student",
                    help="the students' folder (one subfolder per variant)")
    ap.add_argument("--variant", default=None,
                    help="the student variant (default: the one the pipeline chose)")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--mlp-epochs", type=int, default=30)
    ap.add_argument("--quick", action="store_true", help="2 rounds of 50 calls, 3 MLP epochs")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.calls, args.mlp_epochs = 2, 50, 3
    cfg = parse_config(yaml.safe_load(args.params.read_text()))
    pick = which_variant(cfg, args.student.parent, args.variant)
    student_dir = args.student / pick["variant"]
    print(f"student variant {pick['variant']} ({pick['source']})")
    for need in (args.prepared / "meta.json", student_dir / "model.json"):
        if not need.is_file():
            sys.exit(f"{need}: missing; run `dvc repro student@{pick['variant']}` first")
    torch.set_num_threads(1)
    meta = load_meta(args.prepared)
    test, _ = read_split(args.prepared, "test")
    labeled, is_val = read_split(args.prepared, "labeled")
    x_val, y_val = labeled.x[is_val], labeled.y[is_val]
    student, spec = load_model(student_dir)
    mlp, mlp_spec = train_mlp(labeled.x[~is_val], labeled.y[~is_val], meta["feature_shape"],
                              meta["n_classes"], args.mlp_epochs)
    results = {}
    with tempfile.TemporaryDirectory(prefix="kd-bench-deploy-") as tmp:
        for name, model, sp, wbytes in (
                (f"student ({spec['arch']})", student, spec,
                 (student_dir / "model.safetensors").stat().st_size),
                ("mlp", mlp, mlp_spec, 4 * sum(p.numel() for p in mlp.parameters()))):
            d = Path(tmp) / name.split()[0]
            d.mkdir()
            out = variants(model, sp, meta, args.prepared, d, wbytes)
            r = measure(out, x_val, y_val, test.x, test.y, args.rounds, args.calls)
            r["int8_static"] = r["int8_static_seed0"]
            results[name] = {"arch": sp["arch"], "knobs": sp["knobs"],
                             "params": sum(p.numel() for p in model.parameters()),
                             "variants": r,
                             "verdict": {k: verdict(r, k) for k in ("dynamic", "static")}}
            print(f"\n{name}: {results[name]['params']:,} params")
            print(f"{'variant':<22}{'bytes':>8}{'val acc':>9}{'test acc':>9}{'max|dlogit|':>12}"
                  f"{'lat ms':>9}{'rows/s':>10}")
            for k, v in r.items():
                if k == "int8_static":
                    continue
                print(f"{k:<22}{v['bytes']:>8}{v['val_accuracy']:>9.4f}{v['test_accuracy']:>9.4f}"
                      f"{v['max_abs_logit_diff_vs_eager']:>12.2e}"
                      f"{v.get('latency_ms_median', float('nan')):>9.4f}"
                      f"{v.get('throughput_rows_per_s', float('nan')):>10.0f}")
            for k, v in results[name]["verdict"].items():
                shown = {a: round(b, 3) if isinstance(b, float) else b for a, b in v.items()}
                print(f"  int8 {k}: {json.dumps(shown)}")
    doc = {"variant": pick["variant"], "variant_source": pick["source"],
           "rounds": args.rounds, "calls_per_round": args.calls, "threads": 1,
           "machine": {"cpu_count": os.cpu_count(), "load_avg": os.getloadavg(),
                       "python": platform.python_version(), "torch": torch.__version__,
                       "onnxruntime": ort.__version__},
           "results": results}
    out = args.out or RESULTS / ("deploy-quick.json" if args.quick else "deploy.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    print(f"\n-> {out}")


if __name__ == "__main__":
    main()
