"""params.yaml validation: every mistake is one line naming the key and value, exit 2."""

from __future__ import annotations

import pytest

from stages.config import Config, load_config, parse_config
from stages.errors import ConfigError
from tests.conftest import assert_user_error

CASES = [
    # (params, what the one line must contain)
    ({"student": {"temperature": -1}}, "student.temperature: must be > 0, got -1"),
    ({"student": {"temprature": 4}}, "student.temprature: unknown key (did you mean 'temperature'?)"),
    ({"studnt": {}}, "studnt: unknown key"),
    ({"student": {"alpha": 1.5}}, "student.alpha: must be <= 1, got 1.5"),
    ({"student": {"combine": "max"}}, "student.combine: must be one of"),
    ({"data": {"source": "cifar"}}, "data.source: must be one of 'mnist1d', 'digits' or 'parquet', got 'cifar'"),
    ({"data": {"unlabeled_size": "10"}}, "data.unlabeled_size: must be an integer, got '10'"),
    ({"data": {"unlabeled_size": 2.5}}, "data.unlabeled_size: must be an integer, got 2.5"),
    ({"data": {"unlabeled_size": -5}}, "data.unlabeled_size: must be >= 0, got -5"),
    ({"data": {"val_fraction": 0.9}}, "data.val_fraction: must be <= 0.5, got 0.9"),
    ({"data": {"unlabeled_seed": 42}}, "data.unlabeled_seed: must differ"),
    ({"data": {"labeled": "x.parquet"}}, "data.labeled: only used when data.source is 'parquet'"),
    ({"data": {"source": "parquet", "test": "t.parquet"}}, "data.labeled: required when data.source is 'parquet'"),
    ({"data": {"source": "parquet", "labeled": "l", "test": "t", "label": "y", "features": 3}}, "data.features: must be a string, got 3"),
    ({"data": {"source": "parquet", "labeled": "l", "test": "t", "label": "y", "features": "f", "shape": [8, 0]}}, "data.shape.1: must be > 0, got 0"),
    ({"data": {"source": "digits", "test_fraction": 0.5, "unlabeled_fraction": 0.5}}, "data.unlabeled_fraction: test_fraction + unlabeled_fraction"),
    ({"data": {"normalize": "minmax"}}, "data.normalize: must be one of"),
    ({"teacher": {"members": {}}}, "teacher.members: needs at least one member"),
    ({"teacher": {"members": {"a b": {}}}}, "teacher.members: member names use letters"),
    ({"teacher": {"members": {"a": {"train": {"lr": 0}}}}}, "teacher.members.a.train.lr: must be > 0, got 0"),
    ({"teacher": {"members": {"a": {"train": {"epoch": 3}}}}}, "teacher.members.a.train.epoch: unknown key (did you mean 'epochs'?)"),
    ({"teacher": {"defaults": {"train": {"epochs": 0}}}}, "teacher.defaults.train.epochs: must be > 0, got 0"),
    ({"teacher": {"defaults": {"train": {"optimizer": "adam"}}}}, "teacher.defaults.train.optimizer: must be one of"),
    ({"teacher": {"defaults": {"train": {"epochs": 5, "warmup_epochs": 5}}}}, "teacher.defaults.train.warmup_epochs: must be < epochs (5), got 5"),
    ({"teacher": {"members": {"a": {"train": {"augment": {"shift": -1}}}}}}, "teacher.members.a.train.augment.shift: must be >= 0, got -1"),
    ({"export": {"rows_per_shard": 0}}, "export.rows_per_shard: must be > 0, got 0"),
    ({"export": {"rows_per_shard": 100, "row_group_size": 1000}}, "export.row_group_size: must be <= rows_per_shard (100), got 1000"),
    ({"export": {"logits_dtype": "float64"}}, "export.logits_dtype: must be one of"),
    ({"tracking": {"enabled": "yes"}}, "tracking.enabled: must be true or false, got 'yes'"),
    ({"student": {"train": {"batch_size": True}}}, "student.train.batch_size: must be an integer, got True"),
]


@pytest.mark.parametrize("params,expected", CASES, ids=[c[1].split(":")[0] for c in CASES])
def test_bad_params_fail_with_one_line(params, expected, write_params, kd, tmp_path):
    path = write_params(params)
    out_dir = tmp_path / "out"
    result = kd("prepare", "--params", path, "--out", out_dir)
    assert_user_error(result, expected)
    assert not out_dir.exists()  # stopped before any work


def test_every_command_validates_the_whole_file(write_params, kd):
    # a mistake in the student's section stops the data stage
    path = write_params({"data": {"unlabeled_size": 10}, "student": {"temperature": 0}})
    assert_user_error(kd("prepare", "--params", path), "student.temperature")


@pytest.mark.parametrize("text,expected", [
    ("data: [unclosed", "invalid YAML at line 1"),
    ("data:\n  source: mnist1d\n  source: digits\n", "source: duplicate key (line 3)"),
    ("- 1\n- 2\n", "params: must be a mapping of sections, got list"),
    ("data: !!python/object/apply:os.system ['echo hacked']\n", "invalid YAML"),
])
def test_malformed_yaml(text, expected, write_params, kd):
    assert_user_error(kd("prepare", "--params", write_params(text)), expected)


def test_missing_params_file(kd, tmp_path):
    assert_user_error(kd("prepare", "--params", tmp_path / "nope.yaml"), "nope.yaml: params file not found")


def test_defaults_and_empty_file(write_params):
    assert load_config(write_params("")) == Config()
    cfg = parse_config({})
    assert cfg.data.source == "mnist1d" and cfg.data.unlabeled_size == 40_000
    assert cfg.student.temperature > 0 and 0 <= cfg.student.alpha <= 1


def test_members_override_defaults():
    cfg = parse_config({"teacher": {
        "defaults": {"arch": "cnn1d", "knobs": {"channels": 32, "depth": 3},
                     "train": {"epochs": 10, "lr": 0.01}},
        "members": {"a": {}, "b": {"knobs": {"channels": 64}, "train": {"seed": 7}},
                    "c": {"arch": "mlp", "knobs": {"width": 64}}},
    }})
    a, b, c = (cfg.teacher.member(n) for n in "abc")
    assert a.knobs == {"channels": 32, "depth": 3} and a.train.epochs == 10
    assert b.knobs == {"channels": 64, "depth": 3} and b.train.seed == 7 and b.train.lr == 0.01
    # another architecture inherits the training settings, not the other's knobs
    assert c.arch == "mlp" and c.knobs == {"width": 64} and c.train.lr == 0.01


def test_the_repository_params_are_valid():
    from tests.conftest import ROOT

    cfg = load_config(ROOT / "params.yaml")
    assert cfg.data.source == "mnist1d"


def test_config_error_is_raised_not_exit():
    with pytest.raises(ConfigError, match="student.alpha"):
        parse_config({"student": {"alpha": -0.1}})


@pytest.mark.parametrize("params,expected", [
    ({"student": {"arch": "transformer"}}, "student.arch: unknown architecture 'transformer'"),
    ({"student": {"arch": "mlp", "knobs": {"channels": 3}}}, "student.knobs: unknown knob 'channels' for architecture 'mlp'"),
    ({"teacher": {"members": {"m": {"knobs": {"widht": 3}}}}}, "teacher.members.m.knobs: unknown knob 'widht'"),
    ({"teacher": {"members": {"m": {"knobs": {"kernel": 4}}}}}, "teacher.members.m.knobs: cnn1d: knob kernel=4 must be odd"),
    ({"teacher": {"defaults": {"knobs": {"channels": 0}}}}, "teacher.members."),
    ({"student": {"knobs": {"dropout": 1.5}}}, "student.knobs: cnn1d: knob dropout=1.5"),
])
def test_architecture_and_knob_names_are_checked_up_front(params, expected):
    with pytest.raises(ConfigError) as e:
        parse_config(params)
    assert expected in str(e.value)


def test_baseline_settings_are_validated_when_params_load():
    # the student's warm-up is valid for its 50 epochs, not for the baseline's 10
    with pytest.raises(ConfigError, match="warmup_epochs: must be < epochs \\(10\\), got 40"):
        parse_config({"student": {"train": {"epochs": 50, "warmup_epochs": 40}},
                      "baseline": {"epochs": 10}})


@pytest.mark.parametrize("params,key", [
    ({"student": {"train": {"weight_decay": float("inf")}}}, "student.train.weight_decay"),
    ({"teacher": {"members": {"m": {"train": {"lr": float("nan")}}}}}, "teacher.members.m.train.lr"),
    ({"student": {"temperature": float("inf")}}, "student.temperature"),
])
def test_non_finite_numbers_are_rejected(params, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        parse_config(params)
