"""What the report measures: pure functions of probabilities and labels, plus speed.

    probs = ensemble_probs([m(x) for m in members])          # (N, C)
    quality(probs, y, n_classes)  -> accuracy, nll, ece, per-class accuracy, confusion
    speed([model], x)             -> latency at batch 1 (median, p95), throughput at a large batch
    speed_of(forward, x, threads=1) -> the same protocol for any callable (ONNX Runtime)
    compression(t, s, b)          -> size and accuracy ratios (deterministic)
    speed_ratios(t_speed, s_speed) -> speedup, throughput ratio (wall-clock)

ECE is the standard equal-width-bin estimate (Guo et al. 2017): the mean over confidence bins
of |accuracy - confidence|, weighted by the share of rows in the bin.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch


def ensemble_probs(member_logits: list[torch.Tensor], combine: str = "mean_probs") -> np.ndarray:
    """The ensemble's predictive distribution at T=1 (the same rule the student imitates)."""
    from kd.distill.losses import soft_targets

    return soft_targets(torch.stack(member_logits), 1.0, combine).numpy()  # (N, C)


def softmax(logits: torch.Tensor) -> np.ndarray:
    return torch.softmax(logits.float(), dim=1).numpy()


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    conf, pred = probs.max(1), probs.argmax(1)
    correct = (pred == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        in_bin = (conf > lo) & (conf <= hi)
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - conf[in_bin].mean())
    return float(ece)


def reliability(probs: np.ndarray, y: np.ndarray, bins: int = 15) -> list[dict]:
    """Per confidence bin: mean confidence, accuracy and row count (the reliability diagram)."""
    conf, correct = probs.max(1), probs.argmax(1) == y
    edges = np.linspace(0.0, 1.0, bins + 1)
    out = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        in_bin = (conf > lo) & (conf <= hi)
        if in_bin.any():
            out.append({"bin": float((lo + hi) / 2), "confidence": float(conf[in_bin].mean()),
                        "accuracy": float(correct[in_bin].mean()), "rows": int(in_bin.sum())})
    return out


def confusion(pred: np.ndarray, y: np.ndarray, n_classes: int) -> np.ndarray:
    """(C, C) counts: rows are true classes, columns predicted classes."""
    return np.bincount(y * n_classes + pred, minlength=n_classes * n_classes).reshape(
        n_classes, n_classes)


def quality(probs: np.ndarray, y: np.ndarray, n_classes: int) -> dict:
    pred = probs.argmax(1)
    cm = confusion(pred, y, n_classes)
    per_class = np.divide(np.diag(cm), cm.sum(1), out=np.zeros(n_classes), where=cm.sum(1) > 0)
    nll = -np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, None)).mean()
    return {"accuracy": float((pred == y).mean()), "nll": float(nll),
            "ece": expected_calibration_error(probs, y), "errors": int((pred != y).sum()),
            "per_class_accuracy": [float(a) for a in per_class], "confusion": cm.tolist()}


def agreement(probs_a: np.ndarray, probs_b: np.ndarray) -> float:
    """Share of rows on which two models' top-1 predictions agree."""
    return float((probs_a.argmax(1) == probs_b.argmax(1)).mean())


def entropy(probs: np.ndarray) -> np.ndarray:
    """Per-row entropy in nats."""
    p = np.clip(probs, 1e-12, 1.0)
    return -(p * np.log(p)).sum(1)


@torch.no_grad()
def speed(models: list[torch.nn.Module], x: np.ndarray, **protocol) -> dict:
    """Latency of one row through `models` (an ensemble runs all of them; the student is a list
    of one) and throughput at a large batch, on torch's current threads, after warm-up."""
    for m in models:
        m.eval()

    def forward(batch: np.ndarray) -> None:
        xt = torch.from_numpy(batch)
        for m in models:
            m(xt)

    return speed_of(forward, x, threads=torch.get_num_threads(), **protocol)


def speed_of(forward: Callable[[np.ndarray], object], x: np.ndarray, *, threads: int,
             calls: int = 300, warmup: int = 30, big_batch: int = 1024,
             big_calls: int = 10) -> dict:
    """The protocol every speed figure shares, for any `forward` (PyTorch eager, ONNX Runtime):
    `warmup` calls on one row, then the median and p95 of `calls` timed one-row calls, then
    rows/s over `big_calls` calls on `big_batch` rows. `threads` is what `forward` runs on."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    one = x[:1]
    for _ in range(warmup):
        forward(one)
    lat = []
    for _ in range(calls):
        t0 = time.perf_counter()
        forward(one)
        lat.append(time.perf_counter() - t0)
    big = np.ascontiguousarray(x[:big_batch])
    forward(big)
    t0 = time.perf_counter()
    for _ in range(big_calls):
        forward(big)
    elapsed = time.perf_counter() - t0
    lat_ms = np.array(lat) * 1e3
    return {"latency_ms_median": float(np.median(lat_ms)),
            "latency_ms_p95": float(np.percentile(lat_ms, 95)),
            "throughput_rows_per_s": float(big_calls * len(big) / elapsed),
            "throughput_batch": len(big),
            "threads": threads}


def compression(teacher: dict, student: dict, baseline: dict) -> dict:
    """What distillation bought, from deterministic figures only (each summary has accuracy,
    params and bytes): the same models always give the same ratios."""
    gap = teacher["accuracy"] - baseline["accuracy"]
    return {
        "params_ratio": teacher["params"] / student["params"],
        "size_ratio": teacher["bytes"] / student["bytes"],
        "accuracy_retained": student["accuracy"] / teacher["accuracy"],
        # undefined when the baseline already matches the teacher: null, not inf
        "gap_recovered": (student["accuracy"] - baseline["accuracy"]) / gap if gap > 0 else None,
    }


def speed_ratios(teacher: dict, student: dict) -> dict:
    """How much faster the student is, from two `speed()` results: wall-clock, so these differ
    from run to run and machine to machine (the report keeps them out of its cached outputs)."""
    return {
        "speedup": teacher["latency_ms_median"] / student["latency_ms_median"],
        "throughput_ratio": student["throughput_rows_per_s"] / teacher["throughput_rows_per_s"],
    }
