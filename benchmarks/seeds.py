"""The student and the baseline over several seeds: what the README's headline may claim.

    dvc repro export                                   # the teachers and shards, once
    python benchmarks/seeds.py --seeds 0 1 2 3 4 --out benchmarks/results/seeds.json

One seed on 1,000 test rows is one row per 0.1 point, and a student "matching the ensemble" by
8 rows says little. This trains the params.yaml student (from data/soft_targets) and its
baseline (from data/prepared) once per seed, exactly as `kd student` and `kd baseline` do
with `train.seed` set, in a temporary directory (MLflow off, data/ untouched), at one torch
thread. The ensemble is scored once on the same test rows. Prints and writes JSON:
{ensemble, student, baseline: {test_accuracy: {mean, std, per_seed}, val_accuracy: {...}},
student_minus_baseline: {mean, std, per_seed, wins}, student_minus_ensemble: {...}, machine}.
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

import torch  # noqa: E402
import yaml  # noqa: E402

from kd.config import _deep_merge, parse_config  # noqa: E402
from stages import baseline, student  # noqa: E402


def summary(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "per_seed": values}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    ap.add_argument("--data", type=Path, default=ROOT / "data",
                    help="the pipeline's outputs: prepared/, soft_targets/, report/")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/seeds.json")
    args = ap.parse_args()
    torch.set_num_threads(1)

    base = yaml.safe_load(args.params.read_text())
    prepared, shards = (args.data / "prepared").resolve(), (args.data / "soft_targets").resolve()
    for need in (prepared / "meta.json", shards / "manifest.json"):
        if not need.is_file():
            sys.exit(f"{need}: missing; run `dvc repro export` first")
    work = Path(tempfile.mkdtemp(prefix="kd-bench-seeds-"))
    runs: dict[str, dict[str, list[float]]] = {
        k: {"test_accuracy": [], "val_accuracy": []} for k in ("student", "baseline")}
    times: dict[str, list[float]] = {"student": [], "baseline": []}
    old = os.getcwd()
    os.chdir(work)  # checkpoints go under ./data/.checkpoints: keep them here
    try:
        for seed in args.seeds:
            cfg = parse_config(_deep_merge(base, {"student": {"train": {"seed": seed}},
                                                  "runtime": {"threads": 1}}))
            for name, stage, kwargs in (("student", student, {"shards": shards}),
                                        ("baseline", baseline, {})):
                t0 = time.perf_counter()
                m = stage.run(cfg, out_dir=work / name / str(seed), prepared=prepared, **kwargs)
                times[name].append(round(time.perf_counter() - t0, 1))
                runs[name]["test_accuracy"].append(m["test_accuracy"])
                runs[name]["val_accuracy"].append(m.get("val_accuracy"))
                print(f"seed {seed} {name}: test {m['test_accuracy']:.4f} "
                      f"val {m.get('val_accuracy', float('nan')):.4f}", flush=True)
    finally:
        os.chdir(old)
        shutil.rmtree(work, ignore_errors=True)

    report = json.loads((args.data / "report/metrics.json").read_text())
    ensemble = {"test_accuracy": report["teacher"]["accuracy"],
                "val_accuracy": report["teacher"].get("val_accuracy")}
    s, b = runs["student"]["test_accuracy"], runs["baseline"]["test_accuracy"]
    diff = [x - y for x, y in zip(s, b, strict=True)]
    out = {
        "seeds": args.seeds,
        "test_rows": report["compare"]["student_vs_baseline"]["rows"],
        "ensemble": ensemble,
        "student": {k: summary(v) for k, v in runs["student"].items()},
        "baseline": {k: summary(v) for k, v in runs["baseline"].items()},
        "student_minus_baseline": {**summary(diff), "wins": sum(d > 0 for d in diff)},
        "student_minus_ensemble": summary([x - ensemble["test_accuracy"] for x in s]),
        "train_time_s": times,
        "machine": {"cpu": platform.processor() or platform.machine(),
                    "cpu_count": os.cpu_count(), "torch_threads": 1,
                    "loadavg": [round(v, 2) for v in os.getloadavg()]},
    }
    text = json.dumps(out, indent=2)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
