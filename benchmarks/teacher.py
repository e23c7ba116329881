"""Benchmark the ensemble teacher: train every member of params.yaml, score members and ensemble.

    python benchmarks/teacher.py --out benchmarks/results/teacher.json

With the repository's params.yaml (default data: MNIST-1D, five cnn1d members) this prepares the
data into a temporary directory, trains each member there exactly as `kd teacher <member>` does
(`stages.teacher.run`, tracking off), times the training, reloads every member from
its model directory and scores it on the prepared test split, and scores the ensemble (the mean of
the members' softmax probabilities, as the export/student stages combine them by default).
Prints the JSON it writes:

    {members: {name: {test_accuracy, params, train_time_s}}, ensemble: {test_accuracy, params},
     best_member_accuracy, total_train_time_s,
     targets: {ensemble_accuracy_ge_0_99, beats_best_member, total_time_under_240s},
     machine: {cpu_count, torch_threads, torch_version, ...}}

Nothing is written under the repository's data/ (checkpoints included): the work happens in a
temporary directory, removed afterwards unless --workdir is given. Takes ~1.5-2 min on 2 cores.
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
sys.path.insert(0, str(ROOT))  # run as a script from anywhere, installed or not
os.environ["KD_TRACKING"] = "0"  # a benchmark is not an experiment: no MLflow runs

import torch  # noqa: E402

from kd.config import load_config  # noqa: E402
from kd.models import load_model  # noqa: E402
from kd.prepared import read_split  # noqa: E402
from kd.train.loop import predict  # noqa: E402
from stages.prepare import run as prepare  # noqa: E402
from stages.teacher import run as train_member  # noqa: E402

TIME_BUDGET_S = 240.0
ENSEMBLE_TARGET = 0.99


def member_probs(model_dir: Path, x_flat: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Softmax probabilities (N, C) of the member saved in model_dir, rebuilt from model.json."""
    model, spec = load_model(model_dir)
    x = x_flat.view(len(x_flat), *spec["input_shape"])  # (N, *input_shape)
    return predict(model, x).softmax(1), spec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml",
                    help="params file (default: the repository's params.yaml)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/teacher.json",
                    help="where to write the JSON results")
    ap.add_argument("--workdir", type=Path, default=None,
                    help="keep the prepared data and the members here (default: a temp dir)")
    args = ap.parse_args()

    cfg = load_config(args.params.resolve())
    out_path = args.out.resolve()
    work = (args.workdir or Path(tempfile.mkdtemp(prefix="kd-bench-teacher-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    cwd = os.getcwd()
    os.chdir(work)  # training checkpoints under ./data/.checkpoints: keep them here
    prepared = work / "data" / "prepared"
    try:
        t0 = time.perf_counter()
        meta = prepare(cfg, prepared, root=ROOT)
        prepare_time = time.perf_counter() - t0

        stage_metrics, times = {}, {}
        t_all = time.perf_counter()
        for name in cfg.teacher.members:
            t0 = time.perf_counter()
            stage_metrics[name] = train_member(cfg, name, work / "data" / "teachers", prepared)
            times[name] = time.perf_counter() - t0
        total_time = time.perf_counter() - t_all

        test, _ = read_split(prepared, "test")
        x, y = torch.from_numpy(test.x), torch.from_numpy(test.y)  # (N, F), (N,)
        members, probs = {}, []
        for name in cfg.teacher.members:
            p, spec = member_probs(work / "data" / "teachers" / name, x)  # (N, C)
            probs.append(p)
            acc = (p.argmax(1) == y).float().mean().item()
            # the reloaded model must score what the stage reported: same weights, same data
            assert abs(acc - stage_metrics[name]["test_accuracy"]) < 1e-6, (name, acc)
            members[name] = {"test_accuracy": acc, "params": spec["params"],
                             "train_time_s": round(times[name], 3), "arch": spec["arch"],
                             "val_accuracy": stage_metrics[name].get("val_accuracy"),
                             "test_nll": stage_metrics[name]["test_nll"]}
        ens = torch.stack(probs).mean(0)  # (N, C): mean of member probabilities
        ens_acc = (ens.argmax(1) == y).float().mean().item()
        ens_nll = torch.nn.functional.nll_loss(ens.clamp_min(1e-12).log(), y).item()
        best = max(m["test_accuracy"] for m in members.values())
        result = {
            "members": members,
            "ensemble": {"test_accuracy": ens_acc, "test_nll": ens_nll,
                         "params": sum(m["params"] for m in members.values()),
                         "combine": "mean_probs"},
            "best_member_accuracy": best,
            "total_train_time_s": round(total_time, 3),
            "prepare_time_s": round(prepare_time, 3),
            "targets": {"ensemble_accuracy_ge_0_99": ens_acc >= ENSEMBLE_TARGET,
                        "beats_best_member": ens_acc > best,
                        "total_time_under_240s": total_time < TIME_BUDGET_S},
            "data": {"source": cfg.data.source, "rows": meta["rows"]},
            "machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                        "torch_version": torch.__version__, "python": platform.python_version(),
                        "load_avg_1m_at_end": round(os.getloadavg()[0], 2)},
        }
    finally:
        os.chdir(cwd)
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)

    text = json.dumps(result, indent=2)
    print(text)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(text + "\n")


if __name__ == "__main__":
    main()
