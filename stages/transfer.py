"""Stage `transfer`: synthetic transfer rows for the ensemble to label (MUNGE), or none.

    kd transfer                       # or: dvc repro transfer; dvc exp run -S transfer.rows=50000

With `transfer.method: munge` it reads the prepared labeled rows that are not held out for
validation (validation and test rows are never a source), generates `transfer.rows` rows with
MUNGE (kd/transfer/munge.py) and writes `data/transfer/synthetic.parquet` in the prepared-data
schema (kd/datasets.py: label null, is_val false) plus `meta.json`. Synthetic ids start above
every prepared id, so they cannot collide with one. With `method: none` the same two files hold
no rows, so export's dependency on `data/transfer/` holds either way. The directory appears
whole; the same params and prepared data give the same bytes.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from kd.config import Config
from kd.datasets import Split
from kd.errors import DataError
from kd.io.atomic import atomic_dir, write_json
from kd.prepared import load_meta, max_row_id, prepared_sha256, read_split, to_table
from kd.tracking import stage_run, tracking_uri
from kd.transfer.munge import munge
from kd.transfer.stored import SYNTHETIC

SCHEMA_VERSION = 1
INT64_MAX = 2**63 - 1


def attribute_note(shape: list[int]) -> str:
    """What one MUNGE attribute is for rows of this feature shape."""
    if len(shape) >= 2:
        return f"one pixel of the {'x'.join(map(str, shape))} image (one flattened position)"
    return f"one of the {shape[0]} feature positions (a column, or a position of a signal)"


def run(cfg: Config, out_dir: Path = Path("data/transfer"),
        prepared: Path = Path("data/prepared")) -> dict:
    tr = cfg.transfer
    meta = load_meta(prepared)
    n_features = meta["n_features"]
    with stage_run(cfg, "transfer", params={"transfer": tr.model_dump()}) as tracking:
        t0 = time.perf_counter()
        labeled, is_val = read_split(prepared, "labeled")
        source_x, source_ids = labeled.x[~is_val], labeled.row_id[~is_val]  # (N, F), (N,)
        info: dict = {"method": tr.method, "source_rows": int(len(source_ids)),
                      "validation_rows_excluded": int(is_val.sum())}
        if tr.method == "munge":
            if len(source_ids) < 2:
                raise DataError(f"{prepared / 'labeled.parquet'}: transfer.method 'munge' needs "
                                f"at least 2 labeled training rows, found {len(source_ids)}")
            result = munge(source_x, tr.rows, tr.p, tr.s, np.random.default_rng(tr.seed))
            x = result.x
            info |= {"params": tr.model_dump(), "passes": -(-tr.rows // len(source_ids)),
                     "changed_fraction": round(result.changed_fraction, 6),
                     "mean_abs_change": round(float(np.abs(
                         x - source_x[result.source]).mean()), 6)}
        else:
            x = np.zeros((0, n_features), np.float32)
        start = max_row_id(prepared) + 1
        if start + len(x) - 1 > INT64_MAX:
            raise DataError(f"{prepared}: row ids reach {start - 1}, no room above them for "
                            f"{len(x)} synthetic ids")
        ids = np.arange(start, start + len(x), dtype=np.int64)
        rows = Split(ids, x, np.full(len(x), -1, np.int64))
        info |= {"schema_version": SCHEMA_VERSION, "rows": int(len(x)),
                 "row_ids": [int(start), int(start + len(x))],  # [first, stop)
                 "attribute": attribute_note(meta["feature_shape"]),
                 "feature_shape": meta["feature_shape"],
                 # the bytes it was made from, the split included (export checks it)
                 "prepared_sha256": prepared_sha256(prepared)}
        with atomic_dir(out_dir) as tmp:
            pq.write_table(to_table(rows, np.zeros(len(x), bool)), tmp / f"{SYNTHETIC}.parquet",
                           compression="zstd", row_group_size=8192, write_page_checksum=True)
            write_json(tmp / "meta.json", info)
        elapsed = time.perf_counter() - t0
        tracking.log_metrics({"rows": len(x), "source_rows": len(source_ids),
                              "elapsed_s": elapsed,
                              **{k: info[k] for k in ("changed_fraction", "mean_abs_change")
                                 if k in info}})
        tracking.log_artifact(out_dir / "meta.json")
    what = (f"{len(x):,} MUNGE rows (p={tr.p:g}, s={tr.s:g}, seed {tr.seed}) from "
            f"{len(source_ids):,} labeled training rows" if tr.method == "munge"
            else "no synthetic rows (transfer.method: none)")
    print(f"transfer: {what} in {elapsed:.1f} s -> {out_dir}"
          + (f"  [mlflow: {tracking_uri(cfg)}]" if tracking.run_id else ""))
    return info
