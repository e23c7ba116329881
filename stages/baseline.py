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

from stages.config import Config, ModelConfig
from stages.distributed import SINGLE, Dist
from stages.supervised import train_supervised


def run(cfg: Config, out_dir: Path = Path("data/baseline"),
        prepared: Path = Path("data/prepared"), dist: Dist = SINGLE) -> dict:
    st = cfg.student
    spec = ModelConfig(arch=st.arch, knobs=st.knobs, train=cfg.baseline_train())
    return train_supervised(cfg, "baseline", spec, out_dir, prepared, dist)
