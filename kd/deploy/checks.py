"""What must hold before an exported student is written out.

    equivalence(torch_logits, onnx_logits, atol=1e-4, path=...)  # raises, or returns figures
    accuracy_drop(fp32_acc, int8_acc, max_drop=0.01, path=...)   # raises, or returns the drop

The fp32 ONNX model is the same function as the PyTorch student: its logits on the test rows
lie within `atol` of PyTorch's (max absolute difference; float32 kernels differ only in
summation order) and its argmax agrees on every row. The int8 model is a different function;
it only has to stay within `deploy.max_accuracy_drop` of the fp32 model's accuracy on the
validation rows (choices and gates read validation rows; test figures are reported beside).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kd.errors import KDError


class DeployCheckError(KDError):
    """An exported model does not do what the student does: nothing is written."""


def equivalence(reference: np.ndarray, exported: np.ndarray, atol: float, path: Path | str
                ) -> dict:
    """Figures of the comparison of two (N, C) logit arrays; DeployCheckError naming `path`
    when the max absolute difference exceeds `atol` or an argmax differs."""
    assert reference.shape == exported.shape, (reference.shape, exported.shape)
    diff = np.abs(reference.astype(np.float64) - exported.astype(np.float64))  # (N, C)
    worst = float(diff.max()) if diff.size else 0.0
    same = reference.argmax(1) == exported.argmax(1)  # (N,)
    if not np.isfinite(worst) or worst > atol:
        row = int(np.unravel_index(np.nanargmax(np.nan_to_num(diff, nan=np.inf)),
                                   diff.shape)[0])
        raise DeployCheckError(f"{path}: logits differ from the PyTorch student's by {worst:.3g} "
                               f"(row {row} of the test split), more than deploy.atol = {atol:g}")
    if not same.all():
        row = int(np.flatnonzero(~same)[0])
        raise DeployCheckError(f"{path}: predicts another class than the PyTorch student on "
                               f"row {row} of the test split")
    return {"max_abs_logit_diff": worst, "argmax_agreement": float(same.mean()) if len(same)
            else 1.0, "rows": len(same)}


def accuracy_drop(fp32: float, int8: float, max_drop: float, path: Path | str) -> float:
    """fp32 - int8 accuracy (points as a fraction); DeployCheckError naming `path` above
    `max_drop`."""
    drop = fp32 - int8
    if drop > max_drop + 1e-12:  # one row more than allowed, not a float rounding
        raise DeployCheckError(f"{path}: int8 accuracy on the validation rows is {int8:.4f}, "
                               f"{drop:.4f} below fp32's {fp32:.4f}, more than "
                               f"deploy.max_accuracy_drop = {max_drop:g}")
    return drop
