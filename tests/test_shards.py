"""Soft-target shards: schema, writer, manifest, verify and the streaming reader.

Features and logits are known functions of row_id, so any row that comes back paired with the
wrong target is caught, whatever order the reader chose.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kd.errors import ArtifactError
from kd.targets.manifest import read_manifest, read_shard_metadata, write_manifest
from kd.targets.reader import ShardReader
from kd.targets.shards import ShardWriter
from kd.targets.shardset import read_table, summary, verify

MEMBERS = ["mlp_a", "cnn-b"]
CLASSES = ["zero", "one", "two"]
SHAPE = (2, 3)  # F = 6


def feats(rid: np.ndarray, width: int) -> np.ndarray:
    return (rid[:, None] * 0.5 + np.arange(width)[None, :]).astype(np.float32)  # (B, F)


def logit(rid: np.ndarray, k: int, C: int) -> np.ndarray:
    # exactly representable in float16 too: small integers and halves
    return ((rid[:, None] % 64) * 0.5 - 3 * k + np.arange(C)[None, :]).astype(np.float32)


def write_set(d: Path, *, n_lab: int = 130, n_unlab: int = 90, n_val: int = 20,
              rows_per_shard: int = 100, row_group_size: int = 32, batch: int = 25,
              members=MEMBERS, classes=CLASSES, shape=SHAPE, logits_dtype: str = "float32",
              **kw) -> list[dict]:
    """Labeled rows get ids 0..n_lab-1 (the first n_val are validation), unlabeled follow."""
    width, C = int(np.prod(shape)), len(classes)
    with ShardWriter(d, members=members, class_names=classes, feature_shape=shape,
                     rows_per_shard=rows_per_shard, row_group_size=row_group_size,
                     logits_dtype=logits_dtype, **kw) as w:
        for split, lo, hi in [("labeled", 0, n_lab), ("unlabeled", n_lab, n_lab + n_unlab)]:
            for a in range(lo, hi, batch):
                rid = np.arange(a, min(a + batch, hi), dtype=np.int64)
                lab = rid % C if split == "labeled" else np.full(len(rid), -1)
                w.write(rid, split, lab, rid < n_val if split == "labeled" else None,
                        feats(rid, width).reshape(len(rid), *shape),
                        {m: logit(rid, k, C) for k, m in enumerate(members)})
    shards = w.shards
    write_manifest(d, shards, members=members, class_names=classes, feature_shape=shape,
                   logits_dtype=logits_dtype, member_fingerprints={m: f"sha-{m}" for m in members},
                   params={"seed": 1})
    return shards


def check_pairs(b: dict, width: int = 6, C: int = 3) -> None:
    rid = b["row_id"]
    np.testing.assert_array_equal(b["features"], feats(rid, width))
    for k in range(b["logits"].shape[0]):
        np.testing.assert_array_equal(b["logits"][k], logit(rid, k, C))


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


# -- schema, writer, manifest --

def test_schema_metadata_and_manifest(tmp_path):
    write_set(tmp_path, extra_metadata={"teacher": "ens"})
    schema = pq.read_schema(tmp_path / "part-00000.parquet")
    assert schema.names == ["row_id", "split", "label", "is_val", "features",
                            "logits.mlp_a", "logits.cnn-b"]
    assert schema.field("row_id").type == pa.int64()
    assert schema.field("split").type == pa.dictionary(pa.int8(), pa.string())
    assert schema.field("label").type == pa.int32() and schema.field("label").nullable
    assert schema.field("is_val").type == pa.bool_()
    assert schema.field("features").type.list_size == 6
    assert schema.field("features").type.value_type == pa.float32()
    assert schema.field("logits.cnn-b").type.list_size == 3
    assert read_shard_metadata(tmp_path / "part-00001.parquet") == {
        "schema_version": 1, "class_names": CLASSES, "members": MEMBERS,
        "feature_shape": [2, 3], "logits_dtype": "float32", "extra": {"teacher": "ens"}}
    m = read_manifest(tmp_path)
    assert m["totals"] == {"rows": 220, "val": 20, "splits": {"labeled": 130, "unlabeled": 90}}
    assert [s["file"] for s in m["shards"]] == ["part-00000.parquet", "part-00001.parquet",
                                                 "part-00002.parquet"]
    assert m["member_fingerprints"] == {"mlp_a": "sha-mlp_a", "cnn-b": "sha-cnn-b"}
    assert m["params"] == {"seed": 1} and m["feature_shape"] == [2, 3]
    s = summary(tmp_path)
    assert (s["shards"], s["rows"], s["num_classes"], s["members"]) == (3, 220, 3, MEMBERS)
    assert s["bytes"] == sum((tmp_path / f["file"]).stat().st_size for f in m["shards"]) > 0


def test_rows_split_across_shards_and_row_groups(tmp_path):
    shards = write_set(tmp_path, rows_per_shard=100, row_group_size=32)
    assert [s["rows"] for s in shards] == [100, 100, 20]
    assert [s["splits"] for s in shards] == [{"labeled": 100, "unlabeled": 0},
                                             {"labeled": 30, "unlabeled": 70},
                                             {"labeled": 0, "unlabeled": 20}]
    assert [s["val"] for s in shards] == [20, 0, 0]
    for s in shards:
        p = tmp_path / s["file"]
        md = pq.ParquetFile(p).metadata
        assert md.num_rows == s["rows"] and s["bytes"] == p.stat().st_size
        assert s["sha256"] == sha(p)
        sizes = [md.row_group(i).num_rows for i in range(md.num_row_groups)]
        assert sizes[:-1] == [32] * (len(sizes) - 1) and sum(sizes) == s["rows"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "manifest.json", "part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_round_trip(tmp_path, dtype):
    write_set(tmp_path, logits_dtype=dtype)
    t = read_table(tmp_path)
    rid = t["row_id"].to_numpy()
    np.testing.assert_array_equal(rid, np.arange(220))
    assert t["label"].to_pylist() == [i % 3 for i in range(130)] + [None] * 90
    assert t["split"].to_pylist() == ["labeled"] * 130 + ["unlabeled"] * 90
    assert t["is_val"].to_pylist() == [i < 20 for i in range(220)]
    np.testing.assert_array_equal(
        t["features"].combine_chunks().flatten().to_numpy().reshape(-1, 6), feats(rid, 6))
    for k, m in enumerate(MEMBERS):
        z = t[f"logits.{m}"].combine_chunks().flatten().to_numpy().reshape(-1, 3)
        assert z.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(z.astype(np.float32), logit(rid, k, 3))
    # inexact values: exact in float32, within float16 precision otherwise
    noisy = (rid[:, None] * 0.3 + 1e-3 * np.arange(3)).astype(np.float32)  # not fp16-exact
    with ShardWriter(tmp_path / "n", members=["a"], class_names=CLASSES, feature_shape=(1,),
                     logits_dtype=dtype) as w:
        w.write(rid, "unlabeled", None, None, np.zeros((220, 1)), {"a": noisy})
    z = pq.read_table(tmp_path / "n" / "part-00000.parquet")["logits.a"]
    z = z.combine_chunks().flatten().to_numpy().reshape(-1, 3).astype(np.float32)
    if dtype == "float32":
        np.testing.assert_array_equal(z, noisy)
    else:
        assert not np.array_equal(z, noisy)
        np.testing.assert_allclose(z, noisy, rtol=1e-3)


def test_byte_identical_and_independent_of_write_batching(tmp_path):
    write_set(tmp_path / "a", batch=25)
    write_set(tmp_path / "b", batch=25)
    write_set(tmp_path / "c", batch=7)
    for name in ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet",
                 "manifest.json"]:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "c" / name).read_bytes()


def test_writer_buffers_at_most_one_row_group(tmp_path):
    w = ShardWriter(tmp_path, members=["a"], class_names=CLASSES, feature_shape=(4,),
                    rows_per_shard=1000, row_group_size=50)
    for i in range(40):
        rid = np.arange(i * 30, i * 30 + 30)
        w.write(rid, "unlabeled", None, None, feats(rid, 4), {"a": logit(rid, 0, 3)})
        assert w._pending < 50
    assert [s["rows"] for s in w.close()] == [1000, 200]


def test_validation_errors_name_member_and_row(tmp_path):
    w = ShardWriter(tmp_path, members=MEMBERS, class_names=CLASSES, feature_shape=SHAPE,
                    logits_dtype="float16")
    rid = np.arange(100, 105)
    good = {m: logit(rid, k, 3) for k, m in enumerate(MEMBERS)}
    x = feats(rid, 6)

    def bad(member, row, value):
        z = {m: v.copy() for m, v in good.items()}
        z[member][row, 1] = value
        return z

    for value in [np.nan, np.inf, 1e6]:  # 1e6 overflows float16 to inf
        with pytest.raises(ArtifactError, match=r"logits\.cnn-b: non-finite .*row_id 103"):
            w.write(rid, "unlabeled", None, None, x, bad("cnn-b", 3, value))
    with pytest.raises(ArtifactError, match=r"logits\.mlp_a: .*3 classes"):
        w.write(rid, "unlabeled", None, None, x, {**good, "mlp_a": np.zeros((5, 4))})
    with pytest.raises(ArtifactError, match=r"features: expected width 6"):
        w.write(rid, "unlabeled", None, None, np.zeros((5, 7)), good)
    with pytest.raises(ArtifactError, match=r"label: row_id 100"):
        w.write(rid, "labeled", np.array([-1, 0, 1, 2, 0]), None, x, good)
    with pytest.raises(ArtifactError, match=r"expected members"):
        w.write(rid, "unlabeled", None, None, x, {"mlp_a": good["mlp_a"]})
    with pytest.raises(ArtifactError, match=r"duplicate id 101"):
        w.write(np.array([100, 101, 101, 102, 103]), "unlabeled", None, None, x, good)
    assert w.close() == []  # nothing bad was written
    assert list(tmp_path.iterdir()) == []


def test_unclosed_writer_leaves_only_tmp_file(tmp_path):
    shards = write_set(tmp_path)
    w = ShardWriter(tmp_path, members=MEMBERS, class_names=CLASSES, feature_shape=SHAPE,
                    row_group_size=10, prefix="part-r007")
    rid = np.arange(1000, 1025)
    w.write(rid, "unlabeled", None, None, feats(rid, 6),
            {m: logit(rid, k, 3) for k, m in enumerate(MEMBERS)})  # never closed: "killed"
    names = sorted(p.name for p in tmp_path.iterdir())
    assert ".tmp-part-r007-00000.parquet" in names and "part-r007-00000.parquet" not in names
    # a new writer removed the old manifest: the directory no longer claims to be complete
    assert "manifest.json" not in names
    with pytest.raises(ArtifactError, match="manifest.json: file not found"):
        read_manifest(tmp_path)
    # rewrite the manifest for the finished shards: the temp file is never listed or read
    write_manifest(tmp_path, shards, members=MEMBERS, class_names=CLASSES, feature_shape=SHAPE,
                   logits_dtype="float32", member_fingerprints=dict.fromkeys(MEMBERS, "x"),
                   params={})
    assert verify(tmp_path)["rows"] == 220 and (tmp_path / ".tmp-part-r007-00000.parquet").exists()
    rows = np.concatenate([b["row_id"] for b in ShardReader(tmp_path).iter_batches(
        64, shuffle=False)])
    np.testing.assert_array_equal(rows, np.arange(220))


def test_exception_in_writer_removes_tmp_file(tmp_path):
    with pytest.raises(RuntimeError):
        with ShardWriter(tmp_path, members=["a"], class_names=CLASSES, feature_shape=(2,),
                         rows_per_shard=10, row_group_size=4) as w:
            rid = np.arange(15)
            w.write(rid, "unlabeled", None, None, feats(rid, 2), {"a": logit(rid, 0, 3)})
            raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["part-00000.parquet"]


def test_ranks_write_disjoint_shards_into_one_dir(tmp_path):
    infos = []
    for rank in range(2):
        with ShardWriter(tmp_path, members=["a"], class_names=CLASSES, feature_shape=(2,),
                         rows_per_shard=40, prefix=f"part-r{rank}") as w:
            rid = np.arange(rank * 100, rank * 100 + 50)
            w.write(rid, "unlabeled", None, None, feats(rid, 2), {"a": logit(rid, 0, 3)})
        infos += w.shards
    write_manifest(tmp_path, infos[::-1], members=["a"], class_names=CLASSES,
                   feature_shape=(2,), logits_dtype="float32",
                   member_fingerprints={"a": "x"}, params={})
    assert [s["file"] for s in read_manifest(tmp_path)["shards"]] == [
        "part-r0-00000.parquet", "part-r0-00001.parquet",
        "part-r1-00000.parquet", "part-r1-00001.parquet"]
    assert verify(tmp_path)["rows"] == 100


def test_write_manifest_refuses_missing_shard(tmp_path):
    shards = write_set(tmp_path)
    (tmp_path / "part-00001.parquet").unlink()
    (tmp_path / "manifest.json").unlink()
    with pytest.raises(ArtifactError, match="part-00001.parquet"):
        write_manifest(tmp_path, shards, members=MEMBERS, class_names=CLASSES,
                       feature_shape=SHAPE, logits_dtype="float32",
                       member_fingerprints=dict.fromkeys(MEMBERS, "x"), params={})
    assert not (tmp_path / "manifest.json").exists()


# -- manifest and verify --

@pytest.mark.parametrize("content, message", [
    (None, "file not found"), ("{oops", "not valid JSON"),
    (json.dumps({"schema_version": 2}), "schema_version 2"),
    (json.dumps({"schema_version": 1}), "missing keys")])
def test_read_manifest_errors(tmp_path, content, message):
    if content is not None:
        (tmp_path / "manifest.json").write_text(content)
    with pytest.raises(ArtifactError, match=message) as e:
        read_manifest(tmp_path)
    assert "manifest.json" in str(e.value) and "\n" not in str(e.value)


def _truncate(d):
    p = d / "part-00001.parquet"
    p.write_bytes(p.read_bytes()[:-100])


def _flip(d):
    p = d / "part-00001.parquet"
    b = bytearray(p.read_bytes())
    b[len(b) // 3] ^= 0x01
    p.write_bytes(bytes(b))


def _edit_rows(d):
    m = json.loads((d / "manifest.json").read_text())
    m["shards"][1]["rows"] += 1
    (d / "manifest.json").write_text(json.dumps(m))


@pytest.mark.parametrize("damage, file, message", [
    (_truncate, "part-00001.parquet", "unreadable"),
    (_flip, "part-00001.parquet", "sha256 does not match"),
    (lambda d: (d / "part-00001.parquet").unlink(), "part-00001.parquet", "missing"),
    (lambda d: (d / "part-00009.parquet").write_bytes(b"x"), "part-00009.parquet", "not listed"),
    (_edit_rows, "part-00001.parquet", "row count mismatch"),
])
def test_verify_catches_damage(tmp_path, damage, file, message):
    write_set(tmp_path)
    assert verify(tmp_path)["rows"] == 220
    damage(tmp_path)
    with pytest.raises(ArtifactError, match=message) as e:
        verify(tmp_path)
    assert file in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ArtifactError):
        ShardReader(tmp_path, verify_checksums=True)


@pytest.mark.parametrize("damage, file, found_by", [
    (_flip, "part-00001.parquet", 1),  # shards 0 and 2 are part 0's, shard 1 is part 1's
    (lambda d: (d / "part-00009.parquet").write_bytes(b"x"), "part-00009.parquet", 0),
])
def test_verify_parts_split_the_shards_and_together_check_all(tmp_path, damage, file, found_by):
    """Ranks share the hashing: part (i, n) checks every n-th shard from the i-th, part 0
    also the set as a whole; exactly one part finds a given damage."""
    write_set(tmp_path, rows_per_shard=80)  # 220 rows: 3 shards
    damage(tmp_path)
    for i in range(2):
        if i == found_by:
            with pytest.raises(ArtifactError, match=file):
                verify(tmp_path, part=(i, 2))
        else:
            assert verify(tmp_path, part=(i, 2))["rows"] == 220


def test_reader_rejects_shard_from_another_set(tmp_path):
    write_set(tmp_path / "a")
    write_set(tmp_path / "b", classes=["x", "y", "z"])
    (tmp_path / "b" / "part-00000.parquet").replace(tmp_path / "a" / "part-00000.parquet")
    with pytest.raises(ArtifactError, match="part-00000.parquet: class_names"):
        list(ShardReader(tmp_path / "a").iter_batches(50, shuffle=False))


# -- streaming reader --

def epoch_rows(r: ShardReader, **kw) -> np.ndarray:
    out = []
    for b in r.iter_batches(kw.pop("batch_size", 16), **kw):
        check_pairs(b)
        assert len(b["row_id"]) == len(b["features"]) == b["logits"].shape[1]
        out.append(b["row_id"])
    return np.concatenate(out)


def test_reader_batches_and_types(tmp_path):
    write_set(tmp_path, logits_dtype="float16")
    r = ShardReader(tmp_path)
    batches = list(r.iter_batches(16, shuffle=False))
    assert [len(b["row_id"]) for b in batches] == [16] * 13 + [12]
    b = batches[-1]  # ids 208..219: unlabeled
    assert b["row_id"].dtype == np.int64 and b["label"].dtype == np.int64
    assert b["features"].shape == (12, 6) and b["features"].dtype == np.float32
    assert b["logits"].shape == (2, 12, 3) and b["logits"].dtype == np.float32
    assert (b["label"] == -1).all() and not b["is_labeled"].any() and not b["is_val"].any()
    b = batches[0]
    np.testing.assert_array_equal(b["label"], np.arange(16) % 3)
    assert b["is_labeled"].all() and b["is_val"].all()
    np.testing.assert_array_equal(epoch_rows(r, shuffle=False), np.arange(220))
    assert r.num_rows() == 220


@pytest.mark.parametrize("buffer_rows", [1, 40, 1000])
def test_shuffled_epochs_visit_every_row_once_and_keep_pairs(tmp_path, buffer_rows):
    write_set(tmp_path)
    r = ShardReader(tmp_path)
    orders = {(s, e): epoch_rows(r, shuffle=True, seed=s, epoch=e, buffer_rows=buffer_rows)
              for s in (0, 1) for e in (0, 1)}
    for order in orders.values():
        np.testing.assert_array_equal(np.sort(order), np.arange(220))
        assert not np.array_equal(order, np.arange(220))
    assert len({o.tobytes() for o in orders.values()}) == 4  # seed and epoch both matter
    again = epoch_rows(r, shuffle=True, seed=1, epoch=1, buffer_rows=buffer_rows)
    np.testing.assert_array_equal(again, orders[1, 1])


def test_shuffle_mixes_across_the_buffer(tmp_path):
    write_set(tmp_path, rows_per_shard=220, row_group_size=20)  # one shard
    first = next(ShardReader(tmp_path).iter_batches(50, shuffle=True, seed=3, buffer_rows=200))
    assert np.ptp(first["row_id"]) > 100  # rows from many row groups in one batch


def test_shard_order_is_shuffled(tmp_path):
    write_set(tmp_path)  # shards hold ids 0..99, 100..199, 200..219
    r = ShardReader(tmp_path)
    first = {int(next(r.iter_batches(8, shuffle=True, seed=0, epoch=e, buffer_rows=8))
                  ["row_id"][0]) // 100 for e in range(10)}
    assert len(first) > 1  # with a tiny buffer, the first shard read is visible


def test_subset_of_shards_and_val_filters(tmp_path):
    write_set(tmp_path)
    r = ShardReader(tmp_path, columns=["is_val", "features", "logits"])
    sub = epoch_rows(r, shuffle=True, seed=0, shards=["part-00002.parquet",
                                                        "part-00000.parquet"])
    np.testing.assert_array_equal(np.sort(sub), np.r_[0:100, 200:220])
    assert r.num_rows(shards=["part-00002.parquet", "part-00000.parquet"]) == 120
    with pytest.raises(ArtifactError, match="part-00042.parquet"):
        list(r.iter_batches(8, shuffle=False, shards=["part-00042.parquet"]))
    train = epoch_rows(r, shuffle=True, seed=0, drop_val=True)
    np.testing.assert_array_equal(np.sort(train), np.arange(20, 220))
    val = epoch_rows(r, shuffle=False, only_val=True)
    np.testing.assert_array_equal(val, np.arange(20))
    assert (r.num_rows(drop_val=True), r.num_rows(only_val=True)) == (200, 20)
    b = next(r.iter_batches(8, shuffle=False, drop_val=True))
    assert sorted(b) == ["features", "is_val", "logits", "row_id"]


def test_columns_subset(tmp_path):
    write_set(tmp_path)
    b = next(ShardReader(tmp_path, columns=["label"]).iter_batches(8, shuffle=False,
                                                                   only_val=True))
    assert sorted(b) == ["label", "row_id"]
    with pytest.raises(ValueError, match="unknown columns"):
        ShardReader(tmp_path, columns=["logits.mlp_a"])


# -- property test --

@st.composite
def shard_sets(draw) -> dict:
    """Random rows (ids, splits, null labels, validation flags, features, logits) and writer
    settings; values come from a drawn seed, shapes and counts from hypothesis."""
    n = draw(st.integers(0, 60))
    spec = dict(
        shape=tuple(draw(st.lists(st.integers(1, 4), min_size=1, max_size=3))),
        classes=[f"c{i}" for i in range(draw(st.integers(1, 6)))],
        members=draw(st.lists(st.from_regex(r"[A-Za-z0-9_-]{1,6}", fullmatch=True),
                              min_size=1, max_size=4, unique=True)),
        ids=np.array(draw(st.lists(st.integers(-2**40, 2**40), min_size=n, max_size=n,
                                   unique=True)), np.int64),
        labeled=np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)), bool),
        dtype=draw(st.sampled_from(["float32", "float16"])),
        compression=draw(st.sampled_from(["zstd", "snappy", "gzip", "lz4", "none"])),
        rows_per_shard=draw(st.integers(1, 25)), batch=draw(st.integers(1, 17)),
        seed=draw(st.integers(0, 2**16)))
    spec["row_group_size"] = draw(st.integers(1, spec["rows_per_shard"]))
    rng = np.random.default_rng(spec["seed"])
    C, width = len(spec["classes"]), int(np.prod(spec["shape"]))
    spec["label"] = np.where(spec["labeled"], rng.integers(0, C, n), -1)
    spec["val"] = spec["labeled"] & (rng.random(n) < 0.3)
    spec["features"] = rng.normal(size=(n, width)).astype(np.float32)
    spec["logits"] = {m: (rng.normal(size=(n, C)) * 20).astype(np.float32)
                      for m in spec["members"]}
    return spec


def write_random_set(d: Path, s: dict) -> None:
    """Rows in the drawn order, in batches of `batch` that never mix the two splits."""
    n = len(s["ids"])
    with ShardWriter(d, members=s["members"], class_names=s["classes"],
                     feature_shape=s["shape"], rows_per_shard=s["rows_per_shard"],
                     row_group_size=s["row_group_size"], logits_dtype=s["dtype"],
                     compression=s["compression"]) as w:
        i = 0
        while i < n:
            j = i + 1
            while j < n and j - i < s["batch"] and s["labeled"][j] == s["labeled"][i]:
                j += 1
            lab = bool(s["labeled"][i])
            w.write(s["ids"][i:j], "labeled" if lab else "unlabeled", s["label"][i:j],
                    s["val"][i:j], s["features"][i:j].reshape(j - i, *s["shape"]),
                    {m: z[i:j] for m, z in s["logits"].items()})
            i = j
    write_manifest(d, w.shards, members=s["members"], class_names=s["classes"],
                   feature_shape=s["shape"], logits_dtype=s["dtype"],
                   member_fingerprints=dict.fromkeys(s["members"], "x"), params={})


@settings(max_examples=40, deadline=None)
@given(s=shard_sets(), shuffle=st.booleans(), buffer_rows=st.integers(1, 40))
def test_property_round_trip(tmp_path_factory, s, shuffle, buffer_rows):
    d = tmp_path_factory.mktemp("prop")
    write_random_set(d, s)
    n = len(s["ids"])
    info = verify(d)
    assert info["rows"] == n and info["shards"] == -(-n // s["rows_per_shard"])
    assert info["splits"] == {"labeled": int(s["labeled"].sum()),
                              "unlabeled": int((~s["labeled"]).sum())}
    assert info["val"] == int(s["val"].sum())
    got = list(ShardReader(d).iter_batches(s["batch"], shuffle=shuffle, seed=s["seed"],
                                           buffer_rows=buffer_rows))
    if not n:
        assert got == []
        return
    cat = {k: np.concatenate([b[k] for b in got], axis=1 if k == "logits" else 0)
           for k in got[0]}
    # read back equals written, row by row id, whatever order the reader chose
    back, want = np.argsort(cat["row_id"]), np.argsort(s["ids"])
    np.testing.assert_array_equal(cat["row_id"][back], s["ids"][want])
    np.testing.assert_array_equal(cat["label"][back], s["label"][want])
    np.testing.assert_array_equal(cat["is_labeled"][back], s["labeled"][want])
    np.testing.assert_array_equal(cat["is_val"][back], s["val"][want])
    np.testing.assert_array_equal(cat["features"][back], s["features"][want])
    for k, m in enumerate(s["members"]):  # stored in the chosen dtype, read as float32
        stored = s["logits"][m].astype(s["dtype"]).astype(np.float32)
        np.testing.assert_array_equal(cat["logits"][k][back], stored[want])
    # plain pyarrow sees null labels where the row is unlabeled
    t = read_table(d)
    assert t.column("label").null_count == int((~s["labeled"]).sum())
