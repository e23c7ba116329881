"""params.yaml validation: every mistake is one line naming the key and value, exit 2."""

from __future__ import annotations

import json

import pytest

from kd.config import Config, load_config, parse_config
from kd.errors import ConfigError
from kd.model_checks import check_models
from tests.conftest import ROOT, assert_user_error

# The one-line message of every bad-params case is checked, through `kd`, against
# docs/errors.md by tests/test_catalogue.py; this file tests the loader itself.


def test_every_command_validates_the_whole_file(write_params, kd):
    # a mistake in the student's section stops the data stage
    path = write_params({"data": {"unlabeled_size": 10},
                         "student": {"variants": {"v": {"temperature": 0}}}})
    assert_user_error(kd("prepare", "--params", path), "student.variants.v.temperature")


def test_defaults_and_empty_file(write_params):
    assert load_config(write_params("")) == Config()
    cfg = parse_config({})
    assert cfg.data.source == "mnist1d" and cfg.data.unlabeled_size == 40_000
    st = cfg.student.variant("main")  # the one variant of an empty file
    assert list(cfg.student.variants) == ["main"]
    assert st.temperature > 0 and 0 <= st.alpha <= 1
    assert (st.targets, st.rows) == ("soft", "all")
    assert cfg.report.retain_target == 0.99


def test_variants_override_defaults_like_members():
    cfg = parse_config({"student": {
        "defaults": {"arch": "cnn1d", "knobs": {"channels": 16, "depth": 3}, "temperature": 4.0,
                     "train": {"epochs": 10}},
        "variants": {"a": {}, "b": {"knobs": {"channels": 8}, "targets": "hard"},
                     "c": {"arch": "mlp", "knobs": {"width": 8}, "rows": "labeled"}},
    }})
    a, b, c = (cfg.student.variant(n) for n in "abc")
    assert a.knobs == {"channels": 16, "depth": 3} and a.targets == "soft"
    assert b.knobs == {"channels": 8, "depth": 3} and b.targets == "hard" and b.temperature == 4
    assert c.arch == "mlp" and c.knobs == {"width": 8} and c.rows == "labeled"
    assert c.train.epochs == 10
    # each variant's baseline: its network, its training settings, the baseline's augmentation
    assert cfg.baseline_spec("b").knobs == b.knobs and cfg.baseline_spec("c").arch == "mlp"
    with pytest.raises(ConfigError, match="student.variants: no variant named 'd'"):
        cfg.student.variant("d")


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
    cfg = load_config(ROOT / "params.yaml")
    assert cfg.data.source == "mnist1d"


def test_config_error_is_raised_not_exit():
    with pytest.raises(ConfigError, match="student.defaults.alpha"):
        parse_config({"student": {"defaults": {"alpha": -0.1}}})


@pytest.mark.parametrize("params,expected", [
    ({"teacher": {"members": {"m": {"knobs": {"widht": 3}}}}}, "teacher.members.m.knobs: unknown knob 'widht'"),
    ({"teacher": {"defaults": {"knobs": {"channels": 0}}}}, "teacher.members."),
])
def test_architecture_and_knob_names_are_checked_up_front(params, expected):
    cfg = parse_config(params)  # the schema knows no model family ...
    with pytest.raises(ConfigError) as e:
        check_models(cfg)  # ... the models do, and every `kd` command asks them first
    assert expected in str(e.value)


def test_munge_over_token_ids_is_refused_when_params_load():
    # MUNGE draws Gaussian values around each attribute: for integer token ids it would make
    # non-ids that only the transformer's embedding lookup, at export, would refuse
    token_ids = {"source": "parquet", "inputs": ".", "labeled": "l", "test": "t", "label": "y",
                 "features": "f", "vocab_size": 50, "normalize": "none"}
    parse_config({"data": token_ids})  # ids alone are fine, and so is MUNGE on features
    parse_config({"transfer": {"method": "munge"}})
    with pytest.raises(ConfigError) as e:
        parse_config({"data": token_ids, "transfer": {"method": "munge"}})
    msg = str(e.value)
    assert msg.startswith("transfer.method: ") and "data.vocab_size" in msg and "\n" not in msg


def test_baseline_settings_are_validated_when_params_load():
    # the student's warm-up is valid for its 50 epochs, not for the baseline's 10
    with pytest.raises(ConfigError, match="warmup_epochs: must be < epochs \\(10\\), got 40"):
        parse_config({"student": {"defaults": {"train": {"epochs": 50, "warmup_epochs": 40}}},
                      "baseline": {"epochs": 10}})


@pytest.mark.parametrize("params,key", [
    ({"student": {"defaults": {"train": {"weight_decay": float("inf")}}}},
     "student.defaults.train.weight_decay"),
    ({"teacher": {"members": {"m": {"train": {"lr": float("nan")}}}}}, "teacher.members.m.train.lr"),
    ({"student": {"variants": {"v": {"temperature": float("inf")}}}},
     "student.variants.v.temperature"),
])
def test_non_finite_numbers_are_rejected(params, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        parse_config(params)


def _declared(stage: dict) -> list[str]:
    """The params keys a dvc.yaml stage declares, and every key it interpolates (`${...}` in
    its foreach, cmd, deps or outs; a foreach's own ${key} and ${item} aside)."""
    import re

    body = stage.get("do", stage)
    keys = [k for k in body.get("params", []) if isinstance(k, str)]
    used = re.findall(r"\$\{\s*([\w.]+)\s*\}", json.dumps(stage))
    return keys + [k for k in used if k.split(".")[0] not in ("key", "item")]


@pytest.mark.parametrize("name", ["params.yaml", *sorted(
    f"examples/{p.name}" for p in (ROOT / "examples").glob("*.yaml"))])
def test_every_params_file_holds_every_key_dvc_yaml_declares(name):
    # DVC stops with "Parameters 'x' are missing" (or cannot resolve a foreach) when a params
    # file lacks a key a stage declares, though kd's own defaults would fill it in
    import yaml

    params = yaml.safe_load((ROOT / name).read_text())
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for stage_name, stage in stages.items():
        for key in _declared(stage):
            node = params
            for part in key.split("."):
                if part.startswith("${"):
                    break  # a foreach item: any of them
                assert isinstance(node, dict) and part in node, \
                    f"{name}: {key} (declared by {stage_name}) is missing"
                node = node[part]


@pytest.mark.parametrize("name", sorted(f"examples/{p.name}"
                                        for p in (ROOT / "examples").glob("*.yaml")))
def test_dvc_resolves_every_stage_with_each_example(name, tmp_path):
    # DVC's own resolver over dvc.yaml with the example as params.yaml: what
    # `cp examples/X.yaml params.yaml && dvc repro` meets first
    import shutil
    import subprocess

    from dvc.repo import Repo

    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    shutil.copy(ROOT / name, tmp_path / "params.yaml")
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run(["dvc", "init", "-q"], cwd=tmp_path, check=True)
    with Repo(str(tmp_path)) as repo:
        names = {s.name for s in repo.index.stages}
    assert {"prepare", "transfer", "export", "deploy", "report"} <= names, names
