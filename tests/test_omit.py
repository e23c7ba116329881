"""Hinton et al.'s variant knobs: omitted classes (with a bias chosen on validation rows) and a
fraction of the labeled rows. Both make the variant a control, which is never shipped.

    pytest -q tests/test_omit.py

On the catalogue's small pipeline (digits, two MLP members): a spy on the Hinton loss sees every
row the student trains on, as tests/test_variants.py does for `rows: labeled`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import kd.train.student as distill
from kd.distill.losses import soft_targets
from kd.distill.rows import choose_bias, with_bias
from kd.evaluate.choose import choose_variant
from kd.targets.reader import ShardReader
from kd.train.loop import predict
from stages import student
from tests.catalogue import pipeline
from tests.conftest import cwd
from tests.test_variants import config

OMIT = 3


@pytest.fixture(scope="module")
def shards() -> Path:
    return pipeline() / "data/soft_targets"


def _train(tmp_path: Path, shards: Path, monkeypatch, recipe: dict) -> tuple[list, dict]:
    """Variant `v` with `recipe`; every loss call's (labels, member logits) and the run's metrics."""
    calls, logits = [], []
    real_loss, real_targets = distill.kd_loss, distill.ensemble_targets

    def targets_spy(t_logits, st):
        logits.append(t_logits.detach().clone())
        return real_targets(t_logits, st)

    def loss_spy(s_logits, t_probs, labels, T, alpha, labeled=None, components=None, mix=None):
        calls.append((labels.clone(), logits[-1]))
        return real_loss(s_logits, t_probs, labels, T, alpha, labeled, components, mix)

    monkeypatch.setattr(distill, "kd_loss", loss_spy)
    monkeypatch.setattr(distill, "ensemble_targets", targets_spy)
    with cwd(tmp_path):
        metrics = student.run(config(v=recipe), "v", out_root=tmp_path / "student",
                              shards=shards, prepared=shards.parent / "prepared")
    return calls, metrics


def _classes(calls: list) -> tuple[torch.Tensor, torch.Tensor]:
    """Each trained row's label and the ensemble's argmax at T = 1."""
    y = torch.cat([c[0] for c in calls])
    top = torch.cat([soft_targets(c[1], 1.0, "mean_probs").argmax(1) for c in calls])
    return y, top


def test_the_default_recipe_trains_on_the_class_both_ways(tmp_path, shards, monkeypatch):
    # what the omit test guards against is there: labeled 3s and unlabeled rows called 3
    y, top = _classes(_train(tmp_path, shards, monkeypatch, {})[0])
    assert (y == OMIT).sum() > 10 and ((y < 0) & (top == OMIT)).sum() > 10


@pytest.mark.parametrize("omit", [[OMIT], ["3", 7]])
def test_omitted_classes_never_reach_the_loss(tmp_path, shards, monkeypatch, omit):
    calls, metrics = _train(tmp_path, shards, monkeypatch, {"omit": omit})
    y, top = _classes(calls)
    classes = torch.tensor([int(c) for c in omit])
    assert not torch.isin(y, classes).any()  # labeled rows: by label
    assert not torch.isin(top[y < 0], classes).any()  # unlabeled rows: by the ensemble
    assert (y >= 0).sum() > 0 and (y < 0).sum() > 0
    om = metrics["omit"]
    assert om["classes"] == sorted(int(c) for c in omit) and om["test_rows"] > 0
    assert metrics == json.loads((tmp_path / "student/v/metrics.json").read_text())
    assert 0 <= om["test_accuracy_omitted"] <= om["test_accuracy_omitted_corrected"] or \
        om["bias"] <= 0  # a raised bias can only turn more of the omitted rows right


def test_the_bias_is_chosen_on_validation_rows_only(tmp_path, shards, monkeypatch):
    seen = []
    real = distill.choose_bias

    def spy(val_logits, val_y, omitted):
        seen.append((np.array(val_logits), np.array(val_y), list(omitted)))
        return real(val_logits, val_y, omitted)

    monkeypatch.setattr(distill, "choose_bias", spy)
    _, metrics = _train(tmp_path, shards, monkeypatch, {"omit": [OMIT]})
    (z, y, omitted), = seen
    val = ShardReader(shards).validation_rows()
    assert np.array_equal(y, val["label"]) and omitted == [OMIT]
    from kd.models import load_model

    model, _ = load_model(tmp_path / "student/v")
    assert np.allclose(z, predict(model, val["features"]).numpy(), atol=1e-5)
    assert metrics["omit"]["bias"] == real(z, y, [OMIT])
    assert metrics["omit"]["validation_rows"] == len(val["label"])


def test_choose_bias_maximises_accuracy_on_the_rows_it_is_given():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 400)
    z = rng.normal(size=(400, 4)) + 4 * np.eye(4)[y]
    z[:, 2] -= 6  # class 2 never trained on: its logit sits far too low
    b = choose_bias(z, y, [2])
    assert 4 < b < 12
    before, after = ((m.argmax(1) == y).mean() for m in (z, with_bias(z, [2], b)))
    assert after > before + 0.15
    for other in np.linspace(-10, 20, 61):  # no bias does better on these rows
        assert (with_bias(z, [2], other).argmax(1) == y).mean() <= after
    assert choose_bias(z + 6 * np.eye(4)[[2]], y, [2]) == pytest.approx(b - 6)  # it moves
    assert choose_bias(z[:0], y[:0], [2]) == 0.0


def test_fraction_trains_on_a_seeded_share_of_the_labeled_rows(tmp_path, shards, monkeypatch):
    recipe = {"rows": "labeled", "fraction": 0.3}
    y = torch.cat([c[0] for c in _train(tmp_path, shards, monkeypatch, recipe)[0]])
    reader = ShardReader(shards, rows="labeled")
    n = reader.num_rows(drop_val=True)
    assert (y >= 0).all() and 0.2 * n < len(y) < 0.4 * n
    # with every unlabeled row under `rows: all`: the labeled share is the same rows
    (tmp_path / "all").mkdir()
    y_all = torch.cat([c[0] for c in _train(tmp_path / "all", shards, monkeypatch,
                                            {"fraction": 0.3})[0]])
    assert (y_all >= 0).sum() == len(y) and (y_all < 0).sum() > 0


def test_the_new_knobs_make_controls_that_are_never_chosen(tmp_path, monkeypatch):
    import kd.evaluate.choose as choose

    cfg = config(a={}, om={"omit": [OMIT]}, fr={"fraction": 0.5}, km={"combine": "kl_per_member"})
    assert [cfg.student.variant(v).is_control for v in ("a", "om", "fr", "km")] == \
        [False, True, True, False]
    monkeypatch.setattr(choose, "ensemble_val_accuracy", lambda _shards, _combine: (0.9, 400))
    for v, params in {"a": 1000, "om": 10, "fr": 10, "km": 5000}.items():
        (tmp_path / v).mkdir()
        (tmp_path / v / "metrics.json").write_text(json.dumps({"params": params,
                                                               "val_accuracy": 0.9}))
    choice = choose_variant(cfg, tmp_path, tmp_path / "shards")
    assert choice["variant"] == "a" and sorted(choice["controls"]) == ["fr", "om"]


class _OneBatch:  # a reader yielding one decoded batch of stored views
    def __init__(self, b: dict):
        self.b = b

    def iter_batches(self, *args, **kwargs):
        yield dict(self.b)


def test_a_mixup_partner_the_variant_drops_lends_no_label():
    # rows 0-3 are views of labeled rows mixed with partners 10 (class 3, omitted), 11 (class 1,
    # kept), 12 (unlabeled) and no partner; with view_labels mixed only partner 11's label counts
    b = {"features": np.zeros((4, 2), np.float32), "label": np.array([1, 2, 1, 2]),
         "logits": np.zeros((1, 4, 10), np.float32), "row_id": np.arange(4),
         "view": np.array([1, 1, 1, 1]), "partner": np.array([10, 11, 12, -1]),
         "partner_label": np.array([3, 1, -1, -1]), "lam": np.full(4, 0.7, np.float32)}
    st = config(v={"omit": [3]}).student.variant("v")
    kept = distill.partner_labels_kept(st, [3])
    batch = next(iter(distill.shard_batches(_OneBatch(b), 4, 0, 8, view_labels="mixed",
                                            partner_kept=kept)(0)))
    assert batch.mix[0].tolist() == [-1, 1, -1, -1]  # the omitted class's label never appears
    assert batch.y.tolist() == [-1, 2, -1, 2]  # a view mixed with an unknown label: no term
    plain = next(iter(distill.shard_batches(_OneBatch(b), 4, 0, 8, view_labels="mixed")(0)))
    assert plain.mix[0].tolist() == [3, 1, -1, -1]  # what leaked before
    assert distill.partner_labels_kept(config(v={}).student.variant("v"), []) is None
