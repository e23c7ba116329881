"""The soft decision tree student (kd/models/soft_tree.py) and its pictures (kd/report/tree.py).

    pytest -q tests/test_soft_tree.py
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kd.config import TrainConfig
from kd.errors import ConfigError
from kd.models import build_model, count_params, load_model, save_model
from kd.report.explain import tree_pictures
from kd.train.batches import in_memory_batches
from kd.train.loop import fit
from tests.conftest import one_variant
from tests.test_training import Interrupt, StopAfter


def tree(shape=(6,), n_classes=3, seed=0, **knobs):
    torch.manual_seed(seed)
    return build_model("soft_tree", shape, n_classes, knobs)


# --------------------------------------------------------------------------- the model


@pytest.mark.parametrize("shape", [(6,), (4, 5), (2, 3, 3)])
@pytest.mark.parametrize("depth", [1, 3])
def test_output_is_a_distribution_in_every_mode(shape, depth):
    x = torch.randn(7, *shape) * 3
    t = tree(shape, 4, depth=depth)
    outs = {"train": t.train()(x)}
    for mode in ("max_leaf", "mixture"):
        t.inference = mode
        outs[mode] = t.eval()(x)
    for mode, logits in outs.items():
        p = logits.exp()
        assert logits.shape == (7, 4) and torch.isfinite(logits).all(), mode
        assert (p >= 0).all() and torch.allclose(p.sum(1), torch.ones(7), atol=1e-5), mode
    assert torch.equal(outs["train"], outs["mixture"])  # training always on the mixture
    # max_leaf: each row gets exactly one leaf's distribution
    leaves = F.log_softmax(t.leaves, 1)  # (L, C)
    for row in outs["max_leaf"]:
        assert any(torch.allclose(row, leaf) for leaf in leaves)


def test_depth_one_is_logistic_routing_between_two_leaves():
    t = tree((5,), 3, depth=1, beta=2.0)
    x = torch.randn(50, 5)
    s = torch.sigmoid(2.0 * (x @ t.inner.weight[0] + t.inner.bias[0]))  # (B,) right prob
    q = F.softmax(t.leaves, 1)  # (2, C): left leaf, right leaf
    want = (1 - s)[:, None] * q[0] + s[:, None] * q[1]  # (B, C)
    t.inference = "mixture"
    assert torch.allclose(t.eval()(x).exp(), want, atol=1e-6)
    t.inference = "max_leaf"
    picked = torch.where((s > 0.5)[:, None], q[1], q[0])
    assert torch.allclose(t(x).exp(), picked, atol=1e-6)
    assert count_params(t) == 5 + 1 + 2 * 3 + 1  # filter, bias, two leaves, log beta


def test_penalty_equals_a_hand_computation():
    # depth 2, two features, penalty 0.5, no averaging (window 1 at the root, 2 below)
    t = tree((2,), 2, depth=2, penalty=0.5, ema_window=1, learn_beta=False)
    with torch.no_grad():
        t.inner.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, -1.0]]))
        t.inner.bias.copy_(torch.tensor([0.0, 0.5, -0.5]))
    x = torch.tensor([[1.0, 2.0], [-1.0, 0.0], [0.5, -1.0]])
    t.train()(x)
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    rows = x.tolist()
    s0 = [sig(a) for a, b in rows]
    s1 = [sig(b + 0.5) for a, b in rows]
    s2 = [sig(a - b - 0.5) for a, b in rows]
    a0 = sum(s0) / 3  # every row reaches the root
    reach1, reach2 = [1 - v for v in s0], s0
    a1 = sum(r * v for r, v in zip(reach1, s1, strict=True)) / sum(reach1)
    a2 = sum(r * v for r, v in zip(reach2, s2, strict=True)) / sum(reach2)
    # depth-1 nodes average over 2 batches from a start of 0.5: half old, half this batch
    a1, a2 = 0.5 * 0.5 + 0.5 * a1, 0.5 * 0.5 + 0.5 * a2

    def term(a, d):
        return 2.0**-d * (0.5 * math.log(a) + 0.5 * math.log(1 - a))

    want = -0.5 * (term(a0, 0) + term(a1, 1) + term(a2, 1))
    assert t.aux_loss().item() == pytest.approx(want, rel=1e-5)
    assert t.split_avg.tolist() == pytest.approx([a0, a1, a2], rel=1e-5)
    t.eval()(x)  # evaluation neither updates the averages nor the penalty
    assert t.split_avg.tolist() == pytest.approx([a0, a1, a2], rel=1e-5)
    assert t.aux_loss().item() == pytest.approx(want, rel=1e-5)


def test_penalty_gradient_reaches_the_filters_and_balances_the_splits():
    # every row far on the right side of the root's initial split: only the penalty moves it
    x = torch.randn(256, 4) + torch.tensor([4.0, 0, 0, 0])
    y = torch.zeros(256, dtype=torch.int64)
    t = tree((4,), 2, depth=1, penalty=5.0)
    with torch.no_grad():
        t.inner.weight.copy_(torch.tensor([[1.0, 0, 0, 0]]))
    cfg = TrainConfig(epochs=30, batch_size=256, lr=0.05, schedule="constant", weight_decay=0)
    fit(t, in_memory_batches(x.numpy(), y.numpy(), 256, 0, (4,), cfg.augment),
        lambda s, b: F.cross_entropy(s, b.y) * 0, cfg, steps_per_epoch=1)
    assert t.split_avg[0].item() == pytest.approx(0.5, abs=0.1)


@pytest.mark.parametrize("knobs, fragment", [
    ({"depth": 0}, "depth=0"), ({"depth": 11}, "depth=11"), ({"beta": 0}, "beta=0"),
    ({"beta": "hot"}, "beta='hot'"), ({"penalty": -1}, "penalty=-1"),
    ({"ema_window": 0}, "ema_window=0"), ({"learn_beta": "yes"}, "learn_beta='yes'"),
    ({"inference": "argmax"}, "inference='argmax'"), ({"objective": "paths"}, "objective='paths'"),
])
def test_bad_knobs(knobs, fragment):
    with pytest.raises(ConfigError) as exc:
        build_model("soft_tree", (6,), 3, knobs)
    assert fragment in str(exc.value) and "soft_tree" in str(exc.value)


def test_leaves_objective_gives_the_path_weighted_loss_of_each_leaf():
    """objective `leaves`: through output_components(), the baseline's (and the student's)
    loss is the paper's -sum_l P_l(x) log Q_l[y], not -log sum_l P_l(x) Q_l[y]."""
    from kd.models import output_components
    from kd.train.supervised import label_loss

    x, y = torch.randn(9, 6), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2])
    paper = tree(depth=2, objective="leaves").train()
    out = paper(x)
    log_p, _ = paper.log_paths(x)  # (B, L)
    log_q = F.log_softmax(paper.leaves, 1)  # (L, C)
    want = -(log_p.exp() * log_q[:, y].T).sum(1).mean()  # (B, L) weights times leaf NLLs
    assert label_loss(out, y, output_components(paper)).item() == pytest.approx(want.item(),
                                                                                  rel=1e-6)
    assert label_loss(out, y, output_components(paper)) > F.cross_entropy(out, y)  # Jensen
    ours = tree(depth=2).train()  # objective mixture (the default): the output alone
    assert torch.equal(ours(x), out)  # the same weights, the same output
    assert output_components(ours) is None
    assert output_components(torch.nn.Linear(2, 2)) is None  # no hook: the output alone
    # the objective changes what is learned, and training stays deterministic
    trained = {}
    for objective in ("mixture", "leaves", "leaves"):
        m = tree(depth=3, objective=objective)
        xs, ys = _data()
        fit(m, in_memory_batches(xs, ys, 32, CFG.seed, (6,), CFG.augment),
            lambda s, b, m=m: label_loss(s, b.y, output_components(m)), CFG, steps_per_epoch=5)
        trained.setdefault(objective, []).append(m.leaves.detach().clone())
    assert torch.equal(*trained["leaves"])
    assert not torch.allclose(trained["leaves"][0], trained["mixture"][0])


# --------------------------------------------------------------------------- files


@pytest.mark.parametrize("knobs", [{"depth": 3}, {"depth": 2, "learn_beta": False,
                                                  "inference": "mixture", "objective": "leaves"}])
def test_save_load_round_trip(tmp_path, knobs):
    t = tree((4, 4), 3, **knobs)
    t.train()(torch.randn(9, 4, 4))  # move the running split averages off their start
    t.eval()
    spec = {"arch": "soft_tree", "knobs": knobs, "input_shape": [4, 4], "n_classes": 3,
            "class_names": ["a", "b", "c"]}
    save_model(tmp_path, t, spec)
    loaded, got = load_model(tmp_path)
    x = torch.randn(11, 16)
    assert torch.equal(loaded(x), t(x))
    assert torch.equal(loaded.split_avg, t.split_avg) and not torch.equal(
        t.split_avg, torch.full_like(t.split_avg, 0.5))
    assert loaded.inference == t.inference and loaded.objective == t.objective
    assert json.loads((tmp_path / "model.json").read_text())["knobs"]["depth"] == knobs["depth"]


# --------------------------------------------------------------------------- training

CFG = TrainConfig(epochs=4, batch_size=32, lr=0.05, seed=2)


def _data():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((160, 6)).astype(np.float32)
    return x, (x[:, 0] + x[:, 1] > 0).astype(np.int64) + (x[:, 2] > 1)


def _fit(model, **kw):
    x, y = _data()
    return fit(model, in_memory_batches(x, y, 32, CFG.seed, (6,), CFG.augment),
               lambda s, b: F.cross_entropy(s, b.y), CFG, steps_per_epoch=5, **kw)


def _same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_training_is_deterministic_and_resumes_exactly(tmp_path):
    ref = tree(depth=3)
    history = _fit(ref)
    torch.rand(5)  # whatever ran before in the process must not matter
    again = tree(depth=3)
    history2 = _fit(again)
    _same(again, ref)
    drop = lambda hs: [{k: v for k, v in h.items() if k != "epoch_time_s"} for h in hs]  # noqa
    assert drop(history2) == drop(history)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    ckpt = tmp_path / "ckpt"
    with pytest.raises(Interrupt):
        _fit(tree(depth=3), checkpoint=ckpt, fingerprint="fp", callbacks=[StopAfter(1)])
    resumed = tree(depth=3, seed=9)  # another init: only the checkpoint can make it match
    _fit(resumed, checkpoint=ckpt, fingerprint="fp")
    _same(resumed, ref)  # weights, beta and the running split averages


# --------------------------------------------------------------------------- pictures


@pytest.mark.parametrize("shape, depth", [((12,), 3), ((6, 6), 3), ((12,), 6)])
def test_pictures_for_1d_and_2d_rows(tmp_path, shape, depth):
    # depth 6: past MAX_LEVELS, the leaves are drawn as one heat map
    t = tree(shape, 4, depth=depth).eval()
    row = np.linspace(-1, 1, math.prod(shape)).astype(np.float32)
    paths = tree_pictures(t, row, 17, 2, list("abcd"), tmp_path, name="s_")
    assert [p.name for p in paths] == ["s_tree.png", "s_path_17.png"]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5_000
    first = paths[0].read_bytes()
    tree_pictures(t, row, 17, 2, list("abcd"), tmp_path, name="s_")
    assert paths[0].read_bytes() == first  # the same tree, the same bytes
    route = t.explain(torch.from_numpy(row))
    assert len(route["steps"]) == depth and route["steps"][0]["node"] == 0
    assert route["path_prob"] == pytest.approx(route["steps"][-1]["path_prob"], rel=1e-5)
    logp, _ = t.log_paths(torch.from_numpy(row)[None])
    assert route["leaf"] == int(logp.argmax())


# --------------------------------------------------------------------------- in the pipeline

TREE_PIPELINE = {
    "data": {"source": "digits"},
    "teacher": {"members": {"a": {"arch": "mlp", "knobs": {"depth": 1, "width": 16},
                                  "train": {"epochs": 2, "batch_size": 64}}}},
    "export": {"rows_per_shard": 500, "row_group_size": 250, "batch_size": 512},
    "student": one_variant({"arch": "soft_tree", "knobs": {"depth": 2},
                "train": {"epochs": 2, "batch_size": 64}}),
    "baseline": {"epochs": 2},
    "tracking": {"enabled": False},
}


@pytest.mark.slow
def test_report_and_kd_explain_draw_a_tree_student(tmp_path, kd):
    from kd.config import parse_config
    from kd.prepared import read_split
    from stages import report
    from tests.conftest import assert_user_error, build_pipeline, cwd

    root = build_pipeline(tmp_path / "p", TREE_PIPELINE, ("prepare", "teacher", "export",
                                                         "student", "baseline", "deploy"))
    with cwd(root):
        report.run(parse_config(TREE_PIPELINE))
        md = (root / "data/report/report.md").read_text()
        assert "inference mode is **max_leaf**" in md
        plots = {p.name for p in (root / "data/report/plots").iterdir()}
        assert {"student_tree.png", "baseline_tree.png"} <= plots
        assert any(n.startswith("student_path_") for n in plots)
        assert all(f"plots/{n}" in md for n in plots if "tree" in n or "path" in n)
        assert md.count("](plots/") == (root / "data/report/report.html").read_text().count(
            "<figure>")  # every figure, the trees' too, embedded in the HTML
        test, _ = read_split(root / "data/prepared", "test")
        row = int(test.row_id[3])
        for kind in ("student", "baseline"):  # one after the other into one folder: both kept
            result = kd("explain", row, "--model", f"data/{kind}/s", "--out", "pics")
            assert result.exit_code == 0, result.output
        assert sorted(p.name for p in (root / "pics").iterdir()) == [
            f"baseline-s_path_{row}.png", "baseline-s_tree.png", f"student-s_path_{row}.png",
            "student-s_tree.png"]
        assert_user_error(kd("explain", row, "--model", "data/teachers/a"), "'mlp'",
                          "data/teachers/a/model.json")
        assert_user_error(kd("explain", 100000, "--model", "data/student/s"), "row_id 100000",
                          "test.parquet")


def test_example_params_file_is_valid():
    from pathlib import Path

    from kd.config import load_config

    cfg = load_config(Path(__file__).resolve().parents[1] / "examples" / "soft_tree.yaml")
    st = cfg.student.variant("tree")
    assert st.arch == "soft_tree" and st.knobs["inference"] == "max_leaf"
    assert st.knobs["objective"] == "mixture"  # the default, chosen on validation rows
    assert cfg.baseline_spec("tree").train.augment.shift == 6  # the tree on labels: shifts too
