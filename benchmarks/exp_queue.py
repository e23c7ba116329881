"""Two experiments through `dvc queue start -j 2` against the same two one after the other.

    dvc repro                                           # a finished pipeline, once
    python benchmarks/exp_queue.py --repo . --set ++student.variants.medium.temperature \\
        --values 2 3 6 8 --out benchmarks/results/exp_queue.json

On 2 cores, two busy processes with a torch thread per core each collapse (OpenMP threads wait
on descheduled peers); the default `runtime.threads: 1` is meant to let two queued experiments
share the machine instead. This measures it, in one run: experiments A and B with `dvc exp run`
one after the other, then experiments C and D queued and run by `dvc queue start -j 2` (each
value changes the same param, so every experiment reruns the same stages). Prints and writes
JSON: {sequential_s, queued_s, ratio (queued / sequential), stages per experiment, machine}.
MLflow is off (KD_TRACKING=0): the figure is the pipeline's, not the tracking store's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "KD_TRACKING": "0"}


def dvc(repo: Path, *args: str) -> str:
    bindir = Path(sys.executable).parent
    env = {**ENV, "PATH": f"{bindir}:{os.environ['PATH']}"}
    out = subprocess.run(["dvc", *args], cwd=repo, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"dvc {' '.join(args)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    return out.stdout


def queue_busy(repo: Path) -> bool:
    status = dvc(repo, "queue", "status")
    return bool(re.search(r"\b(Queued|Running)\b", status))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repo", type=Path, default=ROOT, help="a repository whose pipeline ran")
    ap.add_argument("--set", dest="key", default="++student.variants.medium.temperature",
                    help="a params key; a leading ++ adds the key or overrides it (Hydra)")
    ap.add_argument("--values", nargs=4, default=["2", "3", "6", "8"],
                    help="A, B (one after the other), C, D (queued, -j 2)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/exp_queue.json")
    args = ap.parse_args()
    repo = args.repo.resolve()
    if "up to date" not in dvc(repo, "status"):
        sys.exit(f"{repo}: run `dvc repro` first (the experiments must rerun the same stages)")
    a, b, c, d = args.values
    t0 = time.perf_counter()
    ran = []
    for v in (a, b):
        out = dvc(repo, "exp", "run", "-S", f"{args.key}={v}", "-n", f"seq-{v}")
        ran.append(sorted(set(re.findall(r"Running stage '([^']+)'", out))))
    sequential = time.perf_counter() - t0
    for v in (c, d):
        dvc(repo, "exp", "run", "--queue", "-S", f"{args.key}={v}", "-n", f"queued-{v}")
    t0 = time.perf_counter()
    dvc(repo, "queue", "start", "-j", "2")
    time.sleep(5)
    while queue_busy(repo):
        time.sleep(2)
    queued = time.perf_counter() - t0
    failed = re.findall(r"queued-\S+\s+\S+\s+Failed", dvc(repo, "queue", "status"))
    out = {"key": args.key, "values": args.values, "sequential_s": round(sequential, 1),
           "queued_s": round(queued, 1), "ratio": round(queued / sequential, 3),
           "stages_per_experiment": ran[0], "failed": failed,
           "machine": {"cpu": platform.processor() or platform.machine(),
                       "cpu_count": os.cpu_count(),
                       "loadavg": [round(x, 2) for x in os.getloadavg()]}}
    print(json.dumps(out, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
