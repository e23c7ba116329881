"""A model directory: `model.safetensors` (weights, no pickle) + `model.json` (enough to rebuild
the network, plus the weights' sha256, so a flipped bit is caught at load time instead of
silently changing predictions).

    save_model("data/student", model, {"arch": "cnn1d", "knobs": {...}, "input_shape": [40],
                                       "n_classes": 10, "class_names": [...]})
    model, spec = load_model("data/student")   # rebuilt from model.json alone, in eval mode
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from kd.errors import ArtifactError, ConfigError
from kd.io.atomic import atomic_path, read_json, write_json
from kd.models.registry import build_model, resolve_knobs

SCHEMA_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
SPEC_FILE = "model.json"
SPEC_KEYS = ("arch", "knobs", "input_shape", "n_classes", "class_names", "schema_version")


def _build_quietly(spec: dict[str, Any]) -> nn.Module:
    # Building runs the layers' random init; fork the CPU RNG so that merely saving or loading
    # a model never shifts the random stream of the training that follows (determinism).
    with torch.random.fork_rng(devices=[]):
        return build_model(spec["arch"], tuple(spec["input_shape"]), spec["n_classes"],
                           spec["knobs"])


# -----------------------------------------------------------------------------
# save / load


def save_model(out_dir: str | os.PathLike, model: nn.Module, spec: dict[str, Any]) -> None:
    """Write out_dir/model.safetensors, then out_dir/model.json (spec + schema_version + sha256).

    `spec` needs arch, knobs, input_shape, n_classes, class_names; extra keys (e.g. "params")
    are kept. Knobs are stored with defaults filled in, so a later change of a default cannot
    change what an old model.json rebuilds. model.json is written last: its presence means the
    weights beside it are complete. Passing a spec that does not rebuild `model` is a bug in
    the caller, hence ValueError rather than a user-facing error.
    """
    out_dir = Path(out_dir)
    missing = [k for k in SPEC_KEYS if k not in spec and k != "schema_version"]
    if missing:
        raise ValueError(f"save_model: spec is missing {missing}")
    spec = {
        **spec,
        "knobs": resolve_knobs(spec["arch"], spec["knobs"]),
        "input_shape": list(spec["input_shape"]),
        "class_names": list(spec["class_names"]),
        "schema_version": SCHEMA_VERSION,
    }
    if len(spec["class_names"]) != spec["n_classes"]:
        raise ValueError(f"save_model: {len(spec['class_names'])} class_names for "
                         f"n_classes={spec['n_classes']}")
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    expected = {k: tuple(v.shape) for k, v in _build_quietly(spec).state_dict().items()}
    if expected != {k: tuple(v.shape) for k, v in tensors.items()}:
        raise ValueError("save_model: spec does not rebuild a network with the model's tensors")
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / WEIGHTS_FILE) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "kd-pipeline"})
    spec["weights_sha256"] = model_fingerprint(out_dir)
    write_json(out_dir / SPEC_FILE, spec)


def _read_spec(path: Path) -> dict[str, Any]:
    spec = read_json(path, ArtifactError)
    if not isinstance(spec, dict):
        raise ArtifactError(f"{path}: expected a JSON object, got {type(spec).__name__}")
    for key in SPEC_KEYS:
        if key not in spec:
            raise ArtifactError(f"{path}: missing key {key!r}")
    if spec["schema_version"] != SCHEMA_VERSION:
        raise ArtifactError(f"{path}: schema_version {spec['schema_version']!r} is not "
                            f"supported (expected {SCHEMA_VERSION})")
    if not isinstance(spec["knobs"], dict) or not isinstance(spec["input_shape"], list):
        raise ArtifactError(f"{path}: 'knobs' must be an object and 'input_shape' a list")
    if not isinstance(spec["class_names"], list) or len(spec["class_names"]) != spec["n_classes"]:
        raise ArtifactError(f"{path}: 'class_names' must be a list of n_classes names")
    return spec


def load_model(model_dir: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the network from model.json, load model.safetensors; return (model.eval(), spec).

    Every failure is an ArtifactError whose one-line message names the file.
    """
    model_dir = Path(model_dir)
    spec_path, weights_path = model_dir / SPEC_FILE, model_dir / WEIGHTS_FILE
    spec = _read_spec(spec_path)
    try:
        model = _build_quietly(spec)
    except ConfigError as e:
        raise ArtifactError(f"{spec_path}: {e}") from None
    if not weights_path.is_file():
        raise ArtifactError(f"{weights_path}: file not found")
    try:
        tensors = load_file(weights_path)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ArtifactError(f"{weights_path}: not a valid safetensors file ({e})") from None
    # safetensors has no checksum: a flipped bit in the data section would load silently
    sha = spec.get("weights_sha256")
    if sha is not None and model_fingerprint(model_dir) != sha:
        raise ArtifactError(f"{weights_path}: sha256 does not match {SPEC_FILE} "
                            "(file corrupt or replaced)")
    # check names/shapes/dtypes here: load_state_dict's errors are multi-line, name no file
    want = model.state_dict()
    missing = sorted(set(want) - set(tensors))
    unexpected = sorted(set(tensors) - set(want))
    if missing or unexpected:
        raise ArtifactError(f"{weights_path}: tensors do not match {spec['arch']!r} "
                            f"(missing: {missing}, unexpected: {unexpected})")
    for name in want:  # in layer order, so the first bad tensor reported is the earliest
        t = tensors[name]
        if t.shape != want[name].shape:
            raise ArtifactError(f"{weights_path}: tensor {name!r} has shape {tuple(t.shape)}, "
                                f"{SPEC_FILE} builds {tuple(want[name].shape)}")
        if t.dtype != want[name].dtype:
            raise ArtifactError(f"{weights_path}: tensor {name!r} has dtype {t.dtype}, "
                                f"expected {want[name].dtype}")
    model.load_state_dict(tensors, strict=True)
    spec["input_shape"] = tuple(spec["input_shape"])
    return model.eval(), spec


def check_fits(spec: dict[str, Any], model_dir: str | os.PathLike, meta: dict[str, Any],
               what: str) -> None:
    """ArtifactError unless the loaded model takes the prepared data's features and predicts
    its classes, in its class order: a model from another data set would otherwise run and
    give meaningless numbers. `meta` is data/prepared/meta.json; `what` names the model."""
    where = Path(model_dir) / SPEC_FILE
    if spec["n_classes"] != meta["n_classes"]:
        raise ArtifactError(f"{where}: {what} predicts {spec['n_classes']} classes, "
                            f"the prepared data has {meta['n_classes']}")
    if list(spec["input_shape"]) != list(meta["feature_shape"]):
        raise ArtifactError(f"{where}: {what} takes features of shape "
                            f"{tuple(spec['input_shape'])}, the prepared data has "
                            f"{tuple(meta['feature_shape'])}")
    for i, (ours, theirs) in enumerate(zip(spec["class_names"], meta["class_names"],
                                           strict=False)):
        if ours != theirs:
            raise ArtifactError(f"{where}: {what} calls class {i} {ours!r}, the prepared data "
                                f"calls it {theirs!r}")


def model_fingerprint(model_dir: str | os.PathLike) -> str:
    """sha256 hex digest of model_dir/model.safetensors (identifies a teacher in manifests)."""
    path = Path(model_dir) / WEIGHTS_FILE
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except FileNotFoundError:
        raise ArtifactError(f"{path}: file not found") from None
