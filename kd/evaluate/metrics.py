"""What the report measures: pure functions of probabilities and labels, plus speed.

    probs = ensemble_probs([m(x) for m in members])          # (N, C)
    quality(probs, y, n_classes)  -> accuracy, nll, ece, per-class accuracy, confusion
    speeds({"student": [m]}, x)  -> latency at batch 1 (median, p95), throughput at a large batch,
                                   entries measured side by side
    compression(t, s, b)          -> size and accuracy ratios (deterministic)
    speed_ratios(t_speed, s_speed) -> speedup, throughput ratio (wall-clock)

ECE is the standard equal-width-bin estimate (Guo et al. 2017): the mean over confidence bins
of |accuracy - confidence|, weighted by the share of rows in the bin.
"""

from __future__ import annotations

import functools
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

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


def kl_from(p: np.ndarray, q: np.ndarray) -> float:
    """Mean over rows of KL(p || q) in nats: how far model q's distribution is from p's (the
    ensemble's), the fidelity Stanton et al. (2021) measure beside top-1 agreement."""
    p64, q64 = p.astype(np.float64), np.clip(q.astype(np.float64), 1e-12, 1.0)
    plogp = np.where(p64 > 0, p64 * np.log(np.clip(p64, 1e-300, 1.0)), 0.0)
    return float((plogp - p64 * np.log(q64)).sum(1).mean())


def entropy(probs: np.ndarray) -> np.ndarray:
    """Per-row entropy in nats."""
    p = np.clip(probs, 1e-12, 1.0)
    return -(p * np.log(p)).sum(1)


CALLS, WARMUP, BIG_CALLS = 300, 30, 10


def speed_rounds(calls: int = CALLS, warmup: int = WARMUP, big_calls: int = BIG_CALLS) -> int:
    """How many times `speeds` calls its `tick`: one per round (a progress bar's total)."""
    return warmup + calls + 1 + big_calls


@torch.no_grad()
def speeds(models: dict[str, list[torch.nn.Module] | Callable[[np.ndarray], object]],
           x: np.ndarray, *, calls: int = CALLS, warmup: int = WARMUP, big_batch: int = 1024,
           big_calls: int = BIG_CALLS, tick: Callable[[], object] | None = None
           ) -> dict[str, dict]:
    """Latency of one row through each entry of `models` (an ensemble runs all of its list; a
    student is a list of one) and throughput at a large batch, on torch's current threads.
    An entry may also be any callable on a float32 array (an ONNX Runtime session, run on as
    many threads as torch's): it is timed in the same rounds.

    The entries are measured side by side: every round times each of them once, in turn, so a
    burst of load from another process hits all of them alike instead of one entry's whole run
    (a ratio of two figures taken minutes apart on a shared machine means little). `tick` is
    called after every round (`speed_rounds()` of them): a progress bar's update."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    xt = torch.from_numpy(x)
    runs = {}  # name -> (run, one row, big batch): torch entries get tensors made once
    for name, entry in models.items():
        if isinstance(entry, list):
            for m in entry:
                m.eval()
            runs[name] = (functools.partial(_run_all, entry), xt[:1], xt[:big_batch])
        else:
            runs[name] = (entry, x[:1], x[:big_batch])

    def forward(run: Callable, batch) -> float:
        t0 = time.perf_counter()
        run(batch)
        return time.perf_counter() - t0

    tick = tick or (lambda: None)
    for _ in range(warmup):
        for run, one, _big in runs.values():
            forward(run, one)
        tick()
    lat: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(calls):
        for name, (run, one, _big) in runs.items():
            lat[name].append(forward(run, one))
        tick()
    for run, _one, big in runs.values():
        forward(run, big)
    tick()
    busy = {name: 0.0 for name in models}
    for _ in range(big_calls):
        for name, (run, _one, big) in runs.items():
            busy[name] += forward(run, big)
        tick()
    out = {}
    for name in models:
        lat_ms = np.array(lat[name]) * 1e3
        n_big = len(runs[name][2])
        out[name] = {"latency_ms_median": float(np.median(lat_ms)),
                     "latency_ms_p95": float(np.percentile(lat_ms, 95)),
                     "throughput_rows_per_s": float(big_calls * n_big / busy[name]),
                     "throughput_batch": n_big,
                     "threads": torch.get_num_threads()}
    return out


def _run_all(models: list[torch.nn.Module], batch: torch.Tensor) -> None:
    for m in models:
        m(batch)


def speed(models: list[torch.nn.Module], x: np.ndarray, **kwargs) -> dict:
    """`speeds` of one entry."""
    return speeds({"model": models}, x, **kwargs)["model"]


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


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version()}


@torch.no_grad()
def validation_accuracy(prepared: Path, models: dict[str, torch.nn.Module], members: list[str],
                        combine: str, shape: tuple[int, ...]) -> dict[str, float | None]:
    """Accuracy of every model (and of the ensemble, as "teacher") on the labeled rows held out
    for validation: the rows a choice may read. {} when there are none."""
    from kd.prepared import read_split

    labeled, is_val = read_split(prepared, "labeled")
    if not is_val.any():
        return {}
    x, y = torch.from_numpy(labeled.x[is_val]), labeled.y[is_val]
    x = x.view(len(x), *shape)  # (N, *shape)
    logits = {name: m(x) for name, m in models.items()}  # each (N, C)
    out = {name: float((lg.argmax(1).numpy() == y).mean()) for name, lg in logits.items()}
    teacher = ensemble_probs([logits[m] for m in members], combine)
    out["teacher"] = float((teacher.argmax(1) == y).mean())
    out["rows"] = int(is_val.sum())
    return out
