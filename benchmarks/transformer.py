"""Benchmark the DistilBERT recipe on MNIST-1D: a half-depth transformer student against its
transformer teacher, and the ablation of its two ingredients (layer-skip init, cosine term).

    OMP_NUM_THREADS=1 python benchmarks/transformer.py            # 3 seeds, ~20 min on 1 core
    OMP_NUM_THREADS=1 python benchmarks/transformer.py --quick    # smoke run, ~1 min

Per seed, in one process: a 4-layer transformer teacher (width 64, 4 heads, patches of 4 ->
10 tokens + a class token) trained on the labeled rows with shift augmentation, then four
2-layer students distilled from it on the labeled + unlabeled rows (Hinton's loss, T=4,
alpha=0.9, the project's kd/distill/losses.py): random or layer-skip init (teacher layers
[0, 2], embeddings and head, kd/models/transformer.py's init_from) x beta 0 or 1 (the cosine
term on the pooled hidden vectors). Scaled down to fit ~20 min of one core: 4,000 unlabeled
rows (the pipeline's default is 40,000) and the epochs below. Validation rows (10% of the
labeled split, the pipeline's split) choose nothing here but are printed beside the test rows;
the arm the issue asks about (layer-skip + cosine, DistilBERT's) is fixed in advance.

Batch-1 latency: median of 400 single-row forwards in eval mode, one thread, PyTorch.
Writes benchmarks/results/transformer.json (transformer-quick.json with --quick).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from kd.config import AugmentConfig, DataConfig, TrainConfig
from kd.datasets import load_mnist1d
from kd.distill.losses import cosine_loss, kd_loss, soft_targets
from kd.evaluate.stats import compare, ratio_intervals
from kd.models import build_model, count_params
from kd.models.transformer import init_from
from kd.preprocess import normalisation, val_mask
from kd.train.batches import Batch, epoch_seed, in_memory_batches
from kd.train.loop import evaluate, fit, predict, seed_everything

OUT = Path(__file__).parent / "results"
TEACHER = {"layers": 4, "width": 64, "heads": 4, "mlp_ratio": 2, "patch": 4, "pool": "cls"}
STUDENT = {**TEACHER, "layers": 2}
LAYERS = [0, 2]  # one teacher layer out of two, as DistilBERT takes from BERT
T, ALPHA = 4.0, 0.9
ARMS = [("random", 0.0), ("random", 1.0), ("layer-skip", 0.0), ("layer-skip", 1.0)]


def data(unlabeled: int) -> dict[str, np.ndarray]:
    """MNIST-1D's standard split + a transfer set, normalised and split like `kd prepare`."""
    src = load_mnist1d(DataConfig(unlabeled_size=unlabeled))
    mean, std = normalisation(src.splits["labeled"].x, "global")
    norm = {k: ((s.x - mean) / std).astype(np.float32) for k, s in src.splits.items()}
    lab = src.splits["labeled"]
    is_val = val_mask(len(lab.y), 0.1, 0)
    return {"x_train": norm["labeled"][~is_val], "y_train": lab.y[~is_val],
            "x_val": norm["labeled"][is_val], "y_val": lab.y[is_val],
            "x_unl": norm["unlabeled"], "x_test": norm["test"], "y_test": src.splits["test"].y}


def latency_ms(model: torch.nn.Module, x: np.ndarray, n: int = 400) -> float:
    model.eval()
    rows = torch.from_numpy(x[:n])
    times = []
    with torch.no_grad():
        for i in range(n + 50):
            t0 = time.perf_counter()
            model(rows[i % len(rows)][None])  # (1, F)
            if i >= 50:  # warm-up calls are not counted
                times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def distill_batches(x, y, t_logits, t_hidden, batch_size, seed):
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    zt, ht = torch.from_numpy(t_logits), torch.from_numpy(t_hidden)

    def batches(epoch: int):
        gen = torch.Generator().manual_seed(epoch_seed(seed, epoch))
        order = torch.randperm(len(yt), generator=gen)
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            yield Batch(xt[idx], yt[idx], zt[idx][None], t_hidden=ht[idx])  # (1, B, C)

    return batches


def run_seed(seed: int, d: dict, teacher_epochs: int, student_epochs: int) -> dict:
    seed_everything(seed)
    teacher = build_model("transformer", (40,), 10, TEACHER)
    tcfg = TrainConfig(epochs=teacher_epochs, batch_size=128, lr=2e-3, warmup_epochs=2,
                       seed=seed, augment=AugmentConfig(shift=6))
    t0 = time.perf_counter()
    fit(teacher, in_memory_batches(d["x_train"], d["y_train"], 128, seed, (40,), tcfg.augment),
        lambda s, b: torch.nn.functional.cross_entropy(s, b.y), tcfg,
        steps_per_epoch=-(-len(d["y_train"]) // 128), callbacks=[])
    out = {"teacher": {**_scores(teacher, d), "params": count_params(teacher),
                       "train_s": time.perf_counter() - t0}}
    # the teacher's logits and pooled hidden vectors on every training row, as export stores
    x = np.concatenate([d["x_train"], d["x_unl"]])
    y = np.concatenate([d["y_train"], np.full(len(d["x_unl"]), -1)])
    teacher.eval()
    with torch.no_grad():
        z, h = teacher.forward_with_hidden(torch.from_numpy(x))
    scfg = TrainConfig(epochs=student_epochs, batch_size=256, lr=2e-3, seed=seed)
    for init, beta in ARMS:
        seed_everything(seed)
        student = build_model("transformer", (40,), 10, STUDENT)
        if init == "layer-skip":
            init_from(student, teacher, LAYERS)
        hidden: list[torch.Tensor] = []
        student.norm.register_forward_hook(lambda _m, _i, o, keep=hidden: keep.__setitem__(
            slice(None), [o]))

        def loss_fn(s_logits, b, beta=beta, hidden=hidden):
            loss = kd_loss(s_logits, soft_targets(b.t_logits, T), b.y, T, ALPHA)
            return loss + beta * cosine_loss(hidden[0], b.t_hidden) if beta else loss

        t0 = time.perf_counter()
        fit(student, distill_batches(x, y, z.numpy(), h.numpy(), 256, seed), loss_fn, scfg,
            steps_per_epoch=-(-len(y) // 256), callbacks=[])
        out[f"{init}+beta{beta:g}"] = {**_scores(student, d), "params": count_params(student),
                                        "train_s": time.perf_counter() - t0}
    out["latency_ms"] = {"teacher": latency_ms(teacher, d["x_test"]),
                         "student": latency_ms(student, d["x_test"])}
    return out


def _scores(model, d) -> dict:
    val = evaluate(model, d["x_val"], d["y_val"])["accuracy"]
    test = evaluate(model, d["x_test"], d["y_test"])["accuracy"]
    return {"val_accuracy": val, "test_accuracy": test,
            "test_pred": predict(model, d["x_test"]).argmax(1).tolist()}


# (a, b): what each ablation difference isolates
PAIRS = {"init, with cosine": ("layer-skip+beta1", "random+beta1"),
         "init, without cosine": ("layer-skip+beta0", "random+beta0"),
         "cosine, random init": ("random+beta1", "random+beta0"),
         "cosine, layer-skip init": ("layer-skip+beta1", "layer-skip+beta0")}
RECIPE = "layer-skip+beta1"  # DistilBERT's: fixed before the run, not chosen on test rows


def intervals(runs: list[dict], y_test: np.ndarray) -> dict:
    """Paired bootstrap 95% intervals (kd/evaluate/stats.py) over the test rows of all seeds
    pooled (seeds x 1,000 pairs): each ablation difference, and the recipe's accuracy kept."""
    right = {arm: np.concatenate([np.asarray(r[arm]["test_pred"]) == y_test for r in runs])
             for arm in runs[0] if arm != "latency_ms"}
    out = {name: compare(right[a], right[b]) for name, (a, b) in PAIRS.items()}
    kept = ratio_intervals(right[RECIPE], right["teacher"], right["random+beta0"])
    out["kept"] = {"value": kept["retained"], "ci": kept["retained_ci"]}
    return out


def summarise(runs: list[dict]) -> dict:
    arms = [k for k in runs[0] if k != "latency_ms"]
    table = {}
    for arm in arms:
        test = [r[arm]["test_accuracy"] for r in runs]
        val = [r[arm]["val_accuracy"] for r in runs]
        kept = [r[arm]["test_accuracy"] / r["teacher"]["test_accuracy"] for r in runs]
        table[arm] = {"test_mean": statistics.mean(test), "test_sd": statistics.pstdev(test),
                      "val_mean": statistics.mean(val), "kept_mean": statistics.mean(kept),
                      "kept_min": min(kept), "params": runs[0][arm]["params"]}
    speed = [r["latency_ms"]["teacher"] / r["latency_ms"]["student"] for r in runs]
    return {"arms": table, "speedup_mean": statistics.mean(speed), "speedup_min": min(speed),
            "latency_ms": {k: statistics.mean(r["latency_ms"][k] for r in runs)
                           for k in ("teacher", "student")}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 seed, few epochs: a smoke run")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--summarise", action="store_true",
                    help="recompute the summary from the runs in the results file, no training")
    args = ap.parse_args()
    torch.set_num_threads(1)
    seeds = 1 if args.quick else args.seeds
    te, se, unl = (3, 2, 1000) if args.quick else (40, 15, 4000)
    path = OUT / ("transformer-quick.json" if args.quick else "transformer.json")
    d = data(unl)
    runs = json.loads(path.read_text())["runs"] if args.summarise else []
    for seed in range(0 if args.summarise else seeds):
        r = run_seed(seed, d, te, se)
        runs.append(r)
        print(f"seed {seed}: " + ", ".join(f"{k} {v['test_accuracy']:.4f}"
                                           for k, v in r.items() if k != "latency_ms")
              + f"; latency teacher {r['latency_ms']['teacher']:.3f} ms, student "
                f"{r['latency_ms']['student']:.3f} ms", flush=True)
    s = summarise(runs)
    s["intervals"] = intervals(runs, d["y_test"])
    print(f"{'arm':<20}{'val':>8}{'test':>8}{'sd':>7}{'kept':>7}{'min kept':>9}{'params':>9}")
    for arm, v in s["arms"].items():
        print(f"{arm:<20}{v['val_mean']:>8.4f}{v['test_mean']:>8.4f}{v['test_sd']:>7.4f}"
              f"{v['kept_mean']:>7.3f}{v['kept_min']:>9.3f}{v['params']:>9,}")
    print(f"batch-1 latency: teacher {s['latency_ms']['teacher']:.3f} ms, student "
          f"{s['latency_ms']['student']:.3f} ms, speed-up {s['speedup_mean']:.2f}x "
          f"(min over seeds {s['speedup_min']:.2f}x)")
    for name, c in s["intervals"].items():
        if name == "kept":
            print(f"{RECIPE} keeps {c['value']:.4f} of the teacher's test accuracy, 95% "
                  f"interval [{c['ci'][0]:.4f}, {c['ci'][1]:.4f}] (seeds pooled)")
        else:
            print(f"{name:<26} {c['diff'] * 100:+.2f} points, 95% interval "
                  f"[{c['ci_low'] * 100:+.2f}, {c['ci_high'] * 100:+.2f}], McNemar p "
                  f"{c['p_value']:.3g}")
    OUT.mkdir(exist_ok=True)
    seeds = len(runs)
    config = {"teacher": TEACHER, "student": STUDENT, "layers": LAYERS, "T": T,
              "alpha": ALPHA, "teacher_epochs": te, "student_epochs": se, "unlabeled": unl,
              "seeds": seeds}
    path.write_text(json.dumps({"config": config, "summary": s, "runs": runs}, indent=1))
    print(f"-> {path}")


if __name__ == "__main__":
    main()
