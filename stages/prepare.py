"""Stage `prepare`: a data source -> normalised, id-addressed Parquet splits + meta.json.

    kd prepare                       # or: dvc repro prepare

Writes `data/prepared/{labeled,unlabeled,test}.parquet` and `meta.json` (feature shape, class
names in index order, rows per split, normalisation statistics, the source's fingerprint). The
whole directory appears at once: a killed run leaves the previous output, or none.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from kd.config import Config, data_warnings
from kd.datasets import SPLITS, load_source, test_overlap
from kd.errors import DataError
from kd.io.atomic import atomic_dir, write_json
from kd.prepared import to_table
from kd.tracking import stage_run, tracking_uri

SCHEMA_VERSION = 1


def normalisation(x: np.ndarray, method: str) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) from the labeled split; std of a constant feature is taken as 1."""
    if method == "none" or len(x) == 0:
        return np.zeros(1, np.float64), np.ones(1, np.float64)
    x = x.astype(np.float64)
    cols = [x.ravel()] if method == "global" else list(x.T)
    # exact sums (math.fsum): the same on any CPU, whatever order SIMD code would add in
    mean = np.array([math.fsum(c) / len(c) for c in cols])
    std = np.array([math.sqrt(math.fsum((c - m) ** 2) / len(c))
                    for c, m in zip(cols, mean, strict=True)])
    mean, std = (mean[0], std[0]) if method == "global" else (mean, std)
    std = np.where(np.asarray(std) > 1e-8, std, 1.0)
    return np.atleast_1d(mean), np.atleast_1d(std)


def val_mask(n: int, fraction: float, seed: int) -> np.ndarray:
    """Exactly round(n * fraction) labeled rows, drawn with `seed`, are held out for validation."""
    mask = np.zeros(n, dtype=bool)
    mask[np.random.default_rng(seed).permutation(n)[: round(n * fraction)]] = True
    return mask


def run(cfg: Config, out_dir: str | Path = "data/prepared", root: str | Path = ".",
        check: Callable[[dict], None] | None = None) -> dict:
    """Prepare the data; `check(meta)` may refuse it before anything is published (`kd prepare`
    passes the models' fit to the feature shape, kd/model_checks.py: this stage builds no
    model, so a change to a model family does not rerun it)."""
    with stage_run(cfg, "prepare", params={"data": cfg.data.model_dump()}) as tracking:
        src = load_source(cfg.data, Path(root))
        overlap = test_overlap(src)
        for split, (count, row, test_row) in overlap.items():
            if not cfg.data.allow_test_overlap:
                raise DataError(
                    f"{src.where('test')}: test row {test_row} (row id "
                    f"{src.splits['test'].row_id[test_row]}) also appears in "
                    f"{src.where(split)} at row {row} (row id {src.splits[split].row_id[row]}), "
                    f"({count} in all): models would learn from test inputs; remove them, or "
                    "set data.allow_test_overlap: true")
        mean, std = normalisation(src.splits["labeled"].x, cfg.data.normalize)
        rows = {}
        with atomic_dir(out_dir) as tmp:
            for name in SPLITS:
                split = src.splits[name]
                split.x = ((split.x - mean) / std).astype(np.float32)  # (N, F)
                is_val = (val_mask(len(split.row_id), cfg.data.val_fraction, cfg.data.split_seed)
                          if name == "labeled" else np.zeros(len(split.row_id), bool))
                # page checksums: the prepared data has no manifest, so a flipped byte in a
                # page would otherwise decode into wrong features without a word
                pq.write_table(to_table(split, is_val), tmp / f"{name}.parquet",
                               compression="zstd", row_group_size=8192,
                               write_page_checksum=True)
                rows[name] = len(split.row_id)
            rows["val"] = int(round(rows["labeled"] * cfg.data.val_fraction))
            meta = {
                "schema_version": SCHEMA_VERSION,
                "source": cfg.data.source,
                "feature_shape": list(src.feature_shape),
                "n_features": int(np.prod(src.feature_shape)),
                "class_names": src.class_names,
                "n_classes": len(src.class_names),
                "rows": rows,
                "normalization": {"method": cfg.data.normalize,
                                  "mean": mean.tolist(), "std": std.tolist()},
                "fingerprint": src.fingerprint,
            }
            if src.feature_columns:
                meta["feature_columns"] = src.feature_columns
            if cfg.data.vocab_size is not None:  # the features are token ids (kd/datasets.py)
                meta["vocab_size"] = cfg.data.vocab_size
            if overlap:  # allowed by the user: the report says so
                meta["test_overlap"] = {split: v[0] for split, v in overlap.items()}
            if check is not None:  # before anything is published: no model can fail on it
                check(meta)
            write_json(tmp / "meta.json", meta)
        tracking.log_metrics({f"rows_{k}": v for k, v in rows.items()})
        tracking.log_artifact(Path(out_dir) / "meta.json")
    for line in data_warnings(cfg, meta):
        print(line, file=sys.stderr)
    print(f"prepare: {rows['labeled']} labeled ({rows['val']} for validation), "
          f"{rows['unlabeled']} unlabeled, {rows['test']} test rows, "
          f"{len(src.class_names)} classes, features {tuple(src.feature_shape)} -> {out_dir}"
          + (f"  [mlflow: {tracking_uri(cfg)}]" if tracking.run_id else ""))
    return meta
