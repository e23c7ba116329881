"""Distillation losses: pure functions of logits and labels (Hinton, Vinyals & Dean 2015).

    t_probs = soft_targets(t_logits, T=4.0)                  # (M, B, C) -> (B, C)
    loss = kd_loss(s_logits, t_probs, labels, T=4.0, alpha=0.9)
    total, soft, hard = kd_loss_parts(s_logits, t_probs, labels, T=4.0, alpha=0.9)
    loss = loss + beta * cosine_loss(s_hidden, t_hidden)    # DistilBERT's hidden-state term
    loss = kd_loss(s_logits, t_probs, labels, T=4.0, alpha=0.9, components=(log_w, c_logits))
    loss = kd_loss(s_logits, t_probs, labels, T=4.0, alpha=0.9, mix=(partner_labels, lam))
    p_m = member_targets(t_logits, T=4.0)                    # (M, B, C): combine kl_per_member
    loss = kd_loss(s_logits, p_m, labels, T=4.0, alpha=0.9)  # soft = mean_m T^2 KL(p_m || q)

    total = alpha * soft + (1 - alpha) * hard
    soft  = T^2 * KL(t_probs || softmax(s_logits / T))   mean over ALL B rows ("batchmean")
    hard  = CE(s_logits, labels)                          mean over labeled rows (label >= 0)

A mixup input lam * x_a + (1 - lam) * x_b (a stored view, student.view_labels: mixed) may
carry both rows' labels: `mix=(labels_b, lam)` makes a labeled row's cross-entropy
lam * CE(y_a) + (1 - lam) * CE(y_b) where labels_b >= 0 (Zhang et al. 2018), plain CE(y_a)
where labels_b is -1; the divisor is still the count of rows with labels >= 0.

Why T^2: the gradient of the softened KL w.r.t. the student logits scales as 1/T^2 for large T,
so without it raising T silently turns down the soft term against the hard one. Why batchmean
over all rows: unlabeled rows carry the soft term alone and must weigh as much as labeled rows;
"mean" would divide by B*C as well. Everything is computed in float32, so float16 logits from
shards or autocast do not underflow in softmax/log.

A model whose output is a mixture of components (row b's distribution sum_l w_bl softmax(c_l),
e.g. the leaves of a soft decision tree) may be scored by the *expectation* of the same loss over
its components instead of the loss of the mixture: pass `components=(log_w, c_logits)`, log_w
(B, L) each row's log weights (the weights sum to 1 over L), c_logits (L, C) or (B, L, C) the
components' logits. Then soft = T^2 * mean_b sum_l w_bl KL(t_probs_b || softmax(c_l / T)) and
hard = mean over labeled b of sum_l w_bl CE(c_l, y_b): the temperature softens each component,
and each component must fit the targets on its own (Frosst & Hinton 2017's path-weighted
cross-entropy). At T = 1, by Jensen's inequality, it is never below the loss of the mixture
sum_l w_l softmax(c_l); with one component
of weight 1 per row it is exactly the plain loss of that component.

Combine rules (`student.combine`) say how the M members' logits become the student's targets:
mean_probs averages the members' softened distributions (the paper's ensemble), mean_logits
softens the mean logits, kl_per_member averages the per-member soft losses (t_probs is then the
(M, B, C) `member_targets`), and random_member trains each row on one member's targets, drawn
per (seed, epoch, row id) by kd/distill/rows.py before the batch reaches the loss. Note that
kl_per_member has exactly mean_probs's gradient w.r.t. the student: mean_m KL(p_m || q) =
KL(mean_m p_m || q) + (a term free of q: the members' Jensen-Shannon spread), so it differs
only in the loss's value. As a prediction (the ensemble scored by the report, the choice, the
argmax of hard targets) kl_per_member and random_member are the mean of the members'
probabilities: they change how a student learns, not what the ensemble says.

The cosine term (Sanh et al. 2019, DistilBERT) aligns the student's pooled hidden vector with a
teacher member's: mean over all rows of 1 - cos(h_s, h_t), labeled or not, like the soft term.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kd.models.registry import component_nll

COMBINES = ("mean_probs", "mean_logits", "kl_per_member", "random_member")
Components = tuple[Tensor, Tensor]  # (B, L) log weights, (L, C) or (B, L, C) component logits
Mix = tuple[Tensor, Tensor]  # (B,) the mixup partners' labels (-1: none), (B,) lam


def _check_T(T: float) -> None:
    if not T > 0:
        raise ValueError(f"temperature T={T!r} must be > 0")


def soft_targets(t_logits: Tensor, T: float, combine: str = "mean_probs") -> Tensor:
    """Ensemble teacher probabilities at temperature T: (M, B, C) member logits -> (B, C).

    "mean_probs" averages the members' softened distributions (the usual ensemble);
    "mean_logits" softens the members' mean logits (a geometric-mean-like ensemble, sharper);
    "kl_per_member" and "random_member" predict as mean_probs (see the module doc).
    """
    _check_T(T)
    if t_logits.dim() != 3:
        raise ValueError(f"t_logits must be (M, B, C), got shape {tuple(t_logits.shape)}")
    t = t_logits.float()  # (M, B, C)
    if combine in ("mean_probs", "kl_per_member", "random_member"):
        return F.softmax(t / T, dim=-1).mean(dim=0)  # (B, C)
    if combine == "mean_logits":
        return F.softmax(t.mean(dim=0) / T, dim=-1)  # (B, C)
    raise ValueError(f"combine={combine!r} must be one of {COMBINES}")


def member_targets(t_logits: Tensor, T: float) -> Tensor:
    """Every member's own distribution at temperature T: (M, B, C) logits -> (M, B, C), the
    targets of combine kl_per_member (kd_loss averages the members' soft losses over M)."""
    _check_T(T)
    if t_logits.dim() != 3:
        raise ValueError(f"t_logits must be (M, B, C), got shape {tuple(t_logits.shape)}")
    return F.softmax(t_logits.float() / T, dim=-1)  # (M, B, C)


def hard_loss(s_logits: Tensor, labels: Tensor, labeled: Tensor | None = None,
              components: Components | None = None, mix: Mix | None = None) -> Tensor:
    """Cross-entropy averaged over labeled rows (labels >= 0); exactly 0 if there are none.
    With `components`, each row's cross-entropy is its expectation over the components;
    with `mix` (labels_b, lam), lam * CE(labels) + (1 - lam) * CE(labels_b) where labels_b >= 0.

    `labeled` replaces the batch's own labeled count as the divisor. Under DDP a rank passes
    (labeled rows in the global batch) / (ranks): DDP's average of the rank losses is then
    the global batch's mean, however the labeled rows fall on the ranks."""
    is_labeled = labels >= 0  # (B,)
    if mix is None:
        ce_sum = _ce(s_logits, labels, components, "sum")
    else:
        labels_b, lam = mix
        w = torch.where(labels_b >= 0, lam.float(), 1.0)  # (B,) the row's own label's weight
        ce_sum = (w * _ce(s_logits, labels, components)
                  + (1 - w) * _ce(s_logits, torch.where(is_labeled, labels_b, -1),
                                  components)).sum()
    if labeled is None:
        return ce_sum / is_labeled.sum().clamp(min=1)
    return ce_sum / labeled.clamp(min=1e-6)  # no labeled rows anywhere: ce_sum is exactly 0


def _ce(s_logits: Tensor, labels: Tensor, components: Components | None,
        reduction: str = "none") -> Tensor:
    """(B,) each row's cross-entropy, exactly 0 where labels < 0 (or their sum)."""
    is_labeled = labels >= 0
    targets = torch.where(is_labeled, labels, -1)  # any negative label means unlabeled
    if components is None:
        # no boolean gather: no host sync, no NaN on an empty set, and the result stays
        # attached to the graph even when it is 0
        return F.cross_entropy(s_logits.float(), targets, ignore_index=-1, reduction=reduction)
    log_w, log_q = _components(components, s_logits, 1.0)  # (B, L), (B|1, L, C)
    ce = torch.where(is_labeled, component_nll(log_w, log_q, targets.clamp(min=0)), 0.0)
    return ce.sum() if reduction == "sum" else ce  # unlabeled rows: exactly 0


def _components(components: Components, s_logits: Tensor, T: float) -> tuple[Tensor, Tensor]:
    """Checked float32 (B, L) log weights and (B or 1, L, C) component log-probabilities at T."""
    log_w, c_logits = components
    B, C = s_logits.shape
    if log_w.dim() != 2 or log_w.shape[0] != B:
        raise ValueError(f"component log weights {tuple(log_w.shape)} must be (B, L) with "
                         f"B = {B}")
    want = {2: (log_w.shape[1], C), 3: (B, log_w.shape[1], C)}.get(c_logits.dim())
    if tuple(c_logits.shape) != want:
        raise ValueError(f"component logits {tuple(c_logits.shape)} must be (L, C) or "
                         f"(B, L, C) = ({B}, {log_w.shape[1]}, {C})")
    log_q = F.log_softmax(c_logits.float() / T, dim=-1)  # (L, C) or (B, L, C)
    return log_w.float(), log_q if log_q.dim() == 3 else log_q.unsqueeze(0)


def soft_loss(s_logits: Tensor, t_probs: Tensor, T: float,
              components: Components | None = None) -> Tensor:
    """T^2 * KL(t_probs || softmax(s_logits / T)), summed over classes, mean over all rows;
    with `components`, each row's KL is its expectation over the components softened at T.
    t_probs (M, B, C), one distribution per member: the mean over members of their soft losses
    (combine kl_per_member)."""
    _check_T(T)
    if t_probs.dim() == 3:
        return torch.stack([soft_loss(s_logits, p_m, T, components) for p_m in t_probs]).mean()
    p = t_probs.float()  # (B, C)
    if components is None:
        log_q = F.log_softmax(s_logits.float() / T, dim=-1)  # (B, C)
        # xlogy makes 0 * log 0 = 0: a teacher probability that underflowed to 0 is not a NaN
        kl = (torch.xlogy(p, p) - p * log_q).sum(dim=-1)  # (B,)
    else:
        log_w, log_q = _components(components, s_logits, T)  # (B, L), (B|1, L, C)
        neg_h = torch.xlogy(p, p).sum(-1, keepdim=True)  # (B, 1)
        kl_l = neg_h - torch.einsum("bc,blc->bl", p, log_q.expand(len(p), -1, -1))  # (B, L)
        kl = (log_w.exp() * kl_l).sum(1)  # (B,)
    return T**2 * kl.mean()


def kd_loss_parts(
    s_logits: Tensor, t_probs: Tensor, labels: Tensor, T: float, alpha: float,
    labeled: Tensor | None = None, components: Components | None = None,
    mix: Mix | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """(total, soft, hard) with total = alpha * soft + (1 - alpha) * hard; see module doc.

    s_logits (B, C) student logits; t_probs (B, C) teacher probabilities at T (soft_targets),
    or (M, B, C) one per member (member_targets: the soft term is the mean of the members');
    labels (B,) int64 with -1 for unlabeled rows. `soft` already includes the T^2 factor.
    `labeled`: the divisor of the hard term (see hard_loss), for distributed training.
    `components`: score the expectation over a mixture's components (module doc).
    `mix`: (partner labels, lam) of mixup inputs: the hard term mixes both labels (module doc).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha!r} must be in [0, 1]")
    if s_logits.dim() != 2 or t_probs.dim() not in (2, 3) or \
            s_logits.shape != t_probs.shape[-2:]:
        raise ValueError(f"s_logits {tuple(s_logits.shape)} and t_probs {tuple(t_probs.shape)} "
                         "must be (B, C) and (B, C) or (M, B, C)")
    if labels.shape != s_logits.shape[:1]:
        raise ValueError(f"labels {tuple(labels.shape)} must be (B,) = ({s_logits.shape[0]},)")
    soft = soft_loss(s_logits, t_probs, T, components)
    hard = hard_loss(s_logits, labels, labeled, components, mix)
    return alpha * soft + (1.0 - alpha) * hard, soft, hard


def kd_loss(s_logits: Tensor, t_probs: Tensor, labels: Tensor, T: float, alpha: float,
            labeled: Tensor | None = None, components: Components | None = None,
            mix: Mix | None = None) -> Tensor:
    """Hinton's distillation loss, a scalar: alpha * soft + (1 - alpha) * hard."""
    return kd_loss_parts(s_logits, t_probs, labels, T, alpha, labeled, components, mix)[0]


def cosine_loss(s_hidden: Tensor, t_hidden: Tensor, eps: float = 1e-8) -> Tensor:
    """mean over rows of 1 - cos(s_hidden, t_hidden): (B, D), (B, D) -> scalar in [0, 2].
    0 for vectors pointing the same way; a zero vector counts as orthogonal (cos 0)."""
    if s_hidden.dim() != 2 or s_hidden.shape != t_hidden.shape:
        raise ValueError(f"s_hidden {tuple(s_hidden.shape)} and t_hidden "
                         f"{tuple(t_hidden.shape)} must both be (B, D)")
    cos = F.cosine_similarity(s_hidden.float(), t_hidden.float(), dim=-1, eps=eps)  # (B,)
    return (1.0 - cos).mean()
