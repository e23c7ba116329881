"""Params checked against the model families: what every `kd` command (kd/cli/) checks
before any work, and what `kd prepare` and `kd check-params` check against the prepared data.

    check_models(cfg)             # ConfigError naming the params key, or None
    fit_to_data(cfg, meta)        # ConfigError naming the model's key and data.shape, or None

kd/config knows no model family: whether an architecture exists, takes its knobs, has a
pooled hidden vector or can be copied layer by layer is the registry's to say, and a stage
that never builds a model (prepare, transfer) must not rerun when a model file changes.
"""

from __future__ import annotations

from kd.config import Config, ModelConfig, StudentConfig
from kd.errors import ConfigError
from kd.models import build_model, check_arch, resolve_knobs
from kd.models.transformer import init_problem


def check_models(cfg: Config) -> None:
    """Every architecture and its knobs, then the transformer recipe's keys against each
    other: hidden vectors, the student's cosine term, layer-skip init, token ids."""
    if "arch" in cfg.teacher.defaults:  # blame the defaults, not the first member
        _check_arch("teacher.defaults", ModelConfig.model_validate(cfg.teacher.defaults))
    for name in cfg.teacher.members:
        _check_arch(f"teacher.members.{name}", cfg.teacher.member(name))
    if {"arch", "knobs"} & set(cfg.student.defaults):  # blame the defaults, not a variant
        _check_arch("student.defaults", cfg.student.shared())
    for name in cfg.student.variants:
        _check_arch(f"student.variants.{name}", cfg.student.variant(name))
    _check_transformer(cfg)


def _check_arch(key: str, spec: ModelConfig) -> None:
    """Architecture, knob names and knob values, checked before any work by building the model
    on the small input its class declares (`probe_shape`); whether it fits the data's feature
    shape is checked against the prepared data (fit_to_data)."""
    try:
        check_arch(spec.arch, spec.knobs)
    except ConfigError as e:
        msg = str(e)
        what = "arch" if msg.startswith(("unknown architecture", "architecture ")) else "knobs"
        raise ConfigError(f"{key}.{what}: {e}") from None


def _check_transformer(cfg: Config) -> None:
    """Hidden vectors from members that have them, the cosine term and layer-skip init on a
    transformer student, and every transformer's knob vocab against data.vocab_size (the
    names these keys refer to are checked when params load, kd/config/params.py)."""
    for i, name in enumerate(cfg.export.hidden):
        if (arch := cfg.teacher.member(name).arch) != "transformer":
            raise ConfigError(f"export.hidden.{i}: member {name!r} is a {arch!r}, which has "
                              "no pooled hidden vector (a 'transformer' has)")
    vocab = cfg.data.vocab_size or 0
    specs: dict[str, ModelConfig] = {f"teacher.members.{m}": cfg.teacher.member(m)
                                     for m in cfg.teacher.members}
    for variant in cfg.student.variants:
        key, st = f"student.variants.{variant}", cfg.student.variant(variant)
        specs[key] = st
        _check_student_recipe(cfg, key, st)
    for key, spec in specs.items():
        if spec.arch == "transformer":
            have = resolve_knobs("transformer", spec.knobs)["vocab"]
            if have != vocab:
                raise ConfigError(f"{key}.knobs: vocab={have} must equal data.vocab_size "
                                  f"({cfg.data.vocab_size}; 0 when the features are not ids)")


def _check_student_recipe(cfg: Config, key: str, st: StudentConfig) -> None:
    """One variant's cosine term and layer-skip init against its own and the member's
    architecture."""
    if st.beta > 0 and st.arch != "transformer":
        raise ConfigError(f"{key}.beta: the cosine term needs a 'transformer' student "
                          f"(its pooled hidden vector), got arch {st.arch!r}")
    if st.init is not None:
        name = st.init.from_
        if st.arch != "transformer":
            raise ConfigError(f"{key}.init: layer-skip init needs a 'transformer' student, "
                              f"got arch {st.arch!r}")
        member = cfg.teacher.member(name)
        why = init_problem(resolve_knobs(st.arch, st.knobs), member.arch,
                           resolve_knobs(member.arch, member.knobs), st.init.layers)
        if why:
            raise ConfigError(f"{key}.init: cannot copy member {name!r}: {why}")


def fit_to_data(cfg: Config, meta: dict) -> None:
    """ConfigError (one line, naming the params key and data.shape) for the first model that
    cannot take the prepared features."""
    shape = tuple(meta["feature_shape"])
    for key, spec in cfg.model_specs().items():
        if key == "baseline":
            continue  # the student's architecture: checked as the student
        try:
            build_model(spec.arch, shape, meta["n_classes"], spec.knobs)
        except ConfigError as e:
            raise ConfigError(f"{key}.arch: {e} (the prepared features have shape "
                              f"{list(shape)}; set data.shape, or choose another arch)") from None
