"""Stage `prepare`: a data source -> normalised, id-addressed Parquet splits + meta.json.

    kd prepare                       # or: dvc repro prepare

Writes `data/prepared/{labeled,unlabeled,test}.parquet` and `meta.json` (feature shape, class
names in index order, rows per split, normalisation statistics, the source's fingerprint). The
whole directory appears at once: a killed run leaves the previous output, or none. The work is
kd/preprocess.py.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from kd.config import Config, data_warnings
from kd.datasets import load_source
from kd.io.atomic import atomic_dir, write_json
from kd.preprocess import refuse_test_overlap, write_splits
from kd.tracking import stage_run, tracking_uri


def run(cfg: Config, out_dir: str | Path = "data/prepared", root: str | Path = ".",
        check: Callable[[dict], None] | None = None) -> dict:
    """Prepare the data; `check(meta)` may refuse it before anything is published (`kd prepare`
    passes the models' fit to the feature shape, kd/model_checks.py: this stage builds no
    model, so a change to a model family does not rerun it)."""
    with stage_run(cfg, "prepare", params={"data": cfg.data.model_dump()}) as tracking:
        src = load_source(cfg.data, Path(root))
        overlap = refuse_test_overlap(src, cfg.data)
        with atomic_dir(out_dir) as tmp:
            meta = write_splits(src, cfg.data, tmp, overlap)
            if check is not None:  # before anything is published: no model can fail on it
                check(meta)
            write_json(tmp / "meta.json", meta)
        rows = meta["rows"]
        tracking.log_metrics({f"rows_{k}": v for k, v in rows.items()})
        tracking.log_artifact(Path(out_dir) / "meta.json")
    for line in data_warnings(cfg, meta):
        print(line, file=sys.stderr)
    print(f"prepare: {rows['labeled']} labeled ({rows['val']} for validation), "
          f"{rows['unlabeled']} unlabeled, {rows['test']} test rows, "
          f"{len(src.class_names)} classes, features {tuple(src.feature_shape)} -> {out_dir}"
          + (f"  [mlflow: {tracking_uri(cfg)}]" if tracking.run_id else ""))
    return meta
