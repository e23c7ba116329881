"""Architectures (a registry keyed by name) and safetensors save/load.

    model = build_model("cnn1d", (40,), 10, {"channels": 32})
    save_model("data/student", model, {"arch": "cnn1d", "knobs": {...}, "input_shape": [40],
                                       "n_classes": 10, "class_names": [...]})
    model, spec = load_model("data/student")   # rebuilt from model.json alone, in eval mode

An architecture is an `nn.Module` whose constructor is `(input_shape, n_classes, **knobs)` with
a default for every knob; the constructor's signature *is* the knob schema, so there is no
second list of knobs to keep in sync. A model directory holds `model.safetensors` (weights,
no pickle) and `model.json` (everything needed to rebuild the network, plus the weights' sha256
so a flipped bit is caught at load time instead of silently changing predictions).
"""

from __future__ import annotations

import hashlib
import inspect
import math
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from stages.atomic import atomic_path, read_json, write_json
from stages.errors import ArtifactError, ConfigError

SCHEMA_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
SPEC_FILE = "model.json"
SPEC_KEYS = ("arch", "knobs", "input_shape", "n_classes", "class_names", "schema_version")

ARCHITECTURES: dict[str, type[nn.Module]] = {}


def register(name: str):
    """Class decorator: make an architecture buildable by `name`."""

    def deco(cls: type[nn.Module]) -> type[nn.Module]:
        assert name not in ARCHITECTURES, f"architecture {name!r} registered twice"
        cls.arch_name = name
        ARCHITECTURES[name] = cls
        return cls

    return deco


# -----------------------------------------------------------------------------
# knob checks: raise ConfigError naming the architecture, the knob and the value


def _int_knob(arch: str, name: str, value: Any, lo: int) -> int:
    # bool is an int subclass; depth=True is almost certainly a YAML mistake
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ConfigError(f"{arch}: knob {name}={value!r} must be an integer >= {lo}")
    return value


def _dropout_knob(arch: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value < 1.0:
        raise ConfigError(f"{arch}: knob dropout={value!r} must be a number in [0, 1)")
    return float(value)


def _kernel_knob(arch: str, value: Any) -> int:
    k = _int_knob(arch, "kernel", value, 1)
    if k % 2 == 0:  # odd kernels make padding k//2 keep the length ('same' at stride 1)
        raise ConfigError(f"{arch}: knob kernel={k} must be odd")
    return k


# -----------------------------------------------------------------------------
# architectures


@register("mlp")
class MLP(nn.Module):
    """Flatten any input, `depth` hidden Linear+ReLU(+Dropout) layers of `width`, then a head."""

    def __init__(self, input_shape: tuple[int, ...], n_classes: int,
                 depth: int = 2, width: int = 128, dropout: float = 0.0):
        super().__init__()
        depth = _int_knob("mlp", "depth", depth, 0)
        width = _int_knob("mlp", "width", width, 1)
        dropout = _dropout_knob("mlp", dropout)
        layers: list[nn.Module] = [nn.Flatten()]
        d_in = math.prod(input_shape)
        for _ in range(depth):
            # Dropout(0.0) is the identity, kept so tensor names never depend on `dropout`
            layers += [nn.Linear(d_in, width), nn.ReLU(), nn.Dropout(dropout)]
            d_in = width
        layers.append(nn.Linear(d_in, n_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, *input_shape) -> (B, n_classes)
        return self.net(x)


class _ConvNet(nn.Module):
    """Shared body of cnn1d/cnn2d: `depth` x (conv 'same' [+ BatchNorm] + ReLU), a 2x max-pool
    after every `pool_every` convs, then flatten, dropout and a linear head.

    BatchNorm is on by default: on MNIST-1D it lifts a 40k-parameter member from ~0.97 to ~0.99
    test accuracy at the same epochs (measured while choosing the defaults). Under DDP its
    running statistics are broadcast from rank 0; `batchnorm: false` removes any dependence on
    batch composition. Pools use ceil_mode, so a size of 1 stays 1 and any input survives any
    depth. The head sees the flattened map rather than a global average: on MNIST-1D *where* a
    feature occurs matters.
    """

    ndim: int  # spatial dims: 1 or 2

    def __init__(self, input_shape: tuple[int, ...], n_classes: int,
                 channels: int = 32, depth: int = 4, kernel: int = 5, dropout: float = 0.0,
                 batchnorm: bool = True, pool_every: int = 2):
        super().__init__()
        arch, nd = self.arch_name, self.ndim
        if len(input_shape) not in (nd, nd + 1):
            what = "(L,) or (C, L)" if nd == 1 else "(H, W) or (C, H, W)"
            raise ConfigError(f"{arch}: cannot take input shape {tuple(input_shape)}; "
                              f"it needs {what} features")
        channels = _int_knob(arch, "channels", channels, 1)
        depth = _int_knob(arch, "depth", depth, 0)
        kernel = _kernel_knob(arch, kernel)
        dropout = _dropout_knob(arch, dropout)
        pool_every = _int_knob(arch, "pool_every", pool_every, 1)
        if not isinstance(batchnorm, bool):
            raise ConfigError(f"{arch}: knob batchnorm={batchnorm!r} must be true or false")
        # a bare (L,) or (H, W) input gets a channel dim of 1 in forward()
        self.input_shape = tuple(input_shape)
        self.add_channel = len(input_shape) == nd
        c_in = 1 if self.add_channel else input_shape[0]
        spatial = list(input_shape[-nd:])
        conv = nn.Conv1d if nd == 1 else nn.Conv2d
        norm = nn.BatchNorm1d if nd == 1 else nn.BatchNorm2d
        pool = nn.MaxPool1d if nd == 1 else nn.MaxPool2d
        layers: list[nn.Module] = []
        for i in range(depth):
            # padding k//2 with odd k keeps the size; the pool then halves it, rounding up
            layers += [conv(c_in, channels, kernel, padding=kernel // 2, bias=not batchnorm)]
            layers += [norm(channels)] if batchnorm else []
            layers.append(nn.ReLU())
            if (i + 1) % pool_every == 0:
                layers.append(pool(2, ceil_mode=True))
                spatial = [(s + 1) // 2 for s in spatial]
            c_in = channels
        d_flat = c_in * math.prod(spatial)
        layers += [nn.Flatten(), nn.Dropout(dropout), nn.Linear(d_flat, n_classes)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, [C,] *spatial) -> (B, n_classes)
        # rows may arrive flat, as the prepared data and the shards store them: (B, F)
        x = x.reshape(x.shape[0], *self.input_shape)
        if self.add_channel:
            x = x.unsqueeze(1)  # (B, 1, *spatial)
        return self.net(x)


@register("cnn1d")
class CNN1d(_ConvNet):
    """Conv1d stack for sequence features of shape (L,) or (C, L), e.g. MNIST-1D's 40 samples."""

    ndim = 1


@register("cnn2d")
class CNN2d(_ConvNet):
    """Conv2d stack for image features of shape (H, W) or (C, H, W), e.g. 8x8 digits."""

    ndim = 2


# -----------------------------------------------------------------------------
# building


def _arch_class(arch: Any) -> type[nn.Module]:
    if not isinstance(arch, str) or arch not in ARCHITECTURES:
        known = ", ".join(sorted(ARCHITECTURES))
        raise ConfigError(f"unknown architecture {arch!r} (known: {known})")
    return ARCHITECTURES[arch]


def knob_defaults(arch: str) -> dict[str, Any]:
    """Every knob of `arch` with its default, read off the constructor's signature."""
    params = list(inspect.signature(_arch_class(arch).__init__).parameters.values())
    return {p.name: p.default for p in params[3:]}  # skip self, input_shape, n_classes


def resolve_knobs(arch: str, knobs: dict[str, Any] | None) -> dict[str, Any]:
    """The full knob dict (defaults filled in); ConfigError for a knob `arch` does not have."""
    full = knob_defaults(arch)
    for name in knobs or {}:
        if name not in full:
            known = ", ".join(sorted(full))
            raise ConfigError(f"unknown knob {name!r} for architecture {arch!r} (known: {known})")
    return {**full, **(knobs or {})}


def build_model(
    arch: str, input_shape: tuple[int, ...], n_classes: int, knobs: dict[str, Any] | None = None
) -> nn.Module:
    """Instantiate a registered architecture; ConfigError (one line) for anything invalid."""
    cls = _arch_class(arch)
    knobs = resolve_knobs(arch, knobs)
    shape = tuple(input_shape)
    ok = [isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape]
    if not shape or not all(ok):
        raise ConfigError(f"{arch}: input shape {shape} must be non-empty positive integers")
    if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 2:
        raise ConfigError(f"{arch}: n_classes={n_classes!r} must be an integer >= 2")
    return cls(shape, n_classes, **knobs)


def count_params(model: nn.Module) -> int:
    """Number of scalar parameters (shared parameters counted once)."""
    return sum(p.numel() for p in model.parameters())


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
