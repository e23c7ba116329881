"""The report's plots (labels readable where points crowd: kd/report/labels.py; axes two runs
share) and the command that compares experiments (`kd compare`).

Variants of one network share a size (medium, medium_hard, medium_labeled), members of an
ensemble often share one too, and the largest variant sits at the right edge: every label must
be drawn clear of the others and inside the axes. Measured on the rendered figure, with
matplotlib's own text extents.
"""

from __future__ import annotations

import itertools

import pytest
from matplotlib.text import Text

from kd.report import plots


def _ci(a: float) -> list[float]:
    return [a - 0.01, a + 0.01]


def frontier_points() -> dict:
    """Three variants of one size (two of them controls) and the largest one chosen."""
    students = {"tiny": (300, 0.80), "small": (1_200, 0.88), "medium": (5_000, 0.910),
                "medium_hard": (5_000, 0.905), "medium_labeled": (5_000, 0.912),
                "large": (40_000, 0.925)}
    baselines = {"tiny": 0.78, "small": 0.86, "medium": 0.903, "large": 0.915}
    pts: dict = {"student": {}, "baseline": {}}
    for v, (n, acc) in students.items():
        pts["student"][v] = {"params": n, "accuracy": acc, "ci": _ci(acc),
                             "control": v.endswith(("_hard", "_labeled"))}
        if v in baselines:
            pts["baseline"][v] = {"params": n, "accuracy": baselines[v],
                                  "ci": _ci(baselines[v])}
    return pts


@pytest.fixture
def drawn(monkeypatch):
    """Every figure plots.save writes: its axes and the rendered boxes of their labels."""
    figures = []
    save = plots.save

    def measure(fig, path):
        fig.tight_layout()  # what save does first: the boxes are those of the written figure
        renderer = fig.canvas.get_renderer()
        ax = fig.axes[0]
        for t in ax.texts:
            t.update_positions(renderer)  # where the annotation's text goes
        # the text's box alone, without a leader line to its point
        figures.append((ax.get_window_extent(renderer),
                        [(t.get_text(), Text.get_window_extent(t, renderer)) for t in ax.texts],
                        (ax.get_xlim(), ax.get_ylim())))
        save(fig, path)

    monkeypatch.setattr(plots, "save", measure)
    return figures


def _assert_readable(frame, boxes: list, expected: list[str]) -> None:
    assert sorted(name for name, _ in boxes) == sorted(expected)
    for name, box in boxes:
        assert (frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0
                and box.y1 <= frame.y1), f"label {name!r} leaves the axes: {box} not in {frame}"
    for (a, box_a), (b, box_b) in itertools.combinations(boxes, 2):
        assert not box_a.overlaps(box_b), f"labels {a!r} and {b!r} overlap"


def test_frontier_labels_overlap_nothing_and_stay_inside(drawn, tmp_path):
    pts = frontier_points()
    plots.frontier(pts, 0.93, "params", "parameters (log scale)", tmp_path / "f.png", "large")
    [(frame, boxes, _)] = drawn
    students = ["tiny", "small", "medium", "medium_hard", "medium_labeled", "large (chosen)"]
    _assert_readable(frame, boxes, students + list(pts["baseline"]))  # baselines: no "(chosen)"
    assert (tmp_path / "f.png").stat().st_size > 0


def test_accuracy_vs_params_member_labels_apart(drawn, tmp_path):
    members = {f"cnn_{i}": (10_000, 0.900 + 0.001 * i) for i in range(5)}
    points = {"teacher": (50_000, 0.93), **members, "student": (5_000, 0.91),
              "baseline": (5_000, 0.905)}
    plots.accuracy_vs_params(points, tmp_path / "a.png")
    [(frame, boxes, _)] = drawn
    _assert_readable(frame, boxes, list(points))


def test_two_runs_frontiers_share_their_axes(drawn, tmp_path):
    """`dvc plots diff` shows two runs' PNGs side by side: a T = 8 run whose accuracies moved a
    little gets the same axes, ending on 5-point lines and powers of ten."""
    base = frontier_points()
    moved = frontier_points()
    for kind in moved.values():
        for p in kind.values():
            p["accuracy"] -= 0.012
            p["ci"] = _ci(p["accuracy"])
    for i, pts in enumerate((base, moved)):
        plots.frontier(pts, 0.93, "params", "parameters", tmp_path / f"{i}.png", "large")
    (xlim, ylim), (xlim2, ylim2) = (d[2] for d in drawn)
    assert xlim == xlim2 == (100, 100_000)
    assert ylim == ylim2 == pytest.approx((0.75, 0.95))


def test_size_rows_feed_the_dvc_plot():
    """data/report/sizes.json: every variant's student (or control) and baseline, the
    ensemble and each member of known size, as dvc.yaml's "Accuracy against size" plot reads
    them through its template (log x)."""
    import json

    import yaml

    from kd.report.variants import size_rows
    from tests.conftest import ROOT

    figures = {v: {"params": p["params"], "accuracy": p["accuracy"], "accuracy_ci": p["ci"],
                   "control": p["control"],
                   "baseline_accuracy": frontier_points()["baseline"].get(v, {}).get("accuracy"),
                   "baseline_accuracy_ci": [0.0, 1.0]}
               for v, p in frontier_points()["student"].items()}
    rows = size_rows(figures, {"teacher": (50_000, 0.93), "a": (10_000, 0.9)}, ["a", "sk"])
    kinds = [(r["model"], r["kind"]) for r in rows]
    assert kinds.count(("medium_hard", "control")) == 1
    assert ("medium_hard", "baseline") not in kinds and ("medium", "baseline") in kinds
    assert kinds[-2:] == [("ensemble", "ensemble"), ("a", "member")]  # "sk": unknown size
    plot = next(p for p in yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"]
                if "Accuracy against size (test)" in p)["Accuracy against size (test)"]
    assert plot["x"] == "params" and plot["y"] == {"data/report/sizes.json": "accuracy"}
    spec = json.loads((ROOT / plot["template"]).read_text())
    assert spec["data"]["values"] == "<DVC_METRIC_DATA>"
    assert spec["encoding"]["x"]["scale"] == {"type": "log"}
    assert spec["encoding"]["color"] == "<DVC_METRIC_COLOR>"  # one colour per experiment


def test_kd_compare_is_dvc_exp_show_with_the_headline_and_what_changed():
    """`kd compare` = `dvc exp show` keeping the headline keys, dropping the dependencies'
    hashes and every param that is the same in all rows; its other arguments go to dvc
    (tests/test_report.py runs it on a real repository)."""
    import re
    import shlex

    from click.testing import CliRunner

    from kd.cli import cli
    from kd.report.headline import SHOWN, exp_show_args

    out = CliRunner().invoke(cli, ["compare", "--print", "--hide-workspace", "-n", "2"])
    assert out.exit_code == 0, out.output
    args = shlex.split(out.output)
    assert args == exp_show_args(("--hide-workspace", "-n", "2"))
    assert args[:4] == ["dvc", "exp", "show", "--only-changed"]
    keep, drop = args[args.index("--keep") + 1], args[args.index("--drop") + 1]
    assert all(re.match(keep, k) for k in SHOWN) and not re.match(keep, "val_acc_x")
    assert re.match(drop, "data/index/student.json") and re.match(drop, "kd/report/build.py")
    assert not re.match(drop, "student.defaults.temperature")  # params stay


def test_kd_compare_without_dvc_is_one_line(monkeypatch, tmp_path):
    from click.testing import CliRunner

    from kd.cli import cli

    monkeypatch.setattr("sys.executable", str(tmp_path / "python"))  # no dvc beside it
    monkeypatch.setenv("PATH", str(tmp_path))  # nor on PATH
    out = CliRunner().invoke(cli, ["compare"])
    assert out.exit_code == 2, out.output
    assert out.output.strip().splitlines() == [out.output.strip()]  # one line, no traceback
    assert "no `dvc`" in out.output


def test_accuracy_axes_stop_at_one_and_size_axes_at_half_decades():
    import matplotlib.pyplot as plt

    from kd.report.plots import shared_axes

    fig, ax = plt.subplots()
    ax.set_xscale("log")
    shared_axes(ax, [1_228, 11_306], [0.931, 0.996])  # a whisker near 1 asks for 1.05
    assert ax.get_ylim() == pytest.approx((0.9, 1.0))
    assert ax.get_xlim() == pytest.approx((1_000, 10 ** 4.5))
    plt.close(fig)
