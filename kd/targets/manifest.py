"""The soft-target shard set's schema and manifest: column names, split codes, each shard's
own metadata, and `manifest.json`, which lists every shard with its row count and sha256.

    m = read_manifest("data/soft_targets")           # checked: a damaged one is one line
    write_manifest(out_dir, shards, members=..., ...)  # last: its presence means complete

The writer is kd/targets/shards.py, the reader kd/targets/reader.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kd.errors import ArtifactError
from kd.io.atomic import write_json
from kd.io.storage import locate

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
META_KEY = "kd"  # the one Parquet schema-metadata key; its value is JSON
# split codes 0, 1, 2. "synthetic": rows made for the ensemble to label (kd/transfer/), which a
# reader treats like unlabeled rows. A shard or manifest names the synthetic count only when
# it has such rows, so a set without them is byte for byte what it was before the code existed.
SPLITS = ("labeled", "unlabeled", "synthetic")


def logits_column(member: str) -> str:
    return f"logits.{member}"


def topk_columns(member: str) -> tuple[str, str, str]:
    """A member's columns in a top-k set (export.top_k, kd/targets/topk.py), in place of its
    `logits.<member>`: its k largest logits (largest first), their class ids, and the
    log-sum-exp of its other logits."""
    return f"topk.{member}", f"ids.{member}", f"tail.{member}"


def target_columns(member: str, top_k: dict | None) -> list[str]:
    """The columns that hold a member's targets: its logits, or its top-k columns."""
    return list(topk_columns(member)) if top_k else [logits_column(member)]


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
    for key in ("members", "class_names", "feature_shape", "logits_dtype", "hidden", "views",
                "top_k"):
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


def split_counts(counts: dict[str, int]) -> dict[str, int]:
    """Rows per split, for a shard or a manifest: labeled and unlabeled always, synthetic
    only when there are any (older sets, and sets without them, never name it)."""
    return {k: counts[k] for k in SPLITS if k != "synthetic" or counts[k]}


def write_manifest(out_dir: str | os.PathLike, shards: list[dict], *, members: list[str],
                   class_names: list[str], feature_shape: tuple[int, ...], logits_dtype: str,
                   member_fingerprints: dict[str, str], params: dict,
                   extra: dict | None = None, hidden: dict[str, int] | None = None,
                   views: dict | None = None, top_k: dict | None = None,
                   fidelity: dict | None = None) -> dict[str, Any]:
    """Write manifest.json atomically; call it LAST, its presence means the set is complete.
    `shards`: the info dicts from every writer's close() (all ranks, any order). `top_k`: the
    writer's codec ({k, tail, ids}), `fidelity` its measure against dense logits on a sample
    (kd.targets.topk.fidelity); both absent from a dense set."""
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
    if views:  # the stored views' settings (kd/augment.py) and view rows per split
        manifest["views"] = dict(views)
        totals["views"] = {k: n for k in SPLITS
                           if (n := sum(s.get("views", {}).get(k, 0) for s in shards))}
    if top_k:
        manifest["top_k"] = dict(top_k)
    if fidelity:
        manifest["fidelity"] = dict(fidelity)
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


class _Views(_Entry):
    count: Annotated[int, Field(gt=0)]
    shift: Count
    noise: Annotated[float, Field(ge=0)]
    mixup: Annotated[float, Field(ge=0)]
    partners: Literal["all", "labeled"]
    seed: Count


class _TopK(_Entry):
    k: Annotated[int, Field(gt=0)]
    tail: Literal["uniform"]
    ids: Literal["uint8", "uint16", "uint32"]


class _Manifest(_Entry):
    shards: list[_Shard]
    totals: _Totals
    class_names: Annotated[list[str], Field(min_length=1)]
    members: Annotated[list[Annotated[str, Field(pattern=r"^[\w-]+$")]], Field(min_length=1)]
    feature_shape: Annotated[list[Annotated[int, Field(gt=0)]], Field(min_length=1)]
    logits_dtype: Literal["float32", "float16"]
    hidden: dict[Annotated[str, Field(pattern=r"^[\w-]+$")], Annotated[int, Field(gt=0)]] = {}
    views: _Views | None = None
    top_k: _TopK | None = None


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
