"""MUNGE transfer rows (kd/transfer/munge.py, stages/transfer.py) and their way into the shards,
the student and the report; a real `dvc repro` reruns exactly what new `transfer.rows` change.

    pytest -q tests/test_transfer.py -p no:cacheprovider
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from kd.config import parse_config
from kd.datasets import Split
from kd.io.atomic import write_json
from kd.prepared import read_split, to_table
from kd.targets.manifest import read_manifest
from kd.targets.reader import ShardReader
from kd.targets.shardset import read_table
from kd.transfer.munge import munge, nearest_neighbours
from stages import report
from stages import transfer as stage
from tests.conftest import VARIANT, build_pipeline, cwd, one_variant, run_cmd
from tests.test_student import changed, edit_params, ran

TINY = {"arch": "mlp", "knobs": {"depth": 1, "width": 16}}
PARAMS = {
    "data": {"source": "digits", "unlabeled_fraction": 0.0},
    "transfer": {"method": "munge", "rows": 600, "p": 0.5, "s": 10.0, "seed": 3},
    "teacher": {"members": {
        "a": {**TINY, "train": {"epochs": 2, "batch_size": 64}},
        "b": {**TINY, "train": {"epochs": 2, "batch_size": 64, "seed": 1}}}},
    "export": {"rows_per_shard": 500, "row_group_size": 250, "batch_size": 256},
    "student": one_variant({"arch": "mlp", "knobs": {"depth": 1, "width": 8},
                "train": {"epochs": 1, "batch_size": 64}}),
    "baseline": {"epochs": 1},
    "tracking": {"enabled": False},
}


def blobs(n: int = 40, f: int = 5, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, f)).astype(np.float32)  # (N, F)


# ------------------------------------------------------------------------- the algorithm


def test_p_zero_reproduces_the_original_rows():
    x = blobs()
    out = munge(x, size=100, p=0.0, s=10.0, rng=np.random.default_rng(0))
    assert out.x.shape == (100, 5) and out.changed_fraction == 0
    np.testing.assert_array_equal(out.x, x[out.source])
    # two whole passes in row order, then a random subset of a third
    np.testing.assert_array_equal(out.source[:80], np.tile(np.arange(40), 2))
    assert len(set(out.source[80:].tolist())) == 20


def test_the_same_seed_gives_the_same_rows_and_another_seed_others():
    x = blobs()
    a, b = (munge(x, 300, 0.5, 10.0, np.random.default_rng(7)) for _ in range(2))
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.source, b.source)
    c = munge(x, 300, 0.5, 10.0, np.random.default_rng(8))
    assert not np.array_equal(a.x, c.x)


@pytest.mark.parametrize("p, s", [(0.5, 10.0), (1.0, 1.0), (0.2, 100.0)])
def test_every_value_is_the_rows_own_or_near_a_partners_as_s_implies(p, s):
    """A synthetic value is either its source row's own, or a draw N(b, |a - b| / s) around a
    partner's value b (the row's nearest neighbour, or a row whose neighbour it is): within
    6 sd of b, and so between a and b up to (6 / s)|a - b|."""
    x = blobs(60, 4, seed=1).astype(np.float64)
    out = munge(x, 600, p, s, np.random.default_rng(2))
    nn = nearest_neighbours(x)
    for r, row in zip(out.source, out.x, strict=True):
        partners = {int(nn[r]), *np.flatnonzero(nn == r).tolist()}
        for a, v in enumerate(row):
            own = x[r, a].astype(np.float32)
            if v == own:
                continue
            near = [abs(v - x[k, a]) <= 6 * abs(x[r, a] - x[k, a]) / s + 1e-5 for k in partners]
            assert any(near), (r, a, v, x[r, a], [x[k, a] for k in partners])
    # with p = 1 nearly every value moves; the share tracks p otherwise
    assert out.changed_fraction > (0.9 if p == 1 else p * 0.8)


def test_neighbours_are_the_nearest_other_row_on_min_max_scaled_attributes():
    x = blobs(50, 3, seed=4) * np.array([1.0, 100.0, 0.01], np.float32)  # (N, 3)
    z = (x - x.min(0)) / (x.max(0) - x.min(0))
    d = ((z[:, None] - z[None]) ** 2).sum(-1)  # (N, N)
    np.fill_diagonal(d, np.inf)
    np.testing.assert_array_equal(nearest_neighbours(x), d.argmin(1))
    dup = np.vstack([x, x[:1]])  # an exact duplicate: each is the other's neighbour
    nn = nearest_neighbours(dup)
    assert nn[0] == 50 and nn[50] == 0


# ---------------------------------------------------------------------------- the stage


def marked_prepared(d: Path) -> None:
    """Labeled training rows in [-1, 1]; validation rows at 1000 and test rows at 2000, so a
    value drawn from either could not hide among the training rows'."""
    rng = np.random.default_rng(0)
    d.mkdir(parents=True)
    n, f = 50, 6
    x = rng.uniform(-1, 1, (n, f)).astype(np.float32)
    is_val = np.arange(n) % 5 == 0
    x[is_val] = 1000 + rng.uniform(0, 1, (is_val.sum(), f))
    splits = {"labeled": Split(np.arange(n), x, np.arange(n) % 3),
              "unlabeled": Split(np.zeros(0, np.int64), np.zeros((0, f), np.float32),
                                 np.zeros(0, np.int64)),
              "test": Split(np.arange(900, 920), np.full((20, f), 2000, np.float32),
                            np.arange(20) % 3)}
    for name, split in splits.items():
        mask = is_val if name == "labeled" else np.zeros(len(split.y), bool)
        pq.write_table(to_table(split, mask), d / f"{name}.parquet")
    write_json(d / "meta.json", {"feature_shape": [f], "n_features": f, "n_classes": 3,
                                 "class_names": ["0", "1", "2"], "fingerprint": "fp"})


def test_validation_and_test_rows_are_never_sources_and_ids_never_collide(tmp_path):
    marked_prepared(tmp_path / "prepared")
    cfg = parse_config({"transfer": {"method": "munge", "rows": 1000, "p": 1.0, "s": 1.0}})
    info = stage.run(cfg, tmp_path / "transfer", tmp_path / "prepared")
    rows, is_val = read_split(tmp_path / "transfer", "synthetic")
    assert len(rows.row_id) == 1000 and not is_val.any() and (rows.y == -1).all()
    assert np.abs(rows.x).max() < 50  # no value drawn near a validation or test row's
    assert info["source_rows"] == 40 and info["validation_rows_excluded"] == 10
    np.testing.assert_array_equal(rows.row_id, np.arange(920, 1920))  # above test's 919
    assert info["row_ids"] == [920, 1920] and info["attribute"].startswith("one of the 6")


def test_export_refuses_a_transfer_set_made_before_a_split_change(tmp_path):
    """Same meta.json, another validation mask: the synthetic rows came from rows that are now
    validation rows, so export must not label them."""
    from kd.errors import ArtifactError
    from kd.prepared import prepared_sha256
    from kd.targets.provenance import prepared_digests
    from kd.transfer.stored import transfer_set

    prepared, transfer = tmp_path / "prepared", tmp_path / "transfer"
    marked_prepared(prepared)
    stage.run(parse_config({"transfer": {"method": "munge", "rows": 100}}), transfer, prepared)
    digest = prepared_digests(prepared)["prepared_sha256"]
    assert prepared_sha256(prepared) == digest  # one formula, whoever computes it
    assert transfer_set(transfer, prepared, digest)["rows"] == 100

    labeled, is_val = read_split(prepared, "labeled")
    meta = (prepared / "meta.json").read_bytes()
    pq.write_table(to_table(labeled, np.roll(is_val, 1)), prepared / "labeled.parquet")
    assert (prepared / "meta.json").read_bytes() == meta
    with pytest.raises(ArtifactError, match="made from other prepared data.*kd transfer"):
        transfer_set(transfer, prepared, prepared_digests(prepared)["prepared_sha256"])


def test_the_stage_is_deterministic_and_method_none_writes_an_empty_set(tmp_path):
    marked_prepared(tmp_path / "prepared")
    cfg = parse_config({"transfer": {"method": "munge", "rows": 300}})
    for name in ("one", "two"):
        stage.run(cfg, tmp_path / name, tmp_path / "prepared")
    for f in ("synthetic.parquet", "meta.json"):
        assert (tmp_path / "one" / f).read_bytes() == (tmp_path / "two" / f).read_bytes()
    stage.run(parse_config({}), tmp_path / "none", tmp_path / "prepared")
    assert json.loads((tmp_path / "none/meta.json").read_text())["rows"] == 0
    assert pq.read_metadata(tmp_path / "none/synthetic.parquet").num_rows == 0


# ------------------------------------------------------------ shards, student and report


@pytest.fixture(scope="module")
def pipe(tmp_path_factory) -> Path:
    root = build_pipeline(tmp_path_factory.mktemp("munge") / "p", PARAMS,
                          ("prepare", "transfer", "teacher", "export", "student", "baseline",
                           "deploy"))
    with cwd(root):
        report.run(parse_config(PARAMS))
    return root


def test_synthetic_rows_are_exported_with_their_own_split_and_ids(pipe):
    made, _ = read_split(pipe / "data/transfer", "synthetic")
    t = read_table(pipe / "data/soft_targets")
    split = np.array([str(v) for v in t["split"].to_pylist()])
    syn = t.filter(pa.array(split == "synthetic"))
    assert syn.num_rows == 600
    np.testing.assert_array_equal(syn["row_id"].to_numpy(), made.row_id)
    np.testing.assert_array_equal(np.stack(syn["features"].to_numpy(zero_copy_only=False)),
                                  made.x)
    assert syn["label"].null_count == 600 and not any(syn["is_val"].to_pylist())
    ids = t["row_id"].to_numpy()
    assert len(np.unique(ids)) == len(ids)
    m = read_manifest(pipe / "data/soft_targets")
    assert m["totals"]["splits"] == {"labeled": 1437, "unlabeled": 0, "synthetic": 600}
    assert sum(s["splits"].get("synthetic", 0) for s in m["shards"]) == 600
    assert m["extra"]["transfer"]["params"]["rows"] == 600
    # the student trains on every non-validation row: the synthetic ones carry no label
    reader = ShardReader(pipe / "data/soft_targets")
    assert reader.num_rows(drop_val=True) == 1437 - 144 + 600


def test_shards_show_and_the_report_name_the_transfer_set(pipe, kd):
    out = kd("shards", "show", pipe / "data/soft_targets").output
    assert "synthetic" in out and "600 rows" in out
    metrics = json.loads((pipe / "data/report/metrics.json").read_text())
    assert metrics["transfer_set"] == {"labeled": 1293, "unlabeled": 0, "synthetic": 600}
    text = (pipe / "data/report/report.md").read_text()
    assert "**600 synthetic rows** (MUNGE, p = 0.5, s = 10, seed 3" in text


def test_a_set_without_synthetic_rows_never_names_the_split(tmp_path):
    from tests.test_shards import write_set

    write_set(tmp_path)
    m = read_manifest(tmp_path)
    assert "synthetic" not in m["totals"]["splits"]
    assert all("synthetic" not in s["splits"] for s in m["shards"])
    t = pq.read_table(tmp_path / m["shards"][0]["file"])
    assert t["split"].chunks[0].dictionary.to_pylist() == ["labeled", "unlabeled"]


# ------------------------------------------------------------------------------ real dvc


def test_no_param_is_named_like_dvc_metadata_that_its_run_cache_ignores():
    """DVC hashes a stage for its run cache with every key named `size` or `nfiles` left out,
    at any depth (dvc.stage.cache._get_cache_hash): a param so named could change and the run
    cache would restore the old outputs (it did, as `transfer.size`, before the rename)."""
    from dvc.stage.cache import _get_cache_hash

    def keys(model) -> set[str]:
        out = set()
        for name, field in model.model_fields.items():
            out.add(name)
            if isinstance(field.annotation, type) and hasattr(field.annotation, "model_fields"):
                out |= keys(field.annotation)
        return out

    from kd.config import Config

    names = keys(Config)
    assert {"size", "nfiles"} & names == set()
    lock = {"cmd": "kd transfer", "params": {"params.yaml": {"transfer": {"rows": 1}}}}
    other = {"cmd": "kd transfer", "params": {"params.yaml": {"transfer": {"rows": 2}}}}
    assert _get_cache_hash(lock, key=True) != _get_cache_hash(other, key=True)
    sized = [{"cmd": "kd transfer", "params": {"params.yaml": {"transfer": {"size": n}}}}
             for n in (1, 2)]
    assert _get_cache_hash(sized[0], key=True) == _get_cache_hash(sized[1], key=True)



@pytest.mark.slow
def test_new_transfer_rows_rerun_transfer_export_student_and_report(dvc_repo):
    repo = dvc_repo({k: v for k, v in PARAMS.items() if k != "student"})
    edit_params(repo, lambda p: p.update(student={**p["student"], **PARAMS["student"]}))
    env = {"KD_TRACKING": "0"}
    run_cmd(["dvc", "repro"], repo, env=env)
    assert changed(repo) == set()
    edit_params(repo, lambda p: p["transfer"].update(rows=700))
    again = run_cmd(["dvc", "repro"], repo, env=env)
    assert ran(again) == {"transfer", "export", f"student@{VARIANT}", "index@student", "deploy",
                          "report"}
    m = json.loads((repo / "data/soft_targets/manifest.json").read_text())
    assert m["totals"]["splits"]["synthetic"] == 700
    assert yaml.safe_load((repo / "dvc.lock").read_text())["stages"]["transfer"]["params"][
        "params.yaml"]["transfer"]["rows"] == 700
