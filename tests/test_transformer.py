"""The transformer family (kd/models/transformer.py), its layer-skip init, the cosine term,
hidden-state columns in the shards, and token-id inputs.

    pytest -q tests/test_transformer.py
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F

from kd.config import TrainConfig, parse_config
from kd.distill.losses import cosine_loss
from kd.errors import ArtifactError, ConfigError, DataError
from kd.model_checks import check_models
from kd.models import build_model, count_params, load_model, save_model
from kd.models.transformer import init_from, init_problem
from kd.targets.manifest import write_manifest
from kd.targets.reader import ShardReader
from kd.targets.shards import ShardWriter
from kd.targets.shardset import verify
from kd.train.batches import in_memory_batches
from kd.train.loop import evaluate, fit
from tests.conftest import VARIANT, one_variant
from tests.test_training import Interrupt, StopAfter

SMALL = {"layers": 2, "width": 16, "heads": 2, "patch": 2}


def tfm(shape=(8,), n_classes=3, seed=0, **knobs):
    torch.manual_seed(seed)
    return build_model("transformer", shape, n_classes, {**SMALL, **knobs})


def _same(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# --------------------------------------------------------------------------- the model


@pytest.mark.parametrize("shape, knobs", [
    ((8,), {}), ((7,), {"patch": 3}),  # 7 values: 3 patches, the last one zero-padded
    ((2, 5), {"pool": "mean"}), ((6,), {"vocab": 9}),
])
def test_output_and_hidden_shapes(shape, knobs):
    m = tfm(shape, 4, **knobs).eval()
    x = torch.randint(0, 9, (5, math.prod(shape))).float()  # ids are valid features too
    z, h = m.forward_with_hidden(x)
    assert z.shape == (5, 4) and h.shape == (5, 16)
    assert torch.equal(m(x), z) and torch.equal(m.forward_features(x), h)


@pytest.mark.parametrize("knobs, fragment", [
    ({"width": 10, "heads": 4}, "width=10"), ({"pool": "max"}, "pool='max'"),
    ({"layers": 0}, "layers=0"), ({"vocab": -1}, "vocab=-1"), ({"dropout": 1.0}, "dropout"),
])
def test_bad_knobs(knobs, fragment):
    with pytest.raises(ConfigError) as exc:
        tfm(**knobs)
    assert fragment in str(exc.value) and "transformer" in str(exc.value)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("knobs", [{}, {"pool": "mean", "dropout": 0.1}, {"vocab": 9}])
def test_save_load_round_trip(tmp_path, knobs):
    m = tfm(**knobs).eval()
    spec = {"arch": "transformer", "knobs": {**SMALL, **knobs}, "input_shape": [8],
            "n_classes": 3, "class_names": ["a", "b", "c"]}
    save_model(tmp_path, m, spec)
    loaded, got = load_model(tmp_path)
    x = torch.randint(0, 9, (11, 8)).float()
    assert torch.equal(loaded(x), m(x))
    _same(loaded, m)
    assert json.loads((tmp_path / "model.json").read_text())["knobs"]["heads"] == 2


CFG = TrainConfig(epochs=3, batch_size=32, lr=0.01, seed=2)


def _data():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((128, 8)).astype(np.float32)
    return x, (x[:, 0] + x[:, 5] > 0).astype(np.int64) + (x[:, 2] > 1)


def _fit(model, **kw):
    x, y = _data()
    return fit(model, in_memory_batches(x, y, 32, CFG.seed, (8,), CFG.augment),
               lambda s, b: F.cross_entropy(s, b.y), CFG, steps_per_epoch=4, **kw)


def test_training_is_deterministic_and_resumes_exactly(tmp_path):
    ref = tfm(dropout=0.1)  # dropout: its stream must be reseeded on resume too
    history = _fit(ref)
    torch.rand(5)  # whatever ran before in the process must not matter
    again = tfm(dropout=0.1)
    drop = lambda hs: [{k: v for k, v in h.items() if k != "epoch_time_s"} for h in hs]  # noqa
    assert drop(_fit(again)) == drop(history)
    _same(again, ref)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    ckpt = tmp_path / "ckpt"
    with pytest.raises(Interrupt):
        _fit(tfm(dropout=0.1), checkpoint=ckpt, fingerprint="fp", callbacks=[StopAfter(1)])
    resumed = tfm(dropout=0.1, seed=9)  # another init: only the checkpoint can make it match
    _fit(resumed, checkpoint=ckpt, fingerprint="fp")
    _same(resumed, ref)


# --------------------------------------------------------------------------- layer-skip init


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_copied_layers_equal_the_teachers_tensors_exactly(pool):
    teacher = tfm(layers=6, pool=pool, seed=1)
    student = tfm(layers=3, pool=pool, seed=2)
    layers = [0, 2, 5]
    init_from(student, teacher, layers)
    t, s = teacher.state_dict(), student.state_dict()
    for name, value in s.items():
        if name.startswith("blocks."):
            j, rest = name.split(".", 2)[1:]
            src = f"blocks.{layers[int(j)]}.{rest}"
        else:
            src = name  # embeddings, position embedding, class token, final norm, head
        assert torch.equal(value, t[src]), name
    assert {k for k in s if not k.startswith("blocks.")} == {k for k in t
                                                             if not k.startswith("blocks.")}
    x = torch.randn(4, 8)
    teacher.blocks = torch.nn.ModuleList(teacher.blocks[i] for i in layers)
    assert torch.equal(student.eval()(x), teacher.eval()(x))  # the same network now


def test_init_problems_are_one_line_each():
    base = dict(layers=2, width=16, heads=2, mlp_ratio=2, patch=2, pool="cls", vocab=0)
    assert init_problem(base, "transformer", {**base, "layers": 4}, [1, 3]) is None
    assert "'mlp'" in init_problem(base, "mlp", {}, [0, 1])
    assert "knob width" in init_problem(base, "transformer", {**base, "width": 32}, [0, 1])
    assert "3 layers listed" in init_problem(base, "transformer", base, [0, 1, 1])
    assert "layer 4" in init_problem(base, "transformer", {**base, "layers": 4}, [0, 4])


def _params(**student):
    member = {"arch": "transformer", "knobs": {"layers": 4, "width": 16, "heads": 2}}
    return {"teacher": {"members": {"t": member}},
            "student": one_variant({"arch": "transformer",
                                    "knobs": {"layers": 2, "width": 16, "heads": 2}, **student})}


def test_config_checks_init_and_beta():
    cfg = parse_config({**_params(init={"from": "t", "layers": [0, 3]}, beta=1.0),
                        "export": {"hidden": ["t"]}})
    check_models(cfg)
    st = cfg.student.variant(VARIANT)
    assert st.init.from_ == "t" and st.init.layers == [0, 3]
    plain = parse_config({}).student.variant("main")
    assert plain.beta == 0 and plain.init is None
    for params, fragment in [
        (_params(init={"from": "t", "layers": [0, 4]}), "layer 4"),
        (_params(init={"from": "x", "layers": [0, 1]}), "student.variants.s.init.from: 'x'"),
        (_params(beta=0.5), "export.hidden"),
        ({**_params(), "export": {"hidden": ["q"]}}, "export.hidden.0: 'q'"),
        ({"export": {"hidden": ["cnn_0"]}}, "'cnn1d'"),
        ({**_params(), "data": {"vocab_size": 5, "normalize": "none", "source": "parquet",
                                 "inputs": ".", "labeled": "l", "test": "t", "label": "y",
                                 "features": "f"}}, "vocab=0 must equal data.vocab_size"),
    ]:
        with pytest.raises(ConfigError) as exc:
            check_models(parse_config(params))
        assert fragment in str(exc.value) and "\n" not in str(exc.value)


# --------------------------------------------------------------------------- the cosine term


def test_cosine_term_equals_a_hand_computation():
    s = torch.tensor([[1.0, 0.0], [1.0, 1.0], [3.0, 4.0]])
    t = torch.tensor([[1.0, 1.0], [2.0, 2.0], [-3.0, -4.0]])
    # cos: 1/sqrt(2), 1 (same direction, other length), -1 (opposite)
    hand = ((1 - 1 / math.sqrt(2)) + 0.0 + 2.0) / 3
    assert cosine_loss(s, t).item() == pytest.approx(hand, abs=1e-6)
    assert cosine_loss(t, t).item() == pytest.approx(0.0, abs=1e-6)
    v = torch.randn(5, 7, requires_grad=True)
    loss = cosine_loss(v, v.detach() * 3.0)
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-6) and v.grad.abs().max() < 1e-5
    with pytest.raises(ValueError):
        cosine_loss(s, t[:, :1])


# --------------------------------------------------------------------------- hidden columns


def _hid(rid: np.ndarray, d: int) -> np.ndarray:
    return (rid[:, None] * 0.25 - np.arange(d)[None, :]).astype(np.float32)  # (B, D)


def _write(d, hidden=None, n=60):
    members, classes = ["t", "u"], ["a", "b", "c"]
    with ShardWriter(d, members=members, class_names=classes, feature_shape=(4,),
                     rows_per_shard=25, row_group_size=10, hidden=hidden) as w:
        for a in range(0, n, 20):
            rid = np.arange(a, a + 20, dtype=np.int64)
            w.write(rid, "labeled", rid % 3, rid < 10, np.tile(rid[:, None], 4).astype(float),
                    {m: np.ones((20, 3)) * k for k, m in enumerate(members)},
                    {m: _hid(rid, width) for m, width in (hidden or {}).items()})
    write_manifest(d, w.shards, members=members, class_names=classes, feature_shape=(4,),
                   logits_dtype="float32", member_fingerprints={m: m for m in members},
                   params={}, hidden=hidden)


def test_hidden_columns_round_trip_through_shards_and_are_verified(tmp_path):
    _write(tmp_path, hidden={"t": 5})
    assert verify(tmp_path)["rows"] == 60
    assert json.loads((tmp_path / "manifest.json").read_text())["hidden"] == {"t": 5}
    seen = []
    for b in ShardReader(tmp_path, hidden="t").iter_batches(16, shuffle=True, seed=3):
        np.testing.assert_array_equal(b["hidden"], _hid(b["row_id"], 5))  # same row, shuffled
        seen += b["row_id"].tolist()
    assert sorted(seen) == list(range(60))
    plain = next(ShardReader(tmp_path).iter_batches(16, shuffle=False))
    assert "hidden" not in plain  # beta 0: no hidden column is read
    with pytest.raises(ArtifactError, match="member 'u'"):
        ShardReader(tmp_path, hidden="u")
    # a shard whose hidden vectors were replaced (same rows, same schema) fails its checksum
    part = tmp_path / "part-00000.parquet"
    table = pq.read_table(part)
    col = table.schema.get_field_index("hidden.t")
    zeros = pa.array([[0.0] * 5] * table.num_rows, table.schema.field(col).type)
    pq.write_table(table.set_column(col, table.schema.field(col), zeros), part)
    with pytest.raises(ArtifactError, match="sha256"):
        verify(tmp_path)


def test_shards_without_hidden_keep_their_bytes_and_refuse_a_mix(tmp_path):
    _write(tmp_path / "a")
    _write(tmp_path / "b", hidden={})
    for f in ("part-00000.parquet", "manifest.json"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
    assert "hidden" not in json.loads((tmp_path / "a" / "manifest.json").read_text())
    _write(tmp_path / "c", hidden={"u": 3})
    m = json.loads((tmp_path / "a" / "manifest.json").read_text())
    m["hidden"] = {"u": 3}  # a manifest that claims hidden columns its shards lack
    (tmp_path / "a" / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match="hidden"):
        verify(tmp_path / "a", checksums=False)


# --------------------------------------------------------------------------- token ids


def toy_language(n: int, seed: int, vocab: int = 12, length: int = 12):
    """Rows of token ids whose class is which keyword they hold: one of the ids 1, 2, 3
    (class 0, 1, 2) at a random position among filler ids 4..vocab-1; id 0 pads a random
    tail. As numbers the ids mean nothing (keyword 3 is not "more" than 1): the class is in
    the token's identity, which only an embedding table reads. Nothing downloads."""
    rng = np.random.default_rng(seed)
    x = rng.integers(4, vocab, (n, length))
    y = rng.integers(0, 3, n)
    x[np.arange(n), rng.integers(0, length // 2, n)] = y + 1  # the keyword
    for i, k in enumerate(rng.integers(length // 2, length + 1, n)):
        x[i, k:] = 0  # padding
    return x, y


def _token_files(tmp, vocab=12, bad=None):
    for name, n, seed in (("lab", 400, 0), ("test", 200, 1)):
        x, y = toy_language(n, seed, vocab)
        if bad is not None and name == "lab":
            x[3, 5] = bad
        pq.write_table(pa.table({"ids": pa.array(x.tolist(), pa.list_(pa.int32())),
                                 "y": pa.array(y)}), tmp / f"{name}.parquet")


def _token_params(vocab=12, **student):
    knobs = {"layers": 2, "width": 32, "heads": 2, "vocab": vocab, "pool": "mean"}
    return {"data": {"source": "parquet", "inputs": ".", "labeled": "lab.parquet",
                     "test": "test.parquet", "features": "ids", "label": "y",
                     "vocab_size": vocab, "normalize": "none"},
            "teacher": {"members": {"t": {"arch": "transformer", "knobs": knobs}}},
            "student": one_variant({"arch": "transformer", "knobs": knobs, **student})}


def test_token_ids_reach_the_embedding_and_a_transformer_learns_the_toy_language(tmp_path):
    from kd.prepared import read_split
    from stages.prepare import run

    _token_files(tmp_path)
    cfg = parse_config(_token_params())
    meta = run(cfg, tmp_path / "p", root=tmp_path)
    assert meta["vocab_size"] == 12 and meta["normalization"]["method"] == "none"
    lab, is_val = read_split(tmp_path / "p", "labeled")
    test, _ = read_split(tmp_path / "p", "test")
    assert lab.x.dtype == np.float32 and set(np.unique(lab.x)) <= set(range(12))
    torch.manual_seed(0)
    model = build_model("transformer", (12,), 3, cfg.student.variant(VARIANT).knobs)
    # the ids index the embedding table: only the rows of the ids seen get a gradient
    F.cross_entropy(model(torch.from_numpy(lab.x[:2])), torch.from_numpy(lab.y[:2])).backward()
    used = np.unique(lab.x[:2]).astype(int)
    grad_rows = torch.nonzero(model.embed.weight.grad.abs().sum(1)).flatten().tolist()
    assert grad_rows == sorted(used.tolist())
    train = TrainConfig(epochs=8, batch_size=32, lr=3e-3, seed=0)
    x, y = lab.x[~is_val], lab.y[~is_val]
    fit(model, in_memory_batches(x, y, 32, 0, (12,), train.augment),
        lambda s, b: F.cross_entropy(s, b.y), train, steps_per_epoch=-(-len(y) // 32))
    acc = evaluate(model, test.x, test.y)["accuracy"]
    assert acc > 0.9, acc  # chance is 1/3


@pytest.mark.parametrize("bad", [12, -1])
def test_out_of_range_token_ids_fail_in_one_line(tmp_path, bad):
    from stages.prepare import run

    _token_files(tmp_path, bad=bad)
    with pytest.raises(DataError) as exc:
        run(parse_config(_token_params()), tmp_path / "p", root=tmp_path)
    msg = str(exc.value)
    assert "lab.parquet" in msg and "row 3, position 5" in msg and "[0, 12)" in msg
    assert "\n" not in msg and not (tmp_path / "p").exists()
    model = tfm((4,), vocab=12)
    with pytest.raises(DataError, match="row 1, position 2"):
        model(torch.tensor([[1.0, 2, 3, 4], [0, 1, 12, 2]]))


def test_the_alignment_map_is_not_a_deployed_parameter():
    """count_params counts what forward uses (what ONNX export keeps): not the map that only
    the student's cosine term uses."""
    knobs = {"layers": 1, "width": 8, "heads": 2, "patch": 8}
    plain = build_model("transformer", (8, 8), 10, knobs)
    aligned = build_model("transformer", (8, 8), 10, {**knobs, "align": 16})
    aligned(torch.randn(4, 64)).sum().backward()
    used = sum(p.numel() for p in aligned.parameters() if p.grad is not None)
    assert count_params(aligned) == used == count_params(plain)
    assert sum(p.numel() for p in aligned.parameters()) == used + 16 * 8 + 16


# --------------------------------------------------------------------------- the stages


TEACHER = {"arch": "transformer", "knobs": {"layers": 4, "width": 16, "heads": 2, "patch": 8},
           "train": {"epochs": 2, "batch_size": 64}}


def _recipe(width: int = 16, **student) -> dict:
    return {"data": {"source": "digits"}, "teacher": {"members": {"t": TEACHER}},
            "export": {"rows_per_shard": 600, "row_group_size": 200, "hidden": ["t"]},
            "student": one_variant({"arch": "transformer",
                                    "train": {"epochs": 2, "batch_size": 64},
                                    "knobs": {"layers": 2, "width": width, "heads": 2, "patch": 8},
                                    **student}),
            "tracking": {"enabled": False}}


def test_export_hidden_then_student_with_init_and_cosine_term(tmp_path):
    from kd.prepared import read_split
    from kd.train.loop import predict
    from stages import deploy, student
    from tests.conftest import build_pipeline, cwd

    init = {"from": "t", "layers": [0, 3]}
    d = build_pipeline(tmp_path / "p", _recipe(init=init, beta=1.0),
                       ("prepare", "teacher", "export"))
    reader = ShardReader(d / "data/soft_targets", hidden="t")
    assert reader.manifest["hidden"] == {"t": 16} and verify(d / "data/soft_targets")
    teacher, _ = load_model(d / "data/teachers/t")
    b = next(reader.iter_batches(50, shuffle=False))
    z, h = teacher.forward_with_hidden(torch.from_numpy(b["features"]))
    np.testing.assert_allclose(b["hidden"], h.detach().numpy(), atol=1e-5)  # the teacher's own
    np.testing.assert_allclose(b["logits"][0], z.detach().numpy(), atol=1e-5)
    with cwd(d):
        cfg = parse_config(_recipe(init=init, beta=1.0))
        metrics = student.run(cfg, VARIANT)
        assert metrics["beta"] == 1.0 and metrics["test_accuracy"] > 0.1
        deploy.run(cfg)  # the transformer student exports to ONNX and checks against PyTorch
        # widths differ: a learned map (knob align) carries the student's vector to the teacher's
        narrow = parse_config(_recipe(width=8, beta=1.0))
        m = student.run(narrow, VARIANT, out_root=Path("data/narrow"))
    s, spec = load_model(d / "data/narrow" / VARIANT)
    assert spec["knobs"]["align"] == 16 and s.align.weight.shape == (16, 8)
    # the map is not deployed: the choice and the compression ratio count the network alone
    deployed = build_model("transformer", (8, 8), 10, {**spec["knobs"], "align": 0})
    assert m["params"] == spec["params"] == count_params(deployed)
    test, _ = read_split(d / "data/prepared", "test")
    assert predict(s, test.x).shape == (len(test.y), 10)


def test_student_init_refuses_a_member_that_no_longer_fits(tmp_path):
    from stages import student
    from tests.conftest import build_pipeline, cwd

    d = build_pipeline(tmp_path / "p", _recipe(), ("prepare", "teacher", "export"))
    spec = json.loads((d / "data/teachers/t/model.json").read_text())
    knobs = {**spec["knobs"], "layers": 2}  # a member trained under other params, not rerun
    save_model(d / "data/teachers/t", build_model("transformer", (8, 8), 10, knobs),
               {**spec, "knobs": knobs})
    with cwd(d), pytest.raises(ArtifactError) as exc:
        student.run(parse_config(_recipe(init={"from": "t", "layers": [0, 3]})), VARIANT)
    assert "layer 3" in str(exc.value) and "data/teachers/t/model.json" in str(exc.value)


def test_example_params_file_is_valid():
    from kd.config import load_config

    cfg = load_config(Path(__file__).resolve().parents[1] / "examples" / "transformer.yaml")
    st = cfg.student.variant("half")
    assert st.init.from_ == "t" and st.init.layers == [0, 2]
    assert cfg.export.hidden == ["t"] and st.beta == 1.0
    assert st.knobs["layers"] * 2 == cfg.teacher.member("t").knobs["layers"]
