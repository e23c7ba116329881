"""Stage `student@<variant>`: distil the ensemble into one student variant, streaming the
soft-target shards.

    kd student small                  # or: dvc repro student@small
    dvc exp run -S student.defaults.temperature=8     # every variant at T = 8

Reads only `data/soft_targets/` (verified against its manifest first) and the prepared test
split for evaluation; the training job is kd/train/student.py. Writes `data/student/<variant>/`
like a teacher member, and logs the student to MLflow as a pyfunc model
(`mlflow.pyfunc.load_model` predicts with it; the weights still travel as safetensors), in a run
tagged `kd.variant`.
"""

from __future__ import annotations

from pathlib import Path

from kd.config import Config
from kd.pyfunc_model import log_pyfunc_model
from kd.runtime.distributed import SINGLE, Dist
from kd.targets.manifest import check_members, read_manifest
from kd.targets.shardset import verify
from kd.tracking import stage_run
from kd.train.callbacks import progress
from kd.train.runner import train_and_write
from kd.train.student import distill_job


def run(cfg: Config, variant: str, out_root: Path = Path("data/student"),
        shards: Path | str = Path("data/soft_targets"), prepared: Path = Path("data/prepared"),
        dist: Dist = SINGLE) -> dict:
    cfg.student.variant(variant)  # an unknown name is one line before any hashing
    # every checksum and row count, before an hour of training: the ranks share the hashing,
    # and a bad shard fails all of them with one line
    dist.fail_together(verify, shards, part=(dist.rank, dist.world))
    check_members(shards, read_manifest(shards), cfg.teacher.names())
    job = distill_job(cfg, variant, shards, prepared, dist)
    out_dir = out_root / variant
    with stage_run(cfg, job.stage, params=job.params, main=dist.is_main) as tracking:
        tracking.set_tags({"kd.variant": variant})
        metrics = train_and_write(job, out_dir, callbacks=progress(dist, job.stage, tracking),
                                  dist=dist)
        if dist.is_main:
            log_pyfunc_model(tracking, out_dir, job.test[0][:5])  # flat rows (N, F), as stored
    return metrics
