"""Top-k soft targets: per row, the k largest logits, their class ids and the log-sum-exp of the
other C - k logits (the tail), so that probabilities at T = 1 stay exact and the tail is one
bucket. Pure functions; measured by benchmarks/topk.py, written by export (`export.top_k`:
kd/targets/shards.py) and read back by kd/targets/reader.py as spread_logits (uniform tail).

    st = encode(logits, k=8)                     # (N, C) -> TopK: (N, 8) logits, ids, (N,) tail
    kept, tail = log_probs(st)                   # exact log p(T=1) of the kept classes, the tail
    z = spread_logits(st.logits, st.ids, st.tail_lse, C)   # (N, C): tail spread uniformly
    g = ghost_logits(st.logits, st.tail_lse)               # (N, k + 1): the tail as a ghost class
    loss = soft_loss(s_logits, st.logits, st.ids, st.tail_lse, T=4.0, tail="ghost")

What stays exact: the kept logits themselves (stored bytes, in the storage dtype), and at T = 1
the kept classes' probabilities and the tail's total mass (the logsumexp of all C logits is
the logsumexp of the kept ones and the tail's). What is approximate: anything at T != 1 that
depends on how the tail's mass splits among its classes (sum_j exp(z_j / T) over the tail is
not a function of their logsumexp; at T > 1 the spread tail holds at least the true tail's
mass), and per-class tail probabilities, so combining members (mean_probs, kl_per_member,
random_member) is exact at T = 1 only on classes every member kept. `mean_logits` needs the
tail classes' logits, which are not stored: config refuses it with export.top_k. The pipeline
stores and reads the "uniform" tail (chosen on validation NLL). "uniform" gives each missing class
logit tail_lse - log(C - k) (exact tail mass at T = 1, never above the smallest kept logit:
a log-mean-exp is at most the max); "ghost" keeps one extra class with logit tail_lse, and the
student's mass over the classes that row did not keep is matched against it.

k must lie in [1, C - 1] and C must be at least 3: with k >= C (or 2 classes) dense logits are
both exact and smaller, so it is refused (one line naming the key); k = C - 1 is lossless (the
tail is the one missing class).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from kd.config.sections import check_top_k
from kd.errors import ConfigError

TAILS = ("ghost", "uniform")
TAIL = "uniform"  # what shards store and readers spread: chosen on validation (benchmarks/topk.py)
TEMPERATURES = (1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 20.0)  # export's fidelity grid


def id_dtype(n_classes: int) -> np.dtype:
    """The smallest unsigned integer dtype that holds every class id in [0, n_classes)."""
    for dt in (np.uint8, np.uint16, np.uint32):
        if n_classes - 1 <= np.iinfo(dt).max:
            return np.dtype(dt)
    raise ConfigError(f"{n_classes} classes: more than a uint32 class id holds")


def check_k(k: object, n_classes: int, key: str = "export.top_k") -> int:
    """k as an int, or ConfigError (one line naming `key`) when top-k cannot pay off."""
    return check_top_k(k, n_classes, key)  # type: ignore[arg-type]


@dataclass(frozen=True)
class TopK:
    logits: np.ndarray  # (N, k) the k largest logits per row, largest first (storage dtype)
    ids: np.ndarray  # (N, k) their class ids (id_dtype(n_classes))
    tail_lse: np.ndarray  # (N,) log-sum-exp of the other C - k logits (storage dtype)
    n_classes: int

    @property
    def k(self) -> int:
        return self.logits.shape[1]

    def bytes_per_row(self) -> int:
        return int(self.logits.dtype.itemsize * self.k + self.ids.dtype.itemsize * self.k
                   + self.tail_lse.dtype.itemsize)


def encode(logits: np.ndarray, k: int, dtype: np.dtype | type = np.float32) -> TopK:
    """(N, C) logits -> TopK. Among equal logits the smaller class id is kept and listed
    first, so the bytes depend on the values alone. The tail's logsumexp: exp of the float32
    logits less the largest tail logit, summed in float64, then stored in `dtype`."""
    z = np.asarray(logits, dtype=np.float32)  # (N, C)
    if z.ndim != 2:
        raise ValueError(f"logits must be (N, C), got shape {z.shape}")
    n, c = z.shape
    k = check_k(k, c)
    if not np.isfinite(z).all():
        row = int(np.argmax(~np.isfinite(z).all(axis=1)))
        raise ValueError(f"logits: NaN or infinite value at row {row}")
    v, i = (t.numpy() for t in torch.topk(torch.from_numpy(z), k + 1, dim=1))  # (N, k + 1)
    ids, vals = i[:, :k].copy(), v[:, :k].copy()
    # torch orders equal values arbitrarily: rows with a tie among their k + 1 largest take the
    # exact rule (lowest ids first), so the bytes never depend on the implementation
    if (tied := np.flatnonzero((v[:, 1:] == v[:, :-1]).any(axis=1))).size:
        ids[tied], vals[tied] = _by_id(z[tied], k)
    rest = z - v[:, k:]  # (N, C) <= 0 off the kept ones: the largest left is the k+1-th
    np.put_along_axis(rest, ids, -np.inf, axis=1)
    tail = v[:, k].astype(np.float64) + np.log(np.exp(rest, out=rest).sum(axis=1,
                                                                          dtype=np.float64))
    return TopK(vals.astype(dtype), ids.astype(id_dtype(c)), tail.astype(dtype), c)


def _by_id(z: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids, values) (N, k) of the k largest of each row, largest first, among equal values
    the smaller id kept and listed first."""
    n, c = z.shape
    kth = np.partition(z, c - k, axis=1)[:, c - k]  # (N,) the k-th largest value
    greater = z > kth[:, None]  # (N, C)
    equal = z == kth[:, None]
    need = k - greater.sum(axis=1)  # (N,) how many tied values make up k
    keep = greater | (equal & (np.cumsum(equal, axis=1) <= need[:, None]))  # lowest ids first
    ids = np.nonzero(keep)[1].reshape(n, k)  # (N, k) in id order
    vals = np.take_along_axis(z, ids, axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")  # largest first, ties by id
    return np.take_along_axis(ids, order, 1), np.take_along_axis(vals, order, 1)


def log_probs(st: TopK) -> tuple[np.ndarray, np.ndarray]:
    """Exact T = 1 log-probabilities of the kept classes (N, k) and of the tail bucket (N,),
    in float64 from the stored values."""
    top, tail = st.logits.astype(np.float64), st.tail_lse.astype(np.float64)
    both = np.concatenate([top, tail[:, None]], axis=1)  # (N, k + 1)
    m = both.max(axis=1, keepdims=True)
    lse = m + np.log(np.exp(both - m).sum(axis=1, keepdims=True))  # (N, 1) = logsumexp(all C)
    return top - lse, tail - lse[:, 0]


def spread_logits(top: Tensor, ids: Tensor, tail_lse: Tensor, n_classes: int) -> Tensor:
    """(N, C) float32 logits: the kept ones in place, every missing class at
    tail_lse - log(C - k), so the tail's mass at T = 1 is exact and spread uniformly."""
    n, k = top.shape
    fill = (tail_lse.float() - float(np.log(n_classes - k)))[:, None]  # (N, 1)
    out = fill.expand(n, n_classes).clone()
    return out.scatter_(1, ids.long(), top.float())


def dense(top: np.ndarray, ids: np.ndarray, tail_lse: np.ndarray, n_classes: int,
          out: np.ndarray | None = None) -> np.ndarray:
    """spread_logits in numpy, as readers decode a top-k column set: (N, C) float32 logits,
    kept ones in place, each missing class at tail_lse - log(C - k) (computed in float32)."""
    n, k = top.shape
    z = np.empty((n, n_classes), np.float32) if out is None else out
    z[:] = (tail_lse.astype(np.float32) - np.float32(np.log(n_classes - k)))[:, None]
    np.put_along_axis(z, ids.astype(np.intp), top.astype(np.float32), axis=1)
    return z


def row_problem(top: np.ndarray, ids: np.ndarray, tail_lse: np.ndarray,
                n_classes: int) -> tuple[int, str, str] | None:
    """The first row whose stored top-k cannot be an encode() output, as (row index, column
    kind "topk" / "ids" / "tail", what is wrong): ids out of range or repeated in a row,
    values not largest first, a NaN or infinite value, or a tail log-sum-exp above what C - k
    logits no larger than the smallest kept one allow (that logit + log(C - k), with float16
    slack). None: every row is sound."""
    k = top.shape[1]
    ids64 = ids.astype(np.int64)
    srt = np.sort(ids64, axis=1)
    t32, tail = top.astype(np.float32), tail_lse.astype(np.float32)
    with np.errstate(invalid="ignore"):
        # slack for float16: the kept logit's and the tail's own rounding, relative to their size
        log_rest = np.float32(np.log(n_classes - k))
        limit = t32[:, -1] + log_rest + 1e-3 * (1 + np.abs(t32[:, -1]) + log_rest)
        checks = [
            ("ids", ((ids64 < 0) | (ids64 >= n_classes)).any(axis=1),
             f"a class id outside 0..{n_classes - 1}"),
            ("ids", (srt[:, 1:] == srt[:, :-1]).any(axis=1), "a class id twice in the row"),
            ("topk", ~np.isfinite(t32).all(axis=1), "a NaN or infinite logit"),
            ("topk", (t32[:, 1:] > t32[:, :-1]).any(axis=1), "logits not sorted largest first"),
            ("tail", ~np.isfinite(tail), "a NaN or infinite log-sum-exp"),
            ("tail", tail > limit,
             f"log-sum-exp above the smallest kept logit + log({n_classes - k})"),
        ]
    first = [(int(np.argmax(m)), kind, why) for kind, m, why in checks if m.any()]
    return min(first) if first else None


def fidelity(dense_logits: np.ndarray, k: int, dtype: np.dtype | type,
             temperatures: tuple[float, ...] = TEMPERATURES) -> dict:
    """How close the stored targets are to dense ones, on a sample (M, N, C) of members'
    logits: the mean_probs ensemble's KL(dense || stored) at each T (stored: every member's
    top-k in `dtype`, read back with the uniform tail) and the share of rows whose top-1
    class agrees. Dense is taken in float32 (the stored dense set's own dtype may round)."""
    z = torch.from_numpy(np.asarray(dense_logits, np.float32))  # (M, N, C)
    m, n, c = z.shape
    stored = torch.stack([torch.from_numpy(dense(st.logits, st.ids, st.tail_lse, c))
                          for st in (encode(zm.numpy(), k, dtype) for zm in z)])
    out: dict = {"rows": n, "k": k, "kl": {}}
    for T in temperatures:
        logp = torch.log_softmax(z.double() / T, -1).exp().mean(0).log()  # (N, C)
        logq = torch.log_softmax(stored.double() / T, -1).exp().mean(0).log()
        out["kl"][f"{T:g}"] = float((logp.exp() * (logp - logq)).sum(1).mean())
    top1 = (torch.softmax(z, -1).mean(0).argmax(1) == torch.softmax(stored, -1).mean(0).argmax(1))
    out["top1_agreement"] = float(top1.double().mean())
    return out


def ghost_logits(top: Tensor, tail_lse: Tensor) -> Tensor:
    """(N, k + 1) float32 logits: the kept classes, then the tail as one ghost class."""
    return torch.cat([top.float(), tail_lse.float()[:, None]], dim=1)


def student_buckets(s_logits: Tensor, ids: Tensor, T: float) -> Tensor:
    """The student's log-probabilities at T over the row's buckets (N, k + 1): each kept class,
    then its mass over every class the row did not keep."""
    logq = F.log_softmax(s_logits.float() / T, dim=-1)  # (N, C)
    kept = logq.gather(1, ids.long())  # (N, k)
    rest = logq.scatter(1, ids.long(), float("-inf")).logsumexp(dim=1, keepdim=True)  # (N, 1)
    return torch.cat([kept, rest], dim=1)


def soft_loss(s_logits: Tensor, top: Tensor, ids: Tensor, tail_lse: Tensor, T: float,
              tail: str = "ghost") -> Tensor:
    """Hinton's soft term against top-k targets: T^2 * KL(p_teacher(T) || p_student(T)), mean
    over all rows. "ghost": over the k + 1 buckets (kept classes and the tail), teacher
    softmax(ghost_logits / T); "uniform": over all C classes, teacher softmax(spread_logits / T).
    """
    if not T > 0:
        raise ValueError(f"temperature T={T!r} must be > 0")
    if tail == "ghost":
        logp = F.log_softmax(ghost_logits(top, tail_lse) / T, dim=-1)  # (N, k + 1)
        logq = student_buckets(s_logits, ids, T)
    elif tail == "uniform":
        logp = F.log_softmax(spread_logits(top, ids, tail_lse, s_logits.shape[1]) / T, dim=-1)
        logq = F.log_softmax(s_logits.float() / T, dim=-1)  # (N, C)
    else:
        raise ValueError(f"tail={tail!r} must be one of {TAILS}")
    kl = (logp.exp() * (logp - logq)).sum(dim=1)  # (N,)
    return T * T * kl.mean()
