"""Training-loop callbacks: how a run reports, swappable without touching the loop.

    fit(..., callbacks=[PrintProgress("teacher@cnn_0"), MLflowCallback(run)])

A callback implements any of on_epoch_start(epoch, epochs, steps), on_step(loss),
on_epoch_end(epoch, metrics) and on_train_end(out_dir, metrics, history, train_time). Only
`MLflowCallback` talks to MLflow (through the stage's run); the loop and the runner never do.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from kd.progress import duration
from kd.runtime.distributed import Dist


class PrintProgress:
    """A tqdm bar per epoch in a terminal; one plain line per epoch otherwise (DVC, CI, logs),
    each saying how far the stage has got and how long it has left:

        teacher@cnn_0 epoch 12/80: train_loss 0.4213  val_accuracy 0.9120  lr 1.00e-03
          (1.2s; 14s so far, about 1.4 min left)    [one line in the log]

    The time left is the mean epoch time of this process's epochs (a resumed run counts from
    where it resumed) times the epochs still to run."""

    def __init__(self, name: str, stream=None):
        # resolved now, not at import: redirected stderr (CliRunner, redirect_stderr) is honoured
        self.name, self.stream, self.bar = name, stream or sys.stderr, None
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.epochs, self.first, self.t0 = 0, 0, None

    def on_epoch_start(self, epoch: int, epochs: int, steps: int) -> None:
        if self.t0 is None:  # the first epoch this process runs (after a resume, not epoch 0)
            self.first, self.t0 = epoch, time.perf_counter()
        self.epochs = epochs
        if self.tty:
            from tqdm import tqdm

            self.bar = tqdm(total=steps, desc=f"{self.name} {epoch + 1}/{epochs}",
                            file=self.stream, leave=False)

    def on_step(self, loss: torch.Tensor) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)

    def on_epoch_end(self, epoch: int, metrics: dict) -> None:
        if self.bar is not None:
            self.bar.close()
        shown = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()
                          if k.endswith(("loss", "accuracy", "nll")))
        now = time.perf_counter()
        elapsed = now - (now if self.t0 is None else self.t0)
        left = elapsed / (epoch + 1 - self.first) * (self.epochs - epoch - 1)
        print(f"{self.name} epoch {epoch + 1}/{self.epochs}: {shown}  lr {metrics['lr']:.2e}  "
              f"({metrics['epoch_time_s']:.1f}s; {duration(elapsed)} so far, "
              f"about {duration(left)} left)", file=self.stream, flush=True)


def call(callbacks, hook: str, *args) -> None:
    for cb in callbacks:
        fn = getattr(cb, hook, None)
        if fn is not None:
            fn(*args)



class MLflowCallback:
    """Per-epoch curves, final metrics and the model directory to the stage's MLflow run
    (a `kd.tracking.StageRun`; a disabled one drops everything)."""

    def __init__(self, run):
        self.run = run

    def on_epoch_end(self, epoch: int, metrics: dict) -> None:
        self.run.log_metrics({k: v for k, v in metrics.items() if k != "epoch"}, step=epoch + 1)

    def on_train_end(self, out_dir: Path, metrics: dict, history: list[dict],
                     train_time: float) -> None:
        from kd.tracking import tag_output

        # the per-epoch curves already hold the last epoch's values; logging them again at
        # step 0 would add a bogus first point to every curve
        per_epoch = set(history[-1]) if history else set()
        self.run.log_metrics({k: v for k, v in {**metrics, "train_time_s": train_time}.items()
                              if k not in per_epoch}, step=len(history))
        tag_output(self.run, out_dir / "model.safetensors")
        self.run.log_artifact(out_dir)


def progress(d: Dist, stage: str, tracking) -> list:
    """The training callbacks of a stage: progress lines and MLflow, from rank 0 only."""
    return [PrintProgress(stage), MLflowCallback(tracking)] if d.is_main else []
