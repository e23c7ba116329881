"""Soft-target shards: the teacher ensemble's logits for every row, as Parquet plus a manifest.

A shard set is one directory: `part-00000.parquet`, `part-00001.parquet`, ... and a
`manifest.json` listing every shard with its row count and sha256. One Parquet row holds a row's
id, split, label, features and every member's LOGITS, so inputs and targets are joined by being
in the same row, never by position. The manifest is written last: its presence means the set is
complete. A quick look:

    python -c "from kd.targets.shardset import verify; print(verify('data/soft_targets'))"
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kd.errors import ArtifactError
from kd.io.atomic import write_json
from kd.io.faults import failpoint
from kd.io.storage import Location, locate

if TYPE_CHECKING:  # annotations only: the prepared data's reader is not a dependency
    from kd.datasets import Split

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
META_KEY = "kd"  # the one Parquet schema-metadata key; its value is JSON
# split codes 0, 1, 2. "synthetic": rows made for the ensemble to label (kd/transfer/), which a
# reader treats like unlabeled rows. A shard or manifest names the synthetic count only when
# it has such rows, so a set without them is byte for byte what it was before the code existed.
SPLITS = ("labeled", "unlabeled", "synthetic")
LOGITS_DTYPES = {"float32": (np.float32, pa.float32()), "float16": (np.float16, pa.float16())}
COLUMNS = ("row_id", "label", "is_labeled", "is_val", "features", "logits")  # reader batch keys
Batch = dict[str, np.ndarray]


def logits_column(member: str) -> str:
    return f"logits.{member}"


def hidden_column(member: str) -> str:
    """A member's pooled hidden vector (export.hidden), for a student's cosine term."""
    return f"hidden.{member}"


def read_shard_metadata(source: str | os.PathLike | pa.NativeFile,
                        shown: str | None = None) -> dict[str, Any]:
    """The `kd` metadata of one shard (a path, or an open file named `shown`): schema_version,
    class_names, members, feature_shape, ..."""
    try:
        return json.loads(pq.read_schema(source).metadata[META_KEY.encode()])
    except (OSError, pa.ArrowException, KeyError, TypeError, ValueError) as e:
        raise ArtifactError(f"{shown or source}: not a readable soft-target shard ({e})") from None


def check_shard_metadata(path: str | os.PathLike, meta: dict[str, Any],
                         manifest: dict[str, Any]) -> None:
    """ArtifactError unless a shard's own metadata agrees with the manifest listing it: a shard
    from another export (other members, classes, shapes) must not be read as part of this one."""
    for key in ("members", "class_names", "feature_shape", "logits_dtype", "hidden"):
        if meta.get(key) != manifest.get(key):  # a set without hidden columns names none
            raise ArtifactError(f"{path}: {key} {meta.get(key)!r} disagrees with {MANIFEST} "
                                f"({manifest.get(key)!r})")


def check_members(dir: str | os.PathLike, manifest: dict[str, Any], members: list[str]) -> None:
    """ArtifactError unless the shards hold the ensemble that params.yaml names: shards from
    another ensemble are stale, and distilling them would silently ignore the change."""
    if sorted(manifest["members"]) != sorted(members):
        raise ArtifactError(f"{locate(dir).show(MANIFEST)}: shards hold members "
                            f"{manifest['members']}, teacher.members is {list(members)}; "
                            "rerun `kd export`")


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
                 hidden: dict[str, int] | None = None):
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
        lt = LOGITS_DTYPES[logits_dtype][1]
        self.schema = pa.schema([
            pa.field("row_id", pa.int64(), nullable=False),
            pa.field("split", pa.dictionary(pa.int8(), pa.string()), nullable=False),
            pa.field("label", pa.int32()),  # null for unlabeled and synthetic rows
            pa.field("is_val", pa.bool_(), nullable=False),
            pa.field("features", pa.list_(pa.float32(), self.width), nullable=False),
            *[pa.field(logits_column(m), pa.list_(lt, self.num_classes), nullable=False)
              for m in self.members],
            *[pa.field(hidden_column(m), pa.list_(pa.float32(), d), nullable=False)
              for m, d in self.hidden.items()],
        ], metadata={META_KEY: json.dumps(meta, sort_keys=True)})
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / MANIFEST).unlink(missing_ok=True)  # the set changes: no longer complete
        self._index, self._chunks, self._pending = 0, [], 0
        self._pw: pq.ParquetWriter | None = None
        self._counts = _zero_counts()  # of the shard in progress
        self.shards: list[dict[str, Any]] = []

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def write(self, row_ids: np.ndarray, split: str, labels: np.ndarray | None,
              is_val: np.ndarray | None, features: np.ndarray,
              logits: dict[str, np.ndarray], hidden: dict[str, np.ndarray] | None = None) -> None:
        """Append B rows of one split. labels (B,) with -1 = null (None: all null), is_val (B,)
        (None: all False), features (B, F) or (B, *feature_shape), logits member -> (B, C),
        hidden member -> (B, D) for the writer's hidden members. Everything is copied, so
        callers may reuse their buffers."""
        rid, C = np.asarray(row_ids), self.num_classes
        if rid.ndim != 1 or rid.dtype.kind not in "iu":
            raise ArtifactError(f"row_ids: expected 1-d integers, got {rid.dtype}{rid.shape}")
        B = len(rid)
        lab = np.full(B, -1, np.int32) if labels is None else np.asarray(labels).astype(np.int32)
        val = np.zeros(B, bool) if is_val is None else np.asarray(is_val).astype(bool)
        x = np.asarray(features)
        if split not in SPLITS:
            raise ArtifactError(f"split must be one of {SPLITS}, got {split!r}")
        if lab.shape != (B,) or val.shape != (B,):
            raise ArtifactError(f"labels, is_val: expected ({B},), got {lab.shape}, {val.shape}")
        ids, counts = np.unique(rid, return_counts=True)
        if (counts > 1).any():  # uniqueness across calls is the caller's contract
            raise ArtifactError(f"row_id: duplicate id {ids[counts > 1][0]} in one batch")
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
            with np.errstate(over="ignore"):  # check after the cast: float16 overflows to inf
                z = z.astype(self.np_dtype)
            if not (ok := np.isfinite(z).all(axis=1)).all():
                raise ArtifactError(f"logits.{m}: non-finite value at row_id {rid[~ok][0]} "
                                    f"(as {np.dtype(self.np_dtype).name})")
            chunk[logits_column(m)] = z
        chunk.update(self._hidden_chunk(rid, hidden or {}))
        self._chunks.append(chunk)
        self._pending += B
        if self._pending >= self._group_size():
            self._flush(final=False)

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
                  *[fixed(logits_column(m)) for m in self.members],
                  *[fixed(hidden_column(m)) for m in self.hidden]]
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

    def _finish_shard(self) -> None:
        if self._pw is None:
            return
        self._pw.close()
        self._pw = None
        tmp, final, c = self._tmp_path(), self.out_dir / self._name(), self._counts
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())  # bytes on disk before the rename makes the shard visible
        self.shards.append(dict(
            file=final.name, rows=c["rows"], val=c["val"], sha256=file_sha256(tmp),
            splits=split_counts(c), bytes=tmp.stat().st_size))
        os.replace(tmp, final)
        failpoint("shard.done", final.name)
        self._index += 1
        self._counts = _zero_counts()


def _zero_counts() -> dict[str, int]:
    return dict(rows=0, val=0, **dict.fromkeys(SPLITS, 0))


def split_counts(counts: dict[str, int]) -> dict[str, int]:
    """Rows per split, for a shard or a manifest: labeled and unlabeled always, synthetic
    only when there are any (older sets, and sets without them, never name it)."""
    return {k: counts[k] for k in SPLITS if k != "synthetic" or counts[k]}


def write_manifest(out_dir: str | os.PathLike, shards: list[dict], *, members: list[str],
                   class_names: list[str], feature_shape: tuple[int, ...], logits_dtype: str,
                   member_fingerprints: dict[str, str], params: dict,
                   extra: dict | None = None, hidden: dict[str, int] | None = None
                   ) -> dict[str, Any]:
    """Write manifest.json atomically; call it LAST, its presence means the set is complete.
    `shards`: the info dicts from every writer's close() (all ranks, any order)."""
    out_dir, shards = Path(out_dir), sorted(shards, key=lambda s: s["file"])
    if len({s["file"] for s in shards}) < len(shards):
        raise ValueError("duplicate shard files in manifest")
    if set(member_fingerprints) != set(members):
        raise ValueError(f"member_fingerprints {sorted(member_fingerprints)} != {members}")
    for s in shards:  # never publish a manifest over shards that are not all there
        p = out_dir / s["file"]
        if not p.is_file() or p.stat().st_size != s["bytes"]:
            raise ArtifactError(f"{p}: shard missing or not the size its writer reported")
    totals = dict(rows=sum(s["rows"] for s in shards), val=sum(s["val"] for s in shards),
                  splits=split_counts({k: sum(s["splits"].get(k, 0) for s in shards)
                                       for k in SPLITS}))
    manifest = dict(schema_version=SCHEMA_VERSION, shards=shards, totals=totals,
                    class_names=list(class_names), members=list(members),
                    feature_shape=list(feature_shape), logits_dtype=logits_dtype,
                    member_fingerprints=dict(member_fingerprints), params=params,
                    extra=extra or {})
    if hidden:  # member -> width of its `hidden.<member>` column; absent when there are none
        manifest["hidden"] = dict(hidden)
    write_json(out_dir / MANIFEST, manifest)
    return manifest


Count = Annotated[int, Field(ge=0)]


class _Entry(BaseModel):  # what readers use of a manifest; extra keys are kept, not checked
    model_config = ConfigDict(strict=True)


class _Shard(_Entry):
    file: Annotated[str, Field(pattern=r"^part(-[\w-]+)?-\d{5}\.parquet$")]  # no paths
    rows: Count
    val: Count
    sha256: str
    splits: dict[Literal["labeled", "unlabeled", "synthetic"], Count]


class _Totals(_Entry):
    rows: Count
    val: Count
    splits: dict[Literal["labeled", "unlabeled", "synthetic"], Count]


class _Manifest(_Entry):
    shards: list[_Shard]
    totals: _Totals
    class_names: Annotated[list[str], Field(min_length=1)]
    members: Annotated[list[Annotated[str, Field(pattern=r"^[\w-]+$")]], Field(min_length=1)]
    feature_shape: Annotated[list[Annotated[int, Field(gt=0)]], Field(min_length=1)]
    logits_dtype: Literal["float32", "float16"]
    hidden: dict[Annotated[str, Field(pattern=r"^[\w-]+$")], Annotated[int, Field(gt=0)]] = {}


def check_test_split(test: Split, manifest: dict, path: Path, manifest_path: str) -> None:
    """The test split must be the shards' data set: same feature width, labels among their
    classes. A test split from another prepare would otherwise fail mid-evaluation, after
    the training, or score the student against the wrong labels."""
    width, n_classes = int(np.prod(manifest["feature_shape"])), len(manifest["class_names"])
    if len(test.y) and test.x.shape[1] != width:
        raise ArtifactError(f"{path}: rows have {test.x.shape[1]} features, the shards in "
                            f"{manifest_path} have {width}")
    if len(test.y) and not 0 <= test.y.min() <= test.y.max() < n_classes:
        raise ArtifactError(f"{path}: labels {test.y.min()}..{test.y.max()} are not classes "
                            f"of {manifest_path} ({n_classes} classes)")


def prepared_digests(prepared: str | os.PathLike) -> dict[str, str]:
    """What a shard set records of the prepared data it was made from: the sha256 of its test
    split, and one over meta.json and all three splits."""
    prepared, whole = Path(prepared), hashlib.sha256()
    for name in ("meta.json", "labeled.parquet", "unlabeled.parquet", "test.parquet"):
        whole.update(name.encode() + b"\0" + file_sha256(prepared / name).encode())
    return {"prepared_sha256": whole.hexdigest(),
            "test_sha256": file_sha256(prepared / "test.parquet")}


def check_same_test_split(manifest: dict, test_path: str | os.PathLike,
                          manifest_path: str) -> None:
    """ArtifactError unless `test_path` is the test split the shards were made beside: a test
    split from another prepare (another source, split seed or file) would score the student on
    rows it may have learned from, or on other data. Manifests from before the digest was
    recorded are not checked."""
    want = (manifest.get("extra") or {}).get("test_sha256") or manifest.get("test_sha256")
    if want is None:
        return
    have = file_sha256(Path(test_path))
    if have != want:
        raise ArtifactError(f"{test_path}: not the test split the shards in {manifest_path} "
                            f"were made with (sha256 {have[:12]}, the shards record "
                            f"{want[:12]}); rerun `dvc repro export` or use the matching "
                            "prepared data")


DEFAULT_DIR = "data/soft_targets"  # where `kd export` writes (dvc.yaml)


def _not_a_shard_set(loc, dir: str | os.PathLike) -> ArtifactError:
    """A missing path is named as missing; `dvc repro export` is the fix only for the
    pipeline's own shard directory, which is simply not built yet."""
    ours = not isinstance(dir, str) or "://" not in dir
    ours = ours and Path(os.path.realpath(dir)) == Path(os.path.realpath(DEFAULT_DIR))
    if not loc.exists():
        hint = "; run `dvc repro export` first" if ours else ""
        return ArtifactError(f"{loc.show()}: no such directory{hint}")
    hint = "run `dvc repro export` first" if ours else \
        "not a shard set, or one whose export or copy did not finish (the manifest comes last)"
    return ArtifactError(f"{loc.show(MANIFEST)}: file not found; {hint}")


def read_manifest(dir: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a shard set: a local directory or a URI (kd/io/storage.py)."""
    loc = locate(dir)
    path = loc.show(MANIFEST)
    if loc.size(MANIFEST) is None:
        raise _not_a_shard_set(loc, dir)
    try:
        m = json.loads(loc.read_bytes(MANIFEST))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(m, dict) or m.get("schema_version") != SCHEMA_VERSION:
        got = m.get("schema_version") if isinstance(m, dict) else type(m).__name__
        raise ArtifactError(f"{path}: schema_version {got!r}, expected {SCHEMA_VERSION}")
    if missing := {"shards", "totals", "class_names", "members", "feature_shape",
                   "logits_dtype"} - set(m):
        raise ArtifactError(f"{path}: missing keys {sorted(missing)}")
    try:  # a hand-edited or damaged manifest must not become a KeyError deep in a reader
        _Manifest.model_validate(m)
    except ValidationError as e:
        err = e.errors(include_url=False)[0]
        key = ".".join(str(p) for p in err["loc"])
        raise ArtifactError(f"{path}: {key}: {err['msg'].lower()}, got {err['input']!r}") from None
    return m


# A Batch holds rows along axis 0, except `logits` (M, B, C) along axis 1.
def take_rows(data: Batch, a: int | np.ndarray, b: int | None = None) -> Batch:
    """Rows a:b of every column, or the rows `a` picks (a boolean mask or an index array)."""
    idx = a if b is None else slice(a, b)
    return {k: v[:, idx] if k == "logits" else v[idx] for k, v in data.items()}


def concat_rows(parts: list[Batch]) -> Batch:
    return {k: np.concatenate([p[k] for p in parts], axis=int(k == "logits")) for k in parts[0]}


def file_sha256(path: Path | Location, file: str | None = None) -> str:
    h = hashlib.sha256()
    with open(path, "rb") if file is None else path.open(file) as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()
