"""MUNGE: synthetic rows from a small training set (Bucilua, Caruana & Niculescu-Mizil 2006,
"Model compression", section 4.3), for the ensemble to label when real unlabeled rows are scarce.

    from kd.transfer.munge import munge
    out = munge(x, size=100_000, p=0.5, s=10.0, rng=np.random.default_rng(0))
    out.x  # (size, F) float32 synthetic rows; out.source (size,) the row each descends from

The published procedure, one pass over a copy T' of the training rows T:

    for each row e:  e' = nearest neighbour of e (Euclidean, attributes scaled)
        for each attribute a, with probability p:
            sd = |e_a - e'_a| / s;  e_a <- N(e'_a, sd);  e'_a <- N(e_a, sd)

repeated until `size` rows (the last pass cut to a random subset of its rows). An "attribute"
is one feature position of a prepared row: a column of tabular data, one pixel of an 8x8 digit,
one position of an MNIST-1D signal. The prepared features are normalised floats, so every
attribute is continuous; there are no categorical swaps.

One deliberate reading of the loop: every draw is centred on the pair's values in T, not on a
value an earlier step of the same pass already moved. Where several pairs touch the same value
in one pass (a row is its own pair's `e` and may be the `e'` of others) the last one in loop
order wins, as in the sequential loop. So each synthetic value is either the row's own value or
a draw around one partner's value with that pair's spread, which the tests check value by
value, and a pass is a few array operations instead of a Python loop over rows.

Nearest neighbours are found once, on the training rows scaled to [0, 1] per attribute
(min-max, so a rarely-lit pixel weighs as much as any other), with scikit-learn's
NearestNeighbors. Pure numpy + scikit-learn: no torch, tracking or runtime.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.neighbors import NearestNeighbors

from kd.errors import DataError


@dataclass
class MungeResult:
    x: np.ndarray  # (size, F) float32 synthetic rows
    source: np.ndarray  # (size,) int64: index into the training rows each row was copied from
    neighbour: np.ndarray  # (N,) int64: each training row's nearest neighbour (its pair)
    changed_fraction: float  # share of synthetic values that differ from their source row's


def nearest_neighbours(x: np.ndarray) -> np.ndarray:
    """(N,) index of each row's nearest other row: Euclidean on min-max scaled attributes."""
    n = len(x)
    if n < 2:
        raise DataError(f"transfer: MUNGE needs at least 2 training rows, got {n}")
    lo = x.min(axis=0)
    span = x.max(axis=0) - lo
    span[span == 0] = 1.0  # a constant attribute adds nothing to any distance
    z = (x - lo) / span  # (N, F) in [0, 1]
    # brute force: exact, and deterministic under ties whatever the data's shape
    idx = NearestNeighbors(n_neighbors=2, algorithm="brute").fit(z).kneighbors(
        z, return_distance=False)  # (N, 2)
    # a row usually finds itself first; with exact duplicates the duplicate may come first
    own = idx[:, 0] == np.arange(n)
    return np.where(own, idx[:, 1], idx[:, 0]).astype(np.int64)


def munge_pass(x: np.ndarray, nn: np.ndarray, p: float, s: float,
               rng: np.random.Generator) -> np.ndarray:
    """One pass of MUNGE over the rows x (N, F) paired with their neighbours nn (N,)."""
    n, f = x.shape
    swap = rng.random((n, f)) < p  # (N, F): which attributes pair i trades
    z = rng.standard_normal((2, n, f))  # (2, N, F)
    partner = x[nn]  # (N, F): e'
    sd = np.abs(x - partner) / s  # (N, F)
    new_e = partner + sd * z[0]  # pair i's new values for row i, around e'_a
    new_p = x + sd * z[1]  # pair i's new values for row nn[i], around e_a
    # loop order: pair i writes row i at step 2i, then row nn[i] at step 2i + 1; the last
    # write to a (row, attribute) is the one that stays
    rows = np.arange(n)[:, None]
    last = np.where(swap, 2 * rows, -1)  # (N, F)
    np.maximum.at(last, nn, np.where(swap, 2 * rows + 1, -1))
    pair = last // 2  # (N, F): the pair whose draw stays (where last >= 0)
    cols = np.broadcast_to(np.arange(f), (n, f))
    out = x.copy()
    own = last >= 0
    from_e = own & (last % 2 == 0)
    from_p = own & (last % 2 == 1)
    out[from_e] = new_e[pair[from_e], cols[from_e]]
    out[from_p] = new_p[pair[from_p], cols[from_p]]
    return out


def munge(x: np.ndarray, size: int, p: float, s: float,
          rng: np.random.Generator) -> MungeResult:
    """`size` synthetic rows from the training rows x (N, F): passes of MUNGE, the last one
    cut to a random subset of its rows. p = 0 gives the training rows back unchanged."""
    x = np.asarray(x, np.float64)  # draws in float64; the rows are stored as float32
    if not 0 <= p <= 1 or not s > 0:
        raise ValueError(f"p must be in [0, 1] and s > 0, got p={p}, s={s}")
    nn = nearest_neighbours(x)
    n = len(x)
    parts, sources, changed, made = [], [], 0, 0
    while made < size:
        rows = munge_pass(x, nn, p, s, rng)
        take = np.arange(n)
        if made + n > size:  # the last pass: a random subset, kept in row order
            take = np.sort(rng.permutation(n)[: size - made])
        out = rows[take].astype(np.float32)  # (k, F)
        changed += int((out != x[take].astype(np.float32)).sum())
        parts.append(out)
        sources.append(take)
        made += len(take)
    synth = np.concatenate(parts) if parts else np.zeros((0, x.shape[1]), np.float32)
    source = np.concatenate(sources) if sources else np.zeros(0, np.int64)
    return MungeResult(synth, source.astype(np.int64), nn,
                       changed / max(synth.size, 1))
