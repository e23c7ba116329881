"""Stage `teacher@<member>`: train one ensemble member on the labeled split.

    kd teacher cnn_0                  # or: dvc repro teacher@cnn_0

Writes `data/teachers/<member>/model.safetensors`, `model.json` (enough to rebuild the network),
`history.json` (per-epoch curves), `metrics.json` (test and validation accuracy, NLL, parameter
count: deterministic) and `timing.json` (train time: the one file that differs between identical
runs, not a DVC output). A member killed mid-training resumes from its last completed epoch on
the next run (checkpoints live in `data/.checkpoints/`, outside the stage's DVC outputs, and are
removed on success).
"""

from __future__ import annotations

from pathlib import Path

from stages.config import Config
from stages.distributed import SINGLE, Dist
from stages.errors import ConfigError
from stages.supervised import train_supervised


def run(cfg: Config, member: str, out_root: Path = Path("data/teachers"),
        prepared: Path = Path("data/prepared"), dist: Dist = SINGLE) -> dict:
    if member not in cfg.teacher.members:
        known = ", ".join(cfg.teacher.members)
        raise ConfigError(f"teacher.members: no member named {member!r} (members: {known})")
    return train_supervised(cfg, f"teacher@{member}", cfg.teacher.member(member),
                            out_root / member, prepared, dist)


__all__ = ["run", "train_supervised"]
