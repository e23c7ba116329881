"""Which rows, and which member's targets, a student variant trains on: pure functions of row
ids, labels and member logits, so no batch order, shard layout or rank count can change them.

    u = row_uniform(seed=0, stream=FRACTION, row_ids=ids)           # (B,) in [0, 1)
    m = random_members(seed, epoch, ids, n_members=4)               # combine random_member
    keep = fraction_mask(seed, ids, is_labeled, 0.03)               # student.fraction
    keep = omit_mask(label, logits, omitted=[3], combine="mean_probs")  # student.omit
    b = choose_bias(val_logits, val_y, omitted=[3])                 # on validation rows only
    corrected = with_bias(test_logits, [3], b)

Every draw is a hash of (seed, stream, epoch, row id) (splitmix64), never a generator advanced
row by row: a row gets the same member in epoch 3 whether it comes first or last, on one rank
or four, in a run resumed or not. Hinton et al. (2015, section 3) omit a class from the transfer
set and then raise its bias, a choice this module makes on validation rows alone.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import torch

from kd.distill.losses import soft_targets

FRACTION, MEMBER = 1, 2  # streams: the fraction of labeled rows, random_member's draws
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _key(seed: int, stream: int, epoch: int) -> np.uint64:
    digest = hashlib.sha256(f"{seed}:{stream}:{epoch}".encode()).digest()
    return np.uint64(int.from_bytes(digest[:8], "little"))


def _splitmix64(x: np.ndarray) -> np.ndarray:
    x = x + _GOLDEN
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def row_uniform(seed: int, stream: int, row_ids: np.ndarray, epoch: int = 0) -> np.ndarray:
    """(B,) float64 in [0, 1): one uniform draw per row, a pure function of (seed, stream,
    epoch, row id)."""
    ids = np.asarray(row_ids).astype(np.uint64)  # row ids are >= 0 (kd/targets/manifest.py)
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps on purpose
        h = _splitmix64(ids * _GOLDEN ^ _key(seed, stream, epoch))
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def random_members(seed: int, epoch: int, row_ids: np.ndarray, n_members: int) -> np.ndarray:
    """(B,) int64: the member whose targets each row trains on this epoch (random_member)."""
    return np.minimum((row_uniform(seed, MEMBER, row_ids, epoch) * n_members).astype(np.int64),
                      n_members - 1)


def pick_members(t_logits: np.ndarray, members: np.ndarray) -> np.ndarray:
    """(M, B, C) member logits -> (1, B, C): row b's logits of member members[b]."""
    return t_logits[members, np.arange(t_logits.shape[1])][None]  # (1, B, C)


def fraction_mask(seed: int, row_ids: np.ndarray, is_labeled: np.ndarray,
                  fraction: float) -> np.ndarray:
    """(B,) bool: a seeded `fraction` of the labeled rows (each kept with that probability,
    by its id) and every unlabeled row (`rows: labeled` drops those separately)."""
    if fraction >= 1.0:
        return np.ones(len(row_ids), bool)
    return ~np.asarray(is_labeled) | (row_uniform(seed, FRACTION, row_ids) < fraction)


def row_classes(label: np.ndarray, logits: np.ndarray, combine: str) -> np.ndarray:
    """(B,) each row's class: its label where known (>= 0), the ensemble's argmax at T = 1
    otherwise. logits (M, B, C)."""
    label = np.asarray(label)
    if (label >= 0).all():
        return label
    unlabeled = label < 0  # their logits gathered: a copy, writable (a reader's may not be)
    top = soft_targets(torch.from_numpy(np.asarray(logits)[:, unlabeled]), 1.0, combine)
    out = label.copy()
    out[unlabeled] = top.argmax(1).numpy()
    return out


def omit_mask(label: np.ndarray, logits: np.ndarray, omitted: Sequence[int],
              combine: str) -> np.ndarray:
    """(B,) bool: the rows whose class (row_classes) is not among `omitted`."""
    if not len(omitted):
        return np.ones(len(label), bool)
    return ~np.isin(row_classes(label, logits, combine), np.asarray(omitted))


def with_bias(logits: np.ndarray, omitted: Sequence[int], bias: float) -> np.ndarray:
    """(N, C) logits with `bias` added to the omitted classes' columns."""
    out = np.array(logits, dtype=np.float64, copy=True)
    out[:, list(omitted)] += bias
    return out


def choose_bias(val_logits: np.ndarray, val_y: np.ndarray, omitted: Sequence[int]) -> float:
    """The bias added to the omitted classes' logits that maximises accuracy on the given
    (validation) rows; among ties, the one nearest 0. Exact: accuracy only changes where a row's
    best omitted logit overtakes its best kept one, so the candidates are 0 and the midpoints
    between those crossing points (and one past each end)."""
    z = np.asarray(val_logits, dtype=np.float64)  # (N, C)
    if not len(z) or not len(omitted):
        return 0.0
    om = np.zeros(z.shape[1], bool)
    om[list(omitted)] = True
    if om.all():
        return 0.0
    gaps = np.unique(z[:, ~om].max(1) - z[:, om].max(1))  # the bias at which row n flips
    cands = np.concatenate([[0.0], (gaps[:-1] + gaps[1:]) / 2, gaps[[0, -1]] + [-1.0, 1.0]])
    y = np.asarray(val_y)
    acc = np.array([(with_bias(z, omitted, b).argmax(1) == y).mean() for b in cands])
    best = np.flatnonzero(acc == acc.max())
    return float(cands[best[np.argmin(np.abs(cands[best]))]])
