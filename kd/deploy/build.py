"""Export, check, quantize, check: the deploy stage's work, into one directory.

    figures = build(model, spec, meta, cfg.deploy, prepared="data/prepared", out=tmp_dir)

Writes `student.onnx` (fp32) and `student.int8.onnx` into `out` and returns the deterministic
figures (accuracy, sizes, check results) that become data/deploy/metrics.json. Raises
DeployCheckError before returning when either check fails; the caller writes into a temporary
directory (kd.io.atomic.atomic_dir), so a failed check leaves no file behind.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from kd.config import DeployConfig
from kd.deploy import checks
from kd.deploy.export import FP32, INT8, export_onnx
from kd.deploy.quantize import calibration_rows, quantize, resolve_kind
from kd.deploy.runtime import CHECK_THREADS, open_session, run
from kd.prepared import read_split


def _accuracy(probs: np.ndarray, y: np.ndarray) -> float:
    return float((probs.argmax(1) == y).mean()) if len(y) else 0.0


def build(model: nn.Module, spec: dict[str, Any], meta: dict[str, Any], cfg: DeployConfig,
          prepared: str | Path, out: str | Path) -> dict:
    """The fp32 and int8 files of `model` in `out`, checked; their figures."""
    prepared, out = Path(prepared), Path(out)
    test, _ = read_split(prepared, "test")
    labeled, is_val = read_split(prepared, "labeled")
    x_val, y_val = labeled.x[is_val], labeled.y[is_val]  # (V, F), (V,)
    with torch.no_grad():
        t_logits = model(torch.from_numpy(test.x)).numpy()  # (N, C)

    fp32 = export_onnx(model, spec, meta["normalization"], out / FP32)
    sess = open_session(fp32, CHECK_THREADS)
    o_logits, o_test = run(sess, test.x)  # (N, C) each
    same = checks.equivalence(t_logits, o_logits, cfg.atol, fp32)
    o_val = run(sess, x_val)[1]

    kind = resolve_kind(cfg.quantize, spec["arch"])
    calib = None
    if kind == "static":
        calib = calibration_rows(prepared, cfg.calibration_rows, cfg.calibration_seed)
    int8 = quantize(fp32, out / INT8, kind, calib, cfg.per_channel)
    sess8 = open_session(int8, CHECK_THREADS)
    q_test, q_val = run(sess8, test.x)[1], run(sess8, x_val)[1]

    acc = {"fp32": (_accuracy(o_val, y_val), _accuracy(o_test, test.y)),
           "int8": (_accuracy(q_val, y_val), _accuracy(q_test, test.y))}
    gate = checks.accuracy_drop(o_val.argmax(1) == y_val, q_val.argmax(1) == y_val,
                                cfg.max_accuracy_drop, int8)
    size = {"fp32": fp32.stat().st_size, "int8": int8.stat().st_size}
    return {
        "quantization": kind,
        "calibration_rows": 0 if calib is None else len(calib),
        "fp32": {"bytes": size["fp32"], "val_accuracy": acc["fp32"][0],
                 "accuracy": acc["fp32"][1], **same},
        "int8": {"bytes": size["int8"], "val_accuracy": acc["int8"][0],
                 "accuracy": acc["int8"][1], "val_accuracy_drop": gate["drop"],
                 "accuracy_drop": acc["fp32"][1] - acc["int8"][1],
                 "agreement_with_fp32": float((q_test.argmax(1) == o_test.argmax(1)).mean()),
                 "size_ratio": size["int8"] / size["fp32"], "gate": gate},
    }

