"""Stage `baseline`: the student's architecture trained on the labeled split alone.

    kd baseline                       # or: dvc repro baseline

What distillation must beat (Hinton et al.'s MNIST table: the small net alone made 146 errors,
distilled 74). Same architecture, knobs and training settings as the student, hard labels only,
read from `data/prepared/`; it does not depend on the teacher. Augmentation (and, if set, the
epoch count) come from `baseline`: the student cannot augment, its targets belong to the stored
rows. Writes `data/baseline/` like a teacher member.
"""

from __future__ import annotations

from pathlib import Path

from kd.config import Config, ModelConfig
from kd.runtime.distributed import SINGLE, Dist
from kd.tracking import stage_run
from kd.train.callbacks import progress
from kd.train.runner import train_and_write
from kd.train.supervised import supervised_job


def run(cfg: Config, out_dir: Path = Path("data/baseline"),
        prepared: Path = Path("data/prepared"), dist: Dist = SINGLE) -> dict:
    st = cfg.student
    spec = ModelConfig(arch=st.arch, knobs=st.knobs, train=cfg.baseline_train())
    job = supervised_job(cfg, "baseline", spec, prepared, dist)
    with stage_run(cfg, job.stage, params=job.params, main=dist.is_main) as tracking:
        return train_and_write(job, out_dir, callbacks=progress(dist, job.stage, tracking),
                               dist=dist)
