"""Stage `baseline@<variant>`: a student variant's architecture trained on the labeled split
alone.

    kd baseline-specs && kd baseline small     # or: dvc repro baseline@small

What distillation must beat (Hinton et al.'s MNIST table: the small net alone made 146 errors,
distilled 74). Same architecture, knobs and training settings as the variant's student, hard
labels only, read from `data/prepared/`; it does not depend on the teacher. Augmentation (and,
if set, the epoch count) come from `baseline`: the student cannot augment, its targets belong to
the stored rows. It trains the spec `data/baseline_specs/<variant>.json` holds (stage
`baseline_specs`, kd/specs.py), its one dependency on params.yaml besides `runtime`: a
temperature, alpha, combine, targets or rows change reruns no baseline. Writes
`data/baseline/<variant>/` like a teacher member. Every variant has its own baseline stage and
output, even when two variants' baselines are the same network (the controls `targets: hard`,
`rows: labeled` change only the student): nothing is shared by accident.
"""

from __future__ import annotations

from pathlib import Path

from kd.config import Config
from kd.evaluate.sanity import model_warnings, validation_chance
from kd.prepared import load_meta
from kd.runtime.distributed import SINGLE, Dist
from kd.specs import read_baseline_spec
from kd.tracking import stage_run
from kd.train.callbacks import progress
from kd.train.runner import train_and_write
from kd.train.supervised import supervised_job


def run(cfg: Config, variant: str, out_root: Path = Path("data/baseline"),
        prepared: Path = Path("data/prepared"), specs: Path = Path("data/baseline_specs"),
        dist: Dist = SINGLE) -> dict:
    spec = read_baseline_spec(cfg, variant, specs)
    job = supervised_job(cfg, f"baseline@{variant}", spec, prepared, dist)
    with stage_run(cfg, job.stage, params=job.params, main=dist.is_main) as tracking:
        tracking.set_tags({"kd.variant": variant})
        metrics = train_and_write(job, out_root / variant,
                                  callbacks=progress(dist, job.stage, tracking), dist=dist)
    if dist.is_main:  # a baseline at chance makes "what distillation recovered" meaningless
        chance = validation_chance(prepared, load_meta(prepared)["n_classes"])
        for w in model_warnings({variant: metrics.get("val_accuracy")}, chance, "baseline"):
            print(f"warning: {w}")
    return metrics
