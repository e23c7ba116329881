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

from kd.config import Config
from kd.errors import ConfigError
from kd.evaluate.sanity import model_warnings, validation_chance
from kd.prepared import load_meta
from kd.runtime.distributed import SINGLE, Dist
from kd.tracking import stage_run
from kd.train.callbacks import progress
from kd.train.runner import train_and_write
from kd.train.supervised import supervised_job


def run(cfg: Config, member: str, out_root: Path = Path("data/teachers"),
        prepared: Path = Path("data/prepared"), dist: Dist = SINGLE) -> dict:
    if member in cfg.teacher.imports:
        raise ConfigError(f"teacher.imports.{member}: an imported member; `kd import {member}` "
                          f"(dvc repro import@{member}) brings it in")
    if member not in cfg.teacher.members:
        known = ", ".join(cfg.teacher.members)
        raise ConfigError(f"teacher.members: no member named {member!r} (members: {known})")
    job = supervised_job(cfg, f"teacher@{member}", cfg.teacher.member(member), prepared, dist)
    with stage_run(cfg, job.stage, params=job.params, main=dist.is_main) as tracking:
        metrics = train_and_write(job, out_root / member,
                                  callbacks=progress(dist, job.stage, tracking), dist=dist)
    if dist.is_main:  # the first stage that knows: say it now, not an hour later in the report
        chance = validation_chance(prepared, load_meta(prepared)["n_classes"])
        for w in model_warnings({member: metrics.get("val_accuracy")}, chance, "teacher member"):
            print(f"warning: {w}")
    return metrics
