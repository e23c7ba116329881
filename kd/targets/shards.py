"""Soft-target shards: the teacher ensemble's logits for every row, written as Parquet.

A shard set is one directory: `part-00000.parquet`, `part-00001.parquet`, ... and a
`manifest.json` listing every shard with its row count and sha256 (kd/targets/manifest.py, with
the column names and split codes). One Parquet row holds a row's id, split, label, features and
every member's LOGITS (or, with `top_k`, its k largest logits, their class ids and the tail's
log-sum-exp: kd/targets/topk.py), so inputs and targets are joined by being in the same row,
never by position. The manifest is written last: its presence means the set is complete. A
quick look:

    python -c "from kd.targets.shardset import verify; print(verify('data/soft_targets'))"
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from kd.errors import ArtifactError
from kd.io.faults import failpoint
from kd.io.storage import file_sha256
from kd.targets.batch import Batch, concat_rows, take_rows
from kd.targets.manifest import (
    MANIFEST,
    META_KEY,
    SCHEMA_VERSION,
    SPLITS,
    hidden_column,
    logits_column,
    split_counts,
    topk_columns,
)
from kd.targets.topk import TAIL, check_k, encode, id_dtype

LOGITS_DTYPES = {"float32": (np.float32, pa.float32()), "float16": (np.float16, pa.float16())}


class ShardWriter:
    """Stream rows into `<prefix>-NNNNN.parquet` shards of `rows_per_shard` rows each.

    Only one pending row group is buffered, so memory does not grow with the total. A shard is
    written as `.tmp-<name>` and renamed when complete: a killed writer leaves only `.tmp-*`
    files, which no reader looks at. Distributed ranks write disjoint shards into one directory
    by each using its own `prefix` (`part-r003`).
    """

    def __init__(self, out_dir: str | os.PathLike, *, members: list[str], class_names: list[str],
                 feature_shape: tuple[int, ...], rows_per_shard: int = 100_000,
                 row_group_size: int = 10_000, compression: str = "zstd",
                 logits_dtype: str = "float32", extra_metadata: dict | None = None,
                 prefix: str = "part",
                 hidden: dict[str, int] | None = None, views: dict | None = None,
                 top_k: int | None = None):
        if not members or len(set(members)) < len(members) or not all(
                re.fullmatch(r"[\w-]+", m) for m in members):
            raise ValueError(f"members must be unique names of [A-Za-z0-9_-]: {members!r}")
        if not re.fullmatch(r"part(-[\w-]+)?", prefix):  # verify() looks for part-*.parquet
            raise ValueError(f"prefix must be 'part' or start with 'part-': {prefix!r}")
        if logits_dtype not in LOGITS_DTYPES or min(rows_per_shard, row_group_size) < 1:
            raise ValueError(f"bad logits_dtype {logits_dtype!r} or non-positive sizes")
        self.hidden = dict(hidden or {})  # member -> width of its hidden vector
        if not set(self.hidden) <= set(members) or min(self.hidden.values(), default=1) < 1:
            raise ValueError(f"hidden must map members to positive widths: {hidden!r}")
        self.out_dir, self.members, self.prefix = Path(out_dir), list(members), prefix
        self.num_classes, self.width = len(class_names), int(np.prod(feature_shape))
        self.rows_per_shard, self.row_group_size = rows_per_shard, row_group_size
        self.compression, self.np_dtype = compression, LOGITS_DTYPES[logits_dtype][0]
        meta = dict(schema_version=SCHEMA_VERSION, class_names=list(class_names),
                    members=self.members, feature_shape=list(feature_shape),
                    logits_dtype=logits_dtype, extra=extra_metadata or {})
        if self.hidden:  # only then: a set without hidden vectors keeps its old bytes
            meta["hidden"] = self.hidden
        # stored views (kd/augment.py): a view row holds its parameters, and zeros as features
        self.views, self.axes = views, len(feature_shape)
        if views:
            meta["views"] = dict(views)
        # top-k (kd/targets/topk.py): per member its k largest logits, their ids, the tail's
        # log-sum-exp, in place of its full logits; absent, the set is what it always was
        self.top_k = top_k and check_k(top_k, self.num_classes)
        if self.top_k:
            ids = id_dtype(self.num_classes)
            meta["top_k"] = self.codec = dict(k=self.top_k, tail=TAIL, ids=ids.name)
        else:
            self.codec = None
        lt = LOGITS_DTYPES[logits_dtype][1]
        self.schema = pa.schema([
            pa.field("row_id", pa.int64(), nullable=False),
            pa.field("split", pa.dictionary(pa.int8(), pa.string()), nullable=False),
            pa.field("label", pa.int32()),  # null for unlabeled and synthetic rows
            pa.field("is_val", pa.bool_(), nullable=False),
            pa.field("features", pa.list_(pa.float32(), self.width), nullable=False),
            *[f for m in self.members for f in self._target_fields(m, lt)],
            *[pa.field(hidden_column(m), pa.list_(pa.float32(), d), nullable=False)
              for m, d in self.hidden.items()],
            *(_view_fields(self.axes) if views else []),
        ], metadata={META_KEY: json.dumps(meta, sort_keys=True)})
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / MANIFEST).unlink(missing_ok=True)  # the set changes: no longer complete
        self._index, self._chunks, self._pending = 0, [], 0
        self._pw: pq.ParquetWriter | None = None
        self._counts = _zero_counts()  # of the shard in progress
        self.shards: list[dict[str, Any]] = []

    def _target_fields(self, member: str, lt: pa.DataType) -> list[pa.Field]:
        if not self.top_k:
            return [pa.field(logits_column(member), pa.list_(lt, self.num_classes),
                             nullable=False)]
        top, ids, tail = topk_columns(member)
        it = pa.from_numpy_dtype(id_dtype(self.num_classes))
        return [pa.field(top, pa.list_(lt, self.top_k), nullable=False),
                pa.field(ids, pa.list_(it, self.top_k), nullable=False),
                pa.field(tail, lt, nullable=False)]

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def write(self, row_ids: np.ndarray, split: str, labels: np.ndarray | None,
              is_val: np.ndarray | None, features: np.ndarray,
              logits: dict[str, np.ndarray], hidden: dict[str, np.ndarray] | None = None,
              views: dict[str, np.ndarray] | None = None) -> None:
        """Append B rows of one split. labels (B,) with -1 = null (None: all null), is_val (B,)
        (None: all False), features (B, F) or (B, *feature_shape), logits member -> (B, C),
        hidden member -> (B, D) for the writer's hidden members. With stored views, `views`
        (kd.augment.draw_views) makes the rows views (features None: they are replayed);
        without it they are the rows themselves (view 0). Everything is copied, so callers
        may reuse their buffers."""
        rid, C = np.asarray(row_ids), self.num_classes
        if rid.ndim != 1 or rid.dtype.kind not in "iu":
            raise ArtifactError(f"row_ids: expected 1-d integers, got {rid.dtype}{rid.shape}")
        B = len(rid)
        lab = np.full(B, -1, np.int32) if labels is None else np.asarray(labels).astype(np.int32)
        val = np.zeros(B, bool) if is_val is None else np.asarray(is_val).astype(bool)
        if views is not None and not self.views:
            raise ArtifactError("views: this writer stores no views (export.views is 0)")
        x = np.zeros((B, self.width), np.float32) if views is not None else np.asarray(features)
        if split not in SPLITS:
            raise ArtifactError(f"split must be one of {SPLITS}, got {split!r}")
        if lab.shape != (B,) or val.shape != (B,):
            raise ArtifactError(f"labels, is_val: expected ({B},), got {lab.shape}, {val.shape}")
        key = rid if views is None else np.stack([rid, views["view"]], 1)  # (row id, view)
        ids, counts = np.unique(key, return_counts=True, axis=0)
        if (counts > 1).any():  # uniqueness across calls is the caller's contract
            raise ArtifactError(f"row_id: duplicate id {ids[counts > 1][0]} in one batch")
        if views is not None and val.any():
            raise ArtifactError(f"view: row_id {rid[val][0]} is a validation row; validation "
                                "rows have no views")
        bad = (lab < 0) | (lab >= C) if split == "labeled" else (lab != -1) | val
        if bad.any():
            raise ArtifactError(f"label: row_id {rid[bad][0]} is {split} with label "
                                f"{lab[bad][0]} (need 0..{C - 1}; unlabeled: -1, not val)")
        if x.shape[:1] != (B,) or int(np.prod(x.shape[1:])) != self.width:
            raise ArtifactError(f"features: expected width {self.width}, got shape {x.shape}")
        if set(logits) != set(self.members):
            raise ArtifactError(f"logits: expected members {self.members}, got {sorted(logits)}")
        chunk = dict(row_id=rid.astype(np.int64), split=np.full(B, SPLITS.index(split), np.int8),
                     label=lab, is_val=val, features=x.reshape(B, -1).astype(np.float32))
        for m in self.members:
            z = np.asarray(logits[m])
            if z.shape != (B, C):
                raise ArtifactError(f"logits.{m}: expected ({B}, {C}) for {C} classes, "
                                    f"got shape {z.shape}")
            if self.top_k:  # from the logits as given; what is stored must be finite
                chunk.update(zip(topk_columns(m), self._encode(m, z, rid), strict=True))
                continue
            with np.errstate(over="ignore"):  # check after the cast: float16 overflows to inf
                z = z.astype(self.np_dtype)
            if not (ok := np.isfinite(z).all(axis=1)).all():
                raise ArtifactError(f"logits.{m}: non-finite value at row_id {rid[~ok][0]} "
                                    f"(as {np.dtype(self.np_dtype).name})")
            chunk[logits_column(m)] = z
        chunk.update(self._hidden_chunk(rid, hidden or {}))
        if self.views:
            chunk.update(_view_chunk(B, self.axes, views))
        self._chunks.append(chunk)
        self._pending += B
        if self._pending >= self._group_size():
            self._flush(final=False)

    def _encode(self, m: str, z: np.ndarray, rid: np.ndarray) -> tuple[np.ndarray, ...]:
        """A member's (B, C) logits as its top-k columns (logits, ids, tail), each finite in
        the storage dtype (a float16 value over 65,504 is not)."""
        z = np.asarray(z, np.float32)
        name = np.dtype(self.np_dtype).name
        if not (ok := np.isfinite(z).all(axis=1)).all():
            raise ArtifactError(f"logits.{m}: non-finite value at row_id {rid[~ok][0]} (as {name})")
        with np.errstate(over="ignore"):
            st = encode(z, self.top_k, self.np_dtype)
        ok = np.isfinite(st.logits).all(axis=1) & np.isfinite(st.tail_lse)
        if not ok.all():
            raise ArtifactError(f"logits.{m}: non-finite value at row_id {rid[~ok][0]} (as {name})")
        return st.logits, st.ids, st.tail_lse

    def _hidden_chunk(self, rid: np.ndarray, hidden: dict[str, np.ndarray]) -> Batch:
        if set(hidden) != set(self.hidden):
            raise ArtifactError(f"hidden: expected members {sorted(self.hidden)}, got "
                                f"{sorted(hidden)}")
        out = {}
        for m, d in self.hidden.items():
            h = np.asarray(hidden[m], np.float32)
            if h.shape != (len(rid), d):
                raise ArtifactError(f"hidden.{m}: expected ({len(rid)}, {d}), got shape {h.shape}")
            if not (ok := np.isfinite(h).all(axis=1)).all():
                raise ArtifactError(f"hidden.{m}: non-finite value at row_id {rid[~ok][0]}")
            out[hidden_column(m)] = h
        return out

    def close(self) -> list[dict[str, Any]]:
        """Flush and finish the last shard. Returns one info dict per shard this writer wrote:
        {file, rows, splits: {labeled, unlabeled[, synthetic]}, val, sha256, bytes}."""
        self._flush(final=True)
        self._finish_shard()
        return self.shards

    def abort(self) -> None:
        """Drop the shard in progress and the buffered rows; finished shards stay."""
        if self._pw is not None:
            self._pw.close()
            self._pw = None
            self._tmp_path().unlink(missing_ok=True)
        self._chunks, self._pending = [], 0

    def _name(self) -> str:
        return f"{self.prefix}-{self._index:05d}.parquet"

    def _tmp_path(self) -> Path:
        return self.out_dir / f".tmp-{self._name()}"

    def _group_size(self) -> int:
        return min(self.row_group_size, self.rows_per_shard - self._counts["rows"])

    def _flush(self, final: bool) -> None:
        # Row groups never straddle shards and their boundaries depend only on row counts, not
        # on how the caller batched its writes: the same rows always give the same bytes.
        if not self._chunks:
            return
        data, n, i = concat_rows(self._chunks), self._pending, 0
        while n - i >= self._group_size() or (final and i < n):
            k = min(n - i, self._group_size())
            self._write_group(take_rows(data, i, i + k))
            i += k
            if self._counts["rows"] == self.rows_per_shard:
                self._finish_shard()
        self._chunks, self._pending = ([take_rows(data, i, n)] if i < n else []), n - i

    def _write_group(self, g: Batch) -> None:
        def fixed(name: str) -> pa.Array:  # (n, K) -> fixed_size_list<K>, no copy
            return pa.FixedSizeListArray.from_arrays(g[name].reshape(-1),
                                                     type=self.schema.field(name).type)

        # the dictionary lists the splits up to the highest code present (at least labeled
        # and unlabeled): a group without synthetic rows keeps the two-entry dictionary
        names = SPLITS[: max(2, int(g["split"].max(initial=0)) + 1)]
        arrays = [pa.array(g["row_id"]),
                  pa.DictionaryArray.from_arrays(g["split"], pa.array(names)),
                  pa.array(g["label"], pa.int32(), mask=g["label"] < 0),
                  pa.array(g["is_val"]), fixed("features"),
                  *[self._target_array(g, c, fixed) for m in self.members
                    for c in ([logits_column(m)] if not self.top_k else topk_columns(m))],
                  *[fixed(hidden_column(m)) for m in self.hidden]]
        if self.views:  # a view's features are zeros (a few bytes compressed): it is replayed
            arrays += [pa.array(g["view"]), fixed("shift"), pa.array(g["noise_seed"]),
                       pa.array(g["partner"], pa.int64(), mask=g["partner"] < 0),
                       pa.array(g["lam"])]
        if self._pw is None:  # dictionary-encode only split; statistics only on small columns
            self._pw = pq.ParquetWriter(self._tmp_path(), self.schema, compression=self.compression,
                                        use_dictionary=["split"],
                                        write_statistics=["row_id", "split", "label", "is_val"])
        n = len(g["row_id"])
        self._pw.write_table(pa.Table.from_arrays(arrays, schema=self.schema), row_group_size=n)
        self._counts["rows"] += n
        for code, name in enumerate(SPLITS):
            self._counts[name] += int((g["split"] == code).sum())
        self._counts["val"] += int(g["is_val"].sum())
        if self.views:
            for code, name in enumerate(SPLITS):
                self._counts[f"views.{name}"] += int(((g["split"] == code) & (g["view"] > 0)).sum())

    def _target_array(self, g: Batch, name: str, fixed) -> pa.Array:
        return pa.array(g[name]) if name.startswith("tail.") else fixed(name)

    def _finish_shard(self) -> None:
        if self._pw is None:
            return
        self._pw.close()
        self._pw = None
        tmp, final, c = self._tmp_path(), self.out_dir / self._name(), self._counts
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())  # bytes on disk before the rename makes the shard visible
        info = dict(file=final.name, rows=c["rows"], val=c["val"], sha256=file_sha256(tmp),
                    splits=split_counts(c), bytes=tmp.stat().st_size)
        if self.views:  # view rows per split, among `splits` (which counts every row)
            info["views"] = {k: c[f"views.{k}"] for k in SPLITS if c[f"views.{k}"]}
        self.shards.append(info)
        os.replace(tmp, final)
        failpoint("shard.done", final.name)
        self._index += 1
        self._counts = _zero_counts()


def _zero_counts() -> dict[str, int]:
    return dict(rows=0, val=0, **dict.fromkeys(SPLITS, 0),
                **dict.fromkeys((f"views.{k}" for k in SPLITS), 0))


def _view_fields(axes: int) -> list[pa.Field]:
    """The columns of a set with stored views (kd/augment.py): view 0 is the row itself."""
    return [pa.field("view", pa.int16(), nullable=False),
            pa.field("shift", pa.list_(pa.int16(), axes), nullable=False),
            pa.field("noise_seed", pa.int64(), nullable=False),
            pa.field("partner", pa.int64()),  # null: no mixup
            pa.field("lam", pa.float32(), nullable=False)]


def _view_chunk(n: int, axes: int, views: dict[str, np.ndarray] | None) -> Batch:
    if views is None:  # the rows themselves: view 0, no shift, no partner
        return dict(view=np.zeros(n, np.int16), shift=np.zeros((n, axes), np.int16),
                    noise_seed=np.zeros(n, np.int64), partner=np.full(n, -1, np.int64),
                    lam=np.ones(n, np.float32))
    if not (views["view"] > 0).all() or views["shift"].shape != (n, axes):
        raise ArtifactError(f"view: views must be numbered from 1 with ({n}, {axes}) shifts")
    return {k: np.asarray(views[k]).astype(t) for k, t in
            (("view", np.int16), ("shift", np.int16), ("noise_seed", np.int64),
             ("partner", np.int64), ("lam", np.float32))}
