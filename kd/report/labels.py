"""Point labels that overlap neither each other nor the points, and stay inside the axes.

    fig.tight_layout()                      # the axes' place and limits are final first
    place_labels(ax, [Label("medium", 12_000, 0.91, "#d62728"), ...], avoid=[ax.get_legend()])

Variants of one network share a size (medium, medium_hard, medium_labeled) and teacher members
often share one too, so labels put at one fixed offset land on top of each other, and the
rightmost runs off the axes. Here each label, in the order given, takes the first of a fixed list
of offsets (right, left, above, below, the four diagonals, then the same farther out) where the
box matplotlib's renderer measures for it lies inside the axes and overlaps no label placed
before it, no point and nothing in `avoid` (the legend). Greedy and deterministic: the same
points give the same picture. A label that had to move away from its point gets a thin line to it.
When no offset fits (more labels than room), the one that overlaps least is kept.
"""

from __future__ import annotations

from dataclasses import dataclass

from matplotlib.transforms import Bbox

# (dx, dy, ha, va) per unit of distance: beside, then above/below, then the diagonals
_DIRECTIONS = [(1, 0, "left", "center"), (-1, 0, "right", "center"),
               (0, 1, "center", "bottom"), (0, -1, "center", "top"),
               (1, 1, "left", "bottom"), (1, -1, "left", "top"),
               (-1, 1, "right", "bottom"), (-1, -1, "right", "top")]
_RINGS = (7, 13, 20, 28, 38, 50, 64)  # offsets in points, nearest first
_POINT_R = 5.0  # half the side of the square a point's marker keeps free, in points
_PAD = 1.0  # pixels between two boxes that still count as touching


@dataclass(frozen=True)
class Label:
    text: str
    x: float
    y: float
    color: str = "black"


def _overlap(a: Bbox, b: Bbox) -> float:
    w = min(a.x1, b.x1) - max(a.x0, b.x0) + _PAD
    h = min(a.y1, b.y1) - max(a.y0, b.y0) + _PAD
    return w * h if w > 0 and h > 0 else 0.0


def _outside(box: Bbox, frame: Bbox) -> float:
    """How far (pixels, summed over the four sides) `box` sticks out of `frame`."""
    return (max(frame.x0 - box.x0, 0) + max(box.x1 - frame.x1, 0)
            + max(frame.y0 - box.y0, 0) + max(box.y1 - frame.y1, 0))


def place_labels(ax, labels: list[Label], *, avoid=(), fontsize: float = 7) -> list:
    """Annotate `ax` with `labels`; returns the annotations (matplotlib Text objects)."""
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    r = _POINT_R * fig.dpi / 72
    to_px = ax.transData.transform
    taken = [Bbox.from_extents(px - r, py - r, px + r, py + r)
             for px, py in (to_px((lb.x, lb.y)) for lb in labels)]
    taken += [a.get_window_extent(renderer) for a in avoid if a is not None]
    out = []
    for lb in labels:
        style = {"textcoords": "offset points", "fontsize": fontsize, "color": lb.color,
                 "annotation_clip": False}
        probe = ax.annotate(lb.text, (lb.x, lb.y), xytext=(0, 0), **style)
        best = None
        for ring, d in enumerate(_RINGS):
            for dx, dy, ha, va in _DIRECTIONS:
                probe.xyann = (dx * d, dy * d)
                probe.set(ha=ha, va=va)
                box = probe.get_window_extent(renderer)
                cost = (1e6 * _outside(box, frame) + sum(_overlap(box, t) for t in taken), ring)
                if best is None or cost < best[0]:
                    best = (cost, {"xytext": (dx * d, dy * d), "ha": ha, "va": va}, box)
            if best[0][0] == 0:  # the nearest ring with room: no farther
                break
        probe.remove()
        (_, ring), where, box = best
        if ring > 0:  # away from its point: a line says whose label it is
            where["arrowprops"] = {"arrowstyle": "-", "color": lb.color, "lw": 0.5,
                                   "alpha": 0.6, "shrinkA": 1, "shrinkB": 3}
        ann = ax.annotate(lb.text, (lb.x, lb.y), **style, **where)  # where: xytext, ha, va
        ann.set_in_layout(False)  # a later tight_layout must not move the axes under it
        taken.append(box)
        out.append(ann)
    return out
