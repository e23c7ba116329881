"""The combine rules beside mean_probs and mean_logits, and the row draws behind them.

    pytest -q tests/test_combine.py

kl_per_member is checked against a hand computation (plain Python floats, one member, row and
class at a time); random_member's draws are a function of (seed, epoch, row id) alone, so the
member a row trains on does not move with the batch size, the shuffle buffer or the row order.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import kd.train.student as distill
from kd.distill.losses import kd_loss_parts, member_targets, soft_targets
from kd.distill.rows import fraction_mask, pick_members, random_members, row_uniform
from kd.targets.reader import ShardReader
from tests.catalogue import pipeline

GEN = torch.Generator().manual_seed(7)


def _hand_kl_per_member(s: list[list[float]], t: list[list[list[float]]], y: list[int],
                        T: float, alpha: float) -> float:
    def softmax(z: list[float], T: float) -> list[float]:
        e = [math.exp(v / T) for v in z]
        return [v / sum(e) for v in e]

    soft = 0.0
    for member in t:
        kl_rows = []
        for zs, zt in zip(s, member, strict=True):
            p, q = softmax(zt, T), softmax(zs, T)
            kl_rows.append(sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q,
                                                                                   strict=True)))
        soft += T * T * sum(kl_rows) / len(kl_rows)
    soft /= len(t)
    labeled = [(zs, c) for zs, c in zip(s, y, strict=True) if c >= 0]
    hard = sum(-math.log(softmax(zs, 1.0)[c]) for zs, c in labeled) / len(labeled)
    return alpha * soft + (1 - alpha) * hard


def test_kl_per_member_is_the_mean_of_the_members_hinton_losses_by_hand():
    s = torch.randn(4, 3, generator=GEN, dtype=torch.float64)  # (B, C)
    t = torch.randn(3, 4, 3, generator=GEN, dtype=torch.float64) * 3  # (M, B, C)
    y = torch.tensor([2, -1, 0, -1])
    T, alpha = 2.5, 0.7
    total, soft, hard = kd_loss_parts(s, member_targets(t, T), y, T, alpha)
    want = _hand_kl_per_member(s.tolist(), t.tolist(), y.tolist(), T, alpha)
    assert total.item() == pytest.approx(want, rel=1e-5)
    # it is not mean_probs's value: the members disagree, and the mean of their KLs exceeds
    # the KL of their mean by the members' spread (a constant for the student) ...
    _, soft_mean, _ = kd_loss_parts(s, soft_targets(t, T, "mean_probs"), y, T, alpha)
    assert soft.item() > soft_mean.item() + 1e-3
    # ... while the student's gradient is mean_probs's exactly (up to rounding)
    grads = []
    for targets in (member_targets(t, T), soft_targets(t, T, "mean_probs")):
        x = s.clone().requires_grad_(True)
        kd_loss_parts(x, targets, y, T, alpha)[0].backward()
        grads.append(x.grad)
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_as_a_prediction_the_new_rules_are_the_mean_of_member_probabilities():
    t = torch.randn(3, 5, 4, generator=GEN)
    for combine in ("kl_per_member", "random_member"):
        assert torch.equal(soft_targets(t, 1.0, combine), soft_targets(t, 1.0, "mean_probs"))


def test_random_member_draws_depend_on_seed_epoch_and_row_id_alone():
    ids = np.arange(5000, dtype=np.int64) * 7 + 3
    m = random_members(0, 2, ids, 4)
    perm = np.random.default_rng(1).permutation(len(ids))
    assert np.array_equal(random_members(0, 2, ids[perm], 4), m[perm])  # order-free
    assert np.array_equal(random_members(0, 2, ids[:10], 4), m[:10])  # batch-free
    assert set(m.tolist()) == {0, 1, 2, 3}
    assert np.abs(np.bincount(m) / len(m) - 0.25).max() < 0.03  # about uniform
    for other in (random_members(0, 3, ids, 4), random_members(1, 2, ids, 4)):
        assert 0.6 < (other != m).mean() < 0.9  # another epoch or seed: other members
    u = row_uniform(0, 1, ids)
    assert (u >= 0).all() and (u < 1).all()
    z = np.random.default_rng(0).normal(size=(4, 6, 3)).astype(np.float32)
    picked = pick_members(z, np.array([0, 1, 2, 3, 0, 1]))
    assert picked.shape == (1, 6, 3) and np.array_equal(picked[0, 2], z[2, 2])


def test_fraction_keeps_a_seeded_share_of_labeled_rows_and_every_unlabeled_row():
    ids = np.arange(20_000)
    lab = ids % 3 != 0
    keep = fraction_mask(5, ids, lab, 0.03)
    assert keep[~lab].all()
    share = keep[lab].mean()
    assert 0.025 < share < 0.035
    assert np.array_equal(fraction_mask(5, ids[::-1], lab[::-1], 0.03), keep[::-1])
    assert not np.array_equal(fraction_mask(6, ids, lab, 0.03), keep)
    assert fraction_mask(5, ids, lab, 1.0).all()


def _rows_and_targets(reader: ShardReader, batch: int, buffer: int, epoch: int) -> dict:
    """features bytes -> the (C,) teacher logits each row carried to the loss in `epoch`."""
    out = {}
    for b in distill.shard_batches(reader, batch, 3, buffer, combine="random_member")(epoch):
        assert b.t_logits.shape[0] == 1  # one member per row
        for x, z in zip(b.x, b.t_logits[0], strict=True):
            out[x.numpy().tobytes()] = z.numpy().copy()
    return out


def test_random_member_rows_get_the_same_member_whatever_the_batching():
    shards = pipeline() / "data/soft_targets"
    reader = ShardReader(shards)
    a = _rows_and_targets(reader, 64, 100, epoch=1)
    b = _rows_and_targets(reader, 50, 10_000, epoch=1)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    # each is one member's own logits, and another epoch draws other members for some rows
    every = {}
    for part in reader.iter_batches(10_000, shuffle=False, drop_val=True):
        for x, z in zip(part["features"], part["logits"].transpose(1, 0, 2), strict=True):
            every[x.tobytes()] = z  # (M, C)
    assert all(any(np.array_equal(a[k], z) for z in every[k]) for k in a)
    c = _rows_and_targets(reader, 64, 100, epoch=2)
    moved = sum(not np.array_equal(a[k], c[k]) for k in a)
    assert 0 < moved < len(a)
