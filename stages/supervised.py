"""Supervised training on the prepared labeled split: a teacher member, or the baseline.

    from stages.supervised import train_supervised
    metrics = train_supervised(cfg, "teacher@cnn_0", cfg.teacher.member("cnn_0"), out_dir, prepared)

Reads `data/prepared/`, trains with cross-entropy on the non-validation labeled rows, evaluates on
the validation and test rows, and writes the model directory (see `training.write_outputs`).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch.nn.functional as F

from stages.config import Config, ModelConfig
from stages.datasets import load_meta, read_split
from stages.distributed import SINGLE, Dist, global_batch, progress, ranks, say
from stages.models import build_model, count_params
from stages.tracking import stage_run
from stages.training import (
    CHECKPOINTS,
    clear_checkpoint,
    evaluate,
    fingerprint,
    fit,
    in_memory_batches,
    seed_everything,
    write_outputs,
)


def train_supervised(cfg: Config, stage: str, spec: ModelConfig, out_dir: Path,
                     prepared: Path, dist: Dist = SINGLE) -> dict:
    """Train `spec` on hard labels (a teacher member, or the baseline) and write its outputs.
    Distributed, it is DistributedDataParallel over slices of each batch; rank 0 writes."""
    meta = load_meta(prepared)
    labeled, is_val = read_split(prepared, "labeled")
    test, _ = read_split(prepared, "test")
    shape = tuple(meta["feature_shape"])
    seed_everything(spec.train.seed)  # the initial weights come from this seed too
    model = build_model(spec.arch, shape, meta["n_classes"], spec.knobs)
    n_params = count_params(model)
    train_x, train_y = labeled.x[~is_val], labeled.y[~is_val]
    val_x, val_y = labeled.x[is_val], labeled.y[is_val]
    batch = global_batch(spec.train.batch_size, cfg.runtime, dist)
    # a last batch of fewer rows than ranks is dropped (a rank can't train on no rows)
    steps = len(train_y) // batch + (len(train_y) % batch >= dist.world)
    batches = in_memory_batches(train_x, train_y, batch, spec.train.seed, shape,
                                spec.train.augment, dist)
    ckpt = CHECKPOINTS / stage

    params = {"stage": stage, "model": spec.model_dump(), "data": cfg.data.model_dump(),
              "world_size": dist.world}
    with stage_run(cfg, stage, params=params, main=dist.is_main) as tracking:
        say(dist, f"{stage}: {spec.arch} {spec.knobs}, {n_params:,} parameters, "
                  f"{len(train_y)} training rows, {spec.train.epochs} epochs{ranks(dist, batch)}")
        t0 = time.perf_counter()
        history = fit(model, batches, lambda logits, b: F.cross_entropy(logits, b.y), spec.train,
                      steps_per_epoch=steps, evaluate_fn=lambda m: evaluate(m, val_x, val_y),
                      checkpoint=ckpt,
                      fingerprint=fingerprint(spec.model_dump(), meta, dist.world, batch),
                      callbacks=progress(dist, stage, tracking), dist=dist)
        train_time = time.perf_counter() - t0
        test_m, val_m = evaluate(model, test.x, test.y), evaluate(model, val_x, val_y)
        metrics = {"test_accuracy": test_m["accuracy"], "test_nll": test_m["nll"],
                   "params": n_params, "epochs": spec.train.epochs,
                   "train_loss": history[-1]["train_loss"]}
        if val_m:
            metrics.update(val_accuracy=val_m["accuracy"], val_nll=val_m["nll"])
        spec_out = {"arch": spec.arch, "knobs": spec.knobs, "input_shape": list(shape),
                    "n_classes": meta["n_classes"], "class_names": meta["class_names"],
                    "params": n_params, "stage": stage}
        if dist.is_main:
            write_outputs(out_dir, model, spec_out, history, metrics, train_time, tracking)
    if not dist.is_main:
        return metrics
    clear_checkpoint(ckpt)
    print(f"{stage}: test accuracy {metrics['test_accuracy']:.4f}, "
          f"NLL {metrics['test_nll']:.4f} ({train_time:.1f}s) -> {out_dir}")
    return metrics
