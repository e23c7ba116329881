"""The prepare stage: each source, the prepared-data contract, determinism, bad user data."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kd.config import parse_config
from kd.prepared import read_split
from stages.prepare import run
from tests.conftest import one_variant


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
    # normalised with the statistics of the labeled training rows (validation rows held out)
    train = lab.x[~lab_val]
    assert abs(train.mean()) < 1e-4 and abs(train.std() - 1) < 1e-3
    # the transfer set comes from another seed: none of its rows repeats a labeled row
    seen = {row.tobytes() for row in lab.x}  # the transfer set is no copy of labeled rows
    assert not any(row.tobytes() in seen for row in splits["unlabeled"][0].x)
    table = pq.read_table(tmp_path / "p" / "unlabeled.parquet")
    assert table.column("label").null_count == 95


def test_mnist1d_matches_the_generators_standard_split(tmp_path):
    from mnist1d.data import get_dataset_args, make_dataset

    ref = make_dataset(get_dataset_args())
    meta = prepare({"data": {"unlabeled_size": 0, "normalize": "none"}}, tmp_path / "p")
    lab, _ = read_split(tmp_path / "p", "labeled")
    # the generator's values, rounded to PORTABLE_DECIMALS (the same bytes on any CPU)
    np.testing.assert_allclose(lab.x, ref["x"], rtol=0, atol=6e-6)
    np.testing.assert_array_equal(lab.x, np.round(ref["x"], 5).astype(np.float32))
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
        pq.write_table(pa.table({"a": np.arange(n, dtype=np.float64) + offset, "b": np.ones(n),
                                 "y": np.arange(n) % 2, "key": np.arange(n) + offset}),
                       tmp_path / f"{name}.parquet")
    meta = prepare(parquet_params(tmp_path, unlabeled=None, features=["a", "b"], label="y",
                                  id="key"), tmp_path / "p", root=tmp_path)
    assert meta["class_names"] == ["0", "1"] and meta["rows"]["unlabeled"] == 0
    test, _ = read_split(tmp_path / "p", "test")
    assert test.row_id.tolist() == list(range(1000, 1012))


# Bad user data: every case is in tests/test_catalogue.py, checked against docs/errors.md.


def test_features_by_pattern_or_all_but_label_and_id(tmp_path):
    n = 12
    cols = {"b_2": np.ones(n), "a_1": np.arange(n, dtype=float), "other": np.zeros(n),
            "y": np.arange(n) % 2, "key": np.arange(n)}
    for name, offset in (("lab", 0), ("test", 100)):
        pq.write_table(pa.table({**cols, "a_1": cols["a_1"] + offset, "key": np.arange(n) + offset}),
                       tmp_path / f"{name}.parquet")
    common = dict(unlabeled=None, label="y", id="key", val_fraction=0.0)
    meta = prepare(parquet_params(tmp_path, features="*", **common), tmp_path / "all", root=tmp_path)
    assert meta["n_features"] == 3  # b_2, a_1, other: never y or key
    lab, _ = read_split(tmp_path / "all", "labeled")
    meta = prepare(parquet_params(tmp_path, features=["?_*"], normalize="none", **common),
                   tmp_path / "glob", root=tmp_path)
    assert meta["n_features"] == 2
    lab, _ = read_split(tmp_path / "glob", "labeled")
    assert lab.x[:3].tolist() == [[1.0, 0.0], [1.0, 1.0], [1.0, 2.0]]  # file order: b_2, a_1


@pytest.mark.parametrize("labels, classes, expected", [
    (["eight", "five", "four"], None, ["eight", "five", "four"]),  # names: alphabetical
    (["2", "10", "1"], None, ["1", "2", "10"]),  # number-like names: by value, not "1, 10, 2"
    ([3, 12, 1], None, ["1", "3", "12"]),
    (["eight", "five", "four"], ["four", "five", "eight"], ["four", "five", "eight"]),
    ([0, 1, 2], ["2", "0", "1"], ["2", "0", "1"]),  # integer labels, a given order
])
def test_class_order(tmp_path, labels, classes, expected):
    n = 12
    y = [labels[i % 3] for i in range(n)]
    for name, offset in (("lab", 0), ("test", 100)):  # other rows: test rows never repeat
        pq.write_table(pa.table({"f": np.arange(n, dtype=float) + offset, "y": y}),
                       tmp_path / f"{name}.parquet")
    meta = prepare(parquet_params(tmp_path, unlabeled=None, features=["f"], label="y",
                                  classes=classes), tmp_path / "p", root=tmp_path)
    assert meta["class_names"] == expected
    lab, _ = read_split(tmp_path / "p", "labeled")
    assert [expected[i] for i in lab.y[:3]] == [str(v) for v in y[:3]]


def test_prepare_warns_of_shifts_over_tabular_columns_and_unread_keys(tmp_path, capsys):
    n = 12
    for name, offset in (("lab", 0), ("test", 100)):
        pq.write_table(pa.table({"a": np.arange(n, dtype=float) + offset, "b": np.ones(n),
                                 "y": np.arange(n) % 2}), tmp_path / f"{name}.parquet")
    params = parquet_params(tmp_path, unlabeled=None, features=["a", "b"], label="y")
    params["data"]["unlabeled_size"] = 100  # an mnist1d key, left over
    params["teacher"] = {"defaults": {"arch": "mlp", "knobs": {},
                                      "train": {"augment": {"shift": 2}}}}
    params["student"] = one_variant({"arch": "mlp", "knobs": {}})
    meta = prepare(params, tmp_path / "p", root=tmp_path)
    assert meta["feature_columns"] == ["a", "b"]
    err = capsys.readouterr().err
    assert "data.unlabeled_size is set but only read when data.source is 'mnist1d'" in err
    assert "teacher.members.cnn_0.train.augment.shift=2" in err and "no order" in err
    assert "baseline.augment" not in err  # the baseline's shift is 0 here

    # a list column is a sequence: shifting it is the teachers' augmentation, no warning
    user_files(tmp_path)
    params = parquet_params(tmp_path)
    params["teacher"] = {"defaults": {"arch": "mlp", "knobs": {},
                                      "train": {"augment": {"shift": 2}}}}
    params["student"] = one_variant({"arch": "mlp", "knobs": {}})
    meta = prepare(params, tmp_path / "q", root=tmp_path)
    assert "feature_columns" not in meta
    assert "no order" not in capsys.readouterr().err


def test_test_rows_in_the_transfer_set_are_refused_unless_allowed(tmp_path):
    from kd.errors import DataError

    paths = user_files(tmp_path)
    test = pq.read_table(paths["test"])
    pool = pa.concat_tables([pq.read_table(paths["unl"]), test.select(["pixels"])])
    pq.write_table(pool, paths["unl"])  # "all I have" passed as unlabeled: test rows included
    with pytest.raises(DataError, match=r"test row 0 .* \(10 in all\)"):
        prepare(parquet_params(tmp_path), tmp_path / "p", root=tmp_path)
    assert not (tmp_path / "p").exists()
    meta = prepare(parquet_params(tmp_path, allow_test_overlap=True), tmp_path / "p",
                   root=tmp_path)
    assert meta["test_overlap"] == {"unlabeled": 10}


@pytest.mark.parametrize("method", ["global", "per_feature"])
def test_normalisation_statistics_come_from_the_training_rows_alone(tmp_path, method):
    """Validation rows inform nothing but choices: the training rows come out centred and
    scaled, and making the validation rows of the source extreme moves no statistic."""
    paths = user_files(tmp_path)  # 30 labeled rows, 6 of them held out for validation
    params = parquet_params(tmp_path, normalize=method)
    meta = prepare(params, tmp_path / "a", root=tmp_path)
    lab, is_val = read_split(tmp_path / "a", "labeled")
    assert 0 < is_val.sum() < len(is_val)
    train = lab.x[~is_val].astype(np.float64)
    axis = None if method == "global" else 0
    np.testing.assert_allclose(train.mean(axis), 0, atol=1e-5)
    np.testing.assert_allclose(train.std(axis), 1, atol=1e-5)

    table = pq.read_table(paths["lab"])
    x = np.array(table.column("pixels").to_pylist(), np.float32)  # (30, 6)
    x[lab.row_id[is_val]] = x[lab.row_id[is_val]] * 1000 + 50  # row id = row of the file
    pq.write_table(table.set_column(0, "pixels", pa.array(x.tolist(), pa.list_(pa.float32()))),
                   paths["lab"])
    again = prepare(params, tmp_path / "b", root=tmp_path)
    lab_b, is_val_b = read_split(tmp_path / "b", "labeled")
    assert (is_val_b == is_val).all()
    assert again["normalization"] == meta["normalization"]
    np.testing.assert_array_equal(lab_b.x[~is_val], lab.x[~is_val])


@pytest.mark.slow
def test_prepared_bytes_do_not_depend_on_the_cpus_simd_path(tmp_path):
    """MNIST-1D is generated in float64 by numpy, whose kernels take AVX-512 paths on this CPU
    and AVX2 paths on others (an AMD EPYC without AVX-512 gave other prepared bytes). numpy can
    be told to skip its AVX-512 kernels: both runs must write the same files. (On a CPU
    without AVX-512 both runs take the AVX2 path and the test holds trivially.)"""
    import hashlib
    import os
    import subprocess
    import sys

    import yaml

    (tmp_path / "p.yaml").write_text(yaml.safe_dump(
        {"data": {"source": "mnist1d", "unlabeled_size": 3000}, "tracking": {"enabled": False}}))
    digests = []
    for disable in ("", "AVX512_SPR AVX512_ICL X86_V4"):
        out = tmp_path / f"out{len(digests)}"
        env = {**os.environ, "NPY_DISABLE_CPU_FEATURES": disable}
        subprocess.run([sys.executable, "-m", "kd.cli", "prepare", "--params",
                        str(tmp_path / "p.yaml"), "--out", str(out)], cwd=tmp_path, env=env,
                       check=True, capture_output=True)
        digests.append({p.name: hashlib.sha256(p.read_bytes()).hexdigest()
                        for p in sorted(out.iterdir())})
    assert digests[0] == digests[1]
