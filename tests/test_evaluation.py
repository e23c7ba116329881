"""Report metrics against values computed by hand on tiny inputs, and the HTML's self-containment."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from kd.evaluate.metrics import (
    agreement,
    compression,
    confusion,
    ensemble_probs,
    entropy,
    expected_calibration_error,
    quality,
    reliability,
    speed,
    speed_ratios,
)
from kd.report.render import render_html, render_markdown


def test_ece_by_hand():
    # 4 rows, 2 classes, 15 equal-width bins: confidences 0.9, 0.9, 0.6, 0.6
    probs = np.array([[0.9, 0.1], [0.1, 0.9], [0.6, 0.4], [0.4, 0.6]])
    y = np.array([0, 0, 0, 0])
    # bin of 0.9: rows 0 (correct) and 1 (wrong) -> accuracy 0.5, confidence 0.9, weight 0.5
    # bin of 0.6: rows 2 (correct) and 3 (wrong) -> accuracy 0.5, confidence 0.6, weight 0.5
    expected = 0.5 * abs(0.5 - 0.9) + 0.5 * abs(0.5 - 0.6)
    assert expected_calibration_error(probs, y) == pytest.approx(expected)
    assert expected == pytest.approx(0.25)


def test_ece_is_zero_when_confidence_equals_accuracy():
    probs = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert expected_calibration_error(probs, np.array([0, 1])) == 0.0
    assert expected_calibration_error(probs, np.array([1, 0])) == pytest.approx(1.0)


def test_reliability_bins_count_every_row():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(3), size=50)
    bins = reliability(p, rng.integers(0, 3, 50))
    assert sum(b["rows"] for b in bins) == 50


def test_agreement_confusion_and_per_class_by_hand():
    a = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.4, 0.6]])  # top-1: 0 1 0 1
    b = np.array([[0.6, 0.4], [0.6, 0.4], [0.1, 0.9], [0.3, 0.7]])  # top-1: 0 0 1 1
    assert agreement(a, b) == 0.5
    y = np.array([0, 1, 1, 1])
    cm = confusion(a.argmax(1), y, 2)
    assert cm.tolist() == [[1, 0], [1, 2]]  # true 1 predicted 0 once (row 2)
    q = quality(a, y, 2)
    assert q["accuracy"] == 0.75 and q["errors"] == 1
    assert q["per_class_accuracy"] == [1.0, pytest.approx(2 / 3)]
    assert q["nll"] == pytest.approx(-np.mean(np.log([0.9, 0.8, 0.3, 0.6])))


def test_compression_ratios_by_hand():
    teacher = {"accuracy": 0.99, "params": 200_000, "bytes": 800_000}
    student = {"accuracy": 0.985, "params": 5_000, "bytes": 25_000}
    c = compression(teacher, student, {"accuracy": 0.97})
    assert c["params_ratio"] == 40 and c["size_ratio"] == 32
    assert "speedup" not in c  # wall-clock: speed_ratios, kept out of the cached metrics
    s = speed_ratios({"latency_ms_median": 1.0, "throughput_rows_per_s": 1_000.0},
                     {"latency_ms_median": 0.125, "throughput_rows_per_s": 9_000.0})
    assert s == {"speedup": 8, "throughput_ratio": 9}
    assert c["accuracy_retained"] == pytest.approx(0.985 / 0.99)
    assert c["gap_recovered"] == pytest.approx(0.75)  # (0.985 - 0.97) / (0.99 - 0.97)
    # a baseline as good as the teacher leaves no gap to recover: None, not a division by 0
    assert compression(teacher, student, {"accuracy": 0.99})["gap_recovered"] is None


def test_ensemble_probs_and_entropy():
    l1 = torch.tensor([[2.0, 0.0]])
    l2 = torch.tensor([[0.0, 2.0]])
    p = ensemble_probs([l1, l2])
    assert p == pytest.approx(np.array([[0.5, 0.5]]))
    assert entropy(p)[0] == pytest.approx(np.log(2))
    assert entropy(np.array([[1.0, 0.0]]))[0] == pytest.approx(0.0, abs=1e-9)


def test_speed_reports_latency_and_throughput():
    model = torch.nn.Linear(4, 2)
    s = speed([model], np.zeros((64, 4), np.float32), calls=20, warmup=2, big_calls=2)
    assert 0 < s["latency_ms_median"] <= s["latency_ms_p95"]
    assert s["throughput_rows_per_s"] > 0 and s["throughput_batch"] == 64


def _ctx():
    row = {"accuracy": 0.99, "nll": 0.03, "ece": 0.01, "errors": 10, "params": 100, "bytes": 2048}
    metrics = {"teacher": row, "student": {**row, "agreement": 0.98}, "baseline": row,
               "members": {"a": row},
               "compression": {"params_ratio": 35.0, "size_ratio": 30.0, "accuracy_retained": 1.0,
                               "gap_recovered": None},
               "student_temperature": 4.0, "student_alpha": 0.9}
    ev = {k: {"per_class_accuracy": [1.0, 0.5]} for k in ("teacher", "student", "baseline")}
    return {"metrics": metrics, "evals": ev, "members": ["a"], "class_names": ["x", "y"],
            "test_rows": 10}


def test_html_is_self_contained(tmp_path):
    from PIL import Image  # matplotlib's dependency

    (tmp_path / "training_curves.png").parent.mkdir(exist_ok=True)
    Image.new("RGB", (4, 4)).save(tmp_path / "training_curves.png")
    page = render_html(_ctx(), tmp_path)
    assert "data:image/png;base64," in page
    # no network resource of any kind: no src/href pointing anywhere but data: URIs
    refs = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert refs and all(r.startswith("data:") for r in refs)
    assert "http://" not in page and "https://" not in page and "<script" not in page


def test_markdown_headline_handles_an_undefined_gap():
    md = render_markdown(_ctx())
    assert "35.0x fewer parameters" in md and "No gap-recovered figure" in md
    # speed is wall-clock: not in the cached report, which points to timing.json instead
    assert "latency ms" not in md and "rows/s" not in md and "timing.json" in md


def _issue_ctx(gap_meaningful: bool = True) -> dict:
    """The own-data run of the issue: ensemble 51.4%, student 60.8%, baseline 33.2% on test."""
    ctx = _ctx()
    m = ctx["metrics"]
    m["teacher"] = {**m["teacher"], "accuracy": 0.514}
    m["student"] = {**m["student"], "accuracy": 0.608}
    m["baseline"] = {**m["baseline"], "accuracy": 0.332}
    gap = (0.608 - 0.332) / (0.514 - 0.332)
    m["compression"] |= {"accuracy_retained": 0.608 / 0.514, "accuracy_retained_ci": [1.05, 1.3],
                         "gap_recovered": gap if gap_meaningful else None,
                         "gap_recovered_ci": [1.2, 1.9] if gap_meaningful else None,
                         "gap_meaningful": gap_meaningful}
    return ctx


def test_a_student_above_the_teacher_is_said_in_points_not_as_a_share_over_100_percent():
    md = render_markdown(_issue_ctx())
    assert "above the teacher" in md and "+9.40 points" in md
    assert "118.29%" not in md and "151.65%" not in md and "keeps" not in md
    # every percentage the headline prints is a share or an accuracy: none over 100%
    assert all(float(p) <= 100 for p in re.findall(r"(\d+\.\d+)%", md))


def test_a_gap_inside_the_noise_or_negative_gets_no_ratio():
    md = render_markdown(_issue_ctx(gap_meaningful=False))
    assert "No gap-recovered figure" in md and "not clear of the noise" in md
    ctx = _issue_ctx(gap_meaningful=False)
    ctx["metrics"]["baseline"]["accuracy"] = 0.6  # above the teacher
    md = render_markdown(ctx)
    assert "not above the baseline" in md and "undefined" in md
    assert "Distillation recovered" not in md


def test_a_share_below_100_percent_is_still_printed():
    ctx = _ctx()
    ctx["metrics"]["student"] = {**ctx["metrics"]["student"], "accuracy": 0.98}
    ctx["metrics"]["baseline"] = {**ctx["metrics"]["baseline"], "accuracy": 0.95}
    ctx["metrics"]["compression"] |= {"accuracy_retained": 0.98 / 0.99,
                                      "gap_recovered": 0.75, "gap_meaningful": True}
    md = render_markdown(ctx)
    assert "keeps **98.99%**" in md and "recovered **75.00%**" in md


def test_the_stages_warnings_lead_the_headline():
    ctx = _issue_ctx() | {"warnings": ["baseline small is below chance on the validation rows"]}
    md = render_markdown(ctx)
    bullets = [line for line in md.splitlines() if line.startswith("- ")]
    assert bullets[0] == "- **Warning:** baseline small is below chance on the validation rows"
    assert "<strong>Warning:</strong> baseline small" in render_html(ctx, Path("/nonexistent"))


def test_the_frontier_says_above_teacher_rather_than_a_share_over_100_percent():
    from kd.report.render import kept

    assert kept(0.608, 0.514) == "above teacher (+9.40 points)"
    assert kept(0.5, 0.514) == f"{100 * 0.5 / 0.514:.2f}%"
    assert kept(None, 0.514) == "-"


def test_kl_from_the_ensemble_is_zero_for_the_ensemble_and_matches_a_hand_sum():
    from kd.evaluate.metrics import kl_from

    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(4), size=50)
    q = rng.dirichlet(np.ones(4), size=50)
    assert kl_from(p, p) == pytest.approx(0.0, abs=1e-12)
    hand = np.mean([sum(a * np.log(a / b) for a, b in zip(pr, qr, strict=True))
                    for pr, qr in zip(p, q, strict=True)])
    assert kl_from(p, q) == pytest.approx(hand, rel=1e-9) and kl_from(p, q) > 0
    assert kl_from(p, q) != pytest.approx(kl_from(q, p))  # KL(ensemble || model), not reverse
    one_hot = np.eye(4)[rng.integers(0, 4, 50)]  # zeros in p: 0 log 0 = 0, not NaN
    assert np.isfinite(kl_from(one_hot, q))


def test_the_omitted_classes_table_lists_only_omitting_variants():
    from kd.report.variants import omit_rows

    fig = {"classes": [3], "bias": 4.5, "test_rows": 100, "test_accuracy_omitted": 0.1,
           "test_accuracy_omitted_corrected": 0.95, "test_accuracy_corrected": 0.97}
    header, rows = omit_rows({"main": {"test_accuracy": 0.9}, "no3": {"omit": fig}})
    assert len(rows) == 1 and rows[0][:3] == ["no3", "3", "+4.50"]
    assert rows[0][4:] == ["10.00%", "95.00%", "97.00%"] and len(header) == len(rows[0])
