"""kd.evaluate.stats against hand computations: McNemar's exact test, paired bootstrap."""

from __future__ import annotations

import math

import numpy as np
import pytest

from kd.evaluate.stats import compare, mcnemar_p, ratio_intervals


def _pair(a_only: int, b_only: int, both: int, neither: int) -> tuple[np.ndarray, np.ndarray]:
    a = [True] * a_only + [False] * b_only + [True] * both + [False] * neither
    b = [False] * a_only + [True] * b_only + [True] * both + [False] * neither
    return np.array(a), np.array(b)


def _binomial_two_sided(k: int, n: int) -> float:
    """The exact McNemar p by hand: twice the smaller binomial tail at p = 1/2, at most 1."""
    tail = sum(math.comb(n, i) for i in range(0, min(k, n - k) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


@pytest.mark.parametrize("a_only, b_only", [(14, 6), (1, 9), (16, 0), (5, 5), (0, 3)])
def test_mcnemar_equals_the_binomial_by_hand(a_only, b_only):
    a, b = _pair(a_only, b_only, both=300, neither=20)
    assert mcnemar_p(a, b) == pytest.approx(_binomial_two_sided(a_only, a_only + b_only))


def test_identical_models_differ_by_nothing():
    a, _ = _pair(0, 0, both=90, neither=10)
    c = compare(a, a.copy())
    assert (c["diff"], c["ci_low"], c["ci_high"], c["p_value"]) == (0.0, 0.0, 0.0, 1.0)


def test_paired_interval_holds_the_difference_and_is_reproducible():
    a, b = _pair(30, 10, both=900, neither=60)  # a is right on 20 more of 1,000 rows
    c = compare(a, b)
    assert c["diff"] == pytest.approx(0.02)
    assert c["ci_low"] < 0.02 < c["ci_high"] and c["ci_low"] > 0  # 20 rows: clear of 0
    # the paired standard error of a difference of discordant rows: sqrt(40) / 1000
    assert c["ci_high"] - c["ci_low"] == pytest.approx(2 * 1.96 * math.sqrt(40) / 1000, rel=0.1)
    assert compare(a, b) == c  # a fixed seed: the same predictions give the same figures
    small = compare(*_pair(3, 1, both=900, neither=96))  # 2 rows of 1,000: inside the noise
    assert small["ci_low"] <= 0 <= small["ci_high"]


def test_gap_recovered_only_when_the_teacher_clearly_beats_the_baseline():
    rng = np.random.default_rng(0)
    teacher = rng.random(1000) < 0.99
    baseline = teacher.copy()
    baseline[np.flatnonzero(teacher)[:40]] = False  # 4 points behind: a clear gap
    student = teacher.copy()
    student[np.flatnonzero(teacher)[:10]] = False  # recovers 3 of the 4 points
    r = ratio_intervals(student, teacher, baseline)
    assert r["gap_meaningful"] and r["gap_recovered"] == pytest.approx(0.75)
    assert r["gap_recovered_ci"][0] < 0.75 < r["gap_recovered_ci"][1]
    assert r["retained_ci"][0] < r["retained"] < r["retained_ci"][1]
    close = teacher.copy()
    close[np.flatnonzero(teacher)[:1]] = False  # one row behind: within the noise
    r = ratio_intervals(student, teacher, close)
    assert not r["gap_meaningful"] and r["gap_recovered"] is None
