"""The prepare stage: each source, the prepared-data contract, determinism, bad user data."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stages.config import parse_config
from stages.datasets import read_split
from stages.prepare import run
from tests.conftest import assert_user_error


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
    data = {"source": "parquet", "labeled": "lab.parquet", "test": "test.parquet",
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


def _nan_row(t):
    return t.set_column(0, "pixels", pa.array([[0.0, 1.0]] * 5 + [[float("nan"), 1.0]],
                                              pa.list_(pa.float32())))


BAD_DATA = [
    # (how to break the files or params, expected words in the one-line error)
    ("missing_file", "lab.parquet: file not found"),
    ("missing_column", "lab.parquet: no column 'pixels'"),
    ("ragged", "lab.parquet: column 'pixels': row 3 has 5 features, expected 6"),
    ("non_numeric", "lab.parquet: column 'pixels': non-numeric features"),
    ("nan", "lab.parquet: features: NaN or infinite value at row 5"),
    ("inf", "test.parquet: features: NaN or infinite value at row 2"),
    ("unknown_test_label", "test.parquet: column 'animal': label 'fox' at row 1 does not occur"),
    ("one_class", "lab.parquet: column 'animal': needs at least two classes, found 1"),
    ("empty_labeled", "lab.parquet: the labeled split has no rows"),
    ("empty_test", "test.parquet: the test split has no rows"),
    ("null_label", "lab.parquet: column 'animal': missing label at row 2"),
    ("not_parquet", "lab.parquet: not a readable Parquet file"),
    ("bad_shape", "data.shape: [4, 4] holds 16 values, but each row has 6 features"),
    ("width_mismatch", "unl.parquet: rows have 4 features, the labeled split has 6"),
    ("duplicate_ids", "data.id: row id 0 occurs more than once"),
    ("float_labels", "lab.parquet: column 'animal': labels must be integers or strings"),
]


def break_files(case, tmp_path):
    paths = user_files(tmp_path)
    overrides = {}
    lab = pq.read_table(paths["lab"])
    if case == "missing_file":
        paths["lab"].unlink()
    elif case == "missing_column":
        pq.write_table(lab.drop(["pixels"]), paths["lab"])
    elif case == "ragged":
        rows = lab.column("pixels").to_pylist()
        rows[3] = rows[3][:5]
        pq.write_table(lab.set_column(0, "pixels", pa.array(rows)), paths["lab"])
    elif case == "non_numeric":
        pq.write_table(lab.set_column(0, "pixels", pa.array([["a"]] * 30)), paths["lab"])
    elif case == "nan":
        pq.write_table(_nan_row(lab.slice(0, 6)), paths["lab"])
        overrides = {"features": "pixels"}
        # keep widths consistent with the test/unlabeled files
        for p in (paths["test"], paths["unl"]):
            t = pq.read_table(p)
            pq.write_table(t.set_column(0, "pixels", pa.array([[0.0, 1.0]] * len(t))), p)
    elif case == "inf":
        t = pq.read_table(paths["test"])
        rows = t.column("pixels").to_pylist()
        rows[2][0] = float("inf")
        pq.write_table(t.set_column(0, "pixels", pa.array(rows)), paths["test"])
    elif case == "unknown_test_label":
        t = pq.read_table(paths["test"])
        labels = t.column("animal").to_pylist()
        labels[1] = "fox"
        pq.write_table(t.set_column(1, "animal", pa.array(labels)), paths["test"])
    elif case == "one_class":
        pq.write_table(lab.set_column(1, "animal", pa.array(["cat"] * 30)), paths["lab"])
    elif case == "empty_labeled":
        pq.write_table(lab.slice(0, 0), paths["lab"])
    elif case == "empty_test":
        pq.write_table(pq.read_table(paths["test"]).slice(0, 0), paths["test"])
    elif case == "null_label":
        labels = lab.column("animal").to_pylist()
        labels[2] = None
        pq.write_table(lab.set_column(1, "animal", pa.array(labels)), paths["lab"])
    elif case == "not_parquet":
        paths["lab"].write_text("row_id,label\n1,2\n")
    elif case == "bad_shape":
        overrides = {"shape": [4, 4]}
    elif case == "width_mismatch":
        t = pq.read_table(paths["unl"])
        pq.write_table(t.set_column(0, "pixels", pa.array([[0.0] * 4] * len(t))), paths["unl"])
    elif case == "duplicate_ids":
        for name in ("lab", "test", "unl"):
            t = pq.read_table(paths[name])
            pq.write_table(t.append_column("key", pa.array(np.arange(len(t)))), paths[name])
        overrides = {"id": "key"}
    elif case == "float_labels":
        pq.write_table(lab.set_column(1, "animal", pa.array(np.linspace(0, 1, 30))), paths["lab"])
    return overrides


@pytest.mark.parametrize("case,expected", BAD_DATA, ids=[c[0] for c in BAD_DATA])
def test_bad_user_data_fails_with_one_line(case, expected, tmp_path, write_params, kd, monkeypatch):
    overrides = break_files(case, tmp_path)
    out = tmp_path / "prepared"
    out.mkdir()
    (out / "meta.json").write_text('{"earlier": "output"}')  # a previous good run's output
    monkeypatch.chdir(tmp_path)
    result = kd("prepare", "--params", write_params(parquet_params(tmp_path, **overrides)),
                "--out", out)
    assert_user_error(result, expected)
    assert json.loads((out / "meta.json").read_text()) == {"earlier": "output"}
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp")) == []
