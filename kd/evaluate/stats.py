"""How sure a comparison of two models on the same test rows is: paired intervals and tests.

    c = compare(correct_a, correct_b)   # {diff, ci_low, ci_high, p_value} in accuracy units
    r = ratio_intervals(correct_s, correct_t, correct_b)   # retained, gap recovered, with CIs

Both models answer the same rows, so the comparison is paired: the bootstrap resamples rows
(each resample scores both models on the same rows) and McNemar's exact test looks only at the
rows where exactly one of them is right. On 1,000 test rows one row is 0.1 points; a difference
of a few rows is usually inside the interval, and the report says so instead of calling it a
finding. Resamples come from a fixed seed: the same predictions give the same figures.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import binomtest

N_BOOT = 10_000
LEVEL = 0.95


def _resamples(n: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n) row indices drawn with replacement, the same for every comparison."""
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def _interval(values: np.ndarray) -> tuple[float, float]:
    lo, hi = np.nanpercentile(values, [100 * (1 - LEVEL) / 2, 100 * (1 + LEVEL) / 2])
    return float(lo), float(hi)


def mcnemar_p(correct_a: np.ndarray, correct_b: np.ndarray) -> float:
    """Exact (binomial) two-sided McNemar p-value: of the rows where exactly one model is right,
    is `a` right on more of them than chance (p = 1/2) explains?"""
    a_only = int((correct_a & ~correct_b).sum())
    b_only = int((~correct_a & correct_b).sum())
    if a_only + b_only == 0:
        return 1.0
    return float(binomtest(a_only, a_only + b_only, 0.5).pvalue)


def compare(correct_a: np.ndarray, correct_b: np.ndarray, *, n_boot: int = N_BOOT,
            seed: int = 0) -> dict:
    """Accuracy of `a` minus accuracy of `b` on the same rows, its paired bootstrap 95%
    interval and McNemar's exact p-value. Inputs are (N,) booleans: row answered right."""
    a, b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    assert a.shape == b.shape and a.ndim == 1, (a.shape, b.shape)
    d = a.astype(np.float64) - b  # (N,)
    boots = d[_resamples(len(d), n_boot, seed)].mean(1)  # (n_boot,)
    lo, hi = _interval(boots)
    return {"diff": float(d.mean()), "ci_low": lo, "ci_high": hi, "p_value": mcnemar_p(a, b),
            "rows": int(len(d)), "a_only": int((a & ~b).sum()), "b_only": int((~a & b).sum())}


def ratio_intervals(student: np.ndarray, teacher: np.ndarray, baseline: np.ndarray, *,
                    n_boot: int = N_BOOT, seed: int = 0) -> dict:
    """"Retained" (student / teacher accuracy) and "gap recovered" ((student - baseline) /
    (teacher - baseline)), each with a paired bootstrap interval. The gap recovered is only
    meaningful when the teacher is clearly better than the baseline (the teacher-baseline
    interval excludes 0); otherwise its value and interval are null and `meaningful` false."""
    s, t, b = (np.asarray(v, np.float64) for v in (student, teacher, baseline))
    idx = _resamples(len(s), n_boot, seed)
    acc_s, acc_t, acc_b = s[idx].mean(1), t[idx].mean(1), b[idx].mean(1)  # (n_boot,) each
    with np.errstate(divide="ignore", invalid="ignore"):
        retained = np.where(acc_t > 0, acc_s / acc_t, np.nan)
        gap = acc_t - acc_b
        recovered = np.where(gap > 0, (acc_s - acc_b) / gap, np.nan)
    gap_lo, _ = _interval(acc_t - acc_b)
    meaningful = bool(gap_lo > 0)
    r_lo, r_hi = _interval(retained)
    out = {"retained": float(s.mean() / t.mean()) if t.mean() > 0 else None,
           "retained_ci": [r_lo, r_hi], "gap_recovered": None, "gap_recovered_ci": None,
           "gap_meaningful": meaningful}
    if meaningful:
        g_lo, g_hi = _interval(recovered)
        out["gap_recovered"] = float((s.mean() - b.mean()) / (t.mean() - b.mean()))
        out["gap_recovered_ci"] = [g_lo, g_hi]
    return out


def accuracy_interval(correct: np.ndarray, *, n_boot: int = N_BOOT, seed: int = 0) -> list[float]:
    """The bootstrap 95% interval of one model's accuracy on these rows (the frontier's error
    bars); resamples are the comparisons' own, so the figures are reproducible."""
    c = np.asarray(correct, np.float64)
    return list(_interval(c[_resamples(len(c), n_boot, seed)].mean(1)))
