"""Batches of shard rows as numpy columns, shared by the writer and the reader.

A Batch maps a column (`row_id`, `label`, `is_labeled`, `is_val`, `features`, `logits`, ...)
to an array with rows along axis 0, except `logits` (M, B, C), whose rows are along axis 1.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

COLUMNS = ("row_id", "label", "is_labeled", "is_val", "features", "logits")  # reader batch keys
Batch = dict[str, np.ndarray]


def take_rows(data: Batch, a: int | np.ndarray, b: int | None = None) -> Batch:
    """Rows a:b of every column, or the rows `a` picks (a boolean mask or an index array)."""
    idx = a if b is None else slice(a, b)
    return {k: v[:, idx] if k == "logits" else v[idx] for k, v in data.items()}


def concat_rows(parts: list[Batch]) -> Batch:
    return {k: np.concatenate([p[k] for p in parts], axis=int(k == "logits")) for k in parts[0]}


def column_np(col: pa.ChunkedArray) -> np.ndarray:
    """Column -> numpy, fixed_size_list flattened; zero-copy for one null-free chunk."""
    arrs = [(c.flatten() if pa.types.is_fixed_size_list(c.type) else c)
            .to_numpy(zero_copy_only=False) for c in col.chunks]
    return arrs[0] if len(arrs) == 1 else np.concatenate(arrs)
