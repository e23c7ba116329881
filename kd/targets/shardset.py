"""A shard set as a whole: verify it against its manifest, summarise it, read it, copy it.

    kd shards verify data/soft_targets      # verify(), the same check every reader runs first
    kd shards copy data/soft_targets s3://bucket/kd/soft_targets

A set is a directory or a URI (kd/io/storage.py) holding part-*.parquet and manifest.json.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from kd.errors import ArtifactError
from kd.io.storage import copy_files, file_sha256, locate
from kd.targets.manifest import (
    MANIFEST,
    check_shard_metadata,
    read_manifest,
    read_shard_metadata,
    target_columns,
    topk_columns,
)
from kd.targets.topk import row_problem
from kd.targets.views import check_views


def verify(dir: str | os.PathLike, *, checksums: bool = True,
           part: tuple[int, int] = (0, 1)) -> dict[str, Any]:
    """Check that every listed shard exists, is readable Parquet, and has the manifest's row
    count and sha256, and that no unlisted part-*.parquet is present. Returns summary(dir);
    raises ArtifactError naming the first bad shard and what is wrong with it.

    `part=(i, n)` checks only every n-th shard from the i-th (n processes share the hashing;
    part 0 also checks the set as a whole)."""
    loc, m = locate(dir), read_manifest(dir)
    i, n = part
    for s in m["shards"][i::n]:
        p = loc.show(s["file"])
        if loc.size(s["file"]) is None:
            raise ArtifactError(f"{p}: shard listed in {MANIFEST} is missing")
        try:
            with loc.open(s["file"]) as f, pq.ParquetFile(f) as pf:
                rows = pf.metadata.num_rows
        except (OSError, pa.ArrowException) as e:
            raise ArtifactError(f"{p}: unreadable Parquet, truncated or corrupt ({e})") from None
        if rows != s["rows"]:
            raise ArtifactError(f"{p}: row count mismatch, file has {rows}, manifest {s['rows']}")
        if checksums and file_sha256(loc, s["file"]) != s["sha256"]:
            raise ArtifactError(f"{p}: sha256 does not match {MANIFEST} (file corrupt or replaced)")
        with loc.open(s["file"]) as f:
            check_shard_metadata(p, read_shard_metadata(f, p), m)
        if m.get("top_k"):
            _check_topk(loc, s["file"], m)
    if i != 0:
        return summary(dir)
    listed = {s["file"] for s in m["shards"]}
    if unlisted := [f for f in loc.glob("part-*.parquet") if f not in listed]:
        raise ArtifactError(f"{loc.show(unlisted[0])}: shard not listed in {MANIFEST}")
    if sum(s["rows"] for s in m["shards"]) != m["totals"]["rows"]:
        raise ArtifactError(f"{loc.show(MANIFEST)}: totals.rows disagrees with its shards")
    check_views(dir)  # stored views: each drawn again from its key
    return summary(dir)


def _check_topk(loc, file: str, m: dict[str, Any]) -> None:
    """Every row's stored top-k is one encode() could write (kd.targets.topk.row_problem):
    an edited column is one line naming the shard, the row and the column, even when whoever
    edited it also rewrote the manifest's checksums."""
    k, c = m["top_k"]["k"], len(m["class_names"])
    with loc.open(file) as f, pq.ParquetFile(f, pre_buffer=False) as pf:
        start = 0
        for g in range(pf.num_row_groups):
            t = pf.read_row_group(g)
            for member in m["members"]:
                cols = topk_columns(member)
                top, ids = (t[x].combine_chunks().flatten().to_numpy(zero_copy_only=False)
                            .reshape(-1, k) for x in cols[:2])
                tail = t[cols[2]].to_numpy()
                if (bad := row_problem(top, ids, tail, c)) is not None:
                    row, kind, why = bad
                    raise ArtifactError(
                        f"{loc.show(file)}: row {start + row} (row_id "
                        f"{t['row_id'][row].as_py()}), column {kind}.{member}: {why}; the "
                        "shard was edited or damaged, rerun `kd export`")
            start += t.num_rows


def target_bytes(loc, m: dict[str, Any]) -> dict[str, Any]:
    """What the stored targets cost: bytes a row for every member's target columns, as
    stored (raw) and on disk (compressed, from the Parquet footers), per member and per class
    of the data (dense float16 logits: 2 bytes a class)."""
    cols = {c for member in m["members"] for c in target_columns(member, m.get("top_k"))}
    disk = 0
    for s in m["shards"]:
        with loc.open(s["file"]) as f, pq.ParquetFile(f) as pf:
            md = pf.metadata
            for g in range(md.num_row_groups):
                rg = md.row_group(g)
                for j in range(rg.num_columns):
                    cc = rg.column(j)
                    if cc.path_in_schema.split(".list.")[0] in cols:
                        disk += cc.total_compressed_size
    rows, n_m, c = max(m["totals"]["rows"], 1), len(m["members"]), len(m["class_names"])
    item = 2 if m["logits_dtype"] == "float16" else 4
    tk = m.get("top_k")
    raw = (tk["k"] * (item + int(tk["ids"][4:]) // 8) + item) if tk else c * item
    out = dict(codec=f"top-{tk['k']} ({tk['tail']} tail)" if tk else "dense",
               raw_bytes_per_member=raw, raw_bytes_per_class=raw / c,
               disk_bytes_per_row=disk / rows, disk_bytes_per_member=disk / rows / n_m,
               disk_bytes_per_class=disk / rows / n_m / c,
               dense_float16_bytes_per_member=2 * c)
    return out


def describe_targets(info: dict[str, Any], T: float | None = None) -> list[str]:
    """summary()'s targets as lines for `kd shards show` and the report: the codec, bytes a
    row (all members), a member and a class, and for top-k its fidelity against dense logits
    on the export's sample, at T (the student's; the nearest measured T when not measured)."""
    t = info["targets"]
    codec = t["codec"] if t["codec"] != "dense" else f"dense {info['logits_dtype']}"
    out = [f"{codec}: {t['disk_bytes_per_row']:,.1f} bytes a row on disk, "
           f"{t['disk_bytes_per_member']:,.1f} a member, {t['disk_bytes_per_class']:.3f} a class "
           f"(stored {t['raw_bytes_per_member']} bytes a member, "
           f"{t['raw_bytes_per_class']:.3f} a class: "
           f"{t['raw_bytes_per_member'] / t['dense_float16_bytes_per_member']:.0%} of dense "
           f"float16's {t['dense_float16_bytes_per_member']})"]
    if f := info.get("fidelity"):
        temps = sorted(f["kl"], key=float)
        shown = temps if T is None else [min(temps, key=lambda x: abs(float(x) - T))]
        kl = ", ".join(f"{f['kl'][x]:.4f} at T={x}" for x in shown)
        out.append(f"fidelity on {f['rows']:,} exported rows (mean_probs of the members, "
                   f"uniform tail): KL(dense || stored) {kl}; top-1 agreement "
                   f"{f['top1_agreement']:.4f}")
    return out


def summary(dir: str | os.PathLike) -> dict[str, Any]:
    """What `kd shards show` prints: counts, classes, members, shapes and bytes on disk, and
    what the stored targets cost a row (and, for a top-k set, how close they are to dense)."""
    loc, m = locate(dir), read_manifest(dir)
    size = 0
    for s in m["shards"]:
        if (n := loc.size(s["file"])) is None:
            raise ArtifactError(f"{loc.show(s['file'])}: shard listed in {MANIFEST} is missing")
        size += n
    t = m["totals"]
    out = dict(dir=str(dir), shards=len(m["shards"]), rows=t["rows"], splits=t["splits"],
               val=t["val"], class_names=m["class_names"], num_classes=len(m["class_names"]),
               members=m["members"], feature_shape=m["feature_shape"],
               logits_dtype=m["logits_dtype"], bytes=size)
    if m.get("views"):  # stored views: their settings and view rows per split (among splits)
        out["views"] = {**m["views"], "rows": t.get("views", {})}
    out["targets"] = target_bytes(loc, m)
    if m.get("top_k"):
        out["top_k"], out["fidelity"] = m["top_k"], m.get("fidelity")
    return out


def read_table(dir: str | os.PathLike) -> pa.Table:
    """The whole soft-target set as one Table, shards in manifest order (small data, tests)."""
    loc = locate(dir)
    tables = []
    for s in read_manifest(dir)["shards"]:
        with loc.open(s["file"]) as f:
            tables.append(pq.read_table(f))
    return pa.concat_tables(tables) if tables else pa.table({})


def copy(src: str | os.PathLike, dst: str | os.PathLike) -> dict[str, Any]:
    """Copy a verified shard set to `dst` (a directory or URI), shards first and the manifest
    last, so a reader never sees a manifest before its shards; verifies the copy.

    Over an older set at `dst`: its manifest goes first (no reader pairs it with half-replaced
    shards), its shards that the new set lacks go before the new manifest is written. Files the
    old manifest did not list are never deleted (verify then refuses the copy)."""
    verify(src)
    files = [s["file"] for s in read_manifest(src)["shards"]]
    source, out = locate(src), locate(dst)
    if type(source.fs) is type(out.fs) and source.base.rstrip("/") == out.base.rstrip("/"):
        return verify(dst)  # the same place: deleting its manifest would lose the set
    old: list[str] = []
    if out.size(MANIFEST) is not None:
        with contextlib.suppress(ArtifactError):  # an unreadable old manifest lists nothing
            old = [s["file"] for s in read_manifest(dst)["shards"]]
    out.delete(MANIFEST)
    copy_files(source, out, files)
    for stale in sorted(set(old) - set(files)):  # only the old set's own shards
        out.delete(stale)
    copy_files(source, out, [MANIFEST])
    return verify(dst)  # any other part-*.parquet there is refused, not deleted
