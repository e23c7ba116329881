"""The architecture registry: a name -> an `nn.Module` class, plus the knob checks.

    from kd.models import build_model
    model = build_model("cnn1d", (40,), 10, {"channels": 32})

An architecture is an `nn.Module` whose constructor is `(input_shape, n_classes, **knobs)` with
a default for every knob; the constructor's signature *is* the knob schema, so there is no
second list of knobs to keep in sync. It also carries `probe_shape`, a small input it accepts,
on which `kd check-params` builds it to check knob values before any work. A new family is one
file in this package that calls `@register("name")`, plus its import in `__init__.py`. A user's
own class is named `package.module:ClassName` instead of registered; `probe_shape` is optional
there (without it the knobs are checked on the prepared data's shape).
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from typing import Any

import torch
import torch.nn as nn

from kd.errors import ConfigError

ARCHITECTURES: dict[str, type[nn.Module]] = {}


def register(name: str):
    """Class decorator: make an architecture buildable by `name`. The class must say which
    small input it accepts (`probe_shape`), so params can be checked without the data."""

    def deco(cls: type[nn.Module]) -> type[nn.Module]:
        assert name not in ARCHITECTURES, f"architecture {name!r} registered twice"
        assert isinstance(getattr(cls, "probe_shape", None), tuple), f"{name}: no probe_shape"
        cls.arch_name = name
        ARCHITECTURES[name] = cls
        return cls

    return deco


# -----------------------------------------------------------------------------
# knob checks: raise ConfigError naming the architecture, the knob and the value


def int_knob(arch: str, name: str, value: Any, lo: int) -> int:
    # bool is an int subclass; depth=True is almost certainly a YAML mistake
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ConfigError(f"{arch}: knob {name}={value!r} must be an integer >= {lo}")
    return value


def dropout_knob(arch: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value < 1.0:
        raise ConfigError(f"{arch}: knob dropout={value!r} must be a number in [0, 1)")
    return float(value)


def kernel_knob(arch: str, value: Any) -> int:
    k = int_knob(arch, "kernel", value, 1)
    if k % 2 == 0:  # odd kernels make padding k//2 keep the length ('same' at stride 1)
        raise ConfigError(f"{arch}: knob kernel={k} must be odd")
    return k


# -----------------------------------------------------------------------------
# building


def _arch_class(arch: Any) -> type[nn.Module]:
    if isinstance(arch, str) and ":" in arch:
        return _custom_class(arch)
    if not isinstance(arch, str) or arch not in ARCHITECTURES:
        known = ", ".join(sorted(ARCHITECTURES))
        raise ConfigError(f"unknown architecture {arch!r} (known: {known}, or "
                          "package.module:ClassName)")
    return ARCHITECTURES[arch]


def _custom_class(arch: str) -> type[nn.Module]:
    """The user's own architecture, `package.module:ClassName`, imported from the Python path
    or the current directory (the repository root, where DVC runs the stages; the console
    script alone would not look there)."""
    module, _, name = arch.partition(":")
    if not module or not name.isidentifier():
        raise ConfigError(f"architecture {arch!r}: write it as package.module:ClassName")
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    try:
        mod = importlib.import_module(module)
    except ImportError as e:  # ModuleNotFoundError included
        raise ConfigError(f"architecture {arch!r}: cannot import {module!r} ({e})") from None
    cls = getattr(mod, name, None)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ConfigError(f"architecture {arch!r}: {module} has no nn.Module class {name!r}")
    return cls


def _takes_any_knob(cls: type[nn.Module]) -> bool:
    params = inspect.signature(cls.__init__).parameters.values()
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def knob_defaults(arch: str) -> dict[str, Any]:
    """Every knob of `arch` with its default, read off the constructor's signature."""
    params = list(inspect.signature(_arch_class(arch).__init__).parameters.values())
    # skip self, input_shape, n_classes; a custom class's knobs without a default are the
    # user's to give (its constructor names any that are missing)
    return {p.name: p.default for p in params[3:]
            if p.kind is not inspect.Parameter.VAR_KEYWORD and p.default is not p.empty}


def resolve_knobs(arch: str, knobs: dict[str, Any] | None) -> dict[str, Any]:
    """The full knob dict (defaults filled in); ConfigError for a knob `arch` does not have."""
    full = knob_defaults(arch)
    cls = _arch_class(arch)
    named = list(inspect.signature(cls.__init__).parameters)[3:]
    for name in knobs or {}:
        if name not in full and name not in named and not _takes_any_knob(cls):
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
    if arch in ARCHITECTURES:  # the built-ins check their knobs with one-line errors
        return cls(shape, n_classes, **knobs)
    try:
        return cls(shape, n_classes, **knobs)
    except (TypeError, ValueError, AssertionError) as e:  # the user's constructor said no
        first = (str(e).splitlines() or [type(e).__name__])[0][:200]
        raise ConfigError(f"{arch}: the constructor rejects input shape {shape}, "
                          f"n_classes={n_classes}, knobs {knobs} ({first})") from None


def count_params(model: nn.Module) -> int:
    """Scalar parameters of the model as deployed (shared parameters counted once): what the
    choice of a variant and the compression ratio are about. A module the model names in
    `training_only` (a student's map to a teacher's hidden width, used by a training loss and
    never by `forward`) is left out: the ONNX file the deploy stage exports does not hold it."""
    skip = {id(p) for name in getattr(model, "training_only", ())
            if (m := getattr(model, name, None)) is not None for p in m.parameters()}
    return sum(p.numel() for p in model.parameters() if id(p) not in skip)


def output_components(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The general hook for a model whose output is a mixture that wants the *expected* loss
    over its components (kd/distill/losses.py `components`): its `output_components()` gives
    the last training forward's (B, L) log weights and (L, C) or (B, L, C) component logits.
    None (no such method, or it returns None): the loss reads the model's output alone."""
    get = getattr(model, "output_components", None)
    return get() if get is not None else None


def component_nll(log_w: torch.Tensor, log_q: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B,) each row's negative log-likelihood of class y (B,) in expectation over a mixture's
    components: -sum_l w_bl log q_bl[y_b], from (B, L) log weights and (L, C), (1, L, C) or
    (B, L, C) component log-probabilities. The one cross-entropy of the `output_components`
    hook, for the students' hard term and the baselines' (and teachers') labels alike."""
    log_q = log_q.expand(len(y), *log_q.shape[-2:])  # (B, L, C)
    index = y.view(-1, 1, 1).expand(-1, log_w.shape[1], 1)  # (B, L, 1)
    return -(log_w.exp() * log_q.gather(2, index)[..., 0]).sum(1)  # (B,)




def check_arch(arch: str, knobs: dict[str, Any] | None) -> None:
    """Architecture, knob names and knob values, checked by building the model on its probe
    input (whether it fits the data's feature shape is the stage's check)."""
    resolve_knobs(arch, knobs)
    probe = getattr(_arch_class(arch), "probe_shape", None)
    if probe is not None:  # else it is built on the data's shape (kd.model_checks.fit_to_data)
        build_model(arch, probe, 2, knobs)
