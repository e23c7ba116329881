"""Stage `teacher@<member>`: train one ensemble member on the labeled split.

    kd teacher cnn_0                  # or: dvc repro teacher@cnn_0

Writes `data/teachers/<member>/model.safetensors`, `model.json` (enough to rebuild the network),
`metrics.json` (test and validation accuracy, NLL, parameter count: deterministic) and
`timing.json` (train time: the one output that differs between identical runs). A member killed
mid-training resumes from its last completed epoch on the next run (checkpoints live in
`data/.checkpoints/`, outside the stage's DVC outputs, and are removed on success).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import torch.nn.functional as F

from stages.atomic import write_json
from stages.config import Config, ModelConfig
from stages.datasets import load_meta, read_split
from stages.errors import ConfigError
from stages.models import build_model, count_params, save_model
from stages.tracking import stage_run
from stages.training import PrintProgress, evaluate, fit, in_memory_batches

CHECKPOINTS = Path("data/.checkpoints")


class TrackEpochs:
    """Callback: per-epoch metrics to the stage's MLflow run."""

    def __init__(self, run):
        self.run = run

    def on_epoch_end(self, epoch: int, metrics: dict) -> None:
        self.run.log_metrics({k: v for k, v in metrics.items() if k != "epoch"}, step=epoch + 1)


def run_fingerprint(spec: ModelConfig, meta: dict) -> str:
    """What makes a checkpoint reusable: the same settings on the same prepared data."""
    blob = json.dumps([spec.model_dump(), meta["fingerprint"], meta["rows"],
                       meta["normalization"]], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def train_supervised(cfg: Config, stage: str, spec: ModelConfig, out_dir: Path,
                     prepared: Path) -> dict:
    """Train `spec` on hard labels (a teacher member, or the baseline) and write its outputs."""
    meta = load_meta(prepared)
    labeled, is_val = read_split(prepared, "labeled")
    test, _ = read_split(prepared, "test")
    shape = tuple(meta["feature_shape"])
    model = build_model(spec.arch, shape, meta["n_classes"], spec.knobs)
    n_params = count_params(model)
    train_x, train_y = labeled.x[~is_val], labeled.y[~is_val]
    val_x, val_y = labeled.x[is_val], labeled.y[is_val]
    steps = -(-len(train_y) // spec.train.batch_size)
    batches = in_memory_batches(train_x, train_y, spec.train.batch_size, spec.train.seed,
                                shape, spec.train.augment)
    ckpt = CHECKPOINTS / stage

    params = {"stage": stage, "model": spec.model_dump(), "data": cfg.data.model_dump()}
    with stage_run(cfg, stage, params=params) as tracking:
        print(f"{stage}: {spec.arch} {spec.knobs}, {n_params:,} parameters, "
              f"{len(train_y)} training rows, {spec.train.epochs} epochs")
        t0 = time.perf_counter()
        history = fit(model, batches, lambda logits, b: F.cross_entropy(logits, b.y), spec.train,
                      steps_per_epoch=steps, evaluate_fn=lambda m: evaluate(m, val_x, val_y),
                      checkpoint=ckpt, fingerprint=run_fingerprint(spec, meta),
                      callbacks=[PrintProgress(stage), TrackEpochs(tracking)])
        train_time = time.perf_counter() - t0
        test_m, val_m = evaluate(model, test.x, test.y), evaluate(model, val_x, val_y)
        metrics = {"test_accuracy": test_m["accuracy"], "test_nll": test_m["nll"],
                   "params": n_params, "epochs": spec.train.epochs,
                   "train_loss": history[-1]["train_loss"]}
        if val_m:
            metrics.update(val_accuracy=val_m["accuracy"], val_nll=val_m["nll"])
        save_model(out_dir, model, {
            "arch": spec.arch, "knobs": spec.knobs, "input_shape": list(shape),
            "n_classes": meta["n_classes"], "class_names": meta["class_names"],
            "params": n_params, "stage": stage,
        })
        write_json(out_dir / "history.json", _stable(history))
        write_json(out_dir / "timing.json", {"train_time_s": round(train_time, 3),
                                             "epoch_time_s": [h["epoch_time_s"] for h in history]})
        write_json(out_dir / "metrics.json", metrics)  # last: the stage's "done" marker
        tracking.log_metrics({**metrics, "train_time_s": train_time})
        tracking.log_artifact(out_dir)
    shutil.rmtree(ckpt, ignore_errors=True)
    print(f"{stage}: test accuracy {metrics['test_accuracy']:.4f}, "
          f"NLL {metrics['test_nll']:.4f} ({train_time:.1f}s) -> {out_dir}")
    return metrics


def _stable(history: list[dict]) -> list[dict]:
    """The per-epoch curves without wall-clock figures, so the file is deterministic."""
    return [{k: v for k, v in h.items() if k != "epoch_time_s"} for h in history]


def run(cfg: Config, member: str, out_root: Path = Path("data/teachers"),
        prepared: Path = Path("data/prepared")) -> dict:
    if member not in cfg.teacher.members:
        known = ", ".join(cfg.teacher.members)
        raise ConfigError(f"teacher.members: no member named {member!r} (members: {known})")
    return train_supervised(cfg, f"teacher@{member}", cfg.teacher.member(member),
                            out_root / member, prepared)

