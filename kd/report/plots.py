"""The report's figures, drawn with matplotlib (Agg) to PNG files.

Each function takes plain data and a path; nothing here reads the pipeline's files. The PNGs go
to `data/report/plots/` (DVC renders them in `dvc plots show`) and are embedded, base64, in the
self-contained report.html.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display: render to files only
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from kd.report.labels import Label, place_labels  # noqa: E402

COLORS = {"teacher": "#1f77b4", "student": "#d62728", "baseline": "#7f7f7f"}
ACCURACY_STEP = 0.05  # accuracy axes end on 5-point lines (shared_axes)


def shared_axes(ax, xs, ys, step: float = ACCURACY_STEP) -> None:
    """Limits that two experiments' figures share, so that `dvc plots diff`, which puts their
    PNGs side by side, compares like heights: the y axis (accuracy) runs between the `step`
    lines just outside `ys` (never above 1), the x axis (log scale) between the half decades
    just outside `xs`. Two runs whose figures lie between the same lines get the same axes;
    the DVC plot "Accuracy against size" draws both runs on one pair of axes whatever their
    figures."""
    lo, hi = min(ys), max(ys)
    top = round(math.ceil((hi + step / 10) / step) * step, 6)
    # no accuracy above 1: a whisker that ends at 1 ends at the axis
    ax.set_ylim(round(math.floor((lo - step / 10) / step) * step, 6),
                min(top, 1.0) if hi <= 1.0 else top)
    xs = [x for x in xs if x > 0]  # a log axis: nothing at or below zero is drawn
    if xs:  # half decades (1, 3.16, 10, ...): a decade each side leaves most of the axis empty
        ax.set_xlim(10 ** (math.floor((math.log10(min(xs)) - 0.05) * 2) / 2),
                    10 ** (math.ceil((math.log10(max(xs)) + 0.05) * 2) / 2))


def save(fig, path: Path) -> None:
    """Write `fig` as a PNG (the same bytes for the same figure) and close it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    # no Software tag: the same figure gives the same PNG bytes whatever matplotlib wrote it
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)


def training_curves(histories: dict[str, list[dict]], path: Path) -> None:
    """Validation accuracy and train loss by epoch for every trained model."""
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(10, 4))
    for name, hist in histories.items():
        kind = "student" if name == "student" else "baseline" if name == "baseline" else "teacher"
        style = {"color": COLORS[kind], "alpha": 1.0 if kind != "teacher" else 0.45,
                 "lw": 2 if kind != "teacher" else 1}
        epochs = [h["epoch"] for h in hist]
        if hist and "val_accuracy" in hist[0]:
            ax_acc.plot(epochs, [h["val_accuracy"] for h in hist], label=name, **style)
        ax_loss.plot(epochs, [h["train_loss"] for h in hist], label=name, **style)
    ax_acc.set(xlabel="epoch", ylabel="validation accuracy", title="Validation accuracy")
    ax_loss.set(xlabel="epoch", ylabel="train loss", yscale="log", title="Training loss")
    ax_acc.legend(fontsize=7)
    save(fig, path)


def accuracy_vs_params(points: dict[str, tuple[int, float]], path: Path) -> None:
    """Test accuracy against parameter count (log scale) for every model."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, (params, acc) in points.items():
        kind = name if name in COLORS else "teacher"
        marker = "*" if name == "teacher" else "o"
        ax.scatter(params, acc, s=120 if marker == "*" else 40, marker=marker, c=COLORS[kind],
                   zorder=3)
    ax.set(xscale="log", xlabel="parameters (log scale)", ylabel="test accuracy",
           title="Accuracy against size")
    ax.grid(True, which="both", alpha=0.3)
    shared_axes(ax, [p for p, _ in points.values()], [a for _, a in points.values()])
    fig.tight_layout()  # the axes' final place: labels are measured where they will be drawn
    place_labels(ax, [Label(n, p, a) for n, (p, a) in points.items()], fontsize=8)
    save(fig, path)


def frontier(points: dict[str, dict[str, dict]], ensemble: float, x_key: str, x_label: str,
             path: Path, chosen: str | None = None) -> None:
    """The compression frontier: test accuracy (95% interval as error bars) against `x_key`
    (log scale) for every variant, one curve for the distilled students and one for their
    baselines, the ensemble as a horizontal line. `points[kind][variant]` holds x_key,
    accuracy and ci; variants whose recipe is a control (`hard`, `labeled`) are drawn as
    separate markers, off the curves."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    labels: list[Label] = []  # placed once the axes are final
    ax.axhline(ensemble, color=COLORS["teacher"], lw=1.5, ls="--", label="ensemble")
    styles = {"student": ("o-", COLORS["student"]), "baseline": ("s--", COLORS["baseline"])}
    for kind, pts in points.items():
        on_curve = sorted((p[x_key], p["accuracy"], p["ci"], n) for n, p in pts.items()
                          if not p.get("control"))
        fmt, color = styles.get(kind, ("D", "#2ca02c"))
        if kind in styles and on_curve:
            xs, ys, cis, names = zip(*on_curve, strict=True)
            err = np.abs(np.array([[c[0] for c in cis], [c[1] for c in cis]]) - np.array(ys))
            ax.errorbar(xs, ys, yerr=err, fmt=fmt, color=color, capsize=3, label=kind)
            labels += [Label(f"{n} (chosen)" if n == chosen and kind == "student" else n,
                             x, y, color) for x, y, n in zip(xs, ys, names, strict=True)]
        for n, p in pts.items():
            if p.get("control"):  # the controls: the same network, another recipe
                err = np.abs(np.array([[p["ci"][0]], [p["ci"][1]]]) - p["accuracy"])
                ax.errorbar([p[x_key]], [p["accuracy"]], yerr=err, fmt="D", color="#2ca02c",
                            capsize=3)
                labels.append(Label(n, p[x_key], p["accuracy"], "#2ca02c"))
    ax.set(xscale="log", xlabel=x_label, ylabel="test accuracy",
           title="Compression frontier (95% intervals)")
    ax.grid(True, which="both", alpha=0.3)
    every = [p for pts in points.values() for p in pts.values()]
    shared_axes(ax, [p[x_key] for p in every],
                [ensemble, *(v for p in every for v in (p["accuracy"], *p["ci"]))])
    legend = ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()  # the axes' final place: labels are measured where they will be drawn
    # the students first (the curve a reader follows), then the controls, then the baselines
    order = {"#2ca02c": 1, COLORS["baseline"]: 2}
    place_labels(ax, sorted(labels, key=lambda lb: (order.get(lb.color, 0), lb.x, lb.y)),
                 avoid=[legend])
    save(fig, path)


def reliability_diagram(curves: dict[str, list[dict]], path: Path) -> None:
    """Accuracy against confidence per bin; the diagonal is perfect calibration."""
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfectly calibrated")
    for name, bins in curves.items():
        ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], "o-",
                color=COLORS.get(name), label=name)
    ax.set(xlabel="confidence", ylabel="accuracy", title="Reliability (test split)",
           xlim=(0, 1), ylim=(0, 1))
    ax.legend(fontsize=8)
    save(fig, path)


def entropy_histogram(entropies: dict[str, np.ndarray], max_entropy: float, path: Path) -> None:
    """Distribution of the ensemble's soft-target entropy over the transfer set, per T."""
    fig, ax = plt.subplots(figsize=(6, 4))
    bins = np.linspace(0, max_entropy, 40)
    for label, ent in entropies.items():
        ax.hist(ent, bins=bins, alpha=0.55, label=label)
    ax.set(xlabel="entropy of the soft targets (nats)", ylabel="rows", yscale="log",
           title="Soft-target entropy")
    ax.legend(fontsize=8)
    save(fig, path)


def confusion_matrix(cm: np.ndarray, class_names: list[str], title: str, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5, 4.5))
    ax.imshow(np.log1p(cm), cmap="Blues")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            if cm[i, j]:
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if i == j else "black")
    ax.set(xticks=range(len(class_names)), yticks=range(len(class_names)),
           xticklabels=class_names, yticklabels=class_names, xlabel="predicted",
           ylabel="actual", title=title)
    save(fig, path)
