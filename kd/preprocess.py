"""A data source -> the prepared splits: test overlap refused, validation rows drawn, features
normalised with the statistics of the training rows, one Parquet file per split.

    src = load_source(cfg.data, root)                   # kd/datasets.py
    overlap = refuse_test_overlap(src, cfg.data)         # what the user allowed, by split
    meta = write_splits(src, cfg.data, out, overlap)     # {labeled,unlabeled,test}.parquet

The `prepare` stage's work (stages/prepare.py checks the meta against the params, writes
meta.json and tracks the run). The files' contract and their readers are kd/prepared.py.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from kd.config import DataConfig
from kd.datasets import SPLITS, Source, test_overlap
from kd.errors import DataError
from kd.prepared import to_table

SCHEMA_VERSION = 1


def normalisation(x: np.ndarray, method: str) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) of the rows `x` (the labeled training rows: validation rows inform nothing
    but choices); std of a constant feature is taken as 1."""
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


def refuse_test_overlap(src: Source, cfg: DataConfig) -> dict[str, tuple[int, int, int]]:
    """DataError naming the first test row that another split repeats, unless the user allowed
    it (`data.allow_test_overlap`); then the overlap by split, for meta.json and the report."""
    overlap = test_overlap(src)
    for split, (count, row, test_row) in overlap.items():
        if not cfg.allow_test_overlap:
            raise DataError(
                f"{src.where('test')}: test row {test_row} (row id "
                f"{src.splits['test'].row_id[test_row]}) also appears in "
                f"{src.where(split)} at row {row} (row id {src.splits[split].row_id[row]}), "
                f"({count} in all): models would learn from test inputs; remove them, or "
                "set data.allow_test_overlap: true")
    return overlap


def write_splits(src: Source, cfg: DataConfig, out: str | Path,
                 overlap: dict[str, tuple[int, int, int]]) -> dict:
    """Normalise every split of `src` and write `<split>.parquet` into `out`; the meta.json
    content (not written: the stage checks it against the params first)."""
    out = Path(out)
    labeled = src.splits["labeled"]
    is_val = val_mask(len(labeled.row_id), cfg.val_fraction, cfg.split_seed)  # (N,)
    mean, std = normalisation(labeled.x[~is_val], cfg.normalize)  # training rows only
    rows = {}
    for name in SPLITS:
        split = src.splits[name]
        split.x = ((split.x - mean) / std).astype(np.float32)  # (N, F)
        # page checksums: the prepared data has no manifest, so a flipped byte in a
        # page would otherwise decode into wrong features without a word
        pq.write_table(to_table(split, is_val if name == "labeled"
                                else np.zeros(len(split.row_id), bool)),
                       out / f"{name}.parquet", compression="zstd", row_group_size=8192,
                       write_page_checksum=True)
        rows[name] = len(split.row_id)
    rows["val"] = int(round(rows["labeled"] * cfg.val_fraction))
    meta = {
        "schema_version": SCHEMA_VERSION,
        "source": cfg.source,
        "feature_shape": list(src.feature_shape),
        "n_features": int(np.prod(src.feature_shape)),
        "class_names": src.class_names,
        "n_classes": len(src.class_names),
        "rows": rows,
        "normalization": {"method": cfg.normalize, "mean": mean.tolist(), "std": std.tolist()},
        "fingerprint": src.fingerprint,
    }
    if src.feature_columns:
        meta["feature_columns"] = src.feature_columns
    if src.info:  # what the source says about itself (chars: the corpus and its digest)
        meta["source_info"] = src.info
    if cfg.vocab_size is not None:  # the features are token ids (kd/datasets.py)
        meta["vocab_size"] = cfg.vocab_size
    if overlap:  # allowed by the user: the report says so
        meta["test_overlap"] = {split: v[0] for split, v in overlap.items()}
    return meta
