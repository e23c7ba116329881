"""Streaming reader of soft-target shards: shuffled per shard and within a row buffer.

    reader = ShardReader("data/soft_targets")
    for batch in reader.iter_batches(256, shuffle=True, seed=0, epoch=3, drop_val=True):
        batch["features"], batch["label"], batch["logits"]      # (B, F), (B,), (M, B, C)

A row's features and logits come from the same Parquet row, so no shuffle can mis-pair them.
At most about `buffer_rows` rows plus one row group are in memory, never a whole set; the
schema, writer and manifest live in stages/shards.py.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from stages.errors import ArtifactError
from stages.shards import (
    COLUMNS,
    MANIFEST,
    Batch,
    check_shard_metadata,
    concat_rows,
    logits_column,
    read_manifest,
    read_shard_metadata,
    take_rows,
    verify,
)
from stages.storage import is_uri, locate


class ShardReader:
    """Stream a shard set as numpy batches, shuffled per shard and within a row buffer.

    A batch: row_id (B,) int64, label (B,) int64 (-1 = null), is_labeled (B,) bool, is_val (B,)
    bool, features (B, F) float32, logits (M, B, C) float32 in manifest member order. `columns`
    picks a subset of those keys (row_id is always there).
    """

    def __init__(self, dir: str | os.PathLike, *, columns: list[str] | None = None,
                 verify_checksums: bool = False):
        self.dir = dir if is_uri(dir) else Path(dir)
        self.loc = locate(dir)
        if verify_checksums:
            verify(self.dir)
        self.manifest = m = read_manifest(self.dir)
        self.members, self.class_names = m["members"], m["class_names"]
        self.feature_shape = tuple(m["feature_shape"])
        self.width, self.num_classes = int(np.prod(self.feature_shape)), len(self.class_names)
        self.files = [s["file"] for s in m["shards"]]
        self.columns = list(COLUMNS) if columns is None else ["row_id", *columns]
        if unknown := set(self.columns) - set(COLUMNS):
            raise ValueError(f"unknown columns {sorted(unknown)}; choose from {COLUMNS}")

    def num_rows(self, *, shards: list[str] | None = None, drop_val: bool = False,
                 only_val: bool = False) -> int:
        info = {s["file"]: s for s in self.manifest["shards"]}
        rows, val = (sum(info[f][k] for f in self._select(shards)) for k in ("rows", "val"))
        return val if only_val else rows - val if drop_val else rows

    def partition(self, world: int, seed: int, epoch: int, *,
                  drop_val: bool = False) -> list[list[str]]:
        """The shards dealt to `world` ranks for one epoch: disjoint, together every shard.
        A seeded shuffle, then largest first to the rank with the fewest rows so far, so
        ranks get about the same number of rows and, with equal shards, other shards each
        epoch."""
        rows = {s["file"]: s["rows"] - (s["val"] if drop_val else 0)
                for s in self.manifest["shards"]}
        rng = np.random.default_rng([seed, epoch, world])
        order = sorted((self.files[i] for i in rng.permutation(len(self.files))),
                       key=lambda f: -rows[f])  # stable: equal shards keep the shuffled order
        dealt: list[list[str]] = [[] for _ in range(world)]
        load = [0] * world
        for f in order:
            r = load.index(min(load))
            dealt[r].append(f)
            load[r] += rows[f]
        return dealt

    def rank_steps(self, batch_size: int, world: int, seed: int, epoch: int) -> int:
        """Steps every rank takes in `epoch`: enough for the rank dealt the most training rows.
        A dealing that leaves a rank without training rows is an ArtifactError, the same on
        every rank (the dealing is a pure function of seed, epoch and world)."""
        rows = [self.num_rows(shards=s, drop_val=True)
                for s in self.partition(world, seed, epoch, drop_val=True)]
        if min(rows) == 0:
            rank = rows.index(0)
            mine = self.partition(world, seed, epoch, drop_val=True)[rank]
            raise ArtifactError(f"{self.loc.show()}: epoch {epoch + 1} deals rank {rank} shards "
                                f"without training rows ({', '.join(mine)}); lower "
                                "export.rows_per_shard")
        return max(-(-r // batch_size) for r in rows)

    def iter_rank_batches(self, batch_size: int, *, world: int, rank: int, seed: int,
                          epoch: int, buffer_rows: int = 50_000,
                          steps: int | None = None) -> Iterator[Batch]:
        """One rank's training rows for `epoch`: its dealt shards, shuffled, as exactly `steps`
        full batches (default `rank_steps`). A rank dealt fewer rows goes round its shards
        again (as torch's DistributedSampler pads by repeating rows), so every rank takes the
        same steps: no all-reduce waits on a rank that has run out, no optimizer steps alone."""
        mine = self.partition(world, seed, epoch, drop_val=True)[rank]
        if steps is None:
            steps = self.rank_steps(batch_size, world, seed, epoch)
        if self.num_rows(shards=mine, drop_val=True) == 0:
            raise ArtifactError(f"{self.loc.show()}: rank {rank} was dealt shards without "
                                f"training rows ({', '.join(mine)}); lower export.rows_per_shard")

        def passes() -> Iterator[Batch]:
            while True:
                yield from self.iter_batches(batch_size, shuffle=True, seed=seed, epoch=epoch,
                                             buffer_rows=buffer_rows, drop_val=True,
                                             shards=mine)

        buf: list[Batch] = []
        n = 0
        for part in passes():
            buf.append(part)
            n += len(part["row_id"])
            while n >= batch_size and steps:
                data = buf[0] if len(buf) == 1 else concat_rows(buf)
                yield take_rows(data, 0, batch_size)
                steps -= 1
                rest = [take_rows(data, batch_size, n)] if n > batch_size else []
                buf, n = rest, n - batch_size
            if not steps:
                return

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
        for part in self._row_groups(files, rng, drop_val, only_val):
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

    def _select(self, shards: list[str] | None) -> list[str]:
        if shards is None:
            return list(self.files)
        if unknown := set(shards) - set(self.files):
            raise ArtifactError(f"{self.loc.show()}: shards not in {MANIFEST}: {sorted(unknown)}")
        return [f for f in self.files if f in set(shards)]  # manifest order, however given

    def _row_groups(self, files: list[str], rng: np.random.Generator | None, drop_val: bool,
                    only_val: bool) -> Iterator[Batch]:
        want = set(self.columns) | ({"is_val"} if drop_val or only_val else set())
        source = {"is_labeled": ["split"], "logits": [logits_column(m) for m in self.members]}
        cols = [c for k in COLUMNS if k in want for c in source.get(k, [k])]
        for f in files:
            with self.loc.open(f) as source, self._open(f, source) as pf:
                n = pf.num_row_groups
                for g in range(n) if rng is None else rng.permutation(n):
                    try:  # without verify(), a damaged page surfaces only here
                        table = pf.read_row_group(int(g), columns=cols)
                    except (OSError, pa.ArrowException) as e:
                        raise ArtifactError(f"{self.loc.show(f)}: row group {g} unreadable, "
                                            f"corrupt ({str(e).splitlines()[0]})") from None
                    out = self._decode(table)
                    if drop_val or only_val:
                        out = take_rows(out, out["is_val"] == only_val)
                    yield {k: v for k, v in out.items() if k in self.columns}

    def _open(self, file: str, source) -> pq.ParquetFile:
        path = self.loc.show(file)  # local or remote, read one way
        check_shard_metadata(path, read_shard_metadata(source, path), self.manifest)
        return pq.ParquetFile(source, pre_buffer=False)  # stream: hold one row group, not all

    def _decode(self, t: pa.Table) -> Batch:
        out, names = {"row_id": _np(t["row_id"])}, t.column_names
        if "label" in names:
            out["label"] = _np(pc.fill_null(t["label"], -1)).astype(np.int64)
        if "split" in names:  # decode the dictionary by hand: 2 string compares, not one a row
            out["is_labeled"] = np.concatenate(
                [(np.asarray(c.dictionary.to_pylist()) == "labeled")[c.indices.to_numpy()]
                 for c in t["split"].chunks] or [np.zeros(0, bool)])
        if "is_val" in names:
            out["is_val"] = _np(t["is_val"])
        if "features" in names:
            out["features"] = _np(t["features"]).reshape(-1, self.width)  # (B, F)
        if "logits" in self.columns:
            z = np.empty((len(self.members), t.num_rows, self.num_classes), np.float32)  # (M, B, C)
            for i, m in enumerate(self.members):
                z[i] = _np(t[logits_column(m)]).reshape(-1, self.num_classes)
            out["logits"] = z
        return out


def _np(col: pa.ChunkedArray) -> np.ndarray:
    """Column -> numpy, fixed_size_list flattened; zero-copy for one null-free chunk."""
    arrs = [(c.flatten() if pa.types.is_fixed_size_list(c.type) else c)
            .to_numpy(zero_copy_only=False) for c in col.chunks]
    return arrs[0] if len(arrs) == 1 else np.concatenate(arrs)


def _mix(buf: list[Batch], rng: np.random.Generator | None) -> Batch:
    data = concat_rows(buf)  # a copy: batches are writable, and independent of Arrow's buffers
    if rng is None:
        return data
    return take_rows(data, rng.permutation(len(data["row_id"])))  # one permutation for every column
