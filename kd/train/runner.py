"""Train, evaluate, write: the block that every training stage (teacher, baseline, student) runs.

    job = TrainJob(stage="baseline", model=model, train=cfg, batches=batches, steps=n,
                   loss_fn=F.cross_entropy-like, evaluate_fn=..., fingerprint=fp,
                   test=(x_test, y_test), spec=spec)
    metrics = train_and_write(job, Path("data/baseline"), callbacks=progress(dist, stage, run))

A stage builds the job (its data, model and loss) and opens its MLflow run; this module trains
it with the one loop, scores it on the test rows, writes the model directory and tells the
callbacks (`on_train_end`), which is where the MLflow callback logs the outputs. It never
imports tracking itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from kd.config import TrainConfig
from kd.io.atomic import write_json
from kd.models import save_model
from kd.runtime.distributed import SINGLE, Dist, say
from kd.train.batches import Batch
from kd.train.callbacks import call
from kd.train.checkpoints import CHECKPOINTS, clear_checkpoint
from kd.train.loop import evaluate, fit


@dataclass
class TrainJob:
    """Everything one training run needs; `spec` is the model.json content (arch, knobs,
    input_shape, n_classes, class_names and any extra keys), `metrics` extra final metrics."""

    stage: str
    model: torch.nn.Module
    train: TrainConfig
    batches: Callable[[int], Iterable[Batch]]
    steps: int  # one rank's optimizer steps per epoch
    loss_fn: Callable[[torch.Tensor, Batch], torch.Tensor]
    evaluate_fn: Callable[[torch.nn.Module], dict]
    fingerprint: str
    test: tuple[np.ndarray, np.ndarray]  # (N, F) features, (N,) labels
    spec: dict
    metrics: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)  # what the stage's MLflow run records
    intro: str = ""  # the line printed before training
    # the trained model -> more final metrics (e.g. an omitted-class bias chosen on validation
    # rows and its test figures); None: none
    after: Callable[[torch.nn.Module], dict] | None = None


def write_outputs(out_dir: Path, model: torch.nn.Module, spec: dict, history: list[dict],
                  metrics: dict, train_time: float) -> None:
    """A trained model's directory: weights + model.json, history.json (curves, no wall-clock
    figures, so identical runs give identical bytes), timing.json, and metrics.json last (the
    stage's "done" marker)."""
    save_model(out_dir, model, spec)
    write_json(out_dir / "history.json",
               [{k: v for k, v in h.items() if k != "epoch_time_s"} for h in history])
    write_json(out_dir / "timing.json", {"train_time_s": round(train_time, 3),
                                         "epoch_time_s": [h["epoch_time_s"] for h in history]})
    write_json(out_dir / "metrics.json", metrics)


def train_and_write(job: TrainJob, out_dir: Path, *, callbacks: Sequence = (),
                    dist: Dist = SINGLE) -> dict:
    """Train `job.model` (resuming a checkpoint of the same fingerprint), evaluate it on the test
    rows and, on rank 0, write `out_dir`; returns the metrics written to metrics.json."""
    ckpt = CHECKPOINTS / job.stage
    say(dist, job.intro)
    t0 = time.perf_counter()
    history = fit(job.model, job.batches, job.loss_fn, job.train, steps_per_epoch=job.steps,
                  evaluate_fn=job.evaluate_fn, checkpoint=ckpt, fingerprint=job.fingerprint,
                  callbacks=callbacks, dist=dist)
    train_time = time.perf_counter() - t0
    test_m = evaluate(job.model, *job.test)
    metrics = {"test_accuracy": test_m["accuracy"], "test_nll": test_m["nll"],
               "params": job.spec["params"], "epochs": job.train.epochs, **job.metrics,
               "train_loss": history[-1]["train_loss"]}
    metrics.update({k: v for k, v in history[-1].items() if k.startswith("val_")})
    if job.after is not None:
        metrics.update(job.after(job.model))
    if not dist.is_main:
        return metrics
    write_outputs(out_dir, job.model, job.spec, history, metrics, train_time)
    call(callbacks, "on_train_end", out_dir, metrics, history, train_time)
    clear_checkpoint(ckpt)
    print(f"{job.stage}: test accuracy {metrics['test_accuracy']:.4f}, "
          f"NLL {metrics['test_nll']:.4f} ({train_time:.1f}s) -> {out_dir}")
    return metrics
