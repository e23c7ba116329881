"""Augmentations: the teachers' live ones and the stored views, replayed bit for bit.

    x = shift_rows(x, shifts)                          # (B, *shape), per-row circular shifts
    v = draw_views(settings, row_ids, views, pool)     # the parameters of views (row id, view)
    x = replay(base_x, partner_x, v, shape, settings)  # the inputs the teacher saw

A stored view (row id, v), v in 1..K, is a training row augmented once at export and kept as
its parameters, never as a copy of its features: a circular shift per spatial axis, a noise
seed and, with mixup, a partner row id and a weight lam ~ Beta(a, a). Its input is

    shift(lam * x + (1 - lam) * x_partner) + noise * N(0, 1)  (the normal draws from the seed)

Every parameter is drawn from a generator keyed by (seed, row id, v) alone, so a view is the
same whichever shard, batch or process draws it, and `kd shards verify` can draw it again.
Partners come from the pool: training rows only, never validation or test rows. View 0 is the
row as stored. The teachers' live augmentation (kd/train/batches.py) shifts with the same
`shift_rows`, drawing its shifts per batch instead.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

Views = dict[str, np.ndarray]  # row_id, view, shift (N, axes), noise_seed, partner, lam
VIEW_KEYS = ("view", "shift", "noise_seed", "partner", "lam")  # the shard columns of a view


def shift_rows(x: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Circular shift of each row of x (B, *shape) by shifts (B, axes), one per spatial axis:
    out[b, i] = x[b, i - shifts[b]] along each axis (a gather: exact, no arithmetic)."""
    b, out = x.shape[0], x
    for axis in range(1, out.dim()):
        n = out.shape[axis]
        idx = (torch.arange(n).unsqueeze(0) - shifts[:, axis - 1].unsqueeze(1)) % n  # (B, n)
        view = [b] + [1] * (out.dim() - 1)
        view[axis] = n
        out = torch.gather(out, axis, idx.view(view).expand_as(out))
    return out


def settings_of(export: Any) -> dict[str, Any]:
    """The view settings an export records (shard metadata and manifest `views`): what a
    reader needs to replay a view and `kd shards verify` to draw it again."""
    return {"count": export.views, "shift": export.augment.shift, "noise": export.augment.noise,
            "mixup": export.mixup, "partners": export.partners, "seed": export.seed}


def _check_ids(row_ids: np.ndarray) -> None:
    if len(row_ids) and int(row_ids.min()) < 0:
        raise ValueError(f"views need non-negative row ids, got {int(row_ids.min())}")


def draw_views(settings: dict[str, Any], row_ids: np.ndarray, views: np.ndarray,
               pool: np.ndarray, axes: int) -> Views:
    """The parameters of the views (row_ids[i], views[i]), each from its own generator seeded
    by (seed, row id, view): shift (N, axes) int16, noise_seed int64, partner int64 (-1: no
    mixup), lam float32 (1: no mixup). `pool`: the partners' row ids, sorted."""
    row_ids, views = np.asarray(row_ids, np.int64), np.asarray(views, np.int64)
    _check_ids(row_ids)
    n, s, a = len(row_ids), settings["shift"], settings["mixup"]
    out: Views = dict(row_id=row_ids, view=views.astype(np.int16),
                      shift=np.zeros((n, axes), np.int16), noise_seed=np.zeros(n, np.int64),
                      partner=np.full(n, -1, np.int64), lam=np.ones(n, np.float32))
    mix = a > 0 and len(pool) > 0
    for i in range(n):  # one generator a view: its draw depends on nothing but its key
        rng = np.random.default_rng([settings["seed"], int(row_ids[i]), int(views[i])])
        out["shift"][i] = rng.integers(-s, s + 1, axes) if s else 0
        noise_seed = rng.integers(0, 2**63 - 1)  # drawn always: the later draws stay put
        out["noise_seed"][i] = noise_seed if settings["noise"] else 0  # 0: 8 bytes a view saved
        if mix:
            out["partner"][i] = pool[rng.integers(len(pool))]
            out["lam"][i] = np.float32(rng.beta(a, a))
    return out


def expand(row_ids: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """(row ids, views) of views 1..count of every row, each row's views together."""
    rid = np.repeat(np.asarray(row_ids, np.int64), count)
    return rid, np.tile(np.arange(1, count + 1, dtype=np.int64), len(row_ids))


def replay(x: np.ndarray, partner_x: np.ndarray | None, v: Views,
           shape: Sequence[int], settings: dict[str, Any]) -> np.ndarray:
    """The inputs of views `v` (B, F) float32, from their rows' stored features x (B, F) and
    their partners' (B, F; None without mixup). Elementwise float32 and a gather: the same
    bits on every machine, in export and in the student."""
    x = np.asarray(x, np.float32)
    out = x
    if partner_x is not None and (v["partner"] >= 0).any():
        lam = v["lam"][:, None]  # (B, 1) float32; 1 where the view has no partner
        px = np.where((v["partner"] >= 0)[:, None], partner_x, x)
        out = lam * x + (np.float32(1) - lam) * px
    if settings["shift"]:
        xt = torch.from_numpy(np.ascontiguousarray(out)).view(len(out), *shape)
        out = shift_rows(xt, torch.from_numpy(v["shift"].astype(np.int64))).reshape(
            len(out), -1).numpy()
    if settings["noise"] and len(out):
        std = np.float32(settings["noise"])
        out = out + np.stack([std * np.random.default_rng(int(s)).standard_normal(
            out.shape[1], dtype=np.float32) for s in v["noise_seed"]])  # (B, F)
    return np.ascontiguousarray(out, np.float32)


def pick_views(row_ids: np.ndarray, count: int, seed: int, epoch: int) -> np.ndarray:
    """(N,) the one view in 0..count each row trains on in `epoch`: a hash of (seed, epoch,
    row id), so every process and shard layout picks the same."""
    key = int.from_bytes(hashlib.sha256(f"views:{seed}:{epoch}".encode()).digest()[:8], "little")
    z = np.asarray(row_ids, np.int64).astype(np.uint64) + np.uint64(key)
    with np.errstate(over="ignore"):  # splitmix64: wrapping arithmetic is the point
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z % np.uint64(count + 1)).astype(np.int64)


class FeatureTable:
    """Stored features by row id (sorted ids, (N, F) rows): the base rows views replay from."""

    def __init__(self, row_ids: np.ndarray, x: np.ndarray):
        order = np.argsort(row_ids, kind="stable")
        self.ids, self.x = np.asarray(row_ids, np.int64)[order], np.asarray(x, np.float32)[order]

    def rows(self, row_ids: np.ndarray) -> np.ndarray:
        """(B, F) the features of `row_ids`; KeyError naming the first id not held."""
        row_ids = np.asarray(row_ids, np.int64)
        if not len(self.ids):
            if len(row_ids):
                raise KeyError(int(row_ids[0]))
            return np.zeros((0, self.x.shape[1]), np.float32)
        at = np.searchsorted(self.ids, row_ids).clip(0, len(self.ids) - 1)
        if (bad := self.ids[at] != row_ids).any():
            raise KeyError(int(row_ids[bad][0]))
        return self.x[at]

    def inputs(self, v: Views, shape: Sequence[int], settings: dict[str, Any]) -> np.ndarray:
        """The replayed inputs of views `v`, their rows and partners looked up here."""
        partner = None
        if (v["partner"] >= 0).any():
            partner = self.rows(np.where(v["partner"] >= 0, v["partner"], v["row_id"]))
        return replay(self.rows(v["row_id"]), partner, v, shape, settings)


class ViewSource:
    """What export needs to store views: every training row's features (the rows and their
    partners), the partner pool, and the settings. Holds the training rows in memory
    (rows x features x 4 bytes), never the validation or test rows."""

    def __init__(self, settings: dict[str, Any], sources: list[tuple[Any, str]],
                 shape: Sequence[int]):
        from kd.prepared import read_split

        ids, xs, labeled, width = [], [], [], int(np.prod(shape))
        for where, split in sources:
            part, is_val = read_split(where, split)
            ids.append(part.row_id[~is_val])
            xs.append(part.x[~is_val].reshape(-1, width))  # an empty split reads as (0, 0)
            labeled.append(np.full(len(ids[-1]), split == "labeled"))
        row_ids, is_labeled = np.concatenate(ids), np.concatenate(labeled)
        self.settings, self.shape = settings, tuple(shape)
        self.table = FeatureTable(row_ids, np.concatenate(xs))
        self.pool = partner_pool(row_ids, is_labeled, settings["partners"])

    def views_of(self, row_ids: np.ndarray, labels: np.ndarray
                 ) -> tuple[Views, np.ndarray, np.ndarray]:
        """Views 1..K of training rows `row_ids`: their parameters, labels (each row's own)
        and replayed inputs (B * K, F)."""
        k = self.settings["count"]
        v = draw_views(self.settings, *expand(row_ids, k), self.pool, len(self.shape))
        return v, np.repeat(labels, k), self.table.inputs(v, self.shape, self.settings)


def partner_pool(row_ids: np.ndarray, is_labeled: np.ndarray, partners: str) -> np.ndarray:
    """The sorted row ids mixup partners are drawn from: training rows (the caller passes no
    validation row), all of them or the labeled ones (export.partners)."""
    keep = is_labeled if partners == "labeled" else np.ones(len(row_ids), bool)
    return np.sort(np.asarray(row_ids, np.int64)[keep])
