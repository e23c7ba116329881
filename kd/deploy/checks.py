"""What must hold before an exported student is written out.

    equivalence(torch_logits, onnx_logits, atol=1e-4, path=...)  # raises, or returns figures
    accuracy_drop(fp32_right, int8_right, max_drop=0.01, path=...)  # raises, or returns figures

The fp32 ONNX model is the same function as the PyTorch student: its logits on the test rows
lie within `atol` of PyTorch's (max absolute difference; float32 kernels differ only in
summation order) and its argmax agrees on every row. The int8 model is a different function;
it only has to stay within `deploy.max_accuracy_drop` of the fp32 model's accuracy on the
validation rows (choices and gates read validation rows; test figures are reported beside).

The drop is judged with its uncertainty. Validation sets are small (36 rows on digits: one
flipped row is 2.8 points), so the gate compares the rows where the two files disagree: `lost`
(fp32 right, int8 wrong) and `gained` (the reverse). The drop is (lost - gained) / rows; the
gate fails when even its one-sided 95% lower bound, the Clopper-Pearson lower bound of the lost
share minus the upper bound of the gained share (2.5% each), exceeds `max_drop`. One flipped
row of 36 passes (bound -0.10); a 5-point drop on 1,000 rows fails (bound +0.03). An observed
drop above `max_drop` that the rows cannot confirm passes with `verdict: "within noise"`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.stats import beta

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


CONFIDENCE = 0.95  # one-sided, for the lower bound of the int8 drop


def _clopper_pearson(k: int, n: int, a: float) -> tuple[float, float]:
    """One-sided exact bounds of a binomial share k / n, each at level `a`."""
    low = float(beta.ppf(a, k, n - k + 1)) if k > 0 else 0.0
    high = float(beta.ppf(1 - a, k + 1, n - k)) if k < n else 1.0
    return low, high


def drop_bound(lost: int, gained: int, rows: int, confidence: float = CONFIDENCE) -> float:
    """One-sided lower confidence bound of the paired accuracy drop (lost - gained) / rows."""
    if rows == 0:
        return -1.0
    a = (1 - confidence) / 2  # Bonferroni over the two shares: conservative, exact
    return _clopper_pearson(lost, rows, a)[0] - _clopper_pearson(gained, rows, a)[1]


def accuracy_drop(fp32_right: np.ndarray, int8_right: np.ndarray, max_drop: float,
                  path: Path | str) -> dict:
    """The int8 file's paired accuracy drop against fp32 on the same rows, with its lower
    bound and the gate's verdict; DeployCheckError naming `path` when the bound exceeds
    `max_drop`."""
    assert fp32_right.shape == int8_right.shape, (fp32_right.shape, int8_right.shape)
    rows = len(fp32_right)
    lost = int((fp32_right & ~int8_right).sum())
    gained = int((~fp32_right & int8_right).sum())
    drop = (lost - gained) / rows if rows else 0.0
    bound = drop_bound(lost, gained, rows)
    figures = {"rows": rows, "lost": lost, "gained": gained, "drop": drop,
               "drop_lower_bound": bound, "confidence": CONFIDENCE, "max_drop": max_drop,
               "verdict": "pass" if drop <= max_drop + 1e-12 else "within noise"}
    if bound > max_drop:
        raise DeployCheckError(
            f"{path}: int8 loses {lost} and gains {gained} of {rows} validation rows against "
            f"fp32: a drop of {drop:.4f}, at least {bound:.4f} at {CONFIDENCE:.0%} confidence, "
            f"more than deploy.max_accuracy_drop = {max_drop:g}")
    return figures
