"""The top-k codec (kd/targets/topk.py): what it stores, what stays exact, its loss against a
hand computation, and bad k."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kd.errors import ConfigError
from kd.targets import topk


def _logits(n=64, c=37, seed=0):
    z = np.random.default_rng(seed).normal(0, 3, (n, c)).astype(np.float32)
    z[0] = 1.5  # a row of ties
    z[1, :6] = z[1].max() + 1  # six tied leaders
    return z


def _t(a):
    return torch.from_numpy(np.ascontiguousarray(a))


def _log_softmax64(z):
    z = z.astype(np.float64)
    m = z.max(axis=1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=1, keepdims=True))


def test_stores_the_k_largest_exactly_largest_first_ties_by_id():
    z = _logits()
    st = topk.encode(z, 5)
    assert st.logits.shape == st.ids.shape == (64, 5) and st.ids.dtype == np.uint8
    for row, ids, vals in zip(z, st.ids, st.logits, strict=True):
        want = np.lexsort((np.arange(len(row)), -row))[:5]  # by value, then by id
        np.testing.assert_array_equal(ids, want)
        np.testing.assert_array_equal(vals, row[want])  # the stored bytes are the logits
    np.testing.assert_array_equal(st.ids[0], np.arange(5))
    np.testing.assert_array_equal(st.ids[1], np.arange(5))


def test_tail_mass_and_kept_probabilities_are_exact_at_T1():
    z = _logits()
    st = topk.encode(z, 7)
    kept, tail = topk.log_probs(st)
    ref = _log_softmax64(z)  # (N, C)
    np.testing.assert_allclose(kept, np.take_along_axis(ref, st.ids.astype(int), 1),
                               rtol=0, atol=1e-6)
    rest = np.ones_like(ref, bool)
    np.put_along_axis(rest, st.ids.astype(int), False, 1)
    np.testing.assert_allclose(np.exp(tail), np.where(rest, np.exp(ref), 0).sum(1),
                               rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.exp(kept).sum(1) + np.exp(tail), 1, atol=1e-6)
    # spread uniformly: the same probabilities at T = 1, kept classes in place
    spread = topk.spread_logits(_t(st.logits), _t(st.ids), _t(st.tail_lse), 37)
    p = torch.softmax(spread.double(), 1).numpy()
    np.testing.assert_allclose(np.log(np.take_along_axis(p, st.ids.astype(int), 1)), kept,
                               atol=1e-5)
    assert (spread.numpy()[rest.nonzero()].reshape(64, 30).max(1) <= st.logits.min(1)).all()


def test_k_of_C_minus_1_is_dense_exactly():
    z = _logits(c=12)
    st = topk.encode(z, 11)
    spread = topk.spread_logits(_t(st.logits), _t(st.ids), _t(st.tail_lse), 12)
    np.testing.assert_array_equal(spread.numpy(), z)  # the tail is the one missing class
    s = torch.randn(64, 12, generator=torch.Generator().manual_seed(1))
    dense = 16 * F.kl_div(F.log_softmax(s / 4, 1), F.log_softmax(_t(z) / 4, 1),
                          log_target=True, reduction="batchmean")
    for tail in topk.TAILS:
        got = topk.soft_loss(s, _t(st.logits), _t(st.ids), _t(st.tail_lse), 4.0, tail)
        torch.testing.assert_close(got, dense, rtol=1e-5, atol=1e-6)


def test_float16_storage_and_class_id_dtypes():
    st = topk.encode(_logits(c=300), 4, np.float16)
    assert st.logits.dtype == st.tail_lse.dtype == np.float16 and st.ids.dtype == np.uint16
    assert st.bytes_per_row() == 4 * 2 + 4 * 2 + 2
    assert topk.id_dtype(256) == np.uint8 and topk.id_dtype(257) == np.uint16
    assert topk.id_dtype(70_000) == np.uint32


def _kl(p, q):
    return sum(a * (math.log(a) - math.log(b)) for a, b in zip(p, q, strict=True))


def _softmax(v):
    e = [math.exp(x) for x in v]
    return [x / sum(e) for x in e]


def test_the_loss_equals_a_hand_computation():
    z, s, T = [2.0, 0.0, 1.0, -1.0], [0.5, 0.2, -0.3, 0.1], 2.0
    st = topk.encode(np.array([z], np.float32), 2)  # keeps classes 0 and 2
    assert st.ids.tolist() == [[0, 2]]
    tail = math.log(math.exp(0.0) + math.exp(-1.0))
    q = _softmax([x / T for x in s])
    ghost = T * T * _kl(_softmax([2.0 / T, 1.0 / T, tail / T]), [q[0], q[2], q[1] + q[3]])
    spread = tail - math.log(2)
    uniform = T * T * _kl(_softmax([2.0 / T, spread / T, 1.0 / T, spread / T]), q)
    args = (torch.tensor([s]), _t(st.logits), _t(st.ids), _t(st.tail_lse), T)
    assert topk.soft_loss(*args, tail="ghost").item() == pytest.approx(ghost, rel=1e-5)
    assert topk.soft_loss(*args, tail="uniform").item() == pytest.approx(uniform, rel=1e-5)
    assert ghost != pytest.approx(uniform, rel=1e-3)  # the two tails differ at T != 1


def test_ghost_loss_is_zero_at_T1_for_a_student_equal_to_the_teacher():
    z = _logits()
    st = topk.encode(z, 3)
    loss = topk.soft_loss(_t(z).requires_grad_(), _t(st.logits), _t(st.ids),
                          _t(st.tail_lse), 1.0, "ghost")
    assert loss.item() == pytest.approx(0, abs=1e-5)
    loss4 = topk.soft_loss(_t(z + 0), _t(st.logits), _t(st.ids), _t(st.tail_lse), 4.0)
    assert loss4.item() > 1e-4  # at T = 4 the ghost bucket is an approximation
    s = torch.zeros(64, 37, requires_grad=True)
    topk.soft_loss(s, _t(st.logits), _t(st.ids), _t(st.tail_lse), 4.0).backward()
    assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0


@pytest.mark.parametrize("k, c, says", [(0, 10, "integer >= 1"), (True, 10, "integer >= 1"),
                                        (2.0, 10, "integer >= 1"), (10, 10, "below"),
                                        (12, 10, "below"), (1, 2, "2 classes")])
def test_bad_k_is_one_line(k, c, says):
    with pytest.raises(ConfigError, match=says) as e:
        topk.check_k(k, c)
    assert str(e.value).startswith("export.top_k: ") and "\n" not in str(e.value)
    with pytest.raises(ConfigError):
        topk.encode(np.zeros((3, c), np.float32), k)


def test_non_finite_logits_are_refused():
    z = _logits()
    z[9, 3] = np.nan
    with pytest.raises(ValueError, match="row 9"):
        topk.encode(z, 4)


@pytest.mark.parametrize("n_classes", [10, 100, 32_000])
def test_a_flat_row_stored_in_float16_passes_verify(n_classes):
    # every tail logit equal to the k-th: the tail is as large as it can be, and float16's
    # rounding of it (half a step at its own size) must not read as an edited value
    t = topk.encode(np.zeros((1, n_classes), np.float32), 8, np.float16)
    assert topk.row_problem(t.logits, t.ids, t.tail_lse, n_classes) is None
    edited = t.tail_lse + np.float16(0.5)  # an edit the size of a real one still fails
    assert topk.row_problem(t.logits, t.ids, edited, n_classes)[1] == "tail"
