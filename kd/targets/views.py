"""The stored views of a shard set: what a reader does with them, and their check.

    check_views("data/soft_targets")   # ArtifactError naming the first shard and row that fails
    sv = StoredViews(manifest.get("views"), "sample", seed=0)   # ShardReader's part of views
    keep = sv.mask(part, epoch)        # the rows an epoch reads; sv.replay(part, ...) features

A reader (kd/targets/reader.py) keeps views in one of three modes: base (the stored rows
alone), all (every view), sample (one view in 0..K per row and epoch).
A view's parameters are a function of (export seed, row id, view) and the partner pool
(kd/augment.py), so verify draws every view again and compares: an edited shift, noise seed,
partner or weight is one line naming the shard and the row, even when whoever edited it also
rewrote the manifest's checksums. It also checks that validation rows have no views and are
nobody's partner, and that every training row has exactly its K views.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from kd.augment import VIEW_KEYS, FeatureTable, draw_views, expand, partner_pool, pick_views
from kd.errors import ArtifactError
from kd.io.storage import locate
from kd.targets.batch import Batch, column_np
from kd.targets.manifest import read_manifest

_COLUMNS = ["row_id", "split", "is_val", *VIEW_KEYS]


def view_mask(part: dict[str, np.ndarray], mode: str, count: int, seed: int,
              epoch: int) -> np.ndarray:
    """(B,) the rows of a decoded part a reader keeps: base: the stored rows (view 0); all:
    every view; sample: the one view of each row that (seed, epoch, row id) picks."""
    if mode == "all":
        return np.ones(len(part["view"]), bool)
    if mode == "base":
        return part["view"] == 0
    return part["view"] == pick_views(part["row_id"], count, seed, epoch)


def replayed(part: dict[str, np.ndarray], table: FeatureTable, shape: tuple[int, ...],
             settings: dict, where: str) -> np.ndarray:
    """(B, F) a decoded part's features, its views' (stored as zeros) replayed from their
    rows' and partners' features in `table`."""
    x, is_view = part["features"].copy(), part["view"] > 0
    v = {k: part[k][is_view] for k in ("row_id", *VIEW_KEYS)}
    try:
        x[is_view] = table.inputs(v, shape, settings)
    except KeyError as e:
        raise ArtifactError(f"{where}: a view of row_id {v['row_id'][0]} needs row "
                            f"{e.args[0]}, which is not a training row of the set "
                            "(`kd shards verify` names the shard)") from None
    return x


class StoredViews:
    """A ShardReader's view of a set's stored views (export.views): which Parquet columns
    a read needs, which rows an epoch keeps, and the views' features replayed from their
    rows' (every stored training row's features held in memory: rows x features)."""

    def __init__(self, settings: dict | None, mode: str, seed: int):
        self.settings = settings or None  # None: a set without stored views
        self.mode = mode if self.settings else "base"
        self.seed, self._table = seed, None
        self._labels: tuple[np.ndarray, np.ndarray] | None = None  # stored rows' ids, labels

    def batch_keys(self) -> list[str]:
        """The batch keys views add when a mode reads views: `view` (0 for the rows
        themselves), `partner` (-1 where the row is not mixed), `lam` (1 there) and
        `partner_label` (the partner's label; -1 without a partner or for an unlabeled one)."""
        return ["view", "partner", "lam", "partner_label"] if self.mode != "base" else []

    def read_columns(self, cols: list[str]) -> list[str]:
        """Parquet columns `cols` plus what picking and replaying views needs."""
        if not self.settings:
            return cols
        cols = cols + (["view"] if self.mode == "base" else list(VIEW_KEYS))
        return cols + ([] if "row_id" in cols else ["row_id"])

    def mask_columns(self, cols: list[str]) -> list[str]:
        """Parquet columns `cols` plus what `mask` reads (row_id and view)."""
        if not self.settings:
            return cols
        return cols + [c for c in ("row_id", "view") if c not in cols]

    def uncounted(self, shards: list[dict], drop_val: bool, rows: str) -> int:
        """Rows of the manifest's counts a read skips: every view, except in mode all (one
        row of each training row's K + 1 read in sample mode, the stored one in base)."""
        if not self.settings or self.mode == "all":
            return 0
        return sum(n for s in shards for k, n in s.get("views", {}).items()
                   if not drop_val or rows == "all" or k == "labeled")

    def mask(self, part: Batch, epoch: int) -> np.ndarray:
        """(B,) the rows of a decoded part (row_id, view) the mode keeps in `epoch`."""
        return view_mask(part, self.mode, self.settings["count"], self.seed, epoch)

    def fill(self, part: Batch, stored_rows: Callable[[], Iterator[Batch]], shape: tuple,
             where: str) -> None:
        """Replay a decoded part's views' features (stored as zeros) from their rows', and
        add its partners' labels; `stored_rows` yields every row group's row_id, is_val,
        label, features and view (read once, on the first view met)."""
        mixed = part["partner"] >= 0
        if (part["view"] > 0).any() and self._table is None:  # the stored rows, by id
            ids, xs, ys = [np.zeros(0, np.int64)], [np.zeros((0, int(np.prod(shape))),
                                                             np.float32)], [np.zeros(0, np.int64)]
            for p in stored_rows():
                keep = (p["view"] == 0) & ~p["is_val"]
                ids.append(p["row_id"][keep])
                xs.append(p["features"][keep])
                ys.append(p["label"][keep])
            self._table = FeatureTable(np.concatenate(ids), np.concatenate(xs))
            order = np.argsort(np.concatenate(ids), kind="stable")
            self._labels = np.concatenate(ids)[order], np.concatenate(ys)[order]
        if (part["view"] > 0).any() and "features" in part:
            part["features"] = replayed(part, self._table, shape, self.settings, where)
        part["partner_label"] = np.full(len(mixed), -1, np.int64)
        if mixed.any():  # a partner is a stored training row (replay refused any other)
            ids, labels = self._labels
            at = np.searchsorted(ids, part["partner"][mixed]).clip(0, len(ids) - 1)
            part["partner_label"][mixed] = labels[at]


def decode_views(t: pa.Table, out: Batch) -> None:
    """The view columns of a decoded row group into `out`: partner null -> -1, shift (B, axes)."""
    names = t.column_names
    for k in VIEW_KEYS if "view" in names else ():
        if k in names:
            out[k] = column_np(t[k]) if k != "partner" else column_np(
                pc.fill_null(t[k], -1)).astype(np.int64)
    if "shift" in out:
        out["shift"] = out["shift"].reshape(t.num_rows, -1)


def _read(loc, file: str) -> dict[str, np.ndarray]:
    with loc.open(file) as f:
        t = pq.read_table(f, columns=_COLUMNS)
    n = t.num_rows
    return dict(
        row_id=t["row_id"].to_numpy(), is_val=t["is_val"].to_numpy(),
        is_labeled=np.asarray(t["split"].to_pylist(), object) == "labeled",
        view=t["view"].to_numpy().astype(np.int64),
        shift=np.concatenate([c.values.to_numpy() for c in t["shift"].chunks] or
                             [np.zeros(0, np.int16)]).reshape(n, -1),
        noise_seed=t["noise_seed"].to_numpy(),
        partner=pc.fill_null(t["partner"], -1).to_numpy(), lam=t["lam"].to_numpy(),
        file=np.full(n, file, object))


def check_views(dir: str | os.PathLike) -> None:
    """ArtifactError unless every view row of a set with stored views holds the parameters
    its key draws; nothing to check in a set without views."""
    loc, m = locate(dir), read_manifest(dir)
    settings = m.get("views")
    if not settings:
        return
    parts = [_read(loc, s["file"]) for s in m["shards"]]
    if not parts:
        return
    d = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    base, views = d["view"] == 0, d["view"] > 0

    def fail(i: int, what: str) -> ArtifactError:
        return ArtifactError(f"{loc.show(d['file'][i])}: row_id {d['row_id'][i]} view "
                             f"{d['view'][i]}: {what}")

    if (bad := views & d["is_val"]).any():
        raise fail(int(np.flatnonzero(bad)[0]), "a validation row has no views")
    train = base & ~d["is_val"]
    pool = partner_pool(d["row_id"][train], d["is_labeled"][train], settings["partners"])
    want_ids, want_views = expand(np.sort(d["row_id"][train]), settings["count"])
    order = np.lexsort((d["view"][views], d["row_id"][views]))
    at = np.flatnonzero(views)[order]  # the view rows, sorted by (row id, view)
    got = np.stack([d["row_id"][at], d["view"][at]], 1)
    want = np.stack([want_ids, want_views], 1)
    if got.shape != want.shape or (got != want).any():
        raise ArtifactError(f"{loc.show()}: the view rows are not views 1..{settings['count']} "
                            f"of every training row ({len(at)} view rows, {len(want)} "
                            "expected); rows were edited or dropped: rerun `kd export`")
    drawn = draw_views(settings, d["row_id"][at], d["view"][at], pool, d["shift"].shape[1])
    for k in ("shift", "noise_seed", "partner", "lam"):
        stored = d[k][at].reshape(len(at), -1)
        if (bad := (stored != drawn[k].reshape(len(at), -1)).any(1)).any():
            raise fail(int(at[np.flatnonzero(bad)[0]]), f"stored {k} is not the one "
                       f"(export seed, row id, view) draws; the view parameters were edited, "
                       "or come from another export: rerun `kd export`")
    neutral = (d["shift"][base] != 0).any(1) | (d["partner"][base] != -1) | (d["lam"][base] != 1)
    if neutral.any():
        raise fail(int(np.flatnonzero(base)[np.flatnonzero(neutral)[0]]),
                   "a stored row (view 0) carries view parameters; the shard was edited")
