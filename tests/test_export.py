"""The export stage: every member's logits on every labeled and unlabeled row, as shards.

The pipeline (digits, two tiny MLP members) is built once per module; tests that change
anything work on copies. Logits are checked against a direct forward pass of each member, joined
by row_id; a SIGKILLed `kd export` must leave the previous complete set (or none) behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from kd.config import parse_config
from kd.errors import ArtifactError
from kd.models import build_model, load_model, model_fingerprint, save_model
from kd.prepared import load_meta, read_split
from kd.targets.manifest import MANIFEST, read_manifest, read_shard_metadata
from kd.targets.shardset import read_table, verify
from stages import export
from tests.conftest import assert_user_error, build_pipeline, one_variant, run_to_failpoint

TRAIN = {"epochs": 2, "batch_size": 64}
MLP = {"arch": "mlp", "knobs": {"depth": 1, "width": 16}, "train": TRAIN}
PARAMS = {
    "data": {"source": "digits"},
    "teacher": {"members": {"a": MLP, "b": {**MLP, "train": {**TRAIN, "seed": 1}}}},
    "export": {"rows_per_shard": 300, "row_group_size": 100, "batch_size": 128},
    "student": one_variant({"arch": "mlp", "knobs": {"depth": 1, "width": 8}, "train": TRAIN}),
    "tracking": {"enabled": False},
}
MEMBERS = ["a", "b"]


def build(root: Path, params: dict) -> Path:
    """prepare, every teacher member and export, in-process, in `root`."""
    return build_pipeline(root, params)


def files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def pipe(tmp_path_factory) -> Path:
    return build(tmp_path_factory.mktemp("export") / "p", PARAMS)


@pytest.fixture(scope="module")
def table(pipe) -> pa.Table:
    return read_table(pipe / "data/soft_targets")


def prepared_by_id(prepared: Path) -> dict[str, tuple]:
    """split -> (Split, is_val) of data/prepared."""
    return {s: read_split(prepared, s) for s in ("labeled", "unlabeled", "test")}


def export_to(pipe: Path, out: Path, **export_params) -> dict:
    params = {**PARAMS, "export": {**PARAMS["export"], **export_params}}
    return export.run(parse_config(params), out, pipe / "data/prepared", pipe / "data/teachers")


# ------------------------------------------------------------------ schema and metadata


def test_shard_schema_and_metadata(pipe, table):
    meta = load_meta(pipe / "data/prepared")
    shards = sorted((pipe / "data/soft_targets").glob("part-*.parquet"))
    assert len(shards) == 5  # 1,437 rows at 300 per shard
    assert table.column_names == ["row_id", "split", "label", "is_val", "features",
                                  "logits.a", "logits.b"]
    schema = table.schema
    assert schema.field("row_id").type == pa.int64()
    assert schema.field("features").type == pa.list_(pa.float32(), 64)
    for m in MEMBERS:
        assert schema.field(f"logits.{m}").type == pa.list_(pa.float32(), 10)
    for path in shards:
        kd_meta = read_shard_metadata(path)
        assert kd_meta["class_names"] == meta["class_names"] == [str(i) for i in range(10)]
        assert kd_meta["members"] == MEMBERS
        assert kd_meta["feature_shape"] == meta["feature_shape"] == [8, 8]
        assert kd_meta["logits_dtype"] == "float32"
        assert kd_meta["extra"]["prepared_fingerprint"] == meta["fingerprint"]
        assert pq.ParquetFile(path).metadata.num_rows <= 300


def test_manifest_lists_every_shard_and_member_fingerprints(pipe):
    d = pipe / "data/soft_targets"
    m = read_manifest(d)
    listed = [s["file"] for s in m["shards"]]
    assert listed == sorted(p.name for p in d.glob("part-*.parquet"))
    for s in m["shards"]:
        path = d / s["file"]
        assert s["rows"] == pq.ParquetFile(path).metadata.num_rows
        assert s["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert s["bytes"] == path.stat().st_size
    meta = load_meta(pipe / "data/prepared")
    assert m["totals"]["rows"] == meta["rows"]["labeled"] + meta["rows"]["unlabeled"]
    assert m["totals"]["splits"] == {"labeled": meta["rows"]["labeled"],
                                     "unlabeled": meta["rows"]["unlabeled"]}
    assert m["class_names"] == meta["class_names"]
    assert m["feature_shape"] == [8, 8]
    assert m["members"] == MEMBERS
    fps = {n: model_fingerprint(pipe / "data/teachers" / n) for n in MEMBERS}
    assert m["member_fingerprints"] == fps
    assert fps["a"] != fps["b"]
    assert verify(d)["rows"] == 1437


# ------------------------------------------------------------------ rows, ids, labels


def test_row_ids_unique_complete_and_labels_by_id(pipe, table):
    prep = prepared_by_id(pipe / "data/prepared")
    ids = table["row_id"].to_numpy()
    assert len(np.unique(ids)) == len(ids), "a row_id occurs twice in the shards"
    lab, unl, test = (prep[s][0].row_id for s in ("labeled", "unlabeled", "test"))
    assert len(unl) > 0
    assert sorted(ids.tolist()) == sorted(np.concatenate([lab, unl]).tolist())
    assert not set(ids.tolist()) & set(test.tolist()), "test rows leaked into the soft targets"

    split = np.asarray(table["split"].to_pylist())
    label = table["label"]
    is_val = table["is_val"].to_numpy()
    assert set(ids[split == "labeled"].tolist()) == set(lab.tolist())
    assert set(ids[split == "unlabeled"].tolist()) == set(unl.tolist())
    null = label.is_null().to_numpy(zero_copy_only=False)
    np.testing.assert_array_equal(null, split == "unlabeled")
    # labels and validation flags agree with data/prepared for the same row_id
    want_label = dict(zip(lab.tolist(), prep["labeled"][0].y.tolist(), strict=True))
    want_val = {**dict(zip(lab.tolist(), prep["labeled"][1].tolist(), strict=True)),
                **dict.fromkeys(unl.tolist(), False)}
    got_label = label.to_pylist()
    for i, rid in enumerate(ids.tolist()):
        assert is_val[i] == want_val[rid], rid
        if rid in want_label:
            assert got_label[i] == want_label[rid], rid
    assert is_val.sum() == prep["labeled"][1].sum() > 0


def test_logits_equal_a_direct_forward_pass_joined_by_row_id(pipe, table):
    prep = prepared_by_id(pipe / "data/prepared")
    ids = np.concatenate([prep[s][0].row_id for s in ("labeled", "unlabeled")])
    x = np.concatenate([prep[s][0].x for s in ("labeled", "unlabeled")])  # (N, 64)
    order = np.argsort(ids)
    ids, x = ids[order], x[order]
    # the shards' rows, looked up in the prepared rows by id (not by position)
    shard_ids = table["row_id"].to_numpy()
    pos = np.searchsorted(ids, shard_ids)
    np.testing.assert_array_equal(ids[pos], shard_ids)
    feats = table["features"].combine_chunks().flatten().to_numpy().reshape(-1, 64)
    np.testing.assert_array_equal(feats, x[pos])
    for m in MEMBERS:
        model, spec = load_model(pipe / "data/teachers" / m)
        model.eval()
        with torch.no_grad():
            want = model(torch.from_numpy(x).view(-1, *spec["input_shape"])).numpy()  # (N, C)
        got = table[f"logits.{m}"].combine_chunks().flatten().to_numpy().reshape(-1, 10)
        np.testing.assert_allclose(got, want[pos], rtol=1e-5, atol=1e-5, err_msg=m)
    # the two members are different networks: each column holds its own member's logits
    a = table["logits.a"].combine_chunks().flatten().to_numpy()
    b = table["logits.b"].combine_chunks().flatten().to_numpy()
    assert not np.allclose(a, b, atol=1e-3)


def test_float16_logits_are_float16_and_close_to_float32(pipe, table, tmp_path):
    out = tmp_path / "f16"
    export_to(pipe, out, logits_dtype="float16")
    half = read_table(out)
    assert read_manifest(out)["logits_dtype"] == "float16"
    np.testing.assert_array_equal(half["row_id"].to_numpy(), table["row_id"].to_numpy())
    for m in MEMBERS:
        assert half.schema.field(f"logits.{m}").type == pa.list_(pa.float16(), 10)
        h = half[f"logits.{m}"].combine_chunks().flatten().to_numpy()
        f = table[f"logits.{m}"].combine_chunks().flatten().to_numpy()
        assert h.dtype == np.float16
        np.testing.assert_allclose(h.astype(np.float32), f, rtol=1e-3, atol=1e-3)
        assert (h.astype(np.float32) != f).any(), "float16 should round some logits"
    for path in out.glob("part-*.parquet"):
        assert read_shard_metadata(path)["logits_dtype"] == "float16"
    assert sum(p.stat().st_size for p in out.glob("part-*")) < sum(
        p.stat().st_size for p in (pipe / "data/soft_targets").glob("part-*"))


def test_exporting_twice_gives_identical_bytes(pipe, tmp_path):
    export_to(pipe, tmp_path / "one")
    export_to(pipe, tmp_path / "two")
    one, two = files(tmp_path / "one"), files(tmp_path / "two")
    assert MANIFEST in one and len(one) == 6
    assert one == two
    assert one == files(pipe / "data/soft_targets")  # and the same as the fixture's export


# ------------------------------------------------------------------ a killed export


def tmp_dirs(root: Path) -> list[Path]:
    return sorted((root / "data").glob(".tmp-soft_targets.*"))


def kill_export(root: Path, point: str, shards: int) -> None:
    """`kd export` SIGKILLed at `point` (kd/io/faults.py), when `shards` shards are in place
    in its temporary directory: what it leaves there does not look like a complete set."""
    result = run_to_failpoint([sys.executable, "-m", "kd.cli", "export"], root, point,
                              env={"KD_TRACKING": "0"})
    assert result.returncode == -signal.SIGKILL
    [partial] = tmp_dirs(root)
    assert len(list(partial.glob("part-*.parquet"))) == shards
    assert not (partial / MANIFEST).exists()
    with pytest.raises(ArtifactError):  # what the student stage does first
        verify(partial)


def visible_outputs(root: Path) -> set[str]:
    return {p.name for p in (root / "data").iterdir() if not p.name.startswith(".")}


@pytest.mark.slow
def test_killed_export_leaves_previous_set_or_none(pipe, tmp_path):
    ref = files(pipe / "data/soft_targets")  # the uninterrupted export: 5 shards of 300 rows
    root = copy_pipeline(pipe, tmp_path / "p")
    shutil.rmtree(root / "data/soft_targets")

    # killed with no earlier set, three shards in: no data/soft_targets at all
    kill_export(root, "shard.done@3", shards=3)
    assert visible_outputs(root) == {"prepared", "teachers"}

    # rerun to completion: the same bytes as the uninterrupted export, the partial set gone
    proc = subprocess.run([sys.executable, "-m", "kd.cli", "export"], cwd=root,
                          env={**os.environ, "KD_TRACKING": "0"}, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert files(root / "data/soft_targets") == ref
    assert tmp_dirs(root) == []

    # killed with a complete set in place, every new shard written but no manifest yet: the
    # earlier set is untouched and still verifies
    kill_export(root, "export.manifest", shards=5)
    assert visible_outputs(root) == {"prepared", "teachers", "soft_targets"}
    assert files(root / "data/soft_targets") == ref
    assert verify(root / "data/soft_targets")["rows"] == 1437


def test_rerun_removes_a_killed_exports_partial_directory(pipe, tmp_path):
    # atomic.py: a killed stage leaves "at most a .tmp-* sibling behind, which ... the next run
    # removes or overwrites"; a killed export's partial shards can be gigabytes
    d = copy_pipeline(pipe, tmp_path / "p")
    stale = d / "data/.tmp-soft_targets.k1ll3d"
    stale.mkdir()
    shutil.copy(d / "data/soft_targets/part-00000.parquet", stale / "part-00000.parquet")
    export_to(d, d / "data/soft_targets")
    assert tmp_dirs(d) == []


# ------------------------------------------------------------------ kd shards verify / show


def test_shards_verify_accepts_a_good_set(pipe, kd):
    result = kd("shards", "verify", pipe / "data/soft_targets")
    assert result.exit_code == 0, result.output
    assert "ok" in result.output and "1,437 rows" in result.output


def _truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _flip(p: Path) -> None:
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF
    p.write_bytes(bytes(data))


@pytest.mark.parametrize("damage, message", [
    (_truncate, "unreadable Parquet"),
    (_flip, "sha256"),
    (Path.unlink, "missing"),
])
def test_shards_verify_names_the_bad_shard(pipe, tmp_path, kd, damage, message):
    d = tmp_path / "shards"
    shutil.copytree(pipe / "data/soft_targets", d)
    damage(d / "part-00002.parquet")
    out = assert_user_error(kd("shards", "verify", d), "part-00002.parquet", message)
    assert "part-00001" not in out and "part-00003" not in out


def test_shards_show_prints_rows_per_split_and_members(pipe, kd):
    meta = load_meta(pipe / "data/prepared")
    result = kd("shards", "show", pipe / "data/soft_targets")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    for split in ("labeled", "unlabeled"):
        n = meta["rows"][split]
        assert any(ln.split()[:3] == [split, f"{n:,}", "rows"] for ln in lines), (split, lines)
    assert any(ln.split() == ["members", "2:", "a,", "b"] for ln in lines), lines
    assert "1,437 rows in 5 shards" in result.output
    as_json = kd("shards", "show", "--json", pipe / "data/soft_targets")
    info = json.loads(as_json.output)
    assert info["splits"] == {"labeled": 718, "unlabeled": 719}
    assert info["members"] == MEMBERS


# ------------------------------------------------------------------ clear errors


def copy_pipeline(pipe: Path, dst: Path) -> Path:
    shutil.copytree(pipe, dst, ignore=shutil.ignore_patterns(".checkpoints"))
    return dst


def replace_member(teachers: Path, name: str, *, n_classes: int = 10,
                   input_shape: tuple[int, ...] = (8, 8)) -> None:
    """A valid model directory for `name` that does not fit the prepared data."""
    shutil.rmtree(teachers / name)
    model = build_model("mlp", input_shape, n_classes, {"depth": 1, "width": 16})
    save_model(teachers / name, model, {
        "arch": "mlp", "knobs": {"depth": 1, "width": 16}, "input_shape": list(input_shape),
        "n_classes": n_classes, "class_names": [str(i) for i in range(n_classes)]})


def test_member_with_other_classes_is_one_line_via_cli(pipe, tmp_path, kd, monkeypatch):
    d = copy_pipeline(pipe, tmp_path / "p")
    replace_member(d / "data/teachers", "b", n_classes=3)
    before = files(d / "data/soft_targets")
    monkeypatch.chdir(d)
    assert_user_error(kd("export"), "member 'b'", "3 classes", "b/model.json")
    assert files(d / "data/soft_targets") == before  # the earlier output is untouched


def test_member_with_other_input_shape_names_the_member(pipe, tmp_path):
    d = copy_pipeline(pipe, tmp_path / "p")
    replace_member(d / "data/teachers", "a", input_shape=(64,))
    with pytest.raises(ArtifactError, match=r"member 'a'.*\(64,\).*\(8, 8\)") as e:
        export_to(d, tmp_path / "out")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()


def test_missing_teacher_dir_names_the_file(pipe, tmp_path):
    d = copy_pipeline(pipe, tmp_path / "p")
    shutil.rmtree(d / "data/teachers/b")
    with pytest.raises(ArtifactError, match=r"teachers/b/model\.json: file not found") as e:
        export_to(d, tmp_path / "out")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()


def test_interleave_mixes_splits_in_proportion_and_ranks_split_it_exactly(tmp_path):
    """Export's row order: every batch holds each split's share (no burst of labeled rows for
    a streaming shuffle or one rank to swallow), every row once, ranks = one process."""
    import numpy as np

    from kd.config import parse_config
    from kd.prepared import interleave, read_split
    from stages.prepare import run as prepare

    prepare(parse_config({"data": {"source": "digits"}}), tmp_path / "p")
    sources = [(tmp_path / "p", "labeled"), (tmp_path / "p", "unlabeled")]
    n_lab = len(read_split(tmp_path / "p", "labeled")[0].row_id)
    n_unl = len(read_split(tmp_path / "p", "unlabeled")[0].row_id)
    runs = list(interleave(sources, 100))
    ids = np.concatenate([part.row_id for _, part, _ in runs])
    assert len(ids) == len(set(ids.tolist())) == n_lab + n_unl
    share = n_lab / (n_lab + n_unl)
    labeled_flags = np.concatenate([np.full(len(p.row_id), s == "labeled") for s, p, _ in runs])
    # at every row, the labeled rows so far are the labeled share within one batch's worth:
    # never a burst (today's order put every labeled row first)
    behind = np.cumsum(labeled_flags) - share * np.arange(1, len(ids) + 1)
    assert np.abs(behind).max() <= 100
    assert labeled_flags[: len(ids) // 2].sum() == pytest.approx(n_lab / 2, abs=100)
    first_kinds = [s for s, _, _ in runs[:20]]
    assert first_kinds != sorted(first_kinds)  # the splits' order within batches is seeded
    for world in (2, 3):
        parts = [p.row_id for r in range(world) for _, p, _ in interleave(sources, 100, r, world)]
        assert np.concatenate(parts).tolist() == ids.tolist()
    again = np.concatenate([p.row_id for _, p, _ in interleave(sources, 100)])
    assert again.tolist() == ids.tolist()  # seeded: the same order every time
