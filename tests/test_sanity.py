"""The own-data warnings (kd/evaluate/sanity.py): near chance, below chance, an ensemble no
better than its best member; and the progress lines of long stages (kd/progress.py)."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest

from kd.evaluate.sanity import (
    EXAMPLES,
    chance_level,
    ensemble_warnings,
    model_warnings,
    pipeline_warnings,
)
from kd.progress import Progress, plural


def test_chance_is_the_majority_class_rate_of_the_rows():
    c = chance_level(np.array([0, 0, 0, 1, 2, 2, 3, 3]), 5)  # class 4 absent
    assert (c.rate, c.rows, c.majority) == (3 / 8, 8, 0)
    assert c.line == pytest.approx(3 / 8 + 2 * math.sqrt(3 / 8 * 5 / 8 / 8))
    assert chance_level(np.zeros(0, np.int64), 3) is None


def test_the_noise_line_narrows_with_more_rows():
    few = chance_level(np.arange(40) % 4, 4)
    many = chance_level(np.arange(4000) % 4, 4)
    assert few.rate == many.rate == 0.25 and many.line < few.line


def test_near_and_below_chance_are_told_apart_and_clear_models_pass():
    c = chance_level(np.arange(400) % 4, 4)  # 25%, noise line about 29.3%
    warns = model_warnings({"m0": 0.233, "m1": 0.27, "m2": 0.514, "m3": None}, c, "baseline")
    assert len(warns) == 2
    assert warns[0].startswith("baseline m0 is below chance") and "23.3%" in warns[0]
    assert warns[1].startswith("baseline m1 is barely above chance")
    assert all(EXAMPLES in w and "400 rows" in w for w in warns)
    assert model_warnings({"m0": 0.0}, None, "baseline") == []  # no validation rows


def test_unbalanced_rows_judge_against_the_majority_class_not_one_over_c():
    c = chance_level(np.array([0] * 90 + [1] * 10), 2)
    assert c.rate == 0.9
    # 91% on a 90/10 split is what answering "0" always gives, plus noise
    assert model_warnings({"m": 0.91}, c, "teacher member")
    assert not model_warnings({"m": 0.99}, c, "teacher member")


def test_an_ensemble_no_better_than_its_best_member_is_told():
    c = chance_level(np.arange(400) % 4, 4)
    worse = ensemble_warnings(0.51, {"a": 0.55, "b": 0.49}, c)
    assert len(worse) == 1 and "best member's (a, 55.0%)" in worse[0]
    assert ensemble_warnings(0.55, {"a": 0.55, "b": 0.49}, c)  # a tie is no better
    assert not ensemble_warnings(0.60, {"a": 0.55, "b": 0.49}, c)
    # a perfect member leaves the ensemble nothing to gain: not a warning
    assert not ensemble_warnings(1.0, {"a": 1.0, "b": 0.9}, c)
    # one member: nothing to compare with; the ensemble near chance is still told
    assert ensemble_warnings(0.26, {"a": 0.26}, c)[0].startswith("the teacher (the ensemble)")


def test_pipeline_warnings_cover_members_ensemble_and_baselines():
    c = chance_level(np.arange(400) % 4, 4)
    val = {"a": 0.55, "b": 0.24, "teacher": 0.514, "baseline@small": 0.233,
           "baseline@big": 0.6, "student@small": 0.6}
    warns = pipeline_warnings(val, ["a", "b"], ["small", "big"], c)
    assert [w.split(" is ")[0] for w in warns if " is " in w][:1] == ["teacher member b"]
    assert any(w.startswith("the ensemble's validation accuracy") for w in warns)
    assert any(w.startswith("baseline small is below chance") for w in warns)
    assert not any("baseline big" in w for w in warns)


def test_plural():
    assert plural(1, "student variant") == "1 student variant"
    assert plural(6, "student variant") == "6 student variants"
    assert plural(0, "member") == "0 members"


def test_progress_off_a_terminal_is_a_few_plain_lines_with_a_total_and_time_left():
    out = io.StringIO()  # not a terminal
    with Progress(1000, "export", unit="rows", stream=out, quiet_s=0) as p:
        for _ in range(100):
            p.update(10)
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and len(lines) == 3  # at 25, 50 and 75%
    assert lines[0].startswith("export: 250 of 1,000 rows (25%)") and "left" in lines[0]


def test_progress_of_a_short_stage_says_nothing():
    out = io.StringIO()
    with Progress(1000, "export", stream=out, quiet_s=3600) as p:
        p.update(1000)
    assert out.getvalue() == ""
