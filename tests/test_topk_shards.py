"""Top-k soft targets in the pipeline (export.top_k, kd/targets/topk.py): the shards store
exactly the members' k largest logits, their ids and the tail's mass; readers give the student
the kept logits with the tail spread uniformly; the loss on a tiny case is the hand-computed
one; k = C - 1 is dense exactly; `kd shards verify` finds an edited column in one line; top_k
unset is the dense set byte for byte; views, shard sizes and two ranks change nothing.

The pipeline (digits, 10 classes, two tiny MLP members, 2 stored views a row, top-3) is built
once per module, with a dense export of the same members beside it.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from kd.config import parse_config
from kd.distill.losses import kd_loss, soft_targets
from kd.errors import ConfigError
from kd.io.storage import file_sha256
from kd.targets import topk
from kd.targets.manifest import MANIFEST, read_manifest
from kd.targets.reader import ShardReader
from kd.targets.shards import ShardWriter
from kd.targets.shardset import summary, verify
from kd.train.student import shard_batches
from stages import export, student
from tests.conftest import VARIANT, assert_user_error, build_pipeline, one_variant
from tests.test_views import assert_two_ranks_export_the_same, rows_by_key

TRAIN = {"epochs": 2, "batch_size": 64}
MLP = {"arch": "mlp", "knobs": {"depth": 1, "width": 16}, "train": TRAIN}
K = 3
PARAMS = {
    "data": {"source": "digits"},
    "teacher": {"members": {"a": MLP, "b": {**MLP, "train": {**TRAIN, "seed": 1}}}},
    "export": {"rows_per_shard": 300, "row_group_size": 100, "batch_size": 128, "top_k": K,
               "views": 2, "augment": {"shift": 1, "noise": 0.05}, "mixup": 0.4},
    "student": one_variant({"arch": "mlp", "knobs": {"depth": 1, "width": 8},
                            "train": {"epochs": 2, "batch_size": 32}}),
    "tracking": {"enabled": False},
}
SHARDS = "data/soft_targets"


def export_to(root: Path, out: Path, **export_params) -> Path:
    params = {**PARAMS, "export": {**PARAMS["export"], **export_params}}
    export.run(parse_config(params), out, root / "data/prepared", root / "data/teachers")
    return out


@pytest.fixture(scope="module")
def pipe(tmp_path_factory) -> tuple[Path, Path]:
    """The top-k pipeline, and a dense export of the same members over the same rows."""
    root = build_pipeline(tmp_path_factory.mktemp("topk") / "p", PARAMS)
    return root, export_to(root, root / "dense", top_k=None)


# ------------------------------------------------------------------ what is stored


def test_shards_hold_the_members_top_k_exactly_and_the_tail_mass(pipe):
    root, dense_dir = pipe
    top, dense = rows_by_key(root / SHARDS), rows_by_key(dense_dir)
    np.testing.assert_array_equal(top["row_id"], dense["row_id"])
    assert "logits.a" not in top and top["ids.a"].dtype == np.uint8
    m = read_manifest(root / SHARDS)
    assert m["top_k"] == {"k": K, "tail": "uniform", "ids": "uint8"}
    assert m["params"]["export"]["top_k"] == K
    for member in ("a", "b"):
        z = dense[f"logits.{member}"]  # (N, 10) float32: the members' logits as exported
        st = topk.encode(z, K)
        np.testing.assert_array_equal(top[f"topk.{member}"], st.logits)  # bit for bit
        np.testing.assert_array_equal(top[f"ids.{member}"], st.ids)
        np.testing.assert_array_equal(top[f"tail.{member}"], st.tail_lse)
        # the tail's mass at T = 1 is the dense one, to float tolerance
        p = torch.softmax(torch.from_numpy(z).double(), 1).numpy()
        rest = np.ones_like(p, bool)
        np.put_along_axis(rest, top[f"ids.{member}"].astype(int), False, 1)
        _, tail = topk.log_probs(topk.TopK(top[f"topk.{member}"], top[f"ids.{member}"],
                                           top[f"tail.{member}"], 10))
        np.testing.assert_allclose(np.exp(tail), np.where(rest, p, 0).sum(1), atol=1e-6)


def test_the_reader_gives_the_kept_logits_and_the_tail_spread_uniformly(pipe):
    root, _ = pipe
    top = rows_by_key(root / SHARDS)
    parts = list(ShardReader(root / SHARDS, views="all").iter_batches(10_000, shuffle=False))
    rid = np.concatenate([p["row_id"] for p in parts])
    view = np.concatenate([p["view"] for p in parts])
    z = np.concatenate([p["logits"] for p in parts], axis=1)  # (M, N, C)
    order = np.lexsort((view, rid))
    for i, member in enumerate(("a", "b")):
        want = topk.dense(top[f"topk.{member}"], top[f"ids.{member}"], top[f"tail.{member}"], 10)
        np.testing.assert_array_equal(z[i][order], want)
        spread = topk.spread_logits(*(torch.from_numpy(top[f"{c}.{member}"])
                                      for c in ("topk", "ids", "tail")), 10)
        np.testing.assert_allclose(want, spread.numpy(), rtol=0, atol=1e-6)


def test_the_loss_from_top_k_shards_is_the_hand_computed_one(tmp_path):
    """One row, 4 classes, k = 2, T = 2: writer -> reader -> the student's loss."""
    z = np.array([[3.0, -1.0, 1.0, 0.0]], np.float32)
    s = torch.tensor([[0.5, 0.2, -0.3, 0.1]])
    with ShardWriter(tmp_path, members=["a"], class_names=list("wxyz"), feature_shape=(1,),
                     top_k=2) as w:
        w.write(np.array([7]), "labeled", np.array([2]), None, np.zeros((1, 1)), {"a": z})
        shards = w.close()
    from kd.targets.manifest import write_manifest
    write_manifest(tmp_path, shards, members=["a"], class_names=list("wxyz"),
                   feature_shape=(1,), logits_dtype="float32", member_fingerprints={"a": "x"},
                   params={}, top_k=w.codec)
    b = next(ShardReader(tmp_path).iter_batches(1, shuffle=False))
    T, alpha = 2.0, 0.7
    # by hand: kept classes 0 (logit 3) and 2 (logit 1); the tail {1, 3} is one logit each at
    # log((e^-1 + e^0) / 2), so its total mass at T = 1 is the dense one
    fill = math.log((math.exp(-1) + math.exp(0)) / 2)
    t = [3.0, fill, 1.0, fill]
    p = [math.exp(v / T) for v in t]
    p = [v / sum(p) for v in p]
    q = [math.exp(v / T) for v in s[0].tolist()]
    q = [v / sum(q) for v in q]
    soft = T * T * sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))
    qs = torch.softmax(s, 1)[0].tolist()
    hard = -math.log(qs[2])
    want = alpha * soft + (1 - alpha) * hard
    got = kd_loss(s, soft_targets(torch.from_numpy(b["logits"]), T), torch.tensor([2]), T, alpha)
    assert float(got) == pytest.approx(want, rel=1e-6)
    # and the codec's own uniform-tail loss agrees
    st = topk.encode(z, 2)
    codec = topk.soft_loss(s, *(torch.from_numpy(a) for a in (st.logits, st.ids, st.tail_lse)),
                           T=T, tail="uniform")
    assert float(codec) == pytest.approx(soft, rel=1e-6)


def test_k_of_all_but_one_class_is_dense_exactly_and_k_of_all_is_refused(pipe, tmp_path):
    root, dense_dir = pipe
    lossless = export_to(root, tmp_path / "k9", top_k=9)
    a = np.concatenate([b["logits"] for b in ShardReader(lossless, views="all")
                        .iter_batches(10_000, shuffle=False)], axis=1)
    d = np.concatenate([b["logits"] for b in ShardReader(dense_dir, views="all")
                        .iter_batches(10_000, shuffle=False)], axis=1)
    np.testing.assert_array_equal(a, d)
    with pytest.raises(ConfigError, match=r"export.top_k: k=10 must be below the number of "):
        export_to(root, tmp_path / "k10", top_k=10)
    with pytest.raises(ConfigError, match="export.top_k"):
        ShardWriter(tmp_path / "w", members=["a"], class_names=["x", "y"], feature_shape=(1,),
                    top_k=1)


def test_a_top_k_value_float16_cannot_hold_is_one_line_naming_the_member_and_row(tmp_path):
    w = ShardWriter(tmp_path, members=["a"], class_names=list("wxyz"), feature_shape=(1,),
                    top_k=2, logits_dtype="float16")
    z = np.array([[1.0, 2.0, 3.0, 4.0], [7e4, 0.0, 1.0, 2.0]], np.float32)
    with pytest.raises(Exception, match=r"^logits.a: non-finite value at row_id 11 \(as "
                                        r"float16\)$"):
        w.write(np.array([10, 11]), "unlabeled", None, None, np.zeros((2, 1)), {"a": z})
    w.abort()


def test_top_k_unset_is_the_dense_set_byte_for_byte(pipe, tmp_path):
    root, dense_dir = pipe
    plain = {**PARAMS, "export": {k: v for k, v in PARAMS["export"].items() if k != "top_k"}}
    export.run(parse_config(plain), tmp_path / "plain", root / "data/prepared",
               root / "data/teachers")
    for p in sorted((tmp_path / "plain").iterdir()):
        assert p.read_bytes() == (dense_dir / p.name).read_bytes(), p.name
    m = read_manifest(dense_dir)
    assert not {"top_k", "fidelity"} & set(m) and "top_k" not in m["params"]["export"]
    assert "top_k" not in json.loads(pq.read_schema(dense_dir / m["shards"][0]["file"])
                                     .metadata[b"kd"])


def test_shards_do_not_depend_on_rows_per_shard(pipe, tmp_path):
    root, _ = pipe
    big = export_to(root, tmp_path / "big", rows_per_shard=2000, row_group_size=500)
    assert len(read_manifest(big)["shards"]) < len(read_manifest(root / SHARDS)["shards"])
    a, b = rows_by_key(root / SHARDS), rows_by_key(big)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


# ------------------------------------------------------------------ verify, show, report


def edited(root: Path, dst: Path, column: str, change) -> Path:
    """A copy of the set with row 5 of `column` in its second shard changed, and the
    manifest's checksum rewritten: only the top-k columns' own check can find it."""
    shutil.copytree(root / SHARDS, dst)
    m = json.loads((dst / MANIFEST).read_text())
    entry = m["shards"][1]
    path = dst / entry["file"]
    t = pq.read_table(path)
    col = t[column].combine_chunks()
    if pa.types.is_fixed_size_list(col.type):
        vals = col.flatten().to_numpy().reshape(len(col), -1).copy()
        change(vals[5])
        new = pa.FixedSizeListArray.from_arrays(pa.array(vals.reshape(-1)), type=col.type)
    else:
        vals = col.to_numpy().copy()
        vals[5] = change(vals[5])
        new = pa.array(vals, col.type)
    t = t.set_column(t.schema.get_field_index(column), t.schema.field(column), new)
    pq.write_table(t, path, compression="zstd")
    entry.update(sha256=file_sha256(path), bytes=path.stat().st_size)
    (dst / MANIFEST).write_text(json.dumps(m))
    return dst


def _swap(v):
    v[[0, 1]] = v[[1, 0]]


def _repeat(v):
    v[1] = v[0]


def _out_of_range(v):
    v[0] = 200


EDITS = {"topk.a": _swap, "ids.b": _repeat, "ids.a": _out_of_range,
         "tail.b": lambda x: np.float32(np.inf), "tail.a": lambda x: x + np.float32(50)}


@pytest.mark.parametrize("column", list(EDITS))
def test_an_edited_top_k_column_fails_verify_in_one_line(pipe, tmp_path, kd, column):
    root, _ = pipe
    d = edited(root, tmp_path / "edited", column, EDITS[column])
    line = assert_user_error(kd("shards", "verify", str(d)), "part-00001.parquet", "row 5 ",
                             f"column {column}", "rerun `kd export`")
    assert "row_id" in line
    verify(root / SHARDS)  # the set itself is sound


def test_shards_show_and_summary_state_bytes_and_fidelity(pipe, kd):
    root, dense_dir = pipe
    t, d = summary(root / SHARDS)["targets"], summary(dense_dir)["targets"]
    assert (t["raw_bytes_per_member"], d["raw_bytes_per_member"]) == (K * 5 + 4, 40)
    assert t["disk_bytes_per_row"] < d["disk_bytes_per_row"]
    f = read_manifest(root / SHARDS)["fidelity"]
    assert f["k"] == K and f["rows"] > 0 and 0.5 < f["top1_agreement"] <= 1
    assert all(v >= 0 for v in f["kl"].values()) and set(f["kl"]) >= {"1", "4"}
    out = kd("shards", "show", str(root / SHARDS)).output
    assert "top-3 (uniform tail)" in out and "a member" in out and "KL(dense || stored)" in out
    out = kd("shards", "show", str(dense_dir)).output
    assert "targets    dense float32: " in out and "KL" not in out


# ------------------------------------------------------------------ the student


def test_the_student_trains_on_top_k_shards(pipe):
    root, _ = pipe
    reader = ShardReader(root / SHARDS, views="sample", view_seed=3)
    b = next(iter(shard_batches(reader, 32, seed=3, buffer_rows=1000)(0)))
    assert b.t_logits.shape[0] == 2 and b.t_logits.shape[2] == 10
    cfg = parse_config(PARAMS)
    from tests.conftest import cwd
    with cwd(root), pytest.MonkeyPatch.context() as mp:
        mp.setenv("KD_TRACKING", "0")
        student.run(cfg, VARIANT)
    assert (root / "data/student" / VARIANT / "model.safetensors").is_file()


def test_two_student_ranks_read_the_top_k_rows_one_process_reads(pipe):
    """A distributed student's ranks together get one process's rows, with the same logits."""
    root, _ = pipe
    reader = ShardReader(root / SHARDS, views="sample", view_seed=5)

    def rows(batches):
        return {(int(r), int(v)): z.tobytes() for b in batches
                for r, v, z in zip(b["row_id"], b["view"], b["logits"].transpose(1, 0, 2),
                                   strict=True)}

    one = rows(reader.iter_batches(64, shuffle=True, seed=5, epoch=1, drop_val=True))
    ranks = [rows(reader.iter_rank_batches(32, world=2, rank=k, seed=5, epoch=1))
             for k in (0, 1)]
    assert ranks[0] | ranks[1] == one and not ranks[0].keys() & ranks[1].keys()


@pytest.mark.slow
def test_export_of_top_k_on_two_ranks_is_the_single_process_set(pipe, tmp_path):
    assert_two_ranks_export_the_same(pipe[0], PARAMS, tmp_path)
