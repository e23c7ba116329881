"""The prepare stage: each source, the prepared-data contract, determinism, bad user data."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from kd.config import parse_config
from kd.datasets import read_split
from stages.prepare import run


def prepare(params: dict, out, root="."):
    return run(parse_config(params), out, root=root)


def read_all(out):
    return {s: read_split(out, s) for s in ("labeled", "unlabeled", "test")}


def test_mnist1d_standard_split_and_transfer_set(tmp_path):
    meta = prepare({"data": {"unlabeled_size": 95, "val_fraction": 0.1}}, tmp_path / "p")
    splits = read_all(tmp_path / "p")
    lab, lab_val = splits["labeled"]
    assert meta["rows"] == {"labeled": 4000, "val": 400, "unlabeled": 95, "test": 1000}
    assert lab.x.shape == (4000, 40) and lab.x.dtype == np.float32
    assert int(lab_val.sum()) == 400
    assert meta["feature_shape"] == [40] and meta["class_names"] == [str(i) for i in range(10)]
    ids = np.concatenate([s.row_id for s, _ in splits.values()])
    assert len(np.unique(ids)) == len(ids) == 5095
    assert (splits["unlabeled"][0].y == -1).all() and (lab.y >= 0).all()
    # normalised with the labeled split's statistics
    assert abs(lab.x.mean()) < 1e-4 and abs(lab.x.std() - 1) < 1e-3
    # the transfer set comes from another seed: none of its rows repeats a labeled row
    assert not np.isin(splits["unlabeled"][0].x[:, 5], lab.x[:, 5]).any()
    table = pq.read_table(tmp_path / "p" / "unlabeled.parquet")
    assert table.column("label").null_count == 95


def test_mnist1d_matches_the_generators_standard_split(tmp_path):
    from mnist1d.data import get_dataset_args, make_dataset

    ref = make_dataset(get_dataset_args())
    meta = prepare({"data": {"unlabeled_size": 0, "normalize": "none"}}, tmp_path / "p")
    lab, _ = read_split(tmp_path / "p", "labeled")
    np.testing.assert_allclose(lab.x, ref["x"].astype(np.float32))
    np.testing.assert_array_equal(lab.y, ref["y"])
    assert meta["rows"]["unlabeled"] == 0


def test_digits(tmp_path):
    meta = prepare({"data": {"source": "digits", "test_fraction": 0.2,
                             "unlabeled_fraction": 0.4}}, tmp_path / "p")
    splits = read_all(tmp_path / "p")
    assert meta["feature_shape"] == [8, 8] and meta["n_classes"] == 10
    sizes = {k: len(v[0].row_id) for k, v in splits.items()}
    assert sum(sizes.values()) == 1797 and abs(sizes["test"] - 360) <= 1
    assert abs(sizes["unlabeled"] - 719) <= 1
    ids = np.concatenate([s.row_id for s, _ in splits.values()])
    assert sorted(ids.tolist()) == list(range(1797))  # row_id = the image's index


def test_prepare_is_deterministic(tmp_path):
    params = {"data": {"source": "digits"}}
    prepare(params, tmp_path / "a")
    prepare(params, tmp_path / "b")
    for name in ("labeled.parquet", "unlabeled.parquet", "test.parquet", "meta.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_val_split_follows_its_seed(tmp_path):
    prepare({"data": {"source": "digits", "split_seed": 1}}, tmp_path / "a")
    prepare({"data": {"source": "digits", "split_seed": 2}}, tmp_path / "b")
    assert (tmp_path / "a/labeled.parquet").read_bytes() != (tmp_path / "b/labeled.parquet").read_bytes()


# ------------------------------------------------------------------------- user Parquet


def user_files(tmp_path, n_lab=30, n_test=10, n_unl=20, width=6, classes=("cat", "dog", "eel")):
    rng = np.random.default_rng(0)

    def table(n, labels=True):
        cols = {"pixels": pa.array(rng.normal(size=(n, width)).astype(np.float32).tolist(),
                                   pa.list_(pa.float32()))}
        if labels:
            cols["animal"] = pa.array([classes[i % len(classes)] for i in range(n)])
        return pa.table(cols)

    paths = {}
    for name, n, labels in (("lab", n_lab, True), ("test", n_test, True), ("unl", n_unl, False)):
        paths[name] = tmp_path / f"{name}.parquet"
        pq.write_table(table(n, labels), paths[name])
    return paths


def parquet_params(tmp_path, **overrides):
    data = {"source": "parquet", "inputs": ".", "labeled": "lab.parquet", "test": "test.parquet",
            "unlabeled": "unl.parquet", "features": "pixels", "label": "animal",
            "val_fraction": 0.2}
    data.update(overrides)
    return {"data": {k: v for k, v in data.items() if v is not None}}


def test_user_parquet_list_column_and_string_labels(tmp_path):
    user_files(tmp_path, width=6)
    meta = prepare(parquet_params(tmp_path, shape=[2, 3]), tmp_path / "p", root=tmp_path)
    assert meta["class_names"] == ["cat", "dog", "eel"] and meta["feature_shape"] == [2, 3]
    assert meta["rows"] == {"labeled": 30, "val": 6, "unlabeled": 20, "test": 10}
    lab, _ = read_split(tmp_path / "p", "labeled")
    assert lab.y.tolist()[:4] == [0, 1, 2, 0]
    ids = np.concatenate([s.row_id for s, _ in read_all(tmp_path / "p").values()])
    assert len(np.unique(ids)) == 60


def test_user_parquet_scalar_columns_ids_and_no_unlabeled(tmp_path):
    n = 12
    for name, offset in (("lab", 0), ("test", 1000)):
        pq.write_table(pa.table({"a": np.arange(n, dtype=np.float64), "b": np.ones(n),
                                 "y": np.arange(n) % 2, "key": np.arange(n) + offset}),
                       tmp_path / f"{name}.parquet")
    meta = prepare(parquet_params(tmp_path, unlabeled=None, features=["a", "b"], label="y",
                                  id="key"), tmp_path / "p", root=tmp_path)
    assert meta["class_names"] == ["0", "1"] and meta["rows"]["unlabeled"] == 0
    test, _ = read_split(tmp_path / "p", "test")
    assert test.row_id.tolist() == list(range(1000, 1012))


# Bad user data: every case is in tests/test_catalogue.py, checked against docs/errors.md.
