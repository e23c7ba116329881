"""Pictures of a soft decision tree (kd/models/soft_tree.py) that a person reads.

    kd explain 1234                    # data/explain/tree.png and path_1234.png

`draw_tree`: the whole tree, one small picture per node in its place: each inner node's filter
in the input's shape (a line for 1-D rows, an image for 2-D rows; blue negative, red positive),
each leaf's class distribution as a bar chart, and, for one row, its route to the leaf that
decides (red edges, the branch probability on each). `draw_path`: the same route told step by
step: the row itself, then each filter it met with the probability of going right and the path
probability so far, then the leaf's distribution. `explain` loads a model directory and a test
row and draws both.

The drawing functions take plain arrays (`SoftTree.parts()`, `SoftTree.explain()`) and a path;
like plots.py they render with matplotlib's Agg backend and write PNGs without a Software tag,
so the same tree gives the same bytes.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display: render to files only
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from kd.report.plots import save  # noqa: E402

PATH_COLOR, EDGE_COLOR = "#d62728", "#bbbbbb"
MAX_LEVELS = 5  # levels of inner nodes drawn in the whole-tree picture (32 leaves' width)


def _as_picture(w: np.ndarray) -> np.ndarray:
    """A filter in the input's shape, squeezed to what can be drawn: 1-D (a line) or 2-D (an
    image; channels of a (C, H, W) input side by side)."""
    w = np.squeeze(w)
    if w.ndim == 3:
        w = np.concatenate(list(w), axis=1)  # (H, C * W)
    return w if w.ndim <= 2 else w.reshape(-1)


def _draw_filter(ax, w: np.ndarray, title: str = "", highlight: bool = False,
                 row: np.ndarray | None = None) -> None:
    pic = _as_picture(w)
    lim = float(np.abs(pic).max()) or 1.0
    if pic.ndim == 2:
        ax.imshow(pic, cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
    else:
        if row is not None:  # the row faintly behind its filter, on the filter's scale
            r = _as_picture(row).reshape(-1)
            ax.plot(r * lim / (float(np.abs(r).max()) or 1.0), color="#999999", lw=0.8)
        ax.axhline(0, color="#dddddd", lw=0.5)
        ax.plot(pic.reshape(-1), color="#1f77b4", lw=1.0)
        ax.set_ylim(-1.1 * lim, 1.1 * lim)
    ax.set_xticks([])
    ax.set_yticks([])
    for side in ax.spines.values():
        side.set_color(PATH_COLOR if highlight else "#888888")
        side.set_linewidth(2.0 if highlight else 0.6)
    if title:
        ax.set_title(title, fontsize=6, color=PATH_COLOR if highlight else "black", pad=2)


def _draw_leaf(ax, probs: np.ndarray, class_names: list[str], title: str = "",
               highlight: bool = False, labels: bool = True) -> None:
    top = int(np.argmax(probs))
    colors = ["#888888"] * len(probs)
    colors[top] = PATH_COLOR if highlight else "#1f77b4"
    ax.bar(range(len(probs)), probs, color=colors, width=0.8)
    ax.set_ylim(0, 1)
    ax.set_yticks([])
    ax.set_xticks(range(len(probs)) if labels else [])
    if labels:
        ax.set_xticklabels(class_names, fontsize=5)
        ax.tick_params(axis="x", length=0, pad=1)
    for side in ax.spines.values():
        side.set_color(PATH_COLOR if highlight else "#888888")
        side.set_linewidth(2.0 if highlight else 0.6)
    ax.set_title(title or f"-> {class_names[top]}", fontsize=6, pad=2,
                 color=PATH_COLOR if highlight else "black")


def draw_tree(parts: dict, class_names: list[str], path: Path,
              route: dict | None = None) -> None:
    """The whole tree; `route` (SoftTree.explain of one row) marks that row's way down. Past
    MAX_LEVELS levels the picture would be metres wide: then the top MAX_LEVELS levels of
    filters are drawn, and every leaf as one column of a heat map under them, in tree order."""
    filters, leaves = parts["filters"], parts["leaves"]  # (N, *shape), (L, C)
    n_leaves = len(leaves)
    depth = n_leaves.bit_length() - 1
    shown = min(depth, MAX_LEVELS)  # levels of inner nodes drawn
    slots = 2**shown if shown < depth else n_leaves  # pictures side by side in the last row
    fig = plt.figure(figsize=(max(6.0, 0.8 * slots), 1.25 * (shown + 1) + 0.4))
    bg = fig.add_axes((0, 0, 1, 1))
    bg.set_xlim(0, 1)
    bg.set_ylim(0, 1)
    bg.axis("off")
    size = min(0.9 / slots, 0.18)  # every node's picture: a slot of the last row, at most
    row_h = 0.92 / (shown + 1)

    def center(level: int, j: int) -> tuple[float, float]:
        return (j + 0.5) / 2**level, 0.96 - (level + 0.5) * row_h

    on_path = {s["node"]: s for s in route["steps"]} if route else {}
    for i in range(2**shown - 1):  # inner nodes, heap order
        level = (i + 1).bit_length() - 1
        j = i - (2**level - 1)
        (x, y), step = center(level, j), on_path.get(i)
        for side, child in ((0, 2 * j), (1, 2 * j + 1)):  # edges to the two children
            if level + 1 == shown and shown < depth:
                break  # their children are not drawn
            cx, cy = center(level + 1, child)
            taken = step is not None and step["right"] == bool(side)
            bg.plot([x, cx], [y - 0.3 * row_h, cy + 0.3 * row_h],
                    color=PATH_COLOR if taken else EDGE_COLOR, lw=2 if taken else 0.7, zorder=0)
            if taken:
                p = step["p_right"] if side else 1 - step["p_right"]
                bg.text((x + cx) / 2, (y + cy) / 2, f"{p:.2f}", color=PATH_COLOR, fontsize=7,
                        ha="center", va="center", backgroundcolor="white")
        ax = fig.add_axes((x - size / 2, y - 0.3 * row_h, size, 0.6 * row_h))
        _draw_filter(ax, filters[i], f"node {i}", highlight=step is not None)
    chosen = route["leaf"] if route is not None else None
    if shown == depth:  # every leaf as a bar chart under its parent
        for leaf in range(n_leaves):
            x, y = center(depth, leaf)
            ax = fig.add_axes((x - size / 2, y - 0.3 * row_h, size, 0.6 * row_h))
            _draw_leaf(ax, leaves[leaf], class_names, highlight=chosen == leaf,
                       labels=n_leaves <= 16)
    else:
        _, y = center(shown, 0)
        ax = fig.add_axes((0.04, y - 0.35 * row_h, 0.94, 0.6 * row_h))
        ax.imshow(leaves.T, aspect="auto", cmap="Greys", vmin=0, vmax=1,
                  interpolation="nearest")  # (C, L): leaves left to right as in the tree
        ax.set_yticks(range(len(class_names)), class_names, fontsize=5)
        ax.set_xticks([])
        ax.set_title(f"the {n_leaves} leaves' class distributions, in tree order (darker: "
                     f"more probable); levels {shown}..{depth - 1} of filters not drawn",
                     fontsize=7, pad=2)
        if chosen is not None:
            ax.add_patch(plt.Rectangle((chosen - 0.5, -0.5), 1, len(class_names),
                                       fill=False, ec=PATH_COLOR, lw=1.5))
    title = f"soft decision tree, depth {depth}, beta {parts['beta']:.2f}"
    if route is not None:
        title += f"; red: one row's path to leaf {route['leaf']} (p = {route['path_prob']:.2f})"
    bg.text(0.5, 0.985, title, ha="center", va="top", fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, metadata={"Software": None})  # absolute axes: no tight_layout
    plt.close(fig)


def draw_path(parts: dict, row: np.ndarray, route: dict, class_names: list[str], path: Path,
              title: str = "") -> None:
    """One row's route: the row, each filter on the way (with p(right) and the path probability
    so far), the deciding leaf's distribution."""
    steps = route["steps"]
    n = len(steps) + 2
    fig, axes = plt.subplots(1, n, figsize=(1.9 * n, 2.3))
    _draw_filter(axes[0], row, "the row")
    for ax, s in zip(axes[1:-1], steps, strict=True):
        way = "right" if s["right"] else "left"
        _draw_filter(ax, parts["filters"][s["node"]], highlight=True, row=row,
                     title=f"node {s['node']}: p(right) {s['p_right']:.2f}\n-> {way}, "
                           f"path p {s['path_prob']:.2f}")
    _draw_leaf(axes[-1], np.asarray(route["leaf_probs"]), class_names, highlight=True,
               title=f"leaf {route['leaf']}: {class_names[int(np.argmax(route['leaf_probs']))]}")
    fig.suptitle(title, fontsize=9)
    save(fig, path)
