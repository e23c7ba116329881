"""The chars source (kd/chars.py): windows of the Python standard library's source, whole
files held out, no test input repeated in training, deterministic, its corpus recorded; and a
user's own Parquet with hundreds of classes."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kd import chars
from kd.config import parse_config
from kd.errors import ConfigError, DataError
from kd.prepared import read_split
from stages.prepare import run

OFF = {"tracking": {"enabled": False}}


def _corpus(root, n_files=12, size=400, seed=0):
    """Files of random text over a small alphabet, plus one shared line in every file (so that
    some held-out windows repeat training windows exactly)."""
    rng = np.random.default_rng(seed)
    alphabet = np.array(list("abcdefgh ij\n_()"))
    for i in range(n_files):
        body = "".join(rng.choice(alphabet, size)) + "\n# shared licence header line #\n"
        (root / f"pkg{i % 3}").mkdir(exist_ok=True)
        (root / f"pkg{i % 3}" / f"m{i}.py").write_text(body)
    (root / "site-packages").mkdir()
    (root / "site-packages" / "installed.py").write_text("Z" * 500)  # not the stdlib
    (root / "latin.py").write_bytes(b"# -*- coding: latin-1 -*-\n\xe9\xe9\xe9" * 20)


def _load(root, **kw):
    args = dict(vocab_size=8, context=6, labeled=300, unlabeled=200, test=50,
                test_fraction=0.3, seed=0, root=root)
    return chars.load(**(args | kw))


def test_windows_are_the_text_before_each_row_inside_one_file(tmp_path):
    _corpus(tmp_path)
    w = _load(tmp_path)
    cp, starts, ends, is_test, _, counts = chars._read(tmp_path, 0.3)
    assert counts == {"files": 13, "skipped_not_utf8": 1}  # site-packages left out
    assert "Z" not in w.class_names
    ids = {c: i for i, c in enumerate(w.class_names)}
    for split in ("labeled", "unlabeled", "test"):
        for pos, window, label in zip(w.row_ids[split], w.ids[split], w.labels[split],
                                      strict=True):
            f = int(np.searchsorted(ends, pos, side="right"))
            assert starts[f] + 6 <= pos < ends[f]  # the whole window inside one file
            assert bool(is_test[f]) == (split == "test")  # whole files held out
            text = [chr(c) for c in cp[pos - 6:pos + 1]]
            want = [ids.get(chars._class_name(ch), 7) for ch in text]
            assert list(window) == want[:6]
            assert label == (want[6] if split != "unlabeled" else -1)
    assert 0 < w.info["test_files"] < 12


def test_no_test_window_repeats_a_training_window(tmp_path):
    _corpus(tmp_path)
    w = _load(tmp_path)
    train = {r.tobytes() for s in ("labeled", "unlabeled") for r in w.ids[s].astype(np.int32)}
    assert not any(r.tobytes() in train for r in w.ids["test"].astype(np.int32))
    assert w.info["test_windows_dropped_as_training_copies"] > 0  # the shared line
    rows = np.concatenate([w.row_ids[s] for s in ("labeled", "unlabeled", "test")])
    assert len(np.unique(rows)) == len(rows) == 550


def test_the_classes_are_the_most_frequent_training_characters_plus_other(tmp_path):
    _corpus(tmp_path)
    w = _load(tmp_path, vocab_size=5)
    assert len(w.class_names) == 5 and w.class_names[-1] == "other"
    assert all(int(x.max()) <= 4 for x in w.ids.values())
    assert (w.labels["labeled"] == 4).any()  # rarer characters fold into "other"


def test_deterministic_and_the_seed_and_corpus_matter(tmp_path):
    _corpus(tmp_path)
    a, b, c = _load(tmp_path), _load(tmp_path), _load(tmp_path, seed=1)
    for s in ("labeled", "unlabeled", "test"):
        np.testing.assert_array_equal(a.ids[s], b.ids[s])
        np.testing.assert_array_equal(a.row_ids[s], b.row_ids[s])
    assert not np.array_equal(a.row_ids["labeled"], c.row_ids["labeled"])
    (tmp_path / "pkg0" / "m0.py").write_text("changed\n" * 50)
    assert _load(tmp_path).info["corpus_sha256"] != a.info["corpus_sha256"]


def test_held_out_files_follow_their_path_alone():
    names = [f"lib/m{i}.py" for i in range(2000)]
    share = np.mean([chars.is_test_file(n, 0.2) for n in names])
    assert 0.17 < share < 0.23
    assert chars.is_test_file("json/decoder.py", 0.2) == chars.is_test_file("json/decoder.py", 0.2)


@pytest.mark.parametrize("kw, key", [({"vocab_size": 40}, "data.vocab_size"),
                                     ({"labeled": 10**6}, "data.labeled_rows"),
                                     ({"test": 10**6}, "data.test_rows")])
def test_too_much_asked_is_one_line(tmp_path, kw, key):
    _corpus(tmp_path)
    with pytest.raises(DataError, match=key):
        _load(tmp_path, **kw)


@pytest.mark.parametrize("data, key", [
    ({"source": "chars"}, "vocab_size: required"),
    ({"source": "chars", "vocab_size": 100}, "normalize: must be 'none'"),
    ({"source": "mnist1d", "vocab_size": 100}, "vocab_size: only used"),
    ({"source": "chars", "vocab_size": 100, "normalize": "none", "context": 0}, "context"),
])
def test_chars_params_are_checked(data, key):
    with pytest.raises(ConfigError, match=key):
        parse_config({"data": data})


def test_prepare_on_the_real_standard_library(tmp_path):
    params = {"data": {"source": "chars", "vocab_size": 100, "normalize": "none",
                       "context": 16, "labeled_rows": 500, "unlabeled_rows": 300,
                       "test_rows": 200}} | OFF
    meta = run(parse_config(params), tmp_path / "p")
    assert meta["n_classes"] == 100 and meta["class_names"][-1] == "other"
    assert meta["feature_shape"] == [16] and meta["vocab_size"] == 100
    assert meta["rows"] == {"labeled": 500, "val": 50, "unlabeled": 300, "test": 200}
    info = meta["source_info"]
    assert len(info["corpus_sha256"]) == 64 and info["corpus_sha256"] in info.values()
    assert info["characters"] > 1_000_000 and info["test_files"] > 0
    lab, _ = read_split(tmp_path / "p", "labeled")
    assert lab.x.shape == (500, 16) and lab.x.min() >= 0 and lab.x.max() < 100
    assert (lab.x == np.round(lab.x)).all() and len(np.unique(lab.y)) > 20


def test_a_users_parquet_with_hundreds_of_classes(tmp_path):
    rng = np.random.default_rng(0)
    n_classes = 300
    for name, n in (("lab", 3000), ("test", 900)):
        y = np.concatenate([np.arange(n_classes), rng.integers(0, n_classes, n - n_classes)])
        ids = rng.integers(0, 50, (n, 8))
        pq.write_table(pa.table({"tokens": ids.tolist(), "y": y}), tmp_path / f"{name}.parquet")
    params = {"data": {"source": "parquet", "inputs": ".", "labeled": "lab.parquet",
                       "test": "test.parquet", "features": "tokens", "label": "y",
                       "vocab_size": 50, "normalize": "none"}} | OFF
    meta = run(parse_config(params), tmp_path / "p", root=tmp_path)
    assert meta["n_classes"] == n_classes
    assert meta["class_names"] == [str(i) for i in range(n_classes)]  # by value, not "10" < "2"
    test, _ = read_split(tmp_path / "p", "test")
    assert test.y.max() == n_classes - 1
