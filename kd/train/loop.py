"""The one training loop that teachers, the baseline and the student share.

    history = fit(model, epoch_batches, loss_fn, cfg.train, steps_per_epoch=n,
                  evaluate_fn=lambda m: evaluate(m, x_val, y_val), checkpoint=ckpt_dir,
                  callbacks=[PrintProgress("teacher@cnn_0"), tracker])

The loop knows nothing about the model, the data source or the loss: `epoch_batches(epoch)`
yields `Batch`es, `loss_fn(logits, batch)` scores them, callbacks report. A model that has a
loss of its own (a regulariser, a penalty) returns it from `aux_loss()`, and the loop adds it.
Dropout's stream is seeded by (seed, epoch), so a run resumed from its last completed epoch
ends with the same weights as a run that was never interrupted.

Under torch.distributed (`dist.active`, kd/runtime/distributed.py) the same loop trains a
DistributedDataParallel replica on every rank: each rank's `epoch_batches` yields its own rows,
gradients are averaged over ranks, rank 0 alone writes checkpoints, and a resumed run reads rank
0's checkpoint on every rank. A single process trains on `dist.device` (CPU, or a CUDA device
with `runtime.device`).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from kd.config import TrainConfig
from kd.io.faults import failpoint
from kd.runtime.distributed import SINGLE, Dist
from kd.train.batches import Batch, epoch_seed
from kd.train.callbacks import call
from kd.train.checkpoints import load_checkpoint, save_checkpoint


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    # on CPU every op we use is deterministic; on CUDA a few ops (index_add, some scatters)
    # have no deterministic kernel: warn about those rather than fail the stage
    torch.use_deterministic_algorithms(True, warn_only=torch.cuda.is_available())


def lr_at(step: int, total: int, warmup: int, cfg: TrainConfig) -> float:
    """Learning rate as a pure function of the step: nothing to checkpoint for the schedule."""
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    if cfg.schedule == "constant":
        return cfg.lr
    progress = (step - warmup) / max(1, total - warmup)
    if cfg.schedule == "cosine":
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * progress))
    return cfg.lr * max(0.0, 1 - progress)  # onecycle: linear warm-up, then linear decay


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay, nesterov=cfg.momentum > 0)
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


@torch.no_grad()
def predict(model: torch.nn.Module, x: np.ndarray | torch.Tensor, batch_size: int = 4096):
    """Logits (N, C) of `model` in eval mode, in batches."""
    model.eval()
    x = torch.as_tensor(x)
    if len(x) == 0:
        return torch.zeros(0, 0)
    device = next(model.parameters()).device  # a GPU rank's model: batches go there, logits back
    return torch.cat([model(x[i : i + batch_size].to(device)).cpu()
                      for i in range(0, len(x), batch_size)])


def evaluate(model: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Accuracy and negative log-likelihood (mean cross-entropy) on labeled rows."""
    if len(y) == 0:
        return {}
    logits = predict(model, x)  # (N, C)
    y = torch.as_tensor(y, dtype=torch.int64)
    return {"accuracy": (logits.argmax(1) == y).float().mean().item(),
            "nll": F.cross_entropy(logits, y).item()}


# ------------------------------------------------------------------------------ the loop


def fit(model: torch.nn.Module, epoch_batches: Callable[[int], Iterable[Batch]],
        loss_fn: Callable[[torch.Tensor, Batch], torch.Tensor], cfg: TrainConfig, *,
        steps_per_epoch: int, evaluate_fn: Callable[[torch.nn.Module], dict] | None = None,
        checkpoint: Path | None = None, fingerprint: str = "", callbacks: Sequence = (),
        dist: Dist = SINGLE) -> list[dict]:
    """Train `model` for cfg.epochs; returns the per-epoch history (train loss, val metrics).
    `steps_per_epoch` counts one rank's optimizer steps (the learning-rate schedule's unit)."""
    seed_everything(cfg.seed)
    model.to(dist.device)
    opt = make_optimizer(model, cfg)
    total, warmup = cfg.epochs * steps_per_epoch, cfg.warmup_epochs * steps_per_epoch
    start, history = 0, []
    if checkpoint is not None:
        resumed = load_checkpoint(checkpoint, model, opt, fingerprint, dist)
        if resumed is not None:
            start, history = resumed
            if dist.is_main:
                print(f"resuming from epoch {start} of {cfg.epochs} ({checkpoint})",
                      file=sys.stderr)
    failpoint("train.start")
    # DDP broadcasts rank 0's weights now and averages gradients in backward()
    net = _ddp(model, dist) if dist.active else model
    for epoch in range(start, cfg.epochs):
        # dropout's stream for this epoch; ranks see other rows, so they draw other masks
        torch.manual_seed(epoch_seed(cfg.seed + 1, epoch) + dist.rank)
        call(callbacks, "on_epoch_start", epoch, cfg.epochs, steps_per_epoch)
        model.train()
        t0, loss_sum, n = time.perf_counter(), torch.zeros((), device=dist.device), 0
        # distributed, every rank's `epoch_batches` yields the same number of batches (the
        # stages see to it): each step's all-reduce has all ranks, and their optimizers agree
        for step, batch in enumerate(epoch_batches(epoch)):
            batch = batch.to(dist.device)
            for group in opt.param_groups:
                group["lr"] = lr_at(epoch * steps_per_epoch + step, total, warmup, cfg)
            loss = loss_fn(net(batch.x), batch)
            aux = getattr(model, "aux_loss", None)  # a model's own penalty, from this forward
            if aux is not None:
                loss = loss + aux()
            opt.zero_grad(set_to_none=True)
            (loss * batch.scale if batch.scale != 1.0 else loss).backward()
            opt.step()
            failpoint("train.batch")
            loss_sum += loss.detach() * len(batch.y)
            n += len(batch.y)
            call(callbacks, "on_step", loss.detach())
        loss_sum, n = _sum_over_ranks(loss_sum, n, dist)
        _sync_buffers(model, dist)  # BatchNorm statistics as rank 0 has them, on every rank
        metrics = {"epoch": epoch + 1, "train_loss": (loss_sum / max(n, 1)).item(),
                   "lr": opt.param_groups[0]["lr"],
                   "epoch_time_s": time.perf_counter() - t0, "samples": n}
        if evaluate_fn is not None:
            metrics.update({f"val_{k}": v for k, v in evaluate_fn(model).items()})
        history.append(metrics)
        if checkpoint is not None and dist.is_main:
            save_checkpoint(checkpoint, model, opt, epoch, history, fingerprint)
        failpoint("train.epoch")
        call(callbacks, "on_epoch_end", epoch, metrics)
    model.eval()
    return history


def _ddp(model: torch.nn.Module, dist: Dist) -> torch.nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    ids = [dist.device] if dist.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def _sum_over_ranks(loss_sum: torch.Tensor, n: int, dist: Dist) -> tuple[torch.Tensor, int]:
    if not dist.active:
        return loss_sum, n
    import torch.distributed as td

    both = torch.stack([loss_sum.double(), torch.tensor(float(n), device=dist.device).double()])
    td.all_reduce(both)
    return both[0].float(), int(both[1].item())


def _sync_buffers(model: torch.nn.Module, dist: Dist) -> None:
    if dist.active:
        import torch.distributed as td

        for buf in model.buffers():
            td.broadcast(buf, 0)


