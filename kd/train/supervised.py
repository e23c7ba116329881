"""Supervised training on the prepared labeled split: a teacher member, or the baseline.

    job = supervised_job(cfg, "teacher@cnn_0", cfg.teacher.member("cnn_0"), prepared, dist)
    metrics = train_and_write(job, out_dir, callbacks=...)

Reads `data/prepared/`, trains with cross-entropy on the non-validation labeled rows and
evaluates on the validation rows each epoch (kd/train/runner.py then scores the test rows).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from kd.config import Config, ModelConfig
from kd.errors import ConfigError
from kd.models import build_model, component_nll, count_params, output_components
from kd.prepared import load_meta, prepared_sha256, read_split
from kd.runtime.distributed import SINGLE, Dist, global_batch, ranks
from kd.train.batches import in_memory_batches
from kd.train.checkpoints import fingerprint
from kd.train.loop import evaluate, seed_everything
from kd.train.runner import TrainJob


def label_loss(logits: torch.Tensor, y: torch.Tensor,
               components: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Cross-entropy on labeled rows; for a model whose output is a mixture and that asks for it
    (kd.models.output_components), its expectation over the components: the student's hard term
    with `components` (kd/distill/losses.py), kept here so the teachers' code never depends on
    the distillation losses (a loss edit would retrain them)."""
    if components is None:
        return F.cross_entropy(logits, y)
    log_w, c_logits = components  # (B, L), (L, C) or (B, L, C)
    return component_nll(log_w.float(), F.log_softmax(c_logits.float(), -1), y).mean()


READS = ("meta.json", "labeled.parquet", "test.parquet")  # the prepared files a job reads


def supervised_job(cfg: Config, stage: str, spec: ModelConfig, prepared: Path,
                   dist: Dist = SINGLE) -> TrainJob:
    """`spec` trained on hard labels. Distributed, it is DistributedDataParallel over slices of
    each batch; rank 0 writes."""
    meta = load_meta(prepared)
    labeled, is_val = read_split(prepared, "labeled")
    test, _ = read_split(prepared, "test")
    shape = tuple(meta["feature_shape"])
    seed_everything(spec.train.seed)  # the initial weights come from this seed too
    try:
        model = build_model(spec.arch, shape, meta["n_classes"], spec.knobs)
    except ConfigError as e:  # the prepared data changed since `kd prepare` checked the params
        raise ConfigError(f"{stage}: {e} (the prepared features have shape {list(shape)}; "
                          "set data.shape, or choose another arch)") from None
    n_params = count_params(model)
    train_x, train_y = labeled.x[~is_val], labeled.y[~is_val]
    val_x, val_y = labeled.x[is_val], labeled.y[is_val]
    batch = global_batch(spec.train.batch_size, cfg.runtime, dist)
    # a last batch of fewer rows than ranks is dropped (a rank can't train on no rows)
    steps = len(train_y) // batch + (len(train_y) % batch >= dist.world)
    return TrainJob(
        stage=stage, model=model, train=spec.train,
        batches=in_memory_batches(train_x, train_y, batch, spec.train.seed, shape,
                                  spec.train.augment, dist),
        # cross-entropy; a model whose output is a mixture may ask for its expectation over the
        # parts, as the student's loss does (kd/distill/losses.py)
        steps=steps, loss_fn=lambda logits, b: label_loss(logits, b.y, output_components(model)),
        evaluate_fn=lambda m: evaluate(m, val_x, val_y),
        # keyed on the bytes it reads, not on meta.json: the split (which rows are validation
        # or test rows) is in the Parquet files alone
        fingerprint=fingerprint(spec.model_dump(), dist.world, batch,
                                prepared_sha256(prepared, READS), device=dist.device),
        test=(test.x, test.y),
        spec={"arch": spec.arch, "knobs": spec.knobs, "input_shape": list(shape),
              "n_classes": meta["n_classes"], "class_names": meta["class_names"],
              "params": n_params, "stage": stage},
        params={"stage": stage, "model": spec.model_dump(), "data": cfg.data.model_dump(),
                "world_size": dist.world},
        intro=f"{stage}: {spec.arch} {spec.knobs}, {n_params:,} parameters, "
              f"{len(train_y)} training rows, {spec.train.epochs} epochs{ranks(dist, batch)}")
