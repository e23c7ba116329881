"""Benchmark top-k soft targets (kd/targets/topk.py) against dense logits on the chars source
(100 classes: next character of the Python standard library's source), side by side in one
run: bytes per row, fidelity of the stored targets, and students trained from each.

    python benchmarks/topk.py                       # ~10 min at 1 thread
    python benchmarks/topk.py --quick --out /tmp/topk.json

One teacher ensemble (2 transformer members) is trained on the labeled training rows; its
logits on the transfer rows (labeled + unlabeled) are then stored by each codec:
- dense float32 / float16: C logits per member;
- top-k (k = 4, 8, 16): k logits, k class ids (uint8 for these 100 classes; the uint16 row is
  the size the same k costs with up to 65,536 classes) and the tail's logsumexp, float16 or
  float32 values.
Measured per codec: raw bytes per row (all members) and the zstd Parquet bytes per row of the
stored columns; on the validation rows, KL(dense || stored) of the ensemble's mean-probs target
at T = 1, 2 (the student's) and 4, with the tail spread uniformly (over all C classes) and as a
ghost class (over the kept buckets); top-1 agreement of the stored ensemble target with dense.
Students (a 1-layer transformer, T = 2, alpha = 0.9) are trained from dense float32 targets and
from top-k (k = 4, 8) with either tail, on the same rows with the same seeds; test accuracy
and ECE per seed, and paired differences from dense with a t interval over seeds. The tail rule
("ghost" or "uniform") is chosen on validation rows (accuracy, and NLL, which also scores
calibration: both recorded); test rows only report.
With an ensemble, "uniform" decodes each member to C logits and averages probabilities exactly
as dense does; "ghost" averages the members' bucket losses (their kept sets differ).
The arm "top8-shards" goes the pipeline's own way (export.top_k: 8, float16): the transfer
rows' logits are written by kd.targets.shards.ShardWriter, read back by ShardReader (the tail
spread uniformly) and turned into targets by kd.distill.losses.soft_targets, as `kd student`
does; its fidelity row is the export's own measure (kd.targets.topk.fidelity).

    python benchmarks/topk.py --arms dense top8-uniform top8-shards   # the wired path, 3 seeds
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ["KD_TRACKING"] = "0"
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from scipy import stats  # noqa: E402

from kd.config import DataConfig  # noqa: E402
from kd.datasets import load_chars  # noqa: E402
from kd.evaluate.metrics import expected_calibration_error, machine  # noqa: E402
from kd.models import build_model  # noqa: E402
from kd.preprocess import val_mask  # noqa: E402
from kd.targets import topk  # noqa: E402

C, CONTEXT = 100, 32
TEACHER = {"layers": 2, "width": 48, "heads": 4, "mlp_ratio": 2, "pool": "cls", "vocab": C}
STUDENT = {"layers": 1, "width": 32, "heads": 2, "mlp_ratio": 2, "pool": "cls", "vocab": C}
T_STUDENT, ALPHA = 2.0, 0.9
ARMS = ["dense", "top4-ghost", "top4-uniform", "top8-ghost", "top8-uniform", "top8-shards"]


def train(knobs: dict, x, y, epochs: int, seed: int, loss_fn=None, lr=3e-3, bs=256):
    """AdamW + cosine; `loss_fn(logits, idx)` replaces CE (idx: the batch's row indices)."""
    torch.manual_seed(seed)
    model = build_model("transformer", (CONTEXT,), C, knobs)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * -(-len(x) // bs)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=gen).split(bs):
            out = model(x[idx])
            loss = F.cross_entropy(out, y[idx]) if loss_fn is None else loss_fn(out, idx)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


@torch.no_grad()
def logits_of(model, x, bs=2048) -> np.ndarray:
    return torch.cat([model(x[i:i + bs]) for i in range(0, len(x), bs)]).numpy()


def mean_probs(zs: list[np.ndarray], T: float) -> np.ndarray:
    return np.mean([torch.softmax(torch.from_numpy(z).double() / T, 1).numpy() for z in zs], 0)


def kl(p: np.ndarray, q: np.ndarray) -> float:
    """Mean over rows of KL(p || q), rows of probabilities (float64)."""
    p, q = np.clip(p, 1e-300, None), np.clip(q, 1e-300, None)
    return float((p * (np.log(p) - np.log(q))).sum(1).mean())


def parquet_bytes(cols: dict[str, np.ndarray]) -> int:
    """zstd Parquet bytes of the stored columns (fixed-size lists), as the shards would hold."""
    arrays = {}
    for name, a in cols.items():
        flat = pa.array(a.reshape(-1))
        arrays[name] = pa.FixedSizeListArray.from_arrays(flat, a.shape[1]) if a.ndim == 2 else flat
    buf = io.BytesIO()
    pq.write_table(pa.table(arrays), buf, compression="zstd")
    return buf.tell()


def ghost_bucket_kl(z: np.ndarray, st: topk.TopK, T: float) -> float:
    """KL(dense || ghost) over one member's buckets (kept classes + tail) at T."""
    p = torch.softmax(torch.from_numpy(z).double() / T, 1)
    ids = torch.from_numpy(st.ids.astype(np.int64))
    kept = p.gather(1, ids)
    dense = torch.cat([kept, 1 - kept.sum(1, keepdim=True)], 1).numpy()
    g = torch.softmax(topk.ghost_logits(torch.from_numpy(st.logits.astype(np.float32)),
                                        torch.from_numpy(st.tail_lse.astype(np.float32))).double()
                      / T, 1).numpy()
    return kl(dense, g)


def fidelity(zs: list[np.ndarray], k: int | None, dtype) -> dict:
    """One codec on the validation rows' member logits `zs`."""
    out: dict = {}
    if k is None:
        stored = [z.astype(dtype).astype(np.float32) for z in zs]
        out["bytes_per_row_raw"] = len(zs) * C * np.dtype(dtype).itemsize
        out["parquet_bytes_per_row"] = parquet_bytes(
            {f"m{i}": z.astype(dtype) for i, z in enumerate(zs)}) / len(zs[0])
    else:
        sts = [topk.encode(z, k, dtype) for z in zs]
        stored = [topk.spread_logits(*(torch.from_numpy(a.astype(np.float32) if a.dtype.kind ==
                                                        "f" else a.astype(np.int64))
                                       for a in (s.logits, s.ids, s.tail_lse)), C).numpy()
                  for s in sts]
        out["bytes_per_row_raw"] = sum(s.bytes_per_row() for s in sts)
        out["bytes_per_row_raw_uint16_ids"] = out["bytes_per_row_raw"] + len(zs) * k
        cols = {}
        for i, s in enumerate(sts):
            cols |= {f"m{i}_logits": s.logits, f"m{i}_ids": s.ids, f"m{i}_tail": s.tail_lse}
        out["parquet_bytes_per_row"] = parquet_bytes(cols) / len(zs[0])
        out["kl_ghost_buckets"] = {str(T): float(np.mean([ghost_bucket_kl(z, s, T)
                                                          for z, s in zip(zs, sts, strict=True)]))
                                   for T in (1.0, T_STUDENT, 4.0)}
    out["kl_uniform"] = {str(T): kl(mean_probs(zs, T), mean_probs(stored, T))
                         for T in (1.0, T_STUDENT, 4.0)}
    out["top1_agreement"] = float((mean_probs(zs, 1).argmax(1)
                                   == mean_probs(stored, 1).argmax(1)).mean())
    return out


def through_shards(member_z: list[np.ndarray], k: int = 8) -> torch.Tensor:
    """(M, N, C) the members' logits as `kd student` reads them from top-k float16 shards."""
    import tempfile

    from kd.targets.manifest import write_manifest
    from kd.targets.reader import ShardReader
    from kd.targets.shards import ShardWriter

    n, names = len(member_z[0]), [f"m{i}" for i in range(len(member_z))]
    with tempfile.TemporaryDirectory(prefix="kd-topk-") as d:
        w = ShardWriter(d, members=names, class_names=[str(c) for c in range(C)],
                        feature_shape=(1,), logits_dtype="float16", top_k=k)
        for i in range(0, n, 4096):
            j = min(n, i + 4096)
            w.write(np.arange(i, j), "unlabeled", None, None, np.zeros((j - i, 1), np.float32),
                    {m: z[i:j] for m, z in zip(names, member_z, strict=True)})
        write_manifest(d, w.close(), members=names, class_names=[str(c) for c in range(C)],
                       feature_shape=(1,), logits_dtype="float16",
                       member_fingerprints=dict.fromkeys(names, ""), params={}, top_k=w.codec)
        parts = list(ShardReader(d).iter_batches(65_536, shuffle=False))
    ids = np.concatenate([p["row_id"] for p in parts])
    assert (ids == np.arange(n)).all()
    return torch.from_numpy(np.concatenate([p["logits"] for p in parts], axis=1))


def student_loss(arm: str, member_z: list[np.ndarray], y: torch.Tensor):
    """The loss of one arm over the transfer rows: dense, or top-k with a tail rule."""
    if arm == "dense":
        targets = torch.from_numpy(mean_probs(member_z, T_STUDENT)).float()
    elif arm == "top8-shards":  # the pipeline's reader and the student's own combine
        from kd.distill.losses import soft_targets
        targets = soft_targets(through_shards(member_z), T_STUDENT).float()
    else:
        k, tail = int(arm.split("-")[0][3:]), arm.split("-")[1]
        sts = [topk.encode(z, k) for z in member_z]
        tens = [tuple(torch.from_numpy(a.astype(np.int64) if a.dtype.kind == "u" else a)
                      for a in (s.logits, s.ids, s.tail_lse)) for s in sts]
        if tail == "uniform":
            spread = [topk.spread_logits(*t, C).numpy() for t in tens]
            targets = torch.from_numpy(mean_probs(spread, T_STUDENT)).float()
    labeled = y >= 0

    def loss(out, idx):
        if arm in ("dense", "top8-shards") or arm.endswith("uniform"):
            logq = F.log_softmax(out / T_STUDENT, 1)
            p = targets[idx]
            soft = T_STUDENT ** 2 * (p * (p.clamp_min(1e-30).log() - logq)).sum(1).mean()
        else:
            soft = torch.stack([topk.soft_loss(out, t[0][idx], t[1][idx], t[2][idx],
                                               T_STUDENT, "ghost") for t in tens]).mean()
        lab = labeled[idx]
        hard = (F.cross_entropy(out, y[idx].clamp_min(0), reduction="none") * lab).sum() \
            / lab.sum().clamp_min(1)
        return ALPHA * soft + (1 - ALPHA) * hard

    return loss


def ci(diffs: list[float]) -> list[float]:
    d = np.array(diffs)
    half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
    return [float(d.mean() - half), float(d.mean() + half)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer rows and epochs, 2 seeds")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--arms", nargs="+", default=ARMS, choices=ARMS,
                    help="the students to train (dense is always one)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/topk.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    q = args.quick
    n_lab, n_unl, n_test = (4000, 4000, 2000) if q else (20000, 20000, 10000)
    t_epochs, s_epochs = (1, 1) if q else (4, 2)
    seeds = list(range(2 if q else args.seeds))
    t0 = time.time()
    cfg = DataConfig(source="chars", vocab_size=C, normalize="none", context=CONTEXT,
                     labeled_rows=n_lab, unlabeled_rows=n_unl, test_rows=n_test)
    src = load_chars(cfg)
    lab, unl, test = (src.splits[s] for s in ("labeled", "unlabeled", "test"))
    is_val = val_mask(len(lab.y), 0.1, 0)
    xt = torch.from_numpy(lab.x[~is_val])
    yt = torch.from_numpy(lab.y[~is_val])
    xv, yv = torch.from_numpy(lab.x[is_val]), lab.y[is_val]
    xs, ys = torch.from_numpy(test.x), test.y
    x_transfer = torch.cat([xt, torch.from_numpy(unl.x)])  # labeled training + unlabeled rows
    y_transfer = torch.cat([yt, torch.from_numpy(unl.y)])
    print(f"chars: {len(xt)} labeled training, {len(xv)} val, {len(unl.x)} unlabeled, "
          f"{len(xs)} test rows; corpus {src.info['corpus_sha256'][:12]}", flush=True)

    teachers = [train(TEACHER, xt, yt, t_epochs, seed=100 + m) for m in range(2)]
    z_val = [logits_of(t, xv) for t in teachers]
    z_test = [logits_of(t, xs) for t in teachers]
    z_transfer = [logits_of(t, x_transfer) for t in teachers]
    ens_test = mean_probs(z_test, 1)
    result: dict = {"rows": {"train": len(xt), "val": len(xv), "unlabeled": len(unl.x),
                             "test": len(xs)}, "classes": C, "members": 2,
                    "corpus_sha256": src.info["corpus_sha256"],
                    "teacher": {"members_test_acc": [float((z.argmax(1) == ys).mean())
                                                     for z in z_test],
                                "ensemble_test_acc": float((ens_test.argmax(1) == ys).mean()),
                                "ensemble_test_ece": expected_calibration_error(ens_test, ys)}}
    print(f"teachers ({time.time() - t0:.0f} s): {result['teacher']}", flush=True)

    codecs = {"dense_float32": (None, np.float32), "dense_float16": (None, np.float16)}
    for k in (4, 8, 16):
        codecs[f"top{k}_float16"] = (k, np.float16)
        codecs[f"top{k}_float32"] = (k, np.float32)
    result["codecs"] = {name: fidelity(z_val, k, dt) for name, (k, dt) in codecs.items()}
    result["export_fidelity_top8_float16"] = topk.fidelity(np.stack(z_val), 8, np.float16)
    base = result["codecs"]["dense_float16"]["bytes_per_row_raw"]
    for name, r in result["codecs"].items():
        r["raw_share_of_dense_float16"] = r["bytes_per_row_raw"] / base
        share = r["raw_share_of_dense_float16"]
        print(f"{name:15s} {r['bytes_per_row_raw']:5d} B/row raw ({share:.2f} of fp16)"
              f"  parquet {r['parquet_bytes_per_row']:7.1f}  KL T=1/2/4 "
              + " ".join(f"{v:.2e}" for v in r["kl_uniform"].values())
              + f"  top1 {r['top1_agreement']:.4f}", flush=True)

    arms = ["dense", *(a for a in args.arms if a != "dense")]
    runs: dict = {a: {"val_acc": [], "val_nll": [], "val_ece": [], "test_acc": [],
                      "test_ece": []} for a in arms}
    for seed in seeds:
        for arm in arms:
            st = train(STUDENT, x_transfer, y_transfer, s_epochs, seed,
                       student_loss(arm, z_transfer, y_transfer))
            pv = torch.softmax(torch.from_numpy(logits_of(st, xv)).double(), 1).numpy()
            ps = torch.softmax(torch.from_numpy(logits_of(st, xs)).double(), 1).numpy()
            runs[arm]["val_acc"].append(float((pv.argmax(1) == yv).mean()))
            runs[arm]["val_nll"].append(float(-np.log(np.clip(pv[np.arange(len(yv)), yv],
                                                              1e-12, None)).mean()))
            runs[arm]["val_ece"].append(expected_calibration_error(pv, yv))
            runs[arm]["test_acc"].append(float((ps.argmax(1) == ys).mean()))
            runs[arm]["test_ece"].append(expected_calibration_error(ps, ys))
            print(f"seed {seed} {arm:13s} val {runs[arm]['val_acc'][-1]:.4f} test "
                  f"{runs[arm]['test_acc'][-1]:.4f} ece {runs[arm]['test_ece'][-1]:.4f} "
                  f"({time.time() - t0:.0f} s)", flush=True)
    for arm in arms:
        r = runs[arm]
        r |= {f"{m}_mean": float(np.mean(r[m])) for m in ("val_acc", "val_nll", "val_ece",
                                                            "test_acc", "test_ece")}
        if arm != "dense" and len(seeds) > 1:
            r["test_acc_minus_dense_ci95"] = ci(np.subtract(r["test_acc"],
                                                            runs["dense"]["test_acc"]).tolist())
            r["test_ece_minus_dense_ci95"] = ci(np.subtract(r["test_ece"],
                                                            runs["dense"]["test_ece"]).tolist())
    for k in (4, 8):  # the tail rule, chosen on validation rows
        if f"top{k}-ghost" not in runs or f"top{k}-uniform" not in runs:
            continue
        g, u = runs[f"top{k}-ghost"]["val_acc_mean"], runs[f"top{k}-uniform"]["val_acc_mean"]
        result.setdefault("tail_chosen_on_val", {})[f"top{k}"] = "ghost" if g >= u else "uniform"
        # by validation NLL, which scores calibration with accuracy (lower is better)
        g, u = runs[f"top{k}-ghost"]["val_nll_mean"], runs[f"top{k}-uniform"]["val_nll_mean"]
        result.setdefault("tail_chosen_on_val_nll", {})[f"top{k}"] = \
            "ghost" if g < u else "uniform"
    result |= {"students": runs, "seeds": seeds, "epochs": {"teacher": t_epochs,
               "student": s_epochs}, "T": T_STUDENT, "alpha": ALPHA, "quick": q,
               "seconds": round(time.time() - t0, 1), "machine": machine()}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({a: {k: v for k, v in r.items() if "mean" in k or "ci95" in k}
                      for a, r in runs.items()}, indent=1))
    print(f"tail chosen on validation accuracy: {result.get('tail_chosen_on_val')}, on "
          f"validation NLL: {result.get('tail_chosen_on_val_nll')}; wrote {args.out}")


if __name__ == "__main__":
    main()
