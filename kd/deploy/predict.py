"""Batch inference on a user's Parquet rows with an exported student, ONNX Runtime only.

    kd predict --model data/deploy/student.int8.onnx rows.parquet predictions.parquet

The input holds raw rows, as the user's data files do: one list column of features (default
`features`) or several scalar columns (`--features a --features b ...`). The model file
carries the normalisation of the data it was trained on and the class names; nothing else is
read. The output has the id column (`--id`, or `row_id` when the input has one), `predicted`
(the class name) and `probabilities` (float32 per class, in class order; the names are in
the file's metadata under `kd.class_names`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from kd.datasets import read_features
from kd.deploy.runtime import Predictor
from kd.io.atomic import atomic_path

DEFAULT_ID = "row_id"


def predict_file(model: str | os.PathLike, source: str | os.PathLike,
                 dest: str | os.PathLike, features: str | list[str] = "features",
                 id_column: str | None = None, threads: int = 0) -> dict:
    """Write the predictions for the rows of `source` to `dest`; return a short summary."""
    source, dest = Path(source), Path(dest)
    predictor = Predictor(model, threads)  # a bad model file fails before the data is read
    if id_column is None and _has_column(source, DEFAULT_ID):
        id_column = DEFAULT_ID
    table, x = read_features(source, features, extra=[id_column] if id_column else [])
    probs = predictor.predict(x, where=str(source))  # (N, C)
    names = predictor.class_names
    pred = probs.argmax(1) if len(probs) else np.zeros(0, np.int64)  # (N,)
    n_classes = len(names)
    columns = {}
    if id_column:
        columns[id_column] = table.column(id_column)
    columns["predicted"] = pa.array([names[i] for i in pred], pa.string())
    columns["probabilities"] = pa.FixedSizeListArray.from_arrays(
        pa.array(probs.reshape(-1), pa.float32()), n_classes)
    out = pa.table(columns).replace_schema_metadata(
        {"kd.class_names": json.dumps(names), "kd.model": str(model)})
    dest.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dest) as tmp:
        pq.write_table(out, tmp, compression="zstd")
    return {"rows": len(pred), "classes": n_classes, "output": str(dest)}


def _has_column(path: Path, name: str) -> bool:
    try:
        return name in pq.read_schema(path).names
    except (OSError, pa.ArrowException):  # read_features names the file in its own error
        return False
