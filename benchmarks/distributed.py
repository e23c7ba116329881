"""Benchmark the stages under torchrun: 2 processes against 1, side by side, in one run.

    KD_TRACKING=0 python benchmarks/distributed.py            # ~5 min on 2 cores
    KD_TRACKING=0 python benchmarks/distributed.py --quick    # smoke run: 3 student epochs
    KD_TRACKING=0 python benchmarks/distributed.py --variant medium   # another student variant

(a) Export: `kd export` with runtime.nproc 1 and 2 over the same prepared data and teachers.
    Target: the 2-process manifest's rows and every member's logits equal the single-process
    export's exactly (joined by row_id; shard boundaries differ and the manifest says so).
(b) Student: `kd student VARIANT` with runtime.nproc 1 and 2 on the same shards, same params:
    the same effective batch (runtime.batch: global), epochs and learning-rate schedule. Target:
    test accuracy within 0.5 points. VARIANT: `--variant`, else the one the pipeline chose
    (benchmarks/chosen.py); the JSON says which.
Both arms are the real commands (`kd <stage>` launching torchrun itself, gloo on CPU), each
timed from start to exit, in temporary copies of data/prepared and data/teachers (`dvc repro
export` makes them; exits 1 without them). Every process runs 1 torch thread (runtime.threads;
`--threads 0`: cores / nproc), so the ratio is what a second rank buys, not a second OpenMP
thread (noisy on 2 shared cores, benchmarks/README.md). Writes
benchmarks/results/distributed.json (distributed-quick.json with --quick).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from chosen import which_variant

from kd.config import deep_merge, parse_config

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"
KD = str(Path(sys.executable).parent / "kd")


def stage_params(base: dict, variant: str, nproc: int, threads: int, quick: bool) -> dict:
    """The params both arms run with: tracking off, `nproc` ranks of `threads` threads; quick:
    3 epochs for the variant (its own `train.epochs`, if any, would win over the defaults')."""
    over: dict = {"tracking": {"enabled": False},
                  "runtime": {"nproc": nproc, "threads": threads}}
    if quick:
        over["student"] = {"variants": {variant: {"train": {"epochs": 3}}}}
    return deep_merge(base, over)


def run_stage(stage: list[str], workdir: Path, params: dict) -> float:
    (workdir / "params.yaml").write_text(yaml.safe_dump(params))
    t0 = time.perf_counter()
    out = subprocess.run([KD, *stage], cwd=workdir, capture_output=True, text=True,
                         env={**os.environ, "KD_TRACKING": "0"})
    elapsed = time.perf_counter() - t0
    name = " ".join(stage)
    if out.returncode:
        sys.exit(f"kd {name} failed in {workdir}:\n{out.stdout}\n{out.stderr}")
    print(f"  kd {name}, nproc {params['runtime']['nproc']}: {elapsed:.1f} s, "
          f"{out.stdout.strip().splitlines()[-1]}")
    return elapsed


def by_row_id(shards: Path) -> dict[str, np.ndarray]:
    from kd.targets.shardset import read_table

    t = read_table(shards)
    order = np.argsort(t["row_id"].to_numpy())
    cols = {"row_id": t["row_id"].to_numpy()[order],
            "label": t["label"].fill_null(-1).to_numpy()[order],
            "is_val": t["is_val"].to_numpy()[order]}
    for name in t.column_names:
        if name.startswith("logits.") or name == "features":
            cols[name] = np.stack(t[name].to_numpy(zero_copy_only=False))[order]
    return cols


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="3 student epochs: a smoke run")
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads per process (runtime.threads; 0: cores / nproc)")
    ap.add_argument("--variant", default=None,
                    help="the student variant (default: the one the pipeline chose)")
    args = ap.parse_args()
    base = yaml.safe_load(args.params.read_text())
    pick = which_variant(parse_config(base), DATA, args.variant)
    variant = pick["variant"]
    params = {n: stage_params(base, variant, n, args.threads, args.quick) for n in (1, 2)}
    st = parse_config(params[1]).student.variant(variant)  # what `kd student` will train
    members = list(base["teacher"]["members"])
    needed = [DATA / "prepared/meta.json", *(DATA / "teachers" / m / "model.json" for m in members)]
    if missing := [str(p) for p in needed if not p.is_file()]:
        sys.exit(f"missing inputs: {', '.join(missing)}; run `dvc repro export` first")

    result: dict = {"machine": {"cpu_count": os.cpu_count(), "python": platform.python_version(),
                                "threads_per_process": args.threads,
                                "loadavg_start": list(os.getloadavg())},
                    "variant": variant, "variant_source": pick["source"],
                    "student_epochs": st.train.epochs}
    with tempfile.TemporaryDirectory(prefix="kd-bench-dist-") as tmp:
        runs = {}
        for n in (1, 2):
            work = Path(tmp) / f"nproc{n}"
            for part in ("prepared", "teachers"):
                shutil.copytree(DATA / part, work / "data" / part)
            runs[n] = work
        print("(a) export")
        export_s = {n: run_stage(["export"], runs[n], params[n]) for n in (1, 2)}
        one, two = (by_row_id(runs[n] / "data/soft_targets") for n in (1, 2))
        equal = {k: bool(np.array_equal(one[k], two[k])) for k in one}
        manifests = {n: json.loads((runs[n] / "data/soft_targets/manifest.json").read_text())
                     for n in (1, 2)}
        result["export"] = {
            "seconds": export_s, "speedup": export_s[1] / export_s[2],
            "rows": {n: m["totals"]["rows"] for n, m in manifests.items()},
            "shards": {n: [s["file"] for s in m["shards"]] for n, m in manifests.items()},
            "columns_equal": equal, "identical": all(equal.values()) and set(one) == set(two)}
        print(f"  rows and logits identical: {result['export']['identical']}")

        print(f"(b) student {variant} on the single-process shards")
        shutil.rmtree(runs[2] / "data/soft_targets")
        shutil.copytree(runs[1] / "data/soft_targets", runs[2] / "data/soft_targets")
        student_s = {n: run_stage(["student", variant], runs[n], params[n]) for n in (1, 2)}
        acc = {n: json.loads((runs[n] / "data/student" / variant / "metrics.json").read_text())
               for n in (1, 2)}
        gap = abs(acc[2]["test_accuracy"] - acc[1]["test_accuracy"]) * 100
        result["student"] = {
            "seconds": student_s, "speedup": student_s[1] / student_s[2],
            "test_accuracy": {n: a["test_accuracy"] for n, a in acc.items()},
            "test_nll": {n: a["test_nll"] for n, a in acc.items()},
            "gap_points": gap, "within_0_5_points": gap <= 0.5,
            "global_batch": st.train.batch_size}
        print(f"  test accuracy 1 process {acc[1]['test_accuracy']:.4f}, 2 processes "
              f"{acc[2]['test_accuracy']:.4f}: {gap:.2f} points apart")
    result["machine"]["loadavg_end"] = list(os.getloadavg())
    out = ROOT / "benchmarks/results" / ("distributed-quick.json" if args.quick
                                         else "distributed.json")
    out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    print(json.dumps({k: result[k] for k in ("export", "student")}, indent=2, sort_keys=True))
    print(f"-> {out}")


if __name__ == "__main__":
    main()
