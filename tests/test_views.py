"""Stored views (export.views, kd/augment.py) on real shards: a replayed view is the input the
teacher saw at export, bit for bit, and its stored logits are the teacher's on it; views do not
depend on shard boundaries or the process count; validation and test rows are never views or
partners; an edited view fails `kd shards verify` in one line; the student trains on them.

The pipeline (digits, two tiny MLP members, 2 views a row with shift, noise and mixup) is built
once per module, with the export's view inputs recorded as the members saw them.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from kd.augment import draw_views, expand, pick_views, replay
from kd.config import parse_config
from kd.distill.losses import hard_loss, kd_loss
from kd.errors import ConfigError
from kd.io.storage import file_sha256
from kd.models import load_model
from kd.prepared import read_split
from kd.targets.manifest import MANIFEST, read_manifest
from kd.targets.reader import ShardReader
from kd.targets.shardset import read_table, verify
from kd.train.student import shard_batches
from stages import export, student
from tests.conftest import (
    VARIANT,
    assert_user_error,
    build_pipeline,
    cwd,
    one_variant,
    run_cmd,
    run_to_failpoint,
)

TRAIN = {"epochs": 2, "batch_size": 64}
MLP = {"arch": "mlp", "knobs": {"depth": 1, "width": 16}, "train": TRAIN}
VIEWS = {"views": 2, "augment": {"shift": 1, "noise": 0.05}, "mixup": 0.4}
PARAMS = {
    "data": {"source": "digits"},
    "teacher": {"members": {"a": MLP, "b": {**MLP, "train": {**TRAIN, "seed": 1}}}},
    "export": {"rows_per_shard": 300, "row_group_size": 100, "batch_size": 128, **VIEWS},
    "student": one_variant({"arch": "mlp", "knobs": {"depth": 1, "width": 8},
                            "train": {"epochs": 4, "batch_size": 32}}),
    "tracking": {"enabled": False},
}
SHARDS = "data/soft_targets"


@pytest.fixture(scope="module")
def pipe(tmp_path_factory) -> tuple[Path, dict]:
    """The pipeline, and (row id, view) -> the input the members got at export."""
    seen: dict[tuple[int, int], np.ndarray] = {}
    views_of = export.ViewSource.views_of

    def recording(self, row_ids, labels):
        v, y, x = views_of(self, row_ids, labels)
        seen.update({(int(r), int(k)): x[i].copy()
                     for i, (r, k) in enumerate(zip(v["row_id"], v["view"], strict=True))})
        return v, y, x

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(export.ViewSource, "views_of", recording)
        root = build_pipeline(tmp_path_factory.mktemp("views") / "p", PARAMS)
    return root, seen


def rows_by_key(d: Path) -> dict[str, np.ndarray]:
    """Every row of a set, sorted by (row id, view), as numpy columns."""
    t = read_table(d)
    order = np.lexsort((t["view"].to_numpy(), t["row_id"].to_numpy()))
    out = {}
    for name in t.column_names:
        col = t[name].combine_chunks()
        if pa.types.is_fixed_size_list(col.type):
            arr = col.flatten().to_numpy().reshape(len(col), -1)
        elif pa.types.is_dictionary(col.type):
            arr = np.asarray(col.to_pylist(), object)
        else:
            arr = col.to_numpy(zero_copy_only=False)
        out[name] = arr[order]
    return out


def views_read(d: Path, **kw) -> dict[str, np.ndarray]:
    reader = ShardReader(d, views="all", **kw)
    parts = list(reader.iter_batches(10_000, shuffle=False, drop_val=True))
    return {k: np.concatenate([p[k] for p in parts], axis=int(k == "logits")) for k in parts[0]}


# ------------------------------------------------------------------ the replay is exact


def test_a_replayed_view_is_the_input_the_teacher_saw_and_its_logits_the_teachers(pipe):
    root, seen = pipe
    b = views_read(root / SHARDS)
    is_view = b["view"] > 0
    assert is_view.sum() == len(seen) > 0
    for i in np.flatnonzero(is_view):  # bit for bit, every view
        np.testing.assert_array_equal(b["features"][i], seen[(b["row_id"][i], b["view"][i])])
    x = b["features"][is_view]
    assert not np.array_equal(x, np.zeros_like(x))  # the replay ran: no stored zeros read
    for j, m in enumerate(("a", "b")):
        model, spec = load_model(root / "data/teachers" / m)
        model.eval()
        with torch.no_grad():
            want = model(torch.from_numpy(x).view(-1, *spec["input_shape"])).numpy()
        np.testing.assert_allclose(b["logits"][j][is_view], want, rtol=1e-5, atol=1e-5)


def test_views_are_augmented_and_mixed_from_training_partners(pipe):
    root, _ = pipe
    d = rows_by_key(root / SHARDS)
    views = d["view"] > 0
    assert (np.abs(d["shift"][views]) <= 1).all() and (d["shift"][views] != 0).any()
    assert (d["partner"][views] >= 0).all() and 0 < d["lam"][views].min() < 1
    assert len(np.unique(d["noise_seed"][views])) == views.sum()
    # each training row has exactly views 1..K, each with its row's split and label
    base = (d["view"] == 0) & ~d["is_val"]
    want_ids, want_views = expand(np.sort(d["row_id"][base]), 2)
    np.testing.assert_array_equal(d["row_id"][views], want_ids)
    np.testing.assert_array_equal(d["view"][views], want_views)
    label = dict(zip(d["row_id"][base], d["label"][base], strict=True))
    assert all(d["label"][i] == label[d["row_id"][i]] or (np.isnan(d["label"][i]) and
               np.isnan(label[d["row_id"][i]])) for i in np.flatnonzero(views))


def test_no_validation_or_test_row_is_a_view_or_a_partner(pipe):
    root, _ = pipe
    d = rows_by_key(root / SHARDS)
    lab, is_val = read_split(root / "data/prepared", "labeled")
    test, _ = read_split(root / "data/prepared", "test")
    held = set(lab.row_id[is_val].tolist()) | set(test.row_id.tolist())
    assert is_val.any() and held
    views = d["view"] > 0
    assert not set(d["row_id"][views].tolist()) & held
    assert not set(d["partner"][views].astype(np.int64).tolist()) & held
    assert not (d["is_val"] & views).any()


def test_a_view_draws_from_its_key_alone_and_replays_without_augmentation_to_the_row():
    settings = {"count": 3, "shift": 2, "noise": 0.1, "mixup": 0.5, "partners": "all", "seed": 7}
    ids, views = expand(np.arange(20), 3)
    pool = np.arange(20)
    whole = draw_views(settings, ids, views, pool, 2)
    pick = np.random.default_rng(0).permutation(len(ids))[:17]  # another order, a subset
    part = draw_views(settings, ids[pick], views[pick], pool, 2)
    for k in ("shift", "noise_seed", "partner", "lam"):
        np.testing.assert_array_equal(part[k], whole[k][pick])
    other = draw_views({**settings, "seed": 8}, ids, views, pool, 2)
    assert (other["noise_seed"] != whole["noise_seed"]).all()
    x = np.random.default_rng(1).standard_normal((len(ids), 16)).astype(np.float32)
    plain = {**settings, "shift": 0, "noise": 0.0, "mixup": 0.0}
    v = draw_views(plain, ids, views, pool, 2)
    np.testing.assert_array_equal(replay(x, x[::-1], v, (4, 4), plain), x)
    picks = [pick_views(np.arange(1000), 3, 0, e) for e in (0, 1)]
    assert set(picks[0].tolist()) == {0, 1, 2, 3} and (picks[0] != picks[1]).any()


# ------------------------------------------------------------------ the set as a whole


def export_to(root: Path, out: Path, **export_params) -> None:
    params = {**PARAMS, "export": {**PARAMS["export"], **export_params}}
    export.run(parse_config(params), out, root / "data/prepared", root / "data/teachers")


def test_views_do_not_depend_on_shard_boundaries(pipe, tmp_path):
    root, _ = pipe
    export_to(root, tmp_path / "big", rows_per_shard=2000, row_group_size=500)
    a, b = rows_by_key(root / SHARDS), rows_by_key(tmp_path / "big")
    assert len(read_manifest(tmp_path / "big")["shards"]) < len(read_manifest(root / SHARDS)["shards"])
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_views_zero_is_the_set_without_views(pipe, tmp_path):
    root, _ = pipe
    export_to(root, tmp_path / "zero", views=0)  # the view settings stay: they are not used
    plain = {**PARAMS, "export": {k: v for k, v in PARAMS["export"].items() if k not in VIEWS}}
    export.run(parse_config(plain), tmp_path / "plain", root / "data/prepared",
               root / "data/teachers")
    for p in sorted((tmp_path / "plain").iterdir()):
        assert p.read_bytes() == (tmp_path / "zero" / p.name).read_bytes(), p.name
    m = read_manifest(tmp_path / "zero")
    assert "views" not in m and "views" not in m["totals"]
    assert sorted(m["params"]["export"]) == ["batch_size", "compression", "hidden",
                                             "logits_dtype", "row_group_size", "rows_per_shard"]
    assert "view" not in read_table(tmp_path / "zero").column_names
    # the ranks' row ranges of a set without views (the reader's view part stands aside)
    plain_reader = ShardReader(tmp_path / "zero", views="sample")
    assert sum(n for _, _, n in plain_reader.training_rows()) == plain_reader.num_rows(
        drop_val=True) == int(np.sum(~read_table(tmp_path / "zero")["is_val"].to_numpy()))
    # the set with views holds the same rows as views 0, and K views of each training row
    t = rows_by_key(root / SHARDS)
    z = read_table(tmp_path / "zero")
    assert (t["view"] == 0).sum() == z.num_rows
    assert read_manifest(root / SHARDS)["totals"]["views"] == {
        s: 2 * int(((t["view"] == 0) & ~t["is_val"] & (t["split"] == s)).sum())
        for s in ("labeled", "unlabeled")}


def test_views_of_a_set_without_unlabeled_rows_are_of_the_labeled_rows(pipe, tmp_path):
    """No real unlabeled rows (the data-scarce case mixup views are for): an empty split."""
    root, _ = pipe
    prepared = tmp_path / "prepared"
    shutil.copytree(root / "data/prepared", prepared)
    t = pq.read_table(prepared / "unlabeled.parquet")
    pq.write_table(t.slice(0, 0), prepared / "unlabeled.parquet")
    params = {**PARAMS, "export": {**PARAMS["export"], "partners": "labeled"}}
    export.run(parse_config(params), tmp_path / "shards", prepared, root / "data/teachers")
    m = verify(tmp_path / "shards")
    lab, is_val = read_split(prepared, "labeled")
    assert m["splits"] == {"labeled": len(lab.row_id) + 2 * int((~is_val).sum()), "unlabeled": 0}


def edited(root: Path, dst: Path, column: str) -> Path:
    """A copy of the set with one view's `column` changed in a shard, and the manifest's
    checksum and size rewritten to match: only the views' own check can find it."""
    shutil.copytree(root / SHARDS, dst)
    m = json.loads((dst / MANIFEST).read_text())
    entry = m["shards"][1]
    path = dst / entry["file"]
    t = pq.read_table(path)
    i = int(np.flatnonzero(t["view"].to_numpy() > 0)[0])
    col = t[column].combine_chunks()
    if column == "shift":
        vals = col.flatten().to_numpy().copy()
        vals[i * 2] = 1 - vals[i * 2]  # -1 <-> 2, 0 -> 1, 1 -> 0
        new = pa.FixedSizeListArray.from_arrays(pa.array(vals), type=col.type)
    else:
        vals = pc.fill_null(col, -1).to_numpy(zero_copy_only=False).copy()  # partner: null
        vals[i] = vals[i] + 1 if column != "lam" else vals[i] * np.float32(0.5)
        new = pa.array(vals, col.type, mask=col.is_null().to_numpy(zero_copy_only=False))
    t = t.set_column(t.schema.get_field_index(column), t.schema.field(column), new)
    pq.write_table(t, path, compression="zstd")
    entry.update(sha256=file_sha256(path), bytes=path.stat().st_size)
    (dst / MANIFEST).write_text(json.dumps(m))
    return dst


@pytest.mark.parametrize("column", ["shift", "noise_seed", "partner", "lam"])
def test_edited_view_parameters_fail_verify_in_one_line(pipe, tmp_path, kd, column):
    root, _ = pipe
    d = edited(root, tmp_path / "edited", column)
    result = kd("shards", "verify", str(d))
    line = assert_user_error(result, "part-00001.parquet", f"stored {column}", "rerun `kd export`")
    assert "row_id" in line


# ------------------------------------------------------------------ the student


def test_the_student_samples_one_view_a_row_each_epoch_with_labels_on_the_row_itself(pipe):
    root, _ = pipe
    reader = ShardReader(root / SHARDS, views="sample", view_seed=3)
    n = reader.num_rows(drop_val=True)
    base = ShardReader(root / SHARDS).num_rows(drop_val=True)
    assert n == base and ShardReader(root / SHARDS, views="all").num_rows(drop_val=True) == 3 * n
    picked = []
    for epoch in (0, 1):
        b = [x for x in reader.iter_batches(100, shuffle=True, seed=3, epoch=epoch,
                                            drop_val=True)]
        ids = np.concatenate([x["row_id"] for x in b])
        assert len(ids) == n and len(np.unique(ids)) == n  # every row once, as one view
        order = np.argsort(ids)
        picked.append(np.concatenate([x["view"] for x in b])[order])
        assert set(picked[-1].tolist()) == {0, 1, 2}
    assert (picked[0] != picked[1]).any()  # another epoch, other views
    # the student's batches: the same rows, the label term on the rows themselves only
    raw = reader.iter_batches(64, shuffle=True, seed=3, epoch=0, buffer_rows=1000, drop_val=True)
    for r, b in zip(raw, shard_batches(reader, 64, 3, 1000)(0), strict=True):
        np.testing.assert_array_equal(b.x.numpy(), r["features"])
        np.testing.assert_array_equal(b.y.numpy(), np.where(r["view"] > 0, -1, r["label"]))
        assert b.t_logits.shape[1] == len(b.y)


def test_a_reader_keeps_decoded_row_groups_and_its_batches_stay_the_same(pipe, monkeypatch):
    """cache_bytes (student.cache_mb): in sample mode an epoch decodes K + 1 views of a row to
    use one; the decoded row groups kept, later epochs decode nothing and give the batches an
    uncached reader gives. Beyond the budget, row groups are decoded every epoch."""
    root, _ = pipe
    decoded: list[tuple[str, int]] = []
    read_group = ShardReader._read_group

    def counting(self, pf, file, g, cols):
        decoded.append((file, g))
        return read_group(self, pf, file, g, cols)

    monkeypatch.setattr(ShardReader, "_read_group", counting)

    def epoch(reader: ShardReader, e: int) -> list[dict]:
        decoded.clear()
        return list(reader.iter_batches(64, shuffle=True, seed=3, epoch=e, buffer_rows=500,
                                        drop_val=True))

    plain = ShardReader(root / SHARDS, views="sample", view_seed=3)
    want = [epoch(plain, e) for e in (0, 1, 2)]
    groups = sum(pq.ParquetFile(root / SHARDS / f).num_row_groups for f in plain.files)
    cached = ShardReader(root / SHARDS, views="sample", view_seed=3, cache_bytes=2**30)
    half = ShardReader(root / SHARDS, views="sample", view_seed=3, cache_bytes=40_000)
    # epoch 0: every row group decoded for the epoch, and once more for the replay's table
    for reader, first, later in ((cached, 2 * groups, 0), (half, 2 * groups, None)):
        for e in (0, 1, 2):
            got = epoch(reader, e)
            assert len(got) == len(want[e])
            for g, w in zip(got, want[e], strict=True):
                assert g.keys() == w.keys()
                for k in w:
                    np.testing.assert_array_equal(g[k], w[k], err_msg=k)
            if e == 0:
                assert len(decoded) == first
            elif later is not None:
                assert decoded == [], decoded
            else:  # a budget of some row groups: the others are decoded again
                assert 0 < len(decoded) < groups, (len(decoded), groups)


def test_two_ranks_train_on_the_views_one_process_picks(pipe):
    """Distributed students deal the epoch's picked views to the ranks: together the rows and
    views one process reads, each to one rank (a rank pads its last batch with its own)."""
    root, _ = pipe
    reader = ShardReader(root / SHARDS, views="sample", view_seed=5)
    for epoch in (0, 1):
        one = {(int(r), int(v)) for b in reader.iter_batches(
            64, shuffle=True, seed=5, epoch=epoch, drop_val=True)
            for r, v in zip(b["row_id"], b["view"], strict=True)}
        ranks = [{(int(r), int(v)) for b in reader.iter_rank_batches(
            32, world=2, rank=k, seed=5, epoch=epoch) for r, v in zip(b["row_id"], b["view"],
                                                                      strict=True)}
            for k in (0, 1)]
        assert ranks[0] | ranks[1] == one and not ranks[0] & ranks[1]
        assert len(one) == reader.num_rows(drop_val=True)


def test_unmixed_view_labels_keep_the_label_on_shifted_views_only(pipe, tmp_path):
    root, _ = pipe
    export_to(root, tmp_path / "shifted", mixup=0.0)  # views without partners
    for d, mixed in ((root / SHARDS, True), (tmp_path / "shifted", False)):
        reader = ShardReader(d, views="sample", view_seed=1)
        raw = reader.iter_batches(64, shuffle=True, seed=1, epoch=0, buffer_rows=1000,
                                  drop_val=True)
        batches = shard_batches(reader, 64, 1, 1000, view_labels="unmixed")(0)
        labeled_views = kept = 0
        for r, b in zip(raw, batches, strict=True):
            want = np.where(r["partner"] >= 0, -1, r["label"])
            np.testing.assert_array_equal(b.y.numpy(), want)
            is_view = (r["view"] > 0) & (r["label"] >= 0)
            labeled_views += int(is_view.sum())
            kept += int((b.y.numpy()[is_view] >= 0).sum())
        assert labeled_views > 0
        assert kept == (0 if mixed else labeled_views)


def test_mixed_view_labels_weigh_both_labels_by_lam_against_a_hand_computation():
    """kd_loss's mix: lam * CE(y_row) + (1 - lam) * CE(y_partner) where the partner is
    labeled, CE(y_row) where it is not given (-1), nothing for unlabeled rows; the divisor is
    the labeled rows' count. Checked against log-sum-exp by hand."""
    z = [[2.0, 0.5, -1.0], [0.0, 1.0, 0.0], [1.0, 1.0, 1.0], [-0.5, 0.25, 3.0]]
    y, y_b, lam = [0, 1, -1, 2], [2, -1, 1, 0], [0.3, 0.9, 0.5, 0.6]

    def ce(row: list[float], c: int) -> float:
        return math.log(sum(math.exp(v) for v in row)) - row[c]

    want = (0.3 * ce(z[0], 0) + 0.7 * ce(z[0], 2) + ce(z[1], 1)
            + 0.6 * ce(z[3], 2) + 0.4 * ce(z[3], 0)) / 3
    s_logits, labels = torch.tensor(z), torch.tensor(y)
    mix = (torch.tensor(y_b), torch.tensor(lam))
    assert hard_loss(s_logits, labels, mix=mix).item() == pytest.approx(want, rel=1e-6)
    # alpha 0: kd_loss is the hard term; without mix the partners' labels are ignored
    t = torch.softmax(s_logits, 1)
    assert kd_loss(s_logits, t, labels, 2.0, 0.0, mix=mix).item() == pytest.approx(want, rel=1e-6)
    plain = (ce(z[0], 0) + ce(z[1], 1) + ce(z[3], 2)) / 3
    assert hard_loss(s_logits, labels).item() == pytest.approx(plain, rel=1e-6)
    ones = (torch.tensor(y_b), torch.ones(4))  # lam 1: the row's own label alone
    assert hard_loss(s_logits, labels, mix=ones).item() == pytest.approx(plain, rel=1e-6)


def test_mixed_view_labels_carry_the_partners_label_from_the_shards(pipe):
    """view_labels mixed on real shards: a mixup view of two labeled rows keeps its row's
    label and gets its partner's (the partner's stored label) with the stored lam; a mixup
    view with an unlabeled partner has no label term; unmixed rows keep their own label."""
    root, _ = pipe
    labels = {int(r): -1 if np.isnan(y) else int(y) for r, y, v in zip(
        *(rows_by_key(root / SHARDS)[k] for k in ("row_id", "label", "view")), strict=True)
        if v == 0}  # an unlabeled row's label is null (NaN here)
    reader = ShardReader(root / SHARDS, views="sample", view_seed=2)
    raw = reader.iter_batches(64, shuffle=True, seed=2, epoch=0, buffer_rows=1000, drop_val=True)
    both = 0
    for r, b in zip(raw, shard_batches(reader, 64, 2, 1000, view_labels="mixed")(0),
                    strict=True):
        mixed = r["partner"] >= 0
        want_b = np.array([labels.get(int(p), -1) if m else -1
                           for p, m in zip(r["partner"], mixed, strict=True)])
        np.testing.assert_array_equal(r["partner_label"], np.where(mixed, want_b, -1))
        y_b, lam = (v.numpy() for v in b.mix)
        np.testing.assert_array_equal(y_b, want_b)
        np.testing.assert_array_equal(lam, r["lam"])
        np.testing.assert_array_equal(b.y.numpy(), np.where(mixed & (want_b < 0), -1,
                                                            r["label"]))
        both += int((mixed & (r["label"] >= 0) & (want_b >= 0)).sum())
    assert both > 0


def test_student_views_none_is_a_control_and_views_need_an_augmentation():
    v = parse_config({**PARAMS, "student": {"defaults": PARAMS["student"]["defaults"],
                                            "variants": {"s": {}, "plain": {"views": "none"}}}})
    assert v.student.variant("plain").is_control and not v.student.variant("s").is_control
    bad = {**PARAMS, "export": {**PARAMS["export"], "augment": {}, "mixup": 0.0}}
    with pytest.raises(ConfigError, match=r"export.views: 2 views need export.augment"):
        parse_config(bad)
    live = {**PARAMS["student"]["defaults"], "train": {"augment": {"shift": 1}}}
    with pytest.raises(ConfigError, match="export.views stores augmented views"):
        parse_config({**PARAMS, "student": one_variant(live)})


def outputs(d: Path) -> dict[str, bytes]:
    return {n: (d / n).read_bytes() for n in ("model.safetensors", "metrics.json",
                                              "history.json")}


def student_dir(root: Path, dst: Path) -> Path:
    (dst / "data/prepared").mkdir(parents=True)
    shutil.copytree(root / SHARDS, dst / SHARDS)
    shutil.copy(root / "data/prepared/test.parquet", dst / "data/prepared/test.parquet")
    (dst / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    return dst


def test_a_student_trains_the_same_bytes_with_its_decoded_rows_kept_or_not(pipe, tmp_path):
    """student.cache_mb is memory for speed alone: 0 (decode every epoch) trains the bytes
    the default (every epoch after the first from memory) trains."""
    root, _ = pipe
    got = {}
    for mb in (1024, 0):
        d = student_dir(root, tmp_path / f"cache{mb}")
        params = {**PARAMS, "student": one_variant({**PARAMS["student"]["defaults"],
                                                    "cache_mb": mb})}
        with cwd(d):
            student.run(parse_config(params), VARIANT)
        got[mb] = outputs(d / "data/student/s")
    assert got[0] == got[1024]


@pytest.mark.slow
def test_a_student_killed_mid_epoch_resumes_to_the_same_bytes(pipe, tmp_path):
    root, _ = pipe
    ref = student_dir(root, tmp_path / "ref")
    with cwd(ref):
        student.run(parse_config(PARAMS), VARIANT)
    d = student_dir(root, tmp_path / "killed")
    # 1,365 training rows (one view each) / 32 = 43 steps an epoch: step 100 is in the third
    killed = run_to_failpoint([sys.executable, "-m", "kd.cli", "student", VARIANT], d,
                              "train.batch@100", env={"KD_TRACKING": "0"})
    assert killed.returncode == -signal.SIGKILL
    env = {**os.environ, "KD_TRACKING": "0"}
    done = subprocess.run([sys.executable, "-m", "kd.cli", "student", VARIANT], cwd=d, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "resuming from epoch 2 of 4" in done.stderr
    assert outputs(d / "data/student/s") == outputs(ref / "data/student/s")


@pytest.mark.slow
def test_export_of_views_on_two_ranks_has_the_single_process_views(pipe, tmp_path):
    assert_two_ranks_export_the_same(pipe[0], PARAMS, tmp_path)


def test_shards_show_says_how_many_views_a_row(pipe, kd):
    root, _ = pipe
    result = kd("shards", "show", str(root / SHARDS))
    assert result.exit_code == 0, result.output
    views = read_manifest(root / SHARDS)["totals"]["views"]
    assert f"views      2 a training row, {sum(views.values()):,} rows" in result.output


def assert_two_ranks_export_the_same(root: Path, params: dict, tmp_path: Path) -> None:
    """`kd export` on 2 ranks over `root`'s prepared data and members: the very rows of the one
    process's shard set in `root` (shard boundaries aside), and a set that verifies."""
    run = tmp_path / "r2"
    shutil.copytree(root / "data/prepared", run / "data/prepared")
    shutil.copytree(root / "data/teachers", run / "data/teachers")
    (run / "params.yaml").write_text(yaml.safe_dump({**params, "runtime": {"nproc": 2}}))
    out = run_cmd([str(Path(sys.executable).parent / "kd"), "export"], run,
                  env={"KD_TRACKING": "0"})
    assert "on 2 ranks" in out.stdout
    verify(run / SHARDS)
    a, b = rows_by_key(root / SHARDS), rows_by_key(run / SHARDS)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
