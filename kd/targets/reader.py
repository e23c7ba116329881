"""Streaming reader of soft-target shards: shuffled per shard and within a row buffer.

    reader = ShardReader("data/soft_targets")
    for batch in reader.iter_batches(256, shuffle=True, seed=0, epoch=3, drop_val=True):
        batch["features"], batch["label"], batch["logits"]      # (B, F), (B,), (M, B, C)

A row's features and logits come from the same Parquet row, so no shuffle can mis-pair them.
At most about `buffer_rows` rows plus one row group are in memory, never a whole set, besides
the decoded row groups a reader keeps for its next epochs (`cache_bytes`, 0 by default); the
schema and manifest live in kd/targets/manifest.py, the writer in kd/targets/shards.py.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from kd.errors import ArtifactError
from kd.io.storage import is_uri, locate
from kd.targets.batch import COLUMNS, Batch, column_np, concat_rows, take_rows
from kd.targets.manifest import (
    MANIFEST,
    check_shard_metadata,
    hidden_column,
    logits_column,
    read_manifest,
    read_shard_metadata,
    target_columns,
    topk_columns,
)
from kd.targets.shardset import verify
from kd.targets.topk import dense
from kd.targets.views import StoredViews, decode_views

Piece = tuple[str, int, int, int]  # (file, row group, start, stop) among its training rows


class ShardReader:
    """Stream a shard set as numpy batches, shuffled per shard and within a row buffer.

    A batch: row_id (B,) int64, label (B,) int64 (-1 = null), is_labeled (B,) bool, is_val (B,)
    bool, features (B, F) float32, logits (M, B, C) float32 in manifest member order. A top-k
    set (export.top_k) is read back as logits too: each member's kept logits in place and the
    tail's mass spread uniformly over its other classes (kd.targets.topk.dense), so losses,
    combine rules and every other reader of `logits` take either set alike. `columns`
    picks a subset of those keys (row_id is always there). `hidden` names a member whose
    pooled hidden vector (export.hidden) is read too, as `hidden` (B, D) float32; without it
    no hidden column is ever read.

    The training rows (`drop_val`, the ranks' runs) are every row but the validation rows, or,
    with `rows="labeled"`, the labeled training rows only: the unlabeled and synthetic rows are
    dropped as each row group is decoded, before any batch is formed. `keep`, a function of a
    decoded row group (row_id, label, is_labeled, logits) to a (B,) bool mask, drops more
    training rows the same way (a student's omitted classes, its fraction of labeled rows).

    A set with stored views (export.views, kd/augment.py) holds K view rows per training row.
    `views="base"` reads the rows as stored alone; "all" every view too; "sample" one view in
    0..K per row and epoch, picked by (view_seed, epoch, row id). A view's features (zeros
    in the shard) are replayed from its row's and partner's stored features (held in memory:
    rows x features), and batches carry `view` (B,) int16, 0 for the rows themselves, and
    `partner` (B,) int64, -1 where the row is not mixed (kd/targets/views.py: StoredViews).

    `cache_bytes`: the row groups a training read decodes are kept, decoded, until they fill
    that many bytes, and a later epoch takes them from memory instead of decoding them again
    (a student reads every training row each epoch; in `sample` mode a row group holds K + 1
    views of each row and an epoch uses one). Batches are the same with or without it.
    """

    def __init__(self, dir: str | os.PathLike, *, columns: list[str] | None = None,
                 verify_checksums: bool = False, hidden: str | None = None,
                 rows: Literal["all", "labeled"] = "all",
                 keep: Callable[[Batch], np.ndarray] | None = None,
                 views: Literal["base", "sample", "all"] = "base", view_seed: int = 0,
                 cache_bytes: int = 0):
        self.keep = keep
        # (file, row group, columns) -> its decoded columns, read-only, while they fit
        self.cache_bytes, self._cache, self._cached = cache_bytes, {}, 0
        if rows not in ("all", "labeled"):
            raise ValueError(f"rows must be 'all' or 'labeled', got {rows!r}")
        self.rows = rows
        self.dir = dir if is_uri(dir) else Path(dir)
        self.loc = locate(dir)
        if verify_checksums:
            verify(self.dir)
        self.manifest = m = read_manifest(self.dir)
        self.members, self.class_names = m["members"], m["class_names"]
        self.feature_shape = tuple(m["feature_shape"])
        self.width, self.num_classes = int(np.prod(self.feature_shape)), len(self.class_names)
        self.files = [s["file"] for s in m["shards"]]
        self.top_k = m.get("top_k")  # None: dense logits
        self.columns = list(COLUMNS) if columns is None else ["row_id", *columns]
        self._train_groups: list[tuple[str, int, int]] | None = None
        if unknown := set(self.columns) - set(COLUMNS):
            raise ValueError(f"unknown columns {sorted(unknown)}; choose from {COLUMNS}")
        self.stored = StoredViews(m.get("views"), views, view_seed)
        self.view_settings, self.views = self.stored.settings, self.stored.mode
        self._groups_epoch: int | None = None
        self.columns += self.stored.batch_keys()
        self.hidden, self.hidden_width = hidden, (m.get("hidden") or {}).get(hidden, 0)
        if hidden is not None:
            if not self.hidden_width:
                raise ArtifactError(f"{self.loc.show(MANIFEST)}: no hidden vectors of member "
                                    f"{hidden!r} (hidden: {sorted(m.get('hidden') or {})}); "
                                    "add it to export.hidden and rerun `kd export`")
            self.columns.append("hidden")

    def num_rows(self, *, shards: list[str] | None = None, drop_val: bool = False,
                 only_val: bool = False) -> int:
        info = {s["file"]: s for s in self.manifest["shards"]}
        picked = [info[f] for f in self._select(shards)]
        rows, val = (sum(s[k] for s in picked) for k in ("rows", "val"))
        if drop_val and self.keep is not None:  # counted by reading, once
            return sum(n for f, _, n in self.training_rows() if f in set(self._select(shards)))
        if drop_val and self.rows == "labeled":  # validation rows are labeled rows
            rows = sum(s["splits"].get("labeled", 0) for s in picked)
        rows -= self.stored.uncounted(picked, drop_val, self.rows)
        return val if only_val else rows - val if drop_val else rows

    def training_rows(self, epoch: int = 0) -> list[tuple[str, int, int]]:
        """(file, row group, training rows) of every row group, in manifest order: the units the
        ranks' row ranges are cut from. Reads the small `is_val` (and `split`, `row_id`, `view`)
        columns once (once an epoch when a view is sampled per row and epoch)."""
        sampled = self.views == "sample"
        if self._train_groups is None or (sampled and self._groups_epoch != epoch):
            groups = []
            cols = ["split", "is_val"] if self.rows == "labeled" else ["is_val"]
            if self.keep is not None:
                cols = self._cols({"row_id", "label", "is_labeled", "logits", "is_val"})
            cols = self.stored.mask_columns(cols)
            for f in self.files:
                with self.loc.open(f) as source, self._open(f, source) as pf:
                    for g in range(pf.num_row_groups):
                        part = self._decode(self._read_group(pf, f, g, cols))
                        groups.append((f, g, int(self._training_mask(part, epoch).sum())))
            self._train_groups, self._groups_epoch = groups, epoch
        return self._train_groups

    def rank_ranges(self, world: int, seed: int, epoch: int) -> list[list[Piece]]:
        """Each rank's training rows for one epoch, as (file, row group, start, stop) pieces
        (start:stop among the group's training rows). The epoch's order of shards, and of row
        groups within each, is a seeded shuffle shared by every rank; rank r takes the r-th of
        `world` equal runs of it, rows apart by at most one. Runs stay within few files, and
        every epoch deals other rows to each rank."""
        rng = np.random.default_rng([seed, epoch])
        groups: dict[str, list[tuple[int, int]]] = {}
        for f, g, n in self.training_rows(epoch):
            groups.setdefault(f, []).append((g, n))
        files = [self.files[j] for j in rng.permutation(len(self.files))]
        order = [(f, *groups[f][i]) for f in files for i in rng.permutation(len(groups[f]))]
        total = sum(n for _, _, n in order)
        bounds = [total * r // world for r in range(world + 1)]
        out: list[list[Piece]] = [[] for _ in range(world)]
        at = 0
        for f, g, n in order:
            for r in range(world):  # the part of [at, at + n) in rank r's run
                lo, hi = max(at, bounds[r]), min(at + n, bounds[r + 1])
                if lo < hi:
                    out[r].append((f, g, lo - at, hi - at))
            at += n
        return out

    def rank_steps(self, batch_size: int, world: int) -> int:
        """Steps every rank takes each epoch: enough for the largest run of training rows
        (ceil(rows / world)), so `world` ranks take one process's steps at batch_size * world."""
        n = self.num_rows(drop_val=True)
        if world > 1 and n < world:
            raise ArtifactError(f"{self.loc.show()}: {n} training rows for {world} ranks; "
                                "every rank needs at least one")
        most = -(-n // world)
        return -(-most // batch_size)

    def iter_rank_batches(self, batch_size: int, *, world: int, rank: int, seed: int,
                          epoch: int, buffer_rows: int = 50_000) -> Iterator[Batch]:
        """One rank's training rows for `epoch` (its run of `rank_ranges`), shuffled within a
        row buffer, as exactly `rank_steps` full batches. A rank whose run is
        a row short of a last full batch goes round it again (as torch's DistributedSampler
        pads by repeating rows), so every rank takes the same steps: no all-reduce waits on a
        rank that has run out, and no optimizer steps alone."""
        mine = self.rank_ranges(world, seed, epoch)[rank]
        steps = self.rank_steps(batch_size, world)
        if steps <= 0:
            return
        if not mine:  # the files hold fewer training rows than the manifest says
            raise ArtifactError(f"{self.loc.show()}: rank {rank} of {world} has no training "
                                f"rows in epoch {epoch + 1}; the shards' is_val columns "
                                f"disagree with {MANIFEST}")
        rng = np.random.default_rng([seed, epoch, world, rank])

        def shuffled_pass() -> Iterator[Batch]:  # the run once, mixed a buffer at a time
            buf: list[Batch] = []
            n = 0
            for f, run in itertools.groupby(mine, key=lambda p: p[0]):  # one open per file
                run = list(run)
                for part, (_, _, start, stop) in zip(
                        self._read(f, [g for _, g, _, _ in run], drop_val=True, epoch=epoch),
                        run, strict=True):
                    buf.append(take_rows(part, start, stop))
                    n += stop - start
                    if n >= buffer_rows:
                        yield _mix(buf, rng)
                        buf, n = [], 0
            if n:
                yield _mix(buf, rng)

        carry: list[Batch] = []
        n = 0
        while True:  # a second pass only pads the last batch
            for block in shuffled_pass():
                carry.append(block)
                n += len(block["row_id"])
                if n < batch_size:
                    continue
                data = carry[0] if len(carry) == 1 else concat_rows(carry)
                k = n - n % batch_size
                for i in range(0, k, batch_size):
                    yield take_rows(data, i, i + batch_size)
                    steps -= 1
                    if not steps:
                        return
                carry, n = ([take_rows(data, k, n)] if k < n else []), n - k

    def iter_batches(self, batch_size: int, *, shuffle: bool, seed: int = 0, epoch: int = 0,
                     buffer_rows: int = 50_000, shards: list[str] | None = None,
                     drop_val: bool = False, only_val: bool = False) -> Iterator[Batch]:
        """Every selected row exactly once, in an order fixed by (seed, epoch). About
        `buffer_rows` rows plus one row group are in memory at a time, never a whole set."""
        if (drop_val and only_val) or batch_size < 1:
            raise ValueError("need batch_size >= 1, and drop_val and only_val are exclusive")
        rng = np.random.default_rng([seed, epoch]) if shuffle else None
        files = self._select(shards)
        if rng is not None:
            files = [files[i] for i in rng.permutation(len(files))]
        buf: list[Batch] = []
        n = 0
        for part in self._row_groups(files, rng, drop_val, only_val, epoch):
            buf.append(part)
            n += len(part["row_id"])
            if n >= max(buffer_rows, batch_size):
                data = _mix(buf, rng)
                k = n - n % batch_size  # emit full batches, carry the rest into the next buffer
                yield from (take_rows(data, i, i + batch_size) for i in range(0, k, batch_size))
                buf, n = ([take_rows(data, k, n)] if k < n else []), n - k
        if n:
            data = _mix(buf, rng)
            yield from (take_rows(data, i, i + batch_size) for i in range(0, n, batch_size))

    def validation_rows(self) -> Batch | None:
        """Every labeled validation row of the set at once, in manifest order (a few hundred
        rows: what curves and choices read); None when the set holds none."""
        parts = list(self.iter_batches(65_536, shuffle=False, only_val=True))
        return concat_rows(parts) if parts else None

    def _select(self, shards: list[str] | None) -> list[str]:
        if shards is None:
            return list(self.files)
        if unknown := set(shards) - set(self.files):
            raise ArtifactError(f"{self.loc.show()}: shards not in {MANIFEST}: {sorted(unknown)}")
        return [f for f in self.files if f in set(shards)]  # manifest order, however given

    def _row_groups(self, files: list[str], rng: np.random.Generator | None, drop_val: bool,
                    only_val: bool, epoch: int) -> Iterator[Batch]:
        for f in files:
            with self.loc.open(f) as source, self._open(f, source) as pf:
                n = pf.num_row_groups
            order = range(n) if rng is None else [int(g) for g in rng.permutation(n)]
            yield from self._read(f, order, drop_val=drop_val, only_val=only_val, epoch=epoch)

    def _read(self, file: str, groups: list[int], *, drop_val: bool = False,
              only_val: bool = False, epoch: int = 0) -> Iterator[Batch]:
        """Row groups `groups` of `file`, decoded, in that order (views replayed)."""
        want = set(self.columns) | ({"is_val"} if drop_val or only_val else set())
        if drop_val and self.rows == "labeled":
            want.add("is_labeled")
        if drop_val and self.keep is not None:
            want |= {"label", "is_labeled", "logits"}
        cols = self.stored.read_columns(self._cols(want))  # the view picks rows, and replays
        with contextlib.ExitStack() as opened:
            pf = None  # the file is opened for the first row group not in the cache
            for g in groups:
                if (out := self._cached_group(file, g, cols)) is None:
                    if pf is None:
                        pf = opened.enter_context(self._open(
                            file, opened.enter_context(self.loc.open(file))))
                    out = self._decode(self._read_group(pf, file, g, cols))
                    if drop_val:  # a training read: the one every epoch repeats
                        out = self._keep(file, g, cols, out)
                if only_val:
                    out = take_rows(out, out["is_val"])
                elif drop_val:
                    out = take_rows(out, self._training_mask(out, epoch))
                elif self.view_settings:
                    out = take_rows(out, self.stored.mask(out, epoch))
                if self.views != "base":  # replayed features, partners' labels
                    self.stored.fill(out, self._stored_rows, self.feature_shape, self.loc.show())
                yield {k: v for k, v in out.items() if k in self.columns}

    def _cached_group(self, file: str, g: int, cols: list[str]) -> Batch | None:
        """A decoded row group from the cache (a new dict of its read-only arrays), or None."""
        hit = self._cache.get((file, g, tuple(cols)))
        return None if hit is None else dict(hit)

    def _keep(self, file: str, g: int, cols: list[str], out: Batch) -> Batch:
        """Cache a decoded row group while it fits in `cache_bytes`; its arrays become
        read-only, so no reader of a batch can write into a later epoch's rows."""
        size = sum(v.nbytes for v in out.values())
        if self._cached + size <= self.cache_bytes:
            for v in out.values():
                v.flags.writeable = False
            self._cache[(file, g, tuple(cols))] = out
            self._cached += size
            out = dict(out)
        return out

    def _cols(self, want: set[str]) -> list[str]:
        """The Parquet columns that hold the batch keys `want` (and the hidden one, if read)."""
        source = {"is_labeled": ["split"],
                  "logits": [c for m in self.members for c in target_columns(m, self.top_k)]}
        cols = [c for k in COLUMNS if k in want for c in source.get(k, [k])]
        return cols + ([hidden_column(self.hidden)] if self.hidden is not None else [])

    def _training_mask(self, part: Batch, epoch: int = 0) -> np.ndarray:
        """(B,) bool: the rows a student trains on (decoded is_val, and is_labeled if needed,
        `keep`'s rows, and the views `views` picks for `epoch`)."""
        keep = ~part["is_val"]
        keep = keep & part["is_labeled"] if self.rows == "labeled" else keep
        keep = keep & self.keep(part) if self.keep is not None else keep
        return keep & self.stored.mask(part, epoch) if self.view_settings else keep

    def _stored_rows(self) -> Iterator[Batch]:
        """Every row group's row_id, is_val, label, features, view: what views replay from."""
        for f in self.files:
            with self.loc.open(f) as stream, self._open(f, stream) as pf:
                for g in range(pf.num_row_groups):
                    yield self._decode(self._read_group(
                        pf, f, g, ["row_id", "is_val", "label", "features", "view"]))

    def _read_group(self, pf: pq.ParquetFile, file: str, g: int, cols: list[str]) -> pa.Table:
        try:  # without verify(), a damaged page surfaces only here
            return pf.read_row_group(g, columns=cols)
        except (OSError, pa.ArrowException) as e:
            raise ArtifactError(f"{self.loc.show(file)}: row group {g} unreadable, corrupt "
                                f"({_first(e)})") from None

    def _open(self, file: str, source) -> pq.ParquetFile:
        path = self.loc.show(file)  # local or remote, read one way
        check_shard_metadata(path, read_shard_metadata(source, path), self.manifest)
        return pq.ParquetFile(source, pre_buffer=False)  # stream: hold one row group, not all

    def _decode(self, t: pa.Table) -> Batch:
        names = t.column_names
        out = {"row_id": column_np(t["row_id"])} if "row_id" in names else {}
        if "label" in names:
            out["label"] = column_np(pc.fill_null(t["label"], -1)).astype(np.int64)
        if "split" in names:  # decode the dictionary by hand: 2 string compares, not one a row
            out["is_labeled"] = np.concatenate(
                [(np.asarray(c.dictionary.to_pylist()) == "labeled")[c.indices.to_numpy()]
                 for c in t["split"].chunks] or [np.zeros(0, bool)])
        if "is_val" in names:
            out["is_val"] = column_np(t["is_val"])
        if "features" in names:
            out["features"] = column_np(t["features"]).reshape(-1, self.width)  # (B, F)
        if target_columns(self.members[0], self.top_k)[0] in names:
            z = np.empty((len(self.members), t.num_rows, self.num_classes), np.float32)  # (M, B, C)
            for i, m in enumerate(self.members):
                if self.top_k:
                    top, ids, tail = (column_np(t[c]) for c in topk_columns(m))
                    k = self.top_k["k"]
                    dense(top.reshape(-1, k), ids.reshape(-1, k), tail, self.num_classes, z[i])
                else:
                    z[i] = column_np(t[logits_column(m)]).reshape(-1, self.num_classes)
            out["logits"] = z
        if self.hidden is not None:
            out["hidden"] = column_np(t[hidden_column(self.hidden)]).reshape(-1, self.hidden_width)
        decode_views(t, out)
        return out


def _first(e: BaseException) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0]


def _mix(buf: list[Batch], rng: np.random.Generator | None) -> Batch:
    data = concat_rows(buf)  # a copy: batches are writable, and independent of Arrow's buffers
    if rng is None:
        return data
    return take_rows(data, rng.permutation(len(data["row_id"])))  # one permutation for every column
