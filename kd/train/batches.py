"""Batches for the training loop, and the in-memory ones of teachers and the baseline.

    batches = in_memory_batches(x, y, 128, seed=0, shape=(40,), aug=AugmentConfig(shift=6))
    for b in batches(epoch):          # b.x (B, F), b.y (B,), b.t_logits None here

Every random choice of an epoch (shuffle order, augmentation) is drawn from generators seeded by
(seed, epoch), so a run resumed from its last completed epoch sees the same batches as a run that
was never interrupted. A soft target travels in the same `Batch` as its row: never paired by
position.
"""

from __future__ import annotations

import hashlib
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from kd.augment import shift_rows
from kd.config import AugmentConfig
from kd.runtime.distributed import SINGLE, Dist


@dataclass
class Batch:
    x: torch.Tensor  # (B, F) float32 features, flat
    y: torch.Tensor  # (B,) int64, -1 where unlabeled
    t_logits: torch.Tensor | None = None  # (M, B, C) teacher member logits, when distilling
    # this rank's share of the global batch, times the world size: scaling a rank's mean loss
    # by it makes DDP's gradient average the mean over the global batch, as in one process
    scale: float = 1.0
    t_hidden: torch.Tensor | None = None  # (B, D) a member's pooled hidden vector (beta > 0)
    # mixup views' second label term: (B,) partner labels (-1: none), (B,) lam (kd_loss's mix)
    mix: tuple[torch.Tensor, torch.Tensor] | None = None

    def to(self, device: torch.device) -> Batch:
        if device.type == "cpu":
            return self
        t, h = (None if v is None else v.to(device, non_blocking=True)
                for v in (self.t_logits, self.t_hidden))
        mix = None if self.mix is None else tuple(v.to(device, non_blocking=True)
                                                  for v in self.mix)
        return Batch(self.x.to(device, non_blocking=True), self.y.to(device, non_blocking=True),
                     t, self.scale, h, mix)


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
    if cfg.shift:  # one draw per axis, in axis order: the stream a resumed run replays
        shifts = torch.stack([torch.randint(-cfg.shift, cfg.shift + 1, (b,), generator=gen)
                              for _ in range(1, out.dim())], 1)  # (B, axes)
        out = shift_rows(out, shifts)
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
