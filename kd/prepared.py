"""The prepared-data contract: what `kd prepare` writes and every later stage reads.

    meta = load_meta("data/prepared")
    labeled, is_val = read_split("data/prepared", "labeled")     # Split, (N,) bool
    for part, is_val in iter_split("data/prepared", "unlabeled", 1024): ...

`data/prepared/{labeled,unlabeled,test}.parquet`: `row_id` int64, `label` int64 (null when
unlabeled), `is_val` bool (labeled rows held out for validation), `features`
fixed_size_list<float32>[F] (flattened; the shape is in meta.json). Reads stream in batches, so
memory stays flat; a damaged page or file is one line naming it. The sources that make these
files are kd/datasets.py.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from kd.datasets import SPLITS, Split, as_split
from kd.errors import ArtifactError


def prepared_schema(n_features: int) -> pa.Schema:
    return pa.schema([
        ("row_id", pa.int64()),
        ("label", pa.int64()),
        ("is_val", pa.bool_()),
        ("features", pa.list_(pa.float32(), n_features)),
    ])


def to_table(split: Split, is_val: np.ndarray) -> pa.Table:
    n, f = split.x.shape
    labels = pa.array(split.y, mask=split.y < 0, type=pa.int64())
    feats = pa.FixedSizeListArray.from_arrays(pa.array(split.x.reshape(-1), pa.float32()), f)
    return pa.Table.from_arrays(
        [pa.array(split.row_id, pa.int64()), labels, pa.array(is_val, pa.bool_()), feats],
        schema=prepared_schema(f),
    )


def load_meta(prepared: str | Path) -> dict:
    path = Path(prepared) / "meta.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ArtifactError(f"{path}: file not found; run `dvc repro prepare` first") from None
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{path}: not valid JSON ({e})") from None


def _corrupt(path: Path, e: Exception) -> ArtifactError:
    return ArtifactError(f"{path}: unreadable Parquet, truncated or corrupt "
                         f"({str(e).splitlines()[0]})")


def _open(prepared: str | Path, split: str) -> tuple[Path, pq.ParquetFile]:
    path = Path(prepared) / f"{split}.parquet"
    try:
        # pre_buffer (on by default) reads every row group ahead when streaming the whole file:
        # memory would grow with the row count. Off, a stream holds one batch. Page checksums
        # are verified where the file has them.
        return path, pq.ParquetFile(path, pre_buffer=False, page_checksum_verification=True)
    except FileNotFoundError:
        raise ArtifactError(f"{path}: file not found; run `dvc repro prepare` first") from None
    except (pa.ArrowException, OSError) as e:
        raise _corrupt(path, e) from None


def _batch_to_split(batch: pa.RecordBatch | pa.Table) -> tuple[Split, np.ndarray]:
    feats = batch.column("features")
    if isinstance(feats, pa.ChunkedArray):
        feats = feats.combine_chunks()
    n = len(batch)
    # flatten() honours the array's offset (a sliced batch); .values would not
    x = feats.flatten().to_numpy(zero_copy_only=False).reshape(n, -1) if n else np.zeros((0, 0))
    y = batch.column("label").fill_null(-1).to_numpy(zero_copy_only=False)
    ids = batch.column("row_id").to_numpy(zero_copy_only=False)
    return as_split(ids, x, y), batch.column("is_val").to_numpy(zero_copy_only=False)


def read_split(prepared: str | Path, split: str) -> tuple[Split, np.ndarray]:
    """A whole prepared split in memory, with its `is_val` mask."""
    path, pf = _open(prepared, split)
    try:  # a damaged page (a flipped byte) surfaces only when the data is decoded
        table = pf.read()
    except (pa.ArrowException, OSError) as e:
        raise _corrupt(path, e) from None
    return _batch_to_split(table)


def iter_split(
    prepared: str | Path, split: str, batch_size: int, rows: tuple[int, int] | None = None
) -> Iterator[tuple[Split, np.ndarray]]:
    """Stream a prepared split in batches of `batch_size` rows; memory stays flat. `rows`
    (start, stop) reads only that range, touching only the row groups that hold it, in batches
    that start at `start`: a range starting on a multiple of `batch_size` gets the very batches
    a whole-split stream has there (distributed export relies on it)."""
    path, pf = _open(prepared, split)
    if rows is None:
        yield from map(_batch_to_split, _checked(path, pf.iter_batches(batch_size=batch_size)))
        return
    start, stop = rows
    groups, first, offset = [], None, 0
    for g in range(pf.num_row_groups):
        n = pf.metadata.row_group(g).num_rows
        if offset < stop and offset + n > start:
            groups.append(g)
            first = offset if first is None else first
        offset += n
    if not groups:
        return
    pending: list[pa.RecordBatch] = []
    have, pos = 0, first  # rows buffered; row index of the next batch from the file
    for batch in _checked(path, pf.iter_batches(batch_size=batch_size, row_groups=groups)):
        lo, hi = max(start - pos, 0), min(stop - pos, len(batch))
        pos += len(batch)
        if lo < hi:
            pending.append(batch.slice(lo, hi - lo))
            have += hi - lo
        while have >= batch_size or (have and pos >= stop):
            table = pa.Table.from_batches(pending)
            yield _batch_to_split(table.slice(0, batch_size))
            rest = table.slice(batch_size)
            pending, have = rest.to_batches(), rest.num_rows
        if pos >= stop:
            return
    if have:  # `stop` was past the end of the file
        yield _batch_to_split(pa.Table.from_batches(pending))


def _checked(path: Path, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """`batches`, with a damaged page (a checksum or decoding error) named by its file."""
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except (pa.ArrowException, OSError) as e:
            raise _corrupt(path, e) from None
        yield batch


PREPARED_FILES = ("meta.json", *(f"{split}.parquet" for split in SPLITS))


def prepared_sha256(prepared: str | Path, names: tuple[str, ...] = PREPARED_FILES) -> str:
    """sha256 over the named files of a prepared directory (each name and its file's sha256):
    what a checkpoint or a derived set is keyed on. Unlike meta.json's source fingerprint it
    sees the split (`is_val`, and which rows are test rows), so a change of data.split_seed
    changes it. Over all files it is the shards' `prepared_sha256`
    (kd.targets.provenance.prepared_digests)."""
    whole = hashlib.sha256()
    for name in names:
        h = hashlib.sha256()
        try:
            with open(Path(prepared) / name, "rb") as f:
                while block := f.read(1 << 20):
                    h.update(block)
        except FileNotFoundError:
            raise ArtifactError(f"{Path(prepared) / name}: file not found; run `dvc repro "
                                "prepare` first") from None
        whole.update(name.encode() + b"\0" + h.hexdigest().encode())
    return whole.hexdigest()


def split_rows(prepared: str | Path, split: str) -> int:
    """Rows in a prepared split, from the Parquet footer (no data read)."""
    return _open(prepared, split)[1].metadata.num_rows


def max_row_id(prepared: str | Path) -> int:
    """The largest row id of any prepared split (-1 when all are empty), from the id column
    alone: new rows numbered above it cannot collide with a prepared row."""
    top = -1
    for split in SPLITS:
        path, pf = _open(prepared, split)
        try:
            ids = pf.read(columns=["row_id"]).column("row_id")
        except (pa.ArrowException, OSError) as e:
            raise _corrupt(path, e) from None
        if len(ids):
            top = max(top, int(pc.max(ids).as_py()))
    return top


class _Stream:
    """Rows of one split, handed out in runs of any length."""

    def __init__(self, batches: Iterator[tuple[Split, np.ndarray]]):
        self.batches, self.parts, self.vals, self.have = batches, [], [], 0

    def take(self, n: int) -> tuple[Split, np.ndarray]:
        while self.have < n:
            part, val = next(self.batches)
            self.parts.append(part)
            self.vals.append(val)
            self.have += len(part.row_id)
        rid = np.concatenate([p.row_id for p in self.parts])
        x = np.concatenate([p.x for p in self.parts])
        y = np.concatenate([p.y for p in self.parts])
        val = np.concatenate(self.vals)
        rest = len(rid) - n
        self.parts = [Split(rid[n:], x[n:], y[n:])] if rest else []
        self.vals, self.have = ([val[n:]] if rest else []), rest
        return Split(rid[:n], x[:n], y[:n]), val[:n]


def interleave(sources: list[tuple[Path, str]], batch_size: int, rank: int = 0,
               world: int = 1, seed: int = 0) -> Iterator[tuple[str, Split, np.ndarray]]:
    """(split, rows, is_val) runs of several splits mixed in proportion, batch by batch: every
    output batch of about `batch_size` rows holds each split's share of it, the splits in a
    seeded order. A streaming reader (or a rank's share of the set) then never meets the
    labeled rows in one burst. Memory stays flat. Distributed, rank `rank` of `world` gets a
    contiguous run of whole batches; together the ranks give exactly one process's rows."""
    sizes = [split_rows(where, split) for where, split in sources]
    total = sum(sizes)
    k_all = -(-total // batch_size) if total else 0
    lo, hi = k_all * rank // world, k_all * (rank + 1) // world
    streams = []
    for (where, split), n in zip(sources, sizes, strict=True):
        a, b = (n * lo // k_all, n * hi // k_all) if k_all else (0, 0)
        streams.append(_Stream(iter_split(where, split, batch_size, (a, b)) if b > a
                               else iter(())))
    for k in range(lo, hi):
        for i in np.random.default_rng([seed, k]).permutation(len(sources)):
            n = sizes[i]
            count = n * (k + 1) // k_all - n * k // k_all  # this batch's share of split i
            if count:
                part, is_val = streams[i].take(count)
                yield sources[i][1], part, is_val
