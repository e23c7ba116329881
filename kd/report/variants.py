"""The report's view of the student variants: the compression frontier and the controls.

    figures = variant_figures(cfg, right, params, val, teacher_acc)   # metrics.json "variants"
    rows = controls_rows(cfg, figures)                                # the controls table
    rows = omit_rows({v: json.loads(...metrics.json) ...})           # the omitted classes

A variant is one row of the frontier: its distilled student and its baseline (the same network
on labels alone) on the test rows, each with a 95% interval, the student's lead over its own
baseline (paired), and how much of the ensemble's accuracy it keeps. The controls are the
variants that share one network and differ only in the recipe (`targets: hard`, `rows:
labeled`): side by side with that network's baseline they say how much of KD's gain the extra
inputs carry and how much the soft targets themselves do (Hinton et al.'s control experiments).
"""

from __future__ import annotations

import json

import numpy as np

from kd.config import Config, StudentConfig
from kd.evaluate import stats
from kd.report.render import interval, kept, pct


def recipe(st: StudentConfig) -> str:
    """A variant's recipe in words: what its student learned from."""
    what = "soft targets" if st.targets == "soft" else "hard pseudo-labels"
    rows = "labeled rows only" if st.rows == "labeled" else "all rows"
    extra = ([f"layer-skip init from {st.init.from_}"] if st.init else []) + \
        ([f"cosine term beta={st.beta:g}"] if st.beta else []) + \
        ([f"combine {st.combine}"] if st.combine != "mean_probs" else []) + \
        ([f"classes {', '.join(map(str, st.omit))} omitted"] if st.omit else []) + \
        ([f"{100 * st.fraction:g}% of the labeled rows"] if st.fraction < 1 else []) + \
        (["stored rows only (no views)"] if st.views == "none" else [])
    return ", ".join([what, rows, *extra])


OMIT_HEADER = ["variant", "omitted", "bias (validation)", "test rows", "accuracy on them",
               "after the bias", "all test rows after the bias"]


def omit_rows(variant_metrics: dict[str, dict]) -> tuple[list[str], list[list[str]]]:
    """The omitted-classes table (header, rows) from each omitting variant's metrics.json
    "omit" figures: its test accuracy on the omitted classes' rows without and with the bias
    chosen on validation rows (Hinton et al. 2015, section 3)."""
    rows = []
    for v, m in variant_metrics.items():
        if o := m.get("omit"):
            rows.append([v, ", ".join(map(str, o["classes"])), f"{o['bias']:+.2f}",
                         str(o["test_rows"]), pct(o["test_accuracy_omitted"]),
                         pct(o["test_accuracy_omitted_corrected"]),
                         pct(o["test_accuracy_corrected"])])
    return OMIT_HEADER, rows


def network(st: StudentConfig) -> str:
    """Variants with equal networks (architecture and knobs) form one control group."""
    return f"{st.arch} {json.dumps(st.knobs, sort_keys=True)}"


def variant_figures(cfg: Config, right: dict[str, np.ndarray], params: dict[str, int],
                    val: dict[str, float], teacher_acc: float) -> dict[str, dict]:
    """variant -> its figures; `right`, `params`, `val` are keyed `student@v` / `baseline@v`
    (and `teacher` in `right` and `val`): (N,) booleans of test rows answered right, parameter
    counts, validation accuracies."""
    out = {}
    for v in cfg.student.variants:
        st = cfg.student.variant(v)
        s, b = right[f"student@{v}"], right[f"baseline@{v}"]
        ratios = stats.ratio_intervals(s, right["teacher"], b)
        cmp = stats.compare(s, b)
        out[v] = {
            "accuracy": float(s.mean()), "accuracy_ci": stats.accuracy_interval(s),
            "params": params[f"student@{v}"],
            "baseline_accuracy": float(b.mean()), "baseline_accuracy_ci":
                stats.accuracy_interval(b),
            "val_accuracy": val.get(f"student@{v}"),
            "baseline_val_accuracy": val.get(f"baseline@{v}"),
            "retained": float(s.mean()) / teacher_acc if teacher_acc else None,
            "retained_ci": ratios["retained_ci"],
            "gap_recovered": ratios["gap_recovered"],
            "vs_baseline": {k: cmp[k] for k in ("diff", "ci_low", "ci_high", "p_value")},
            "arch": st.arch, "targets": st.targets, "rows": st.rows,
            "control": st.targets != "soft" or st.rows != "all" or st.views == "none",
        }
    return out


def frontier_points(figures: dict[str, dict], x: dict[str, float], x_key: str) -> dict:
    """plots.frontier's input: the students and the baselines at `x[v]` (params or latency)."""
    pts: dict[str, dict] = {"student": {}, "baseline": {}}
    for v, f in figures.items():
        pts["student"][v] = {x_key: x[v], "accuracy": f["accuracy"], "ci": f["accuracy_ci"],
                             "control": f["control"]}
        if not f["control"]:  # a control's baseline is its network's baseline: drawn once
            pts["baseline"][v] = {x_key: x[v], "accuracy": f["baseline_accuracy"],
                                  "ci": f["baseline_accuracy_ci"]}
    return pts


def size_rows(figures: dict[str, dict], points: dict[str, tuple[int, float]],
              members: list[str]) -> list[dict]:
    """data/report/sizes.json, the rows of the "Accuracy against size" DVC plot: every variant's
    student (kind `student`, or `control` for a control recipe) and baseline, the ensemble and
    each member of known size, at its parameter count, with its test accuracy. `dvc plots diff`
    draws the rows of both experiments on one pair of axes."""
    rows = []
    for v in sorted(figures, key=lambda n: (figures[n]["params"], n)):
        f = figures[v]
        rows.append({"model": v, "kind": "control" if f["control"] else "student",
                     "params": f["params"], "accuracy": f["accuracy"],
                     "ci_low": f["accuracy_ci"][0], "ci_high": f["accuracy_ci"][1]})
        if not f["control"]:  # a control's baseline is its network's: one row
            lo, hi = f["baseline_accuracy_ci"]
            rows.append({"model": v, "kind": "baseline", "params": f["params"],
                         "accuracy": f["baseline_accuracy"], "ci_low": lo, "ci_high": hi})
    for name in ("teacher", *members):
        # a member of unknown size (an sklearn model) has no point; nor has an ensemble of them
        if points.get(name, (0, 0))[0]:
            n, acc = points[name]
            rows.append({"model": "ensemble" if name == "teacher" else name,
                         "kind": "ensemble" if name == "teacher" else "member", "params": n,
                         "accuracy": acc, "ci_low": None, "ci_high": None})
    return rows


CONTROLS_HEADER = ["network", "what the student learned from", "val accuracy", "test accuracy",
                   "95% interval", "vs baseline (points)", "paired 95% interval"]


def _ci(lo: float, hi: float) -> str:
    return interval(lo, hi, fmt="{:.2f}")


def controls_rows(cfg: Config, figures: dict[str, dict]) -> tuple[list[str], list[list[str]]]:
    """The controls table (header, rows): for every network that more than one variant
    shares, its baseline, then each recipe, the controls first and the full recipe (soft
    targets, all rows) last."""
    groups: dict[str, list[str]] = {}
    for v in figures:
        groups.setdefault(network(cfg.student.variant(v)), []).append(v)
    order = {("soft", "labeled"): 0, ("hard", "all"): 1, ("hard", "labeled"): 1,
             ("soft", "all"): 2}
    rows = []
    for net, names in groups.items():
        if len(names) < 2:
            continue
        first = figures[names[0]]
        lo, hi = first["baseline_accuracy_ci"]
        rows.append([net, "labels alone (baseline)", pct(first["baseline_val_accuracy"]),
                     pct(first["baseline_accuracy"]), _ci(lo, hi), "-", "-"])
        for v in sorted(names, key=lambda n: (order[(figures[n]["targets"],
                                                      figures[n]["rows"])], n)):
            f, c = figures[v], figures[v]["vs_baseline"]
            rows.append([f"{net} ({v})", recipe(cfg.student.variant(v)),
                         pct(f["val_accuracy"]), pct(f["accuracy"]), _ci(*f["accuracy_ci"]),
                         f"{100 * c['diff']:+.2f}", _ci(c["ci_low"], c["ci_high"])])
    return CONTROLS_HEADER, rows


def _retained(f: dict) -> str:
    """The frontier's "retained" cell: a share of the teacher's accuracy, or the points above it."""
    teacher = f["accuracy"] / f["retained"] if f["retained"] else None
    return kept(f["accuracy"], teacher)


FRONTIER_HEADER = ["variant", "recipe", "params", "fewer than ensemble", "val accuracy",
                   "test accuracy", "95% interval", "baseline test", "retained", "chosen"]


def frontier_rows(cfg: Config, figures: dict[str, dict], teacher_params: int,
                  chosen: str) -> tuple[list[str], list[list[str]]]:
    """The frontier table (header, rows): one row per variant, smallest first."""
    rows = []
    for v in sorted(figures, key=lambda n: (figures[n]["params"], n)):
        f = figures[v]
        rows.append([v, recipe(cfg.student.variant(v)), f"{f['params']:,}",
                     f"{teacher_params / f['params']:.1f}x", pct(f["val_accuracy"]),
                     pct(f["accuracy"]), _ci(*f["accuracy_ci"]), pct(f["baseline_accuracy"]),
                     _retained(f), "yes" if v == chosen else ""])
    return FRONTIER_HEADER, rows
