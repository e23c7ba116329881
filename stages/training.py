"""The one training loop that teachers, the baseline and the student share.

    history = fit(model, epoch_batches, loss_fn, cfg.train, steps_per_epoch=n,
                  evaluate=lambda m: evaluate(m, x_val, y_val), checkpoint=ckpt_dir,
                  callbacks=[PrintProgress("teacher@cnn_0"), tracker])

The loop knows nothing about the model, the data source or the loss: `epoch_batches(epoch)`
yields `Batch`es, `loss_fn(logits, batch)` scores them, callbacks report. Every random choice
of an epoch (shuffle order, augmentation, dropout) is drawn from generators seeded by
(seed, epoch), so a run resumed from its last completed epoch ends with the same weights as a
run that was never interrupted. Checkpoints are safetensors + JSON (no pickle), written
atomically at the end of each epoch.

Under torch.distributed (`dist.active`, stages/distributed.py) the same loop trains a
DistributedDataParallel replica on every rank: each rank's `epoch_batches` yields its own rows,
gradients are averaged over ranks, rank 0 alone writes checkpoints, and a resumed run reads rank
0's checkpoint on every rank.
"""

from __future__ import annotations

import hashlib
import json
import math
import queue
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save_file

from stages.atomic import atomic_path, write_json
from stages.config import AugmentConfig, TrainConfig
from stages.distributed import SINGLE, Dist
from stages.faults import failpoint

CHECKPOINTS = Path("data/.checkpoints")  # outside every DVC output: `dvc repro` keeps them


@dataclass
class Batch:
    x: torch.Tensor  # (B, F) float32 features, flat
    y: torch.Tensor  # (B,) int64, -1 where unlabeled
    t_logits: torch.Tensor | None = None  # (M, B, C) teacher member logits, when distilling
    # this rank's share of the global batch, times the world size: scaling a rank's mean loss
    # by it makes DDP's gradient average the mean over the global batch, as in one process
    scale: float = 1.0

    def to(self, device: torch.device) -> Batch:
        if device.type == "cpu":
            return self
        t = None if self.t_logits is None else self.t_logits.to(device, non_blocking=True)
        return Batch(self.x.to(device, non_blocking=True), self.y.to(device, non_blocking=True),
                     t, self.scale)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    # on CPU every op we use is deterministic; on CUDA a few ops (index_add, some scatters)
    # have no deterministic kernel: warn about those rather than fail the stage
    torch.use_deterministic_algorithms(True, warn_only=torch.cuda.is_available())


def epoch_seed(seed: int, epoch: int) -> int:
    """A well-mixed 63-bit seed per (seed, epoch): epochs never share random streams."""
    digest = hashlib.sha256(f"{seed}:{epoch}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def augment(x: torch.Tensor, shape: Sequence[int], cfg: AugmentConfig,
            gen: torch.Generator) -> torch.Tensor:
    """Random circular shifts of up to +-cfg.shift along each spatial axis, plus noise."""
    if cfg.shift == 0 and cfg.noise == 0:
        return x
    b = x.shape[0]
    out = x.view(b, *shape)  # (B, *shape)
    if cfg.shift:
        for axis in range(1, out.dim()):
            n = out.shape[axis]
            shifts = torch.randint(-cfg.shift, cfg.shift + 1, (b,), generator=gen)  # (B,)
            idx = (torch.arange(n).unsqueeze(0) - shifts.unsqueeze(1)) % n  # (B, n)
            view = [b] + [1] * (out.dim() - 1)
            view[axis] = n
            idx = idx.view(view).expand_as(out)
            out = torch.gather(out, axis, idx)
    out = out.reshape(b, -1)
    if cfg.noise:
        out = out + cfg.noise * torch.randn(out.shape, generator=gen)
    return out


def in_memory_batches(x: np.ndarray, y: np.ndarray, batch_size: int, seed: int,
                      shape: Sequence[int], aug: AugmentConfig,
                      dist: Dist = SINGLE) -> Callable[[int], Iterable[Batch]]:
    """epoch -> shuffled, augmented batches of arrays held in memory (teacher, baseline).

    Distributed, every rank draws the same global batch (same order, same augmentation as one
    process) and trains on its contiguous slice of it: a global batch of `batch_size` rows."""
    xt, yt = torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y.astype(np.int64))

    def batches(epoch: int) -> Iterable[Batch]:
        gen = torch.Generator().manual_seed(epoch_seed(seed, epoch))
        order = torch.randperm(len(yt), generator=gen)
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            xb = augment(xt[idx], shape, aug, gen)  # the whole batch: the stream stays the same
            if not dist.active:
                yield Batch(xb, yt[idx])
            elif len(idx) >= dist.world:  # a tail of fewer rows than ranks is dropped
                rows = torch.tensor_split(torch.arange(len(idx)), dist.world)[dist.rank]
                yield Batch(xb[rows], yt[idx][rows], scale=len(rows) * dist.world / len(idx))

    return batches


def prefetch(items: Iterable, depth: int = 2) -> Iterator:
    """Yield `items` in order while a background thread produces the next `depth` of them
    (Parquet decoding overlaps with the training step; both release the GIL)."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    done, stop = object(), threading.Event()

    def produce() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                q.put(item)
            q.put(done)
        except BaseException as e:  # re-raised in the consumer, with its traceback
            q.put(e)

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    try:
        while (item := q.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(0.01)


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


# ---------------------------------------------------------------------------- checkpoints


def save_checkpoint(path: Path, model, opt, epoch: int, history: list, fingerprint: str) -> None:
    """Model + optimizer tensors to safetensors, everything else to JSON; atomic."""
    tensors = {f"model.{k}": v.detach().contiguous() for k, v in model.state_dict().items()}
    opt_state = opt.state_dict()
    for idx, state in opt_state["state"].items():
        for name, value in state.items():
            t = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"opt.{idx}.{name}"] = t.contiguous()
    path.mkdir(parents=True, exist_ok=True)
    # the weights carry their epoch: a kill between the two writes leaves a JSON and weights
    # that disagree, which load_checkpoint then refuses instead of mixing two epochs
    with atomic_path(path / "state.safetensors") as tmp:
        save_file(tensors, str(tmp), metadata={"epoch": str(epoch), "fingerprint": fingerprint})
    failpoint("checkpoint.between")
    write_json(path / "state.json", {"epoch": epoch, "history": history, "fingerprint": fingerprint,
                                     "param_groups": opt_state["param_groups"]})


def _read_checkpoint(path: Path, dist: Dist) -> tuple[bytes, bytes]:
    """The checkpoint's two files as bytes, as rank 0 sees them, on every rank (ranks on other
    machines need not share rank 0's disk). Missing files are empty."""
    parts = []
    for name in ("state.json", "state.safetensors"):
        data = None
        if dist.is_main:
            try:
                data = (path / name).read_bytes()
            except OSError:
                data = b""
        parts.append(dist.broadcast_bytes(data))
    return parts[0], parts[1]


def _safetensors_metadata(data: bytes) -> dict:
    n = int.from_bytes(data[:8], "little")  # the format: u64 header size, then a JSON header
    return json.loads(data[8 : 8 + n]).get("__metadata__", {})


def load_checkpoint(path: Path, model, opt, fingerprint: str,
                    dist: Dist = SINGLE) -> tuple[int, list] | None:
    """Restore (next epoch, history) from a complete checkpoint of the same run, else None:
    a missing, foreign, torn or corrupt checkpoint means starting over, never a crash."""
    meta_bytes, weights = _read_checkpoint(path, dist)
    try:
        meta = json.loads(meta_bytes)
        if meta["fingerprint"] != fingerprint:
            return None  # another config's checkpoint: start over
        if _safetensors_metadata(weights) != {"epoch": str(meta["epoch"]),
                                              "fingerprint": fingerprint}:
            return None  # killed between the two writes
        tensors = load_safetensors(weights)
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        state: dict[int, dict] = {}
        for key, value in tensors.items():
            if key.startswith("opt."):
                _, idx, name = key.split(".", 2)
                state.setdefault(int(idx), {})[name] = value
        opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError,
            UnicodeDecodeError):
        return None
    return meta["epoch"] + 1, meta["history"]


# ------------------------------------------------------------------------------- callbacks


class PrintProgress:
    """A tqdm bar per epoch in a terminal; one plain line per epoch otherwise (DVC, CI, logs)."""

    def __init__(self, name: str, stream=None):
        # resolved now, not at import: redirected stderr (CliRunner, redirect_stderr) is honoured
        self.name, self.stream, self.bar = name, stream or sys.stderr, None
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()

    def on_epoch_start(self, epoch: int, epochs: int, steps: int) -> None:
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
        print(f"{self.name} epoch {epoch + 1}: {shown}  lr {metrics['lr']:.2e}  "
              f"({metrics['epoch_time_s']:.1f}s)", file=self.stream, flush=True)


def _call(callbacks, hook: str, *args) -> None:
    for cb in callbacks:
        fn = getattr(cb, hook, None)
        if fn is not None:
            fn(*args)


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
        _call(callbacks, "on_epoch_start", epoch, cfg.epochs, steps_per_epoch)
        model.train()
        t0, loss_sum, n = time.perf_counter(), torch.zeros((), device=dist.device), 0
        # distributed, every rank's `epoch_batches` yields the same number of batches (the
        # stages see to it): each step's all-reduce has all ranks, and their optimizers agree
        for step, batch in enumerate(epoch_batches(epoch)):
            batch = batch.to(dist.device)
            for group in opt.param_groups:
                group["lr"] = lr_at(epoch * steps_per_epoch + step, total, warmup, cfg)
            loss = loss_fn(net(batch.x), batch)
            opt.zero_grad(set_to_none=True)
            (loss * batch.scale if batch.scale != 1.0 else loss).backward()
            opt.step()
            failpoint("train.batch")
            loss_sum += loss.detach() * len(batch.y)
            n += len(batch.y)
            _call(callbacks, "on_step", loss.detach())
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
        _call(callbacks, "on_epoch_end", epoch, metrics)
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


def clear_checkpoint(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def fingerprint(*parts) -> str:
    """sha256 of JSON-able parts: what makes a checkpoint reusable by a later run."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def write_outputs(out_dir: Path, model: torch.nn.Module, spec: dict, history: list[dict],
                  metrics: dict, train_time: float, tracking) -> None:
    """A trained model's directory: weights + model.json, history.json (curves, no wall-clock
    figures, so identical runs give identical bytes), timing.json, and metrics.json last (the
    stage's "done" marker). The same files go to the stage's MLflow run."""
    from stages.models import save_model
    from stages.tracking import tag_output

    save_model(out_dir, model, spec)
    write_json(out_dir / "history.json",
               [{k: v for k, v in h.items() if k != "epoch_time_s"} for h in history])
    write_json(out_dir / "timing.json", {"train_time_s": round(train_time, 3),
                                         "epoch_time_s": [h["epoch_time_s"] for h in history]})
    write_json(out_dir / "metrics.json", metrics)
    # the per-epoch curves already hold the last epoch's values; logging them again at step 0
    # would add a bogus first point to every curve
    per_epoch = set(history[-1]) if history else set()
    tracking.log_metrics({k: v for k, v in {**metrics, "train_time_s": train_time}.items()
                          if k not in per_epoch}, step=len(history))
    tag_output(tracking, out_dir / "model.safetensors")
    tracking.log_artifact(out_dir)
