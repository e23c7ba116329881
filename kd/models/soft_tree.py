"""`soft_tree`: a soft decision tree (Frosst & Hinton 2017, "Distilling a Neural Network Into a
Soft Decision Tree"), a student a person can read.

    from kd.models import build_model
    tree = build_model("soft_tree", (40,), 10, {"depth": 4})
    logits = tree(x)              # (B, 10): log of the tree's output distribution
    tree.explain(x[0])            # the path of one row, for kd/report/tree.py

A complete binary tree of `depth` levels of inner nodes (2^depth - 1 of them, heap order: node
i has children 2i+1 on the left and 2i+2 on the right) and 2^depth leaves. Inner node i sends a
row right with probability s_i(x) = sigmoid(beta * (x . w_i + b_i)); a row's path probability to
leaf l is the product of the branch probabilities along the way; leaf l holds a class
distribution Q_l = softmax(phi_l).

The forward returns logits in the sense the rest of the project uses them, the log of a
distribution, so Hinton's loss at temperature T and every metric work unchanged. What training
minimises is the `objective` knob: `mixture`, the loss of that output distribution, or `leaves`,
the paper's path-probability-weighted loss of each leaf's own distribution (softened at T per
leaf), through the general `output_components()` hook that the students' and baselines' losses
read (kd/distill/losses.py `components`).

- in training mode always the mixture  log sum_l P_l(x) Q_l  (differentiable in everything);
- in eval mode the `inference` knob: `max_leaf` (default, the paper's explainable mode: the
  distribution of the single leaf with the largest path probability) or `mixture`.

The balanced-split penalty of the paper, -lambda sum_i 2^-d(i) (0.5 log a_i + 0.5 log(1 - a_i)),
with a_i the path-weighted share of rows that node i sends right, is computed in each training
forward and returned by `aux_loss()` (the training loop adds it). As in the paper, a_i is a
running average whose window grows exponentially with the node's depth (deep nodes see few
rows per batch): window(d) = ema_window * 2^d batches. The average is a buffer, so checkpoints
and model files carry it and a resumed run continues it exactly; the gradient flows through the
current batch's share of it.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from kd.errors import ConfigError
from kd.models.registry import int_knob, register

INFERENCE = ("max_leaf", "mixture")
OBJECTIVES = ("mixture", "leaves")


def _number(name: str, value, lo: float, strict: bool) -> float:
    ok = not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)
    if not ok or value < lo or (strict and value == lo):
        rel = ">" if strict else ">="
        raise ConfigError(f"soft_tree: knob {name}={value!r} must be a number {rel} {lo:g}")
    return float(value)


@register("soft_tree")
class SoftTree(nn.Module):
    """Soft binary decision tree over the flattened features."""

    probe_shape = (4,)

    def __init__(self, input_shape: tuple[int, ...], n_classes: int, depth: int = 4,
                 beta: float = 1.0, learn_beta: bool = True, penalty: float = 0.1,
                 ema_window: int = 1, inference: str = "max_leaf",
                 objective: str = "mixture"):
        super().__init__()
        depth = int_knob("soft_tree", "depth", depth, 1)
        if depth > 10:  # 1,023 filters and 1,024 leaves: past any picture a person can read
            raise ConfigError(f"soft_tree: knob depth={depth} must be at most 10")
        beta = _number("beta", beta, 0.0, strict=True)
        penalty = _number("penalty", penalty, 0.0, strict=False)
        ema_window = int_knob("soft_tree", "ema_window", ema_window, 1)
        if not isinstance(learn_beta, bool):
            raise ConfigError(f"soft_tree: knob learn_beta={learn_beta!r} must be true or false")
        if inference not in INFERENCE:
            raise ConfigError(f"soft_tree: knob inference={inference!r} must be one of "
                              f"{', '.join(INFERENCE)}")
        if objective not in OBJECTIVES:
            raise ConfigError(f"soft_tree: knob objective={objective!r} must be one of "
                              f"{', '.join(OBJECTIVES)}")
        self.input_shape, self.depth, self.n_classes = tuple(input_shape), depth, n_classes
        self.penalty, self.inference, self.objective = penalty, inference, objective
        n_inner, n_leaves, n_feat = 2**depth - 1, 2**depth, math.prod(input_shape)
        self.inner = nn.Linear(n_feat, n_inner)  # row i: filter w_i, bias b_i
        self.leaves = nn.Parameter(torch.randn(n_leaves, n_classes) * 0.1)  # phi, (L, C)
        # beta > 0 always: learned through its log; fixed, it is a buffer (no gradient, and
        # DDP has no unused parameter to wait for)
        log_beta = torch.tensor(math.log(beta))
        if learn_beta:
            self.log_beta = nn.Parameter(log_beta)
        else:
            self.register_buffer("log_beta", log_beta)
        node_depth = torch.tensor([int(math.log2(i + 1)) for i in range(n_inner)])  # (N,)
        # buffers that never change, rebuilt from the knobs: not in the state_dict
        self.register_buffer("node_weight", 2.0 ** -node_depth.float(), persistent=False)
        self.register_buffer("ema_keep", 1 - 1 / (ema_window * 2.0 ** node_depth.float()),
                             persistent=False)
        # the running a_i: saved with the weights, so a resumed run continues it
        self.register_buffer("split_avg", torch.full((n_inner,), 0.5))
        self._aux: torch.Tensor | None = None
        self._components: tuple[torch.Tensor, torch.Tensor] | None = None

    # ------------------------------------------------------------------ routing

    def log_paths(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Log path probabilities of every leaf (B, L) and right-branch probabilities of every
        inner node (B, N), in heap order."""
        x = x.reshape(x.shape[0], -1)  # (B, F): rows arrive flat or shaped
        z = self.log_beta.exp() * self.inner(x)  # (B, N)
        log_right, log_left = F.logsigmoid(z), F.logsigmoid(-z)  # (B, N) each, stable
        logp = x.new_zeros(x.shape[0], 1)  # (B, 1): every row is at the root
        for level in range(self.depth):
            nodes = slice(2**level - 1, 2 ** (level + 1) - 1)  # this level's 2^level nodes
            # children of parent j are 2j (left) and 2j+1 (right) at the next level: heap order
            logp = torch.stack([logp + log_left[:, nodes], logp + log_right[:, nodes]], dim=2)
            logp = logp.reshape(x.shape[0], -1)  # (B, 2^(level+1))
        return logp, log_right.exp()

    def reach(self, logp_leaves: torch.Tensor) -> torch.Tensor:
        """Probability (B, N) of reaching each inner node, from the leaves' path probabilities:
        a node's reach is the sum over the leaves below it."""
        p = logp_leaves.exp()  # (B, L)
        levels = []
        for _ in range(self.depth):  # from the leaves' parents up to the root
            p = p.reshape(p.shape[0], -1, 2).sum(2)  # (B, half as many nodes)
            levels.append(p)
        return torch.cat(levels[::-1], dim=1)  # (B, N), heap order

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, *input_shape) -> (B, C)
        logp, right = self.log_paths(x)  # (B, L), (B, N)
        log_q = F.log_softmax(self.leaves, dim=1)  # (L, C)
        if self.training:
            self._aux = self._split_penalty(self.reach(logp), right)
            self._components = (logp, self.leaves) if self.objective == "leaves" else None
        if self.training or self.inference == "mixture":
            return torch.logsumexp(logp.unsqueeze(2) + log_q, dim=1)  # (B, C)
        return log_q[logp.argmax(1)]  # (B, C): the most probable leaf's distribution

    # ------------------------------------------------------------------ the penalty

    def _split_penalty(self, reach: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        """-lambda sum_i 2^-d(i) (0.5 log a_i + 0.5 log(1 - a_i)), a_i running-averaged."""
        # the batch's a_i: the share of the rows reaching node i that it sends right
        batch_a = (reach * right).sum(0) / reach.sum(0).clamp_min(1e-12)  # (N,)
        a = self.ema_keep * self.split_avg + (1 - self.ema_keep) * batch_a  # (N,)
        with torch.no_grad():
            self.split_avg.copy_(a)
        a = a.clamp(1e-6, 1 - 1e-6)  # a node that sends everything one way: finite, steep
        per_node = 0.5 * torch.log(a) + 0.5 * torch.log(1 - a)  # (N,)
        return -self.penalty * (self.node_weight * per_node).sum()

    def aux_loss(self) -> torch.Tensor:
        """The balanced-split penalty of the last training forward (0 before any)."""
        return self._aux if self._aux is not None else self.leaves.new_zeros(())

    def output_components(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """objective `leaves`: the last training forward's leaves as the components of its
        output, (B, L) log path probabilities and (L, C) leaf logits phi, so the loss is the
        path-weighted expectation over the leaves (kd/distill/losses.py); `mixture`: None."""
        return self._components

    # ------------------------------------------------------------------ reading the tree

    @torch.no_grad()
    def explain(self, x: torch.Tensor) -> dict:
        """One row's route to its most probable leaf: at each inner node on the way the
        probability of going right and the path probability so far; plain Python data."""
        logp, right = self.log_paths(x.reshape(1, -1))  # (1, L), (1, N)
        leaf = int(logp[0].argmax())
        steps, node, prob = [], 0, 1.0
        for level in range(self.depth):
            go_right = bool((leaf >> (self.depth - 1 - level)) & 1)  # leaf index bits, MSB first
            p_right = float(right[0, node])
            prob *= p_right if go_right else 1 - p_right
            steps.append({"node": node, "p_right": p_right, "right": go_right,
                          "path_prob": prob})
            node = 2 * node + 1 + int(go_right)
        return {"leaf": leaf, "path_prob": float(logp[0, leaf].exp()), "steps": steps,
                "leaf_probs": F.softmax(self.leaves[leaf], 0).tolist()}

    @torch.no_grad()
    def parts(self) -> dict:
        """The tree as arrays a picture draws: filters in the input's shape, biases, the leaf
        class distributions, beta."""
        return {"filters": self.inner.weight.detach().cpu().reshape(-1, *self.input_shape).numpy(),
                "biases": self.inner.bias.detach().cpu().numpy(),
                "leaves": F.softmax(self.leaves, 1).detach().cpu().numpy(),
                "beta": float(self.log_beta.exp()), "inference": self.inference}
