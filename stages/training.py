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
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from stages.atomic import atomic_path, write_json
from stages.config import AugmentConfig, TrainConfig
from stages.faults import failpoint

CHECKPOINTS = Path("data/.checkpoints")  # outside every DVC output: `dvc repro` keeps them


@dataclass
class Batch:
    x: torch.Tensor  # (B, F) float32 features, flat
    y: torch.Tensor  # (B,) int64, -1 where unlabeled
    t_logits: torch.Tensor | None = None  # (M, B, C) teacher member logits, when distilling


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)


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
                      shape: Sequence[int], aug: AugmentConfig) -> Callable[[int], Iterable[Batch]]:
    """epoch -> shuffled, augmented batches of arrays held in memory (teacher, baseline)."""
    xt, yt = torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y.astype(np.int64))

    def batches(epoch: int) -> Iterable[Batch]:
        gen = torch.Generator().manual_seed(epoch_seed(seed, epoch))
        order = torch.randperm(len(yt), generator=gen)
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            yield Batch(augment(xt[idx], shape, aug, gen), yt[idx])

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
    return torch.cat([model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])


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


def load_checkpoint(path: Path, model, opt, fingerprint: str) -> tuple[int, list] | None:
    """Restore (next epoch, history) from a complete checkpoint of the same run, else None:
    a missing, foreign, torn or corrupt checkpoint means starting over, never a crash."""
    try:
        meta = json.loads((path / "state.json").read_text())
        if meta["fingerprint"] != fingerprint:
            return None  # another config's checkpoint: start over
        with safe_open(str(path / "state.safetensors"), framework="pt") as f:
            if f.metadata() != {"epoch": str(meta["epoch"]), "fingerprint": fingerprint}:
                return None  # killed between the two writes
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        state: dict[int, dict] = {}
        for key, value in tensors.items():
            if key.startswith("opt."):
                _, idx, name = key.split(".", 2)
                state.setdefault(int(idx), {})[name] = value
        opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError):
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
        ) -> list[dict]:
    """Train `model` for cfg.epochs; returns the per-epoch history (train loss, val metrics)."""
    seed_everything(cfg.seed)
    opt = make_optimizer(model, cfg)
    total, warmup = cfg.epochs * steps_per_epoch, cfg.warmup_epochs * steps_per_epoch
    start, history = 0, []
    if checkpoint is not None:
        resumed = load_checkpoint(checkpoint, model, opt, fingerprint)
        if resumed is not None:
            start, history = resumed
            print(f"resuming from epoch {start} of {cfg.epochs} ({checkpoint})", file=sys.stderr)
    failpoint("train.start")
    for epoch in range(start, cfg.epochs):
        torch.manual_seed(epoch_seed(cfg.seed + 1, epoch))  # dropout's stream for this epoch
        _call(callbacks, "on_epoch_start", epoch, cfg.epochs, steps_per_epoch)
        model.train()
        t0, loss_sum, n = time.perf_counter(), torch.zeros(()), 0
        for step, batch in enumerate(epoch_batches(epoch)):
            for group in opt.param_groups:
                group["lr"] = lr_at(epoch * steps_per_epoch + step, total, warmup, cfg)
            loss = loss_fn(model(batch.x), batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            failpoint("train.batch")
            loss_sum += loss.detach() * len(batch.y)
            n += len(batch.y)
            _call(callbacks, "on_step", loss.detach())
        metrics = {"epoch": epoch + 1, "train_loss": (loss_sum / max(n, 1)).item(),
                   "lr": opt.param_groups[0]["lr"],
                   "epoch_time_s": time.perf_counter() - t0, "samples": n}
        if evaluate_fn is not None:
            metrics.update({f"val_{k}": v for k, v in evaluate_fn(model).items()})
        history.append(metrics)
        if checkpoint is not None:
            save_checkpoint(checkpoint, model, opt, epoch, history, fingerprint)
        failpoint("train.epoch")
        _call(callbacks, "on_epoch_end", epoch, metrics)
    model.eval()
    return history


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
