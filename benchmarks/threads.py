"""How many torch threads a stage should use: 1 against one per core, quiet and under load.

    python benchmarks/threads.py --out benchmarks/results/threads.json       # ~2 min

Trains a teacher-sized cnn1d (the default member's architecture, 68,682 parameters, batch 128,
3,600 rows of MNIST-1D's shape) with the project's own loop (kd.train.loop.fit) in a fresh
process per measurement, with `--threads` torch threads and OMP_WAIT_POLICY unset or PASSIVE,
on a quiet machine and next to one other busy process (a pure-Python loop: a second stage, a
test run, anything). Arms run interleaved, round after round; the figure is training samples/s
(median over rounds). The data are random: only the speed is measured.

Prints a table and writes JSON: {machine, arms: {name: {threads, wait_policy, load,
samples_per_s: [..], median}}, ratios}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def worker(threads: int, epochs: int) -> None:
    """One measurement: `epochs` epochs of the loop, then samples/s on stdout as JSON."""
    sys.path.insert(0, str(ROOT))
    import numpy as np
    import torch

    from kd.config import AugmentConfig, TrainConfig
    from kd.models import build_model
    from kd.train.batches import in_memory_batches
    from kd.train.loop import fit

    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3600, 40)).astype(np.float32)  # (N, F)
    y = rng.integers(0, 10, 3600)
    model = build_model("cnn1d", (40,), 10, {"channels": 64, "depth": 4, "kernel": 5})
    cfg = TrainConfig(epochs=epochs, batch_size=128)
    batches = in_memory_batches(x, y, 128, 0, (40,), AugmentConfig(shift=6))
    t0 = time.perf_counter()
    fit(model, batches, lambda logits, b: torch.nn.functional.cross_entropy(logits, b.y), cfg,
        steps_per_epoch=-(-3600 // 128))
    print(json.dumps({"samples_per_s": 3600 * epochs / (time.perf_counter() - t0)}))


def burner() -> subprocess.Popen:
    """Another busy process: one core's worth of pure-Python work until killed."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def measure(threads: int, policy: str | None, epochs: int) -> float:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    out = subprocess.run([sys.executable, __file__, "--worker", "--threads", str(threads),
                          "--epochs", str(epochs)], env=env, capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["samples_per_s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--epochs", type=int, default=2, help="epochs per measurement")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/threads.json")
    args = ap.parse_args()
    if args.worker:
        worker(args.threads, args.epochs)
        return

    cores = os.cpu_count() or 1
    arms = {f"{t}t{'-passive' if p else ''}-{load}": (t, p, load)
            for load in ("quiet", "loaded") for t in sorted({1, cores})
            for p in (None, "PASSIVE")}
    results: dict[str, list[float]] = {name: [] for name in arms}
    load_before = os.getloadavg()
    for r in range(args.rounds):
        for name, (threads, policy, load) in arms.items():
            busy = burner() if load == "loaded" else None
            try:
                results[name].append(round(measure(threads, policy, args.epochs), 1))
            finally:
                if busy is not None:
                    busy.kill()
                    busy.wait()
            print(f"round {r + 1} {name:<22} {results[name][-1]:>10,.0f} samples/s", flush=True)
    med = {name: statistics.median(v) for name, v in results.items()}
    out = {
        "machine": {"cpu": platform.processor() or platform.machine(), "cpu_count": cores,
                    "python": platform.python_version(),
                    "loadavg_before": [round(v, 2) for v in load_before],
                    "loadavg_after": [round(v, 2) for v in os.getloadavg()]},
        "epochs_per_measurement": args.epochs,
        "arms": {name: {"threads": t, "wait_policy": p or "default", "load": load,
                        "samples_per_s": results[name], "median": med[name]}
                 for name, (t, p, load) in arms.items()},
        "ratios": {f"{cores}t_over_1t_{load}": round(med[f"{cores}t-{load}"] / med[f"1t-{load}"], 3)
                   for load in ("quiet", "loaded")},
    }
    print(json.dumps(out["ratios"], indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
