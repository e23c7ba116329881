"""`kd explain ROW_ID --model DIR`: draw a trained soft decision tree and one test row's path
through it.

    kd explain 4321 --model data/student/tree    # data/explain/student-tree_{tree,path_4321}.png
    kd explain 4321 --model data/baseline/tree   # its baseline: data/explain/baseline-tree_*.png

Reads a model directory (model.json + safetensors) and the prepared test split; the pictures
are kd/report/tree.py's. The report stage calls `tree_pictures` for its own student.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from kd.errors import ArtifactError, DataError
from kd.models import SPEC_FILE, load_model
from kd.prepared import read_split
from kd.report.tree import draw_path, draw_tree


def tree_pictures(model: torch.nn.Module, row: np.ndarray, row_id: int, label: int | None,
                  class_names: list[str], out_dir: Path, name: str = "") -> list[Path]:
    """`tree.png` (the tree, the row's route in red) and `path_<row_id>.png` in out_dir;
    `name` prefixes both files (e.g. "student_")."""
    route = model.explain(torch.as_tensor(row))
    parts = model.parts()
    shaped = np.asarray(row, np.float32).reshape(model.input_shape)
    truth = f", label {class_names[label]}" if label is not None and label >= 0 else ""
    mode = f"inference: {parts['inference']}"
    title = (f"test row {row_id}{truth}: leaf {route['leaf']} says "
             f"{class_names[int(np.argmax(route['leaf_probs']))]} "
             f"(path probability {route['path_prob']:.2f}; {mode})")
    tree_png, path_png = out_dir / f"{name}tree.png", out_dir / f"{name}path_{row_id}.png"
    draw_tree(parts, class_names, tree_png, route)
    draw_path(parts, shaped, route, class_names, path_png, title)
    return [tree_png, path_png]


def explain(row_id: int, model_dir: Path, prepared: Path, out_dir: Path) -> list[Path]:
    """Check the model is a soft tree and the row a test row, then draw (see tree_pictures)."""
    model, spec = load_model(model_dir)
    if spec["arch"] != "soft_tree":
        raise ArtifactError(f"{model_dir / SPEC_FILE}: architecture {spec['arch']!r}, not "
                            "'soft_tree': only a soft decision tree can be explained")
    test, _ = read_split(prepared, "test")
    where = np.flatnonzero(test.row_id == row_id)
    if len(where) == 0:
        span = f"{test.row_id.min()}..{test.row_id.max()}" if len(test.row_id) else "none"
        raise DataError(f"{prepared / 'test.parquet'}: no test row with row_id {row_id} "
                        f"(test row ids: {span})")
    i = int(where[0])
    if test.x.shape[1] != int(np.prod(spec["input_shape"])):
        raise ArtifactError(f"{model_dir / SPEC_FILE}: the model takes features of shape "
                            f"{tuple(spec['input_shape'])}, the test rows have "
                            f"{test.x.shape[1]} features")
    # named after the model (<stage kind>-<variant or member>), so explaining the student and
    # then its baseline into one folder keeps both
    name = f"{model_dir.resolve().parent.name}-{model_dir.resolve().name}_"
    return tree_pictures(model, test.x[i], row_id, int(test.y[i]), spec["class_names"],
                         out_dir, name)
