"""Tests for kd.models: registry, shapes, parameter counts, safetensors save/load."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from kd.errors import ArtifactError, ConfigError
from kd.models import (
    ARCHITECTURES,
    build_model,
    count_params,
    knob_defaults,
    load_model,
    model_fingerprint,
    save_model,
)


def make(arch="mlp", input_shape=(3, 4), n_classes=3, knobs=None, seed=0):
    torch.manual_seed(seed)
    return build_model(arch, input_shape, n_classes, knobs or {})


def spec_for(arch="mlp", input_shape=(3, 4), n_classes=3, knobs=None, **extra):
    names = [f"c{i}" for i in range(n_classes)]
    return {"arch": arch, "knobs": knobs or {}, "input_shape": list(input_shape),
            "n_classes": n_classes, "class_names": names, **extra}


def saved(tmp_path: Path, arch="mlp", input_shape=(3, 4), n_classes=3, knobs=None) -> Path:
    model = make(arch, input_shape, n_classes, knobs)
    out = tmp_path / "model"
    save_model(out, model, spec_for(arch, input_shape, n_classes, knobs))
    return out


def edit_json(path: Path, **changes) -> None:
    spec = json.loads(path.read_text())
    spec.update(changes)
    path.write_text(json.dumps(spec))


def expect_artifact_error(model_dir: Path, filename: str, *fragments: str) -> str:
    with pytest.raises(ArtifactError) as exc:
        load_model(model_dir)
    msg = str(exc.value)
    assert filename in msg and "\n" not in msg, msg
    for frag in fragments:
        assert frag in msg, msg
    return msg


# -----------------------------------------------------------------------------
# registry and shapes


def test_registry_has_the_three_architectures():
    assert {"mlp", "cnn1d", "cnn2d"} <= set(ARCHITECTURES)
    assert knob_defaults("mlp") == {"depth": 2, "width": 128, "dropout": 0.0}
    assert knob_defaults("cnn1d") == {"channels": 32, "depth": 4, "kernel": 5, "dropout": 0.0,
                                      "batchnorm": True, "pool_every": 2}
    assert knob_defaults("cnn2d") == knob_defaults("cnn1d")


@pytest.mark.parametrize(
    "arch, input_shape, knobs",
    [
        ("mlp", (40,), {}),
        ("mlp", (1, 40), {"depth": 0}),
        ("mlp", (8, 8), {"depth": 3, "width": 7, "dropout": 0.5}),
        ("mlp", (3, 8, 8), {}),
        ("cnn1d", (40,), {}),
        ("cnn1d", (2, 40), {"channels": 4, "depth": 1, "kernel": 3}),
        ("cnn1d", (1,), {"depth": 5}),  # pooling never shrinks a dim below 1
        ("cnn1d", (7,), {"depth": 0, "dropout": 0.2}),
        ("cnn2d", (8, 8), {}),
        ("cnn2d", (3, 8, 8), {"kernel": 3}),
        ("cnn2d", (5, 7), {"channels": 2, "depth": 4}),
        ("cnn2d", (1, 1, 1), {}),
    ],
)
def test_output_shape(arch, input_shape, knobs):
    model = make(arch, input_shape, 10, knobs).eval()  # eval: BatchNorm takes a batch of 1
    for batch in (1, 5):
        out = model(torch.randn(batch, *input_shape))
        assert out.shape == (batch, 10)
        assert out.dtype == torch.float32


def test_param_count_matches_hand_count():
    # mlp on (3, 4) -> 12 inputs, depth 2 of width 5, 3 classes
    m = make("mlp", (3, 4), 3, {"depth": 2, "width": 5})
    assert count_params(m) == (12 * 5 + 5) + (5 * 5 + 5) + (5 * 3 + 3) == 113
    assert count_params(make("mlp", (3, 4), 3, {"depth": 0})) == 12 * 3 + 3
    # cnn1d on (40,): conv 1->4 k3, conv 4->4 k3, 40 -> 20 -> 10, linear 4*10 -> 10
    plain = {"batchnorm": False, "pool_every": 1}
    c = make("cnn1d", (40,), 10, {"channels": 4, "depth": 2, "kernel": 3, **plain})
    assert count_params(c) == (1 * 4 * 3 + 4) + (4 * 4 * 3 + 4) + (4 * 10 * 10 + 10) == 478
    # with BatchNorm: convs lose their bias, each BN adds a weight and a bias per channel;
    # one pool after the two convs: 40 -> 20
    bn = make("cnn1d", (40,), 10, {"channels": 4, "depth": 2, "kernel": 3, "pool_every": 2})
    assert count_params(bn) == (1 * 4 * 3 + 8) + (4 * 4 * 3 + 8) + (4 * 20 * 10 + 10) == 886
    # cnn2d on (2, 5, 5): conv 2->3 k1, 5x5 -> 3x3, linear 3*9 -> 4
    c2 = make("cnn2d", (2, 5, 5), 4, {"channels": 3, "depth": 1, "kernel": 1, **plain})
    assert count_params(c2) == (2 * 3 + 3) + (3 * 9 * 4 + 4) == 121


def test_build_is_deterministic_under_a_seed():
    a, b = make("cnn1d", (40,), 10, seed=3), make("cnn1d", (40,), 10, seed=3)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)


# -----------------------------------------------------------------------------
# ConfigError from build_model


@pytest.mark.parametrize(
    "arch, input_shape, knobs, fragments",
    [
        ("rnn", (40,), {}, ["'rnn'", "cnn1d", "cnn2d", "mlp"]),
        ("mlp", (40,), {"heads": 4}, ["'heads'", "'mlp'"]),
        ("cnn1d", (40,), {"width": 4}, ["'width'", "'cnn1d'"]),
        ("mlp", (40,), {"depth": -1}, ["depth=-1"]),
        ("mlp", (40,), {"depth": True}, ["depth=True"]),
        ("mlp", (40,), {"width": "wide"}, ["width='wide'"]),
        ("mlp", (40,), {"dropout": 1.0}, ["dropout=1.0"]),
        ("cnn1d", (40,), {"kernel": 4}, ["kernel=4", "odd"]),
        ("cnn1d", (40,), {"channels": 0}, ["channels=0"]),
        ("cnn2d", (40,), {}, ["cnn2d", "(40,)"]),
        ("cnn2d", (2, 3, 8, 8), {}, ["(2, 3, 8, 8)"]),
        ("cnn1d", (3, 8, 8), {}, ["cnn1d", "(3, 8, 8)"]),
        ("mlp", (0, 4), {}, ["(0, 4)"]),
        ("mlp", (), {}, ["()"]),
    ],
)
def test_config_errors(arch, input_shape, knobs, fragments):
    with pytest.raises(ConfigError) as exc:
        build_model(arch, input_shape, 10, knobs)
    msg = str(exc.value)
    assert "\n" not in msg
    for frag in fragments:
        assert frag in msg, msg


def test_config_error_for_too_few_classes():
    with pytest.raises(ConfigError, match="n_classes=1"):
        build_model("mlp", (4,), 1, {})


# -----------------------------------------------------------------------------
# save / load


@pytest.mark.parametrize(
    "arch, input_shape, knobs",
    [("mlp", (3, 4), {"dropout": 0.3}), ("cnn1d", (40,), {"channels": 8}), ("cnn2d", (2, 8, 8), {})],
)
def test_round_trip_gives_identical_outputs(tmp_path, arch, input_shape, knobs):
    model = make(arch, input_shape, 5, knobs).eval()
    save_model(tmp_path / "m", model, spec_for(arch, input_shape, 5, knobs, params=123))
    loaded, spec = load_model(tmp_path / "m")
    assert not loaded.training
    assert type(loaded) is type(model)
    x = torch.randn(6, *input_shape)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert spec["arch"] == arch and spec["n_classes"] == 5 and spec["params"] == 123
    assert spec["input_shape"] == input_shape and spec["schema_version"] == 1
    assert spec["knobs"] == {**knob_defaults(arch), **knobs}  # defaults are written out


def test_saving_twice_gives_identical_bytes(tmp_path):
    for d in ("a", "b"):  # two separately built models from the same seed
        save_model(tmp_path / d, make("cnn1d", (40,), 10, seed=7), spec_for("cnn1d", (40,), 10))
    for name in ("model.safetensors", "model.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert model_fingerprint(tmp_path / "a") == model_fingerprint(tmp_path / "b")
    assert not list(tmp_path.glob("*/.tmp-*"))  # atomic writes leave nothing behind


def test_save_and_load_do_not_move_the_global_rng(tmp_path):
    model = make()
    state = torch.get_rng_state()
    save_model(tmp_path / "m", model, spec_for())
    load_model(tmp_path / "m")
    assert torch.equal(torch.get_rng_state(), state)


def test_files_on_disk_follow_the_contract(tmp_path):
    out = saved(tmp_path, knobs={"width": 6})
    spec = json.loads((out / "model.json").read_text())
    assert spec["weights_sha256"] == hashlib.sha256((out / "model.safetensors").read_bytes()
                                                    ).hexdigest()
    assert spec["weights_sha256"] == model_fingerprint(out)
    assert spec["class_names"] == ["c0", "c1", "c2"]
    tensors = load_file(out / "model.safetensors")
    assert all(t.is_contiguous() for t in tensors.values())
    assert (out / "model.safetensors").read_bytes()[8:].startswith(b'{"__metadata__"')
    assert b'"format":"kd-pipeline"' in (out / "model.safetensors").read_bytes()[:200]


def test_rebuild_from_model_json_alone(tmp_path):
    out = saved(tmp_path, "cnn2d", (8, 8), 10, {"depth": 2})
    spec = json.loads((out / "model.json").read_text())
    rebuilt = build_model(spec["arch"], tuple(spec["input_shape"]), spec["n_classes"],
                          spec["knobs"])
    weights = load_file(out / "model.safetensors")
    rebuilt.load_state_dict(weights, strict=True)  # the JSON alone fixes every tensor's shape
    # every tensor in the file is a parameter or a BatchNorm buffer (running stats, counter)
    n_buffers = sum(b.numel() for b in rebuilt.buffers())
    assert count_params(rebuilt) + n_buffers == sum(t.numel() for t in weights.values())


def test_save_rejects_a_spec_that_does_not_match_the_model(tmp_path):
    with pytest.raises(ValueError, match="does not rebuild"):
        save_model(tmp_path / "m", make(knobs={"width": 5}), spec_for(knobs={"width": 6}))
    with pytest.raises(ValueError, match="missing"):
        save_model(tmp_path / "m", make(), {"arch": "mlp"})
    assert not (tmp_path / "m" / "model.json").exists()


# -----------------------------------------------------------------------------
# ArtifactError on load


def test_missing_files(tmp_path):
    expect_artifact_error(tmp_path / "nowhere", "model.json", "not found")
    out = saved(tmp_path)
    (out / "model.safetensors").unlink()
    expect_artifact_error(out, "model.safetensors", "not found")
    with pytest.raises(ArtifactError, match="model.safetensors"):
        model_fingerprint(out)


def test_invalid_json(tmp_path):
    out = saved(tmp_path)
    (out / "model.json").write_text('{"arch": "mlp",')
    expect_artifact_error(out, "model.json", "JSON")
    (out / "model.json").write_text("[1, 2]")
    expect_artifact_error(out, "model.json", "object")


@pytest.mark.parametrize(
    "key", ["arch", "knobs", "input_shape", "n_classes", "class_names", "schema_version"]
)
def test_model_json_missing_a_key(tmp_path, key):
    out = saved(tmp_path)
    spec = json.loads((out / "model.json").read_text())
    del spec[key]
    (out / "model.json").write_text(json.dumps(spec))
    expect_artifact_error(out, "model.json", repr(key))


@pytest.mark.parametrize(
    "changes, fragments",
    [
        ({"arch": "resnet"}, ["'resnet'", "mlp"]),
        ({"knobs": {"heads": 2}}, ["'heads'"]),
        ({"knobs": {"depth": -3}}, ["depth=-3"]),
        ({"arch": "cnn1d", "knobs": {}, "input_shape": [2, 3, 4]}, ["(2, 3, 4)"]),
        ({"schema_version": 2}, ["schema_version"]),
        ({"class_names": ["a"]}, ["class_names"]),
        ({"input_shape": 12}, ["input_shape"]),
    ],
)
def test_bad_model_json(tmp_path, changes, fragments):
    out = saved(tmp_path)
    edit_json(out / "model.json", **changes)
    expect_artifact_error(out, "model.json", *fragments)


def test_other_arch_in_json_gives_tensor_name_error(tmp_path):
    out = saved(tmp_path)  # an mlp on (3, 4); cnn2d can take (3, 4) but has other tensors
    edit_json(out / "model.json", arch="cnn2d", knobs={})
    expect_artifact_error(out, "model.safetensors", "missing", "unexpected", "'cnn2d'")


def test_truncated_weights(tmp_path):
    out = saved(tmp_path)
    data = (out / "model.safetensors").read_bytes()
    for cut in (0, 4, 20, len(data) - 3):
        (out / "model.safetensors").write_bytes(data[:cut])
        expect_artifact_error(out, "model.safetensors", "safetensors")


def test_garbage_weights(tmp_path):
    out = saved(tmp_path)
    (out / "model.safetensors").write_bytes(b"PK\x03\x04 this is a pickle zip, not weights" * 9)
    expect_artifact_error(out, "model.safetensors")


def test_flipped_byte_in_data_is_caught_by_checksum(tmp_path):
    out = saved(tmp_path)
    data = bytearray((out / "model.safetensors").read_bytes())
    data[-10] ^= 0xFF  # inside the tensor data: safetensors itself cannot notice
    (out / "model.safetensors").write_bytes(bytes(data))
    load_file(out / "model.safetensors")  # still parses ...
    expect_artifact_error(out, "model.safetensors", "sha256")  # ... but we refuse it


def rewrite_weights(out: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Replace the weights and re-stamp model.json's checksum, to reach the later checks."""
    save_file(tensors, out / "model.safetensors")
    edit_json(out / "model.json", weights_sha256=model_fingerprint(out))


def test_wrong_tensor_shape_names_tensor_and_both_shapes(tmp_path):
    out = saved(tmp_path, knobs={"width": 5})
    tensors = load_file(out / "model.safetensors")
    tensors["net.1.weight"] = torch.zeros(6, 12)
    rewrite_weights(out, tensors)
    expect_artifact_error(out, "model.safetensors", "'net.1.weight'", "(6, 12)", "(5, 12)")


def test_width_changed_in_json_gives_shape_error(tmp_path):
    out = saved(tmp_path, knobs={"width": 5})
    edit_json(out / "model.json", knobs={"width": 9, "depth": 2, "dropout": 0.0})
    expect_artifact_error(out, "model.safetensors", "shape", "(5, 12)", "(9, 12)")


def test_missing_and_unexpected_tensor_names(tmp_path):
    out = saved(tmp_path)
    tensors = load_file(out / "model.safetensors")
    tensors["head.weight"] = tensors.pop("net.1.weight")
    rewrite_weights(out, tensors)
    expect_artifact_error(out, "model.safetensors", "net.1.weight", "head.weight")


def test_wrong_dtype(tmp_path):
    out = saved(tmp_path)
    rewrite_weights(out, {k: v.half() for k, v in load_file(out / "model.safetensors").items()})
    expect_artifact_error(out, "model.safetensors", "dtype")


def test_spec_without_checksum_still_loads(tmp_path):
    out = saved(tmp_path)
    spec = json.loads((out / "model.json").read_text())
    del spec["weights_sha256"]  # e.g. a hand-written model.json
    (out / "model.json").write_text(json.dumps(spec))
    model, _ = load_model(out)
    assert count_params(model) == count_params(make())
