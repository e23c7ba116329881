"""Tests for kd.distill.losses against hand-written references (explicit loops, float64 math)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from kd.distill.losses import hard_loss, kd_loss, kd_loss_parts, soft_loss, soft_targets

# -----------------------------------------------------------------------------
# references: nothing from torch.nn.functional, just the formulas


def ref_softmax(row: list[float], T: float) -> list[float]:
    m = max(row)
    e = [math.exp((v - m) / T) for v in row]
    return [v / sum(e) for v in e]


def ref_kd(s, p, labels, T, alpha):
    """(total, soft, hard): soft = T^2 * mean_b sum_c p log(p/q); hard = mean_labeled -log q."""
    s, p, labels = s.tolist(), p.tolist(), labels.tolist()
    B = len(s)
    kl_sum = 0.0
    for b in range(B):
        q = ref_softmax(s[b], T)
        kl_sum += sum(pc * math.log(pc / qc) for pc, qc in zip(p[b], q, strict=True) if pc > 0)
    soft = T**2 * kl_sum / B  # batchmean: every row counts, labeled or not
    ce, n = 0.0, 0
    for b in range(B):
        if labels[b] >= 0:
            ce += -math.log(ref_softmax(s[b], 1.0)[labels[b]])
            n += 1
    hard = ce / n if n else 0.0
    return alpha * soft + (1 - alpha) * hard, soft, hard


def ref_soft_targets(t, T, combine):
    M, B, C = t.shape
    t = t.tolist()
    out = []
    for b in range(B):
        if combine == "mean_probs":
            probs = [ref_softmax(t[m][b], T) for m in range(M)]
            out.append([sum(probs[m][c] for m in range(M)) / M for c in range(C)])
        else:
            mean = [sum(t[m][b][c] for m in range(M)) / M for c in range(C)]
            out.append(ref_softmax(mean, T))
    return torch.tensor(out, dtype=torch.float64)


def batch(B=16, C=5, seed=0, unlabeled=0.4, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(B, C, generator=g) * scale
    t_probs = F.softmax(torch.randn(B, C, generator=g) * scale, dim=-1)
    labels = torch.randint(0, C, (B,), generator=g)
    labels[torch.rand(B, generator=g) < unlabeled] = -1
    return s, t_probs, labels


# -----------------------------------------------------------------------------
# kd_loss vs reference


@pytest.mark.parametrize("T", [1.0, 2.0, 4.5, 10.0])
@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.9, 1.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_kd_loss_matches_reference(T, alpha, seed):
    s, p, labels = batch(seed=seed)
    assert (labels == -1).any() and (labels >= 0).any()
    total, soft, hard = kd_loss_parts(s, p, labels, T, alpha)
    r_total, r_soft, r_hard = ref_kd(s, p, labels, T, alpha)
    assert soft.item() == pytest.approx(r_soft, rel=1e-5, abs=1e-6)
    assert hard.item() == pytest.approx(r_hard, rel=1e-5)
    assert total.item() == pytest.approx(r_total, rel=1e-5, abs=1e-6)
    assert kd_loss(s, p, labels, T, alpha).item() == total.item()
    assert total.shape == () and total.dtype == torch.float32


@pytest.mark.parametrize("T", [1.0, 3.0])
def test_soft_term_equals_torch_kl_div_batchmean(T):
    s, p, labels = batch(B=9, C=7, seed=3)
    want = T**2 * F.kl_div(F.log_softmax(s / T, dim=-1), p, reduction="batchmean")
    assert soft_loss(s, p, T).item() == pytest.approx(want.item(), rel=1e-6)


def test_zero_teacher_probabilities_are_not_nan():
    s, _, labels = batch(B=4, C=3)
    p = F.one_hot(torch.tensor([0, 2, 1, 1]), 3).float()  # 0 * log 0 everywhere else
    s.requires_grad_(True)
    total, soft, _ = kd_loss_parts(s, p, labels, 2.0, 0.5)
    total.backward()
    assert torch.isfinite(total) and torch.isfinite(s.grad).all()
    assert soft.item() == pytest.approx(ref_kd(s.detach(), p, labels, 2.0, 0.5)[1], rel=1e-5)


@settings(max_examples=40, deadline=None)
@given(
    B=st.integers(1, 12), C=st.integers(2, 9), seed=st.integers(0, 10_000),
    T=st.floats(0.5, 20.0), alpha=st.floats(0.0, 1.0), unlabeled=st.floats(0.0, 1.0),
)
def test_kd_loss_matches_reference_property(B, C, seed, T, alpha, unlabeled):
    s, p, labels = batch(B, C, seed, unlabeled)
    total, soft, hard = kd_loss_parts(s, p, labels, T, alpha)
    r_total, r_soft, r_hard = ref_kd(s, p, labels, T, alpha)
    assert total.item() == pytest.approx(r_total, rel=1e-4, abs=1e-5)
    assert soft.item() >= -1e-6 and hard.item() >= 0


# -----------------------------------------------------------------------------
# labels: alpha=0, alpha=1, unlabeled rows


def test_alpha_zero_is_cross_entropy_on_labeled_rows():
    s, p, labels = batch(seed=5)
    lab = labels >= 0
    want = F.cross_entropy(s[lab], labels[lab])
    assert kd_loss(s, p, labels, 4.0, 0.0).item() == pytest.approx(want.item(), rel=1e-6)
    assert hard_loss(s, labels).item() == pytest.approx(want.item(), rel=1e-6)


def test_alpha_one_ignores_labels():
    s, p, labels = batch(seed=6)
    other = torch.where(labels >= 0, (labels + 1) % s.shape[1], labels)
    a = kd_loss(s, p, labels, 3.0, 1.0)
    assert torch.equal(a, kd_loss(s, p, other, 3.0, 1.0))
    assert torch.equal(a, kd_loss(s, p, torch.full_like(labels, -1), 3.0, 1.0))


def test_unlabeled_rows_enter_only_the_soft_term():
    s, p, labels = batch(seed=7)
    unl = labels < 0
    s2 = s.clone()
    s2[unl] += torch.randn(int(unl.sum()), s.shape[1]) * 5
    _, soft1, hard1 = kd_loss_parts(s, p, labels, 2.0, 0.5)
    _, soft2, hard2 = kd_loss_parts(s2, p, labels, 2.0, 0.5)
    assert torch.equal(hard1, hard2)
    assert abs(soft1.item() - soft2.item()) > 1e-3
    # and the hard term's gradient is exactly zero on unlabeled rows
    s.requires_grad_(True)
    hard_loss(s, labels).backward()
    assert torch.equal(s.grad[unl], torch.zeros_like(s.grad[unl]))
    assert s.grad[~unl].abs().sum() > 0


def test_rank_losses_with_the_global_labeled_count_average_to_the_whole_batch_loss():
    """DDP averages the ranks' losses (and gradients). With each rank dividing its hard term
    by the global batch's labeled rows per rank, that average is the one-process loss, however
    unevenly the labeled rows fall; dividing by a rank's own count is not."""
    s, p, labels = batch(B=12, seed=11, unlabeled=0.0)
    labels[:5] = -1  # rank 0: 1 labeled row of 6, rank 1: 6 of 6
    whole = kd_loss(s, p, labels, 3.0, 0.4)
    halves = [slice(0, 6), slice(6, 12)]
    per_rank = torch.tensor(float((labels >= 0).sum()) / 2)
    ddp = sum(kd_loss(s[h], p[h], labels[h], 3.0, 0.4, per_rank) for h in halves) / 2
    naive = sum(kd_loss(s[h], p[h], labels[h], 3.0, 0.4) for h in halves) / 2
    assert ddp.item() == pytest.approx(whole.item(), rel=1e-6)
    assert abs(naive.item() - whole.item()) > 1e-2
    # no labeled row anywhere: the hard term is 0, not a division by zero
    none = torch.full_like(labels, -1)
    assert kd_loss_parts(s, p, none, 3.0, 0.4, torch.tensor(0.0))[2].item() == 0.0


def test_all_unlabeled_batch_gives_the_soft_term_alone():
    s, p, _ = batch(seed=8)
    labels = torch.full((s.shape[0],), -1)
    s.requires_grad_(True)
    total, soft, hard = kd_loss_parts(s, p, labels, 4.0, 0.7)
    assert hard.item() == 0.0 and torch.isfinite(total)
    assert total.item() == pytest.approx(0.7 * soft.item(), rel=1e-6)
    # alpha=0 on such a batch: a zero loss that still backpropagates (zero grads, no error)
    zero = kd_loss(s, p, labels, 4.0, 0.0)
    zero.backward()
    assert zero.item() == 0.0 and torch.equal(s.grad, torch.zeros_like(s))


# -----------------------------------------------------------------------------
# the T^2 factor


def soft_grad_norm(T: float, squared: bool) -> float:
    g = torch.Generator().manual_seed(11)
    s = (torch.randn(32, 10, generator=g) * 2).requires_grad_(True)
    p = soft_targets((torch.randn(3, 32, 10, generator=g) * 2), T)
    loss = soft_loss(s, p, T) / (1 if squared else T**2)
    (grad,) = torch.autograd.grad(loss, s)
    return grad.norm().item()


def test_t_squared_keeps_soft_gradient_scale_independent_of_T():
    ratio = soft_grad_norm(10.0, True) / soft_grad_norm(20.0, True)
    assert 0.8 < ratio < 1.2, ratio
    # without T^2 the soft gradient shrinks ~1/T^2: about 4x from T=10 to T=20
    bare = soft_grad_norm(10.0, False) / soft_grad_norm(20.0, False)
    assert 3.2 < bare < 4.8, bare


# -----------------------------------------------------------------------------
# soft_targets


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_soft_targets_match_reference_and_differ_by_combine(T):
    t = torch.randn(3, 6, 4, generator=torch.Generator().manual_seed(2)) * 3
    probs = soft_targets(t, T, "mean_probs")
    logits = soft_targets(t, T, "mean_logits")
    assert probs.shape == logits.shape == (6, 4)
    assert torch.allclose(probs.double(), ref_soft_targets(t, T, "mean_probs"), atol=1e-6)
    assert torch.allclose(logits.double(), ref_soft_targets(t, T, "mean_logits"), atol=1e-6)
    assert (probs - logits).abs().max() > 1e-3
    assert torch.allclose(probs.sum(-1), torch.ones(6)) and torch.allclose(logits.sum(-1),
                                                                          torch.ones(6))
    assert torch.equal(soft_targets(t, T), probs)  # mean_probs is the default


def test_single_member_combines_agree():
    t = torch.randn(1, 5, 3)
    assert torch.allclose(soft_targets(t, 2.0, "mean_probs"), soft_targets(t, 2.0, "mean_logits"))
    assert torch.allclose(soft_targets(t, 2.0), F.softmax(t[0] / 2.0, dim=-1))


# -----------------------------------------------------------------------------
# float16 and input checks


def test_float16_inputs():
    t = (torch.randn(2, 8, 5) * 4).half()
    for combine in ("mean_probs", "mean_logits"):
        p16 = soft_targets(t, 3.0, combine)
        assert p16.dtype == torch.float32
        assert torch.allclose(p16, soft_targets(t.float(), 3.0, combine), atol=1e-6)
    s, _, labels = batch(B=8, C=5, seed=9)
    s16 = s.half().requires_grad_(True)
    total = kd_loss(s16, soft_targets(t, 3.0).half(), labels, 3.0, 0.5)
    assert total.dtype == torch.float32 and torch.isfinite(total)
    total.backward()
    assert s16.grad.dtype == torch.float16 and torch.isfinite(s16.grad).all()
    want = kd_loss(s.half().float(), soft_targets(t, 3.0).half().float(), labels, 3.0, 0.5)
    assert total.item() == pytest.approx(want.item(), rel=1e-6)


@pytest.mark.parametrize(
    "call",
    [
        lambda s, p, y: kd_loss(s, p, y, 0.0, 0.5),
        lambda s, p, y: kd_loss(s, p, y, -1.0, 0.5),
        lambda s, p, y: kd_loss(s, p, y, 2.0, 1.5),
        lambda s, p, y: kd_loss(s, p, y, 2.0, -0.1),
        lambda s, p, y: kd_loss(s, p[:, :-1], y, 2.0, 0.5),
        lambda s, p, y: kd_loss(s, p, y[:-1], 2.0, 0.5),
        lambda s, p, y: kd_loss(s[0], p[0], y, 2.0, 0.5),
        lambda s, p, y: soft_targets(s, 2.0),
        lambda s, p, y: soft_targets(s[None], 2.0, "median"),
        lambda s, p, y: soft_targets(s[None], 0.0),
    ],
)
def test_bad_arguments_raise_value_error(call):
    s, p, labels = batch(B=4, C=3)
    with pytest.raises(ValueError):
        call(s, p, labels)


# -----------------------------------------------------------------------------
# components: the loss's expectation over a mixture's parts (a soft tree's leaves)


def mixture_batch(B=6, L=4, C=3, seed=0, per_row=False):
    g = torch.Generator().manual_seed(seed)
    s, p, labels = batch(B, C, seed)
    log_w = F.log_softmax(torch.randn(B, L, generator=g) * 2, dim=1)  # (B, L)
    shape = (B, L, C) if per_row else (L, C)
    return log_w, torch.randn(*shape, generator=g) * 2, p, labels


def ref_expected_kd(log_w, c_logits, p, labels, T, alpha):
    """Loops: soft = T^2 mean_b sum_l w_bl KL(p_b || softmax(c_l / T)); hard = mean over
    labeled b of sum_l w_bl -log softmax(c_l)[y_b]."""
    w, c, p, labels = log_w.exp().tolist(), c_logits.tolist(), p.tolist(), labels.tolist()
    B, L = len(w), len(w[0])
    leaf = (lambda b, j: c[b][j]) if c_logits.dim() == 3 else (lambda b, j: c[j])  # noqa: E731
    soft = ce = 0.0
    for b in range(B):
        for j in range(L):
            q = ref_softmax(leaf(b, j), T)
            soft += w[b][j] * sum(pc * math.log(pc / qc) for pc, qc in zip(p[b], q,
                                                                            strict=True))
            if labels[b] >= 0:
                ce += w[b][j] * -math.log(ref_softmax(leaf(b, j), 1.0)[labels[b]])
    soft, n = T**2 * soft / B, sum(y >= 0 for y in labels)
    hard = ce / n if n else 0.0
    return alpha * soft + (1 - alpha) * hard, soft, hard


@pytest.mark.parametrize("per_row", [False, True])
@pytest.mark.parametrize("T, alpha", [(1.0, 0.5), (3.0, 0.9), (2.0, 0.0)])
def test_expected_loss_over_components_matches_a_hand_computation(per_row, T, alpha):
    log_w, c, p, labels = mixture_batch(per_row=per_row, seed=int(T))
    labels[0], labels[1] = -1, 2  # both kinds of row
    s = torch.zeros(len(labels), c.shape[-1])  # the model's output: read for shapes only
    got = kd_loss_parts(s, p, labels, T, alpha, components=(log_w, c))
    for g, want in zip(got, ref_expected_kd(log_w, c, p, labels, T, alpha), strict=True):
        assert g.item() == pytest.approx(want, rel=1e-5, abs=1e-6)
    assert kd_loss(s, p, labels, T, alpha, components=(log_w, c)).item() == got[0].item()


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_one_component_per_row_is_the_plain_loss_of_that_component(T):
    """Hard routing: each row's whole weight on one leaf. The expectation is then the plain
    Hinton loss of that leaf's logits, and the output itself is not read."""
    _, c, p, labels = mixture_batch(B=8, L=5, seed=4)
    leaf = torch.tensor([0, 3, 3, 1, 4, 2, 0, 1])
    log_w = torch.full((8, 5), -math.inf).scatter(1, leaf[:, None], 0.0)  # (B, L)
    plain = kd_loss_parts(c[leaf], p, labels, T, 0.7)
    noise = torch.randn(8, c.shape[1]) * 9  # any output: the components decide
    hard_routed = kd_loss_parts(noise, p, labels, T, 0.7, components=(log_w, c))
    for a, b in zip(hard_routed, plain, strict=True):
        assert a.item() == pytest.approx(b.item(), rel=1e-6)
    # and with one component shared by every row (L = 1), the expectation is the plain loss
    one = kd_loss(noise, p, labels, T, 0.7, components=(torch.zeros(8, 1), c[:1]))
    assert one.item() == pytest.approx(kd_loss(c[[0] * 8], p, labels, T, 0.7).item(), rel=1e-6)


@settings(max_examples=30, deadline=None)
@given(B=st.integers(1, 8), L=st.integers(1, 6), C=st.integers(2, 6),
       seed=st.integers(0, 10_000), alpha=st.floats(0.0, 1.0))
def test_expected_loss_is_never_below_the_mixture_loss_at_T1(B, L, C, seed, alpha):
    """Jensen: -log is convex, so E_l[CE(p, q_l)] >= CE(p, sum_l w_l q_l) (T = 1)."""
    log_w, c, p, labels = mixture_batch(B, L, C, seed)
    mixture = torch.logsumexp(log_w[:, :, None] + F.log_softmax(c, -1)[None], dim=1)  # (B, C)
    expected = kd_loss(mixture, p, labels, 1.0, alpha, components=(log_w, c))
    assert expected.item() >= kd_loss(mixture, p, labels, 1.0, alpha).item() - 1e-5


def test_components_gradients_reach_weights_and_components_and_skip_unlabeled_rows():
    log_w, c, p, labels = mixture_batch(seed=9)
    raw = log_w.clone().requires_grad_(True)
    c.requires_grad_(True)
    w = F.log_softmax(raw, 1)
    s = torch.zeros(len(labels), c.shape[-1])
    kd_loss(s, p, labels, 2.0, 0.5, components=(w, c)).backward()
    assert raw.grad.abs().sum() > 0 and c.grad.abs().sum() > 0
    raw.grad = None
    hard_loss(s, labels, components=(F.log_softmax(raw, 1), c)).backward()
    assert torch.equal(raw.grad[labels < 0], torch.zeros_like(raw.grad[labels < 0]))


def test_supervised_label_loss_is_the_hard_term_over_components():
    """The baseline's and teachers' loss (kd/train/supervised.py) gives a mixture model the
    same expectation as the student's hard term, and is plain cross-entropy otherwise."""
    from kd.train.supervised import label_loss

    log_w, c, _, labels = mixture_batch(seed=12, per_row=True)
    labels = labels.clamp(min=0)  # a supervised batch: every row labeled
    s = torch.randn(len(labels), c.shape[-1])
    got = label_loss(s, labels, (log_w, c))
    assert got.item() == pytest.approx(hard_loss(s, labels, components=(log_w, c)).item(),
                                       rel=1e-6)
    assert got.item() == pytest.approx(ref_expected_kd(log_w, c, s.softmax(1), labels, 1.0,
                                                       0.0)[2], rel=1e-5)
    assert torch.equal(label_loss(s, labels), F.cross_entropy(s, labels))


@pytest.mark.parametrize("components", [
    (torch.zeros(3, 4), torch.zeros(4, 5)),  # rows: 3 weights for a batch of 4
    (torch.zeros(4, 4), torch.zeros(3, 5)),  # 3 components for 4 weights
    (torch.zeros(4, 4), torch.zeros(4, 4)),  # 4 classes, the output has 5
    (torch.zeros(4, 4), torch.zeros(2, 4, 5)),  # per-row logits for 2 rows of 4
])
def test_mismatched_components_raise_value_error(components):
    s, p, labels = batch(B=4, C=5)
    with pytest.raises(ValueError, match="component"):
        kd_loss(s, p, labels, 2.0, 0.5, components=components)
