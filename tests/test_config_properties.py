"""Property tests of the params loader (hypothesis): strategies derived from the schema itself.

    pytest tests/test_config_properties.py

Valid params are drawn field by field from `kd/config/`'s types and bounds (plus the few
cross-field rules its validators state), written as YAML, loaded, and must come back equal and
survive a dump/load round trip. Then one random mutation (a wrong type, a value past a bound,
an unknown key, a required key deleted) must always give a `ConfigError` whose one-line message
starts with the mutated key's path, and never any other exception.
"""

from __future__ import annotations

import types
import typing
from typing import Any, Literal

import pytest
import yaml
from annotated_types import Ge, Gt, Le, Lt
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from kd.config import (
    BaselineConfig,
    Config,
    DataConfig,
    ExportConfig,
    ModelConfig,
    StudentConfig,
    TrackingConfig,
    TrainConfig,
    load_config,
)
from kd.errors import ConfigError

SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])
PARQUET_ONLY = {"labeled", "unlabeled", "test", "features", "label", "id", "shape", "classes",
                "vocab_size"}
# keys valid only together with transformer members or students (kd/config/params.py and
# kd/model_checks.py check them): left at their defaults in valid params, still mutated below
TRANSFORMER_ONLY = {"hidden", "init", "beta", "hidden_from"}


# ------------------------------------------------------------------- reading the schema

def scalar(ann: Any) -> tuple[Any, list]:
    """(base type, bound constraints) of a field annotation, unwrapping Optional/Annotated."""
    bounds: list = []
    if typing.get_origin(ann) in (typing.Union, types.UnionType):
        ann = next(a for a in typing.get_args(ann) if a is not type(None))
    if typing.get_origin(ann) is typing.Annotated:
        ann, *meta = typing.get_args(ann)
        for m in meta:
            bounds += m.metadata if isinstance(m, FieldInfo) else [m]
    return ann, bounds


def fields(model: type[BaseModel]) -> dict[str, tuple[Any, list]]:
    return {n: (scalar(f.annotation)[0], [*f.metadata, *scalar(f.annotation)[1]])
            for n, f in model.model_fields.items()}


def value_strategy(ann: Any, bounds: list) -> st.SearchStrategy:
    if typing.get_origin(ann) is Literal:
        return st.sampled_from(typing.get_args(ann))
    if ann is bool:
        return st.booleans()
    lo = next((b.ge for b in bounds if isinstance(b, Ge)), None)
    lo_x = next((b.gt for b in bounds if isinstance(b, Gt)), None)
    hi = next((b.le for b in bounds if isinstance(b, Le)), None)
    hi_x = next((b.lt for b in bounds if isinstance(b, Lt)), None)
    if ann is int:
        low = lo if lo is not None else (lo_x + 1 if lo_x is not None else -1000)
        top = hi if hi is not None else (hi_x - 1 if hi_x is not None else low + 500)
        return st.integers(low, min(top, low + 500))  # small: epochs and rows are read, not used
    if ann is float:
        low = lo if lo is not None else lo_x if lo_x is not None else -1e3
        high = hi if hi is not None else hi_x if hi_x is not None else low + 1e3
        return st.floats(low, high, exclude_min=lo is None and lo_x is not None,
                         exclude_max=hi is None and hi_x is not None)
    if ann is str:
        return st.text("abcdefghij-_", min_size=1, max_size=8)
    if typing.get_origin(ann) is list and typing.get_args(ann) == (int | str,):  # classes
        return st.lists(st.integers(0, 9), unique=True, max_size=3)
    raise TypeError(f"no strategy for {ann}")


def section(model: type[BaseModel], skip: set[str] = frozenset(), **given_: st.SearchStrategy):
    """A dict of some of `model`'s fields (the rest take their defaults)."""
    optional = dict(given_)
    for name, (ann, bounds) in fields(model).items():
        if name in skip or name in optional:
            continue
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            optional[name] = section(ann)
        else:
            optional[name] = value_strategy(ann, bounds)
    return st.fixed_dictionaries({}, optional=optional)


# --------------------------------------------------------------------- valid params

KNOBS = {
    "mlp": st.fixed_dictionaries({}, optional={
        "depth": st.integers(0, 3), "width": st.integers(1, 16),
        "dropout": st.floats(0, 0.9)}),
    "cnn": st.fixed_dictionaries({}, optional={
        "channels": st.integers(1, 6), "depth": st.integers(0, 4),
        "kernel": st.sampled_from([1, 3, 5]), "dropout": st.floats(0, 0.9),
        "batchnorm": st.booleans(), "pool_every": st.integers(1, 3)}),
}


@st.composite
def model_spec(draw, inherited_arch: str | None = None, student: bool = False) -> dict:
    spec: dict = {}
    if draw(st.booleans()):
        spec["arch"] = draw(st.sampled_from(["mlp", "cnn1d", "cnn2d"]))
    arch = spec.get("arch", inherited_arch or "cnn1d")
    if draw(st.booleans()):
        spec["knobs"] = draw(KNOBS["mlp" if arch == "mlp" else "cnn"])
    if draw(st.booleans()):  # the student's augmentation must stay off (config says why)
        spec["train"] = draw(section(TrainConfig, skip={"augment"} if student else set()))
    return spec


def fix_warmup(train: dict) -> None:
    """TrainConfig's rule: warmup_epochs < epochs (with the defaults for absent keys)."""
    epochs = train.get("epochs", TrainConfig().epochs)
    if train.get("warmup_epochs", 0) >= epochs:
        train["warmup_epochs"] = epochs - 1


@st.composite
def valid_params(draw) -> dict:
    p: dict = {}
    data = draw(section(DataConfig, skip=PARQUET_ONLY | {"source", "test_fraction",
                                                         "unlabeled_fraction"},
                        unlabeled_size=st.integers(0, 100)))
    data["source"] = draw(st.sampled_from(["mnist1d", "digits"]))
    if data["source"] == "digits":  # the two fractions must leave labeled rows
        data["test_fraction"] = draw(st.floats(0.01, 0.45))
        data["unlabeled_fraction"] = draw(st.floats(0, 0.45))
    elif data.get("unlabeled_seed") == 42:  # the transfer set needs its own seed
        data["unlabeled_seed"] = 43
    p["data"] = data
    defaults = draw(model_spec())
    names = draw(st.lists(st.from_regex(r"[a-z][a-z0-9_-]{0,6}", fullmatch=True),
                          min_size=1, max_size=3, unique=True))
    members = {n: draw(model_spec(inherited_arch=defaults.get("arch"))) for n in names}
    fix_warmup(defaults.get("train", {}))
    for m in members.values():  # each member's merged training settings obey the rule too
        merged = {**defaults.get("train", {}), **m.get("train", {})}
        epochs = merged.get("epochs", TrainConfig().epochs)
        if merged.get("warmup_epochs", 0) >= epochs:
            m.setdefault("train", {})["warmup_epochs"] = epochs - 1
    p["teacher"] = {"defaults": defaults, "members": members}
    export = draw(section(ExportConfig, skip=TRANSFORMER_ONLY))
    if export.get("row_group_size", 4096) > export.get("rows_per_shard", 20_000):
        export["row_group_size"] = export.get("rows_per_shard", 20_000)
    a = export.get("augment", {})
    if export.get("views") and not (a.get("shift") or a.get("noise") or export.get("mixup")):
        export["mixup"] = 0.4  # views need an augmentation, or every view is the row itself
    p["export"] = export
    student = draw(model_spec(student=True))
    student.update(draw(section(StudentConfig, skip={"arch", "knobs", "train",
                                                      *TRANSFORMER_ONLY})))
    fix_warmup(student.get("train", {}))
    if student.get("targets", "soft") != "soft" or student.get("rows", "all") != "all" or \
            student.get("omit") or student.get("fraction", 1.0) < 1 or \
            student.get("views", "sample") == "none":
        student.pop("control", None)  # such a recipe is a control: `control: false` is refused
    p["student"] = {"defaults": student, "variants": {"v": {}}}
    if student.get("omit") and export.get("views") and export.get("mixup"):
        student["views"] = "none"  # mixup partners would carry the omitted classes' rows
    if export.get("top_k") is not None:  # both sources have 10 classes; mean_logits needs every logit
        export["top_k"] = min(export["top_k"], 9)
        if student.get("combine") == "mean_logits":
            del export["top_k"]
    baseline = draw(section(BaselineConfig))
    warmup = student.get("train", {}).get("warmup_epochs", 0)
    if baseline.get("epochs") is not None and baseline["epochs"] <= warmup:
        baseline["epochs"] = warmup + 1  # the baseline runs the student's warm-up
    p["baseline"] = baseline
    p["tracking"] = draw(section(TrackingConfig))
    return p


def get(obj: Any, path: tuple[str, ...]) -> Any:
    for part in path:
        obj = obj[part] if isinstance(obj, dict) else getattr(obj, part)
    return obj


def leaves(d: dict, prefix: tuple = ()) -> list[tuple[tuple[str, ...], Any]]:
    out = []
    for k, v in d.items():
        if isinstance(v, dict) and k not in ("knobs", "members", "defaults"):
            out += leaves(v, (*prefix, k))
        else:
            out.append(((*prefix, k), v))
    return out


def write_and_load(tmp_path_factory, params: dict):
    path = tmp_path_factory.mktemp("params") / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return load_config(path)


@SETTINGS
@given(params=valid_params())
def test_valid_params_load_as_written_and_round_trip(tmp_path_factory, params):
    cfg = write_and_load(tmp_path_factory, params)
    for path, value in leaves(params):
        assert get(cfg, path) == value, path
    for name in params["teacher"]["members"]:
        cfg.teacher.member(name)  # every member's merged settings build
    again = write_and_load(tmp_path_factory, cfg.model_dump())
    assert again == cfg


# ---------------------------------------------------------------------------- mutations

SECTIONS: dict[tuple[str, ...], type[BaseModel]] = {
    (): Config, ("data",): DataConfig, ("export",): ExportConfig,
    ("student", "defaults"): StudentConfig, ("student", "defaults", "train"): TrainConfig,
    ("baseline",): BaselineConfig,
    ("tracking",): TrackingConfig, ("teacher", "defaults"): ModelConfig,
    ("teacher", "defaults", "train"): TrainConfig,
}
WRONG_TYPES = {int: ["7", 2.5, [1], True], float: ["0.5", [1], True, {"a": 1}],
               bool: [1, "yes", 0.0], str: [3, [1], {"a": 1}]}


def wrong_value(ann: Any) -> st.SearchStrategy:
    if typing.get_origin(ann) is Literal:
        return st.sampled_from([3, True, "not-a-choice", [1]])
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return st.sampled_from(["x", [1], 3])
    if typing.get_origin(ann) is list:
        return st.sampled_from(["x", 3, {"a": 1}])
    return st.sampled_from(WRONG_TYPES[ann])


def past_bound(ann: Any, bounds: list) -> list:
    out = []
    step = 1 if ann is int else 0.5
    for b in bounds:
        out += ([b.ge - step] if isinstance(b, Ge) else [b.gt] if isinstance(b, Gt)
                else [b.le + step] if isinstance(b, Le) else [b.lt] if isinstance(b, Lt) else [])
    return out


@st.composite
def mutated(draw) -> tuple[dict, str, str]:
    """(params with exactly one mistake, the key path the message must start with, kind)."""
    params = draw(valid_params())
    member = next(iter(params["teacher"]["members"]))
    where = draw(st.sampled_from([*SECTIONS, ("teacher", "members", member),
                                  ("teacher", "members", member, "train")]))
    model = SECTIONS.get(where, ModelConfig if where[-1:] == (member,) else TrainConfig)
    node = params
    for part in where:
        node = node.setdefault(part, {})
    candidates = {n: f for n, f in fields(model).items()
                  if n not in PARQUET_ONLY and n not in ("knobs", "teacher", "augment")}
    bounded = sorted(n for n, (ann, bounds) in candidates.items() if past_bound(ann, bounds))
    kind = draw(st.sampled_from(["range", "type", "unknown"] if bounded else ["type", "unknown"]))
    if kind == "range":
        name = draw(st.sampled_from(bounded))
        node[name] = draw(st.sampled_from(past_bound(*candidates[name])))
    elif kind == "type":
        name = draw(st.sampled_from(sorted(candidates)))
        node[name] = draw(wrong_value(candidates[name][0]))
    else:
        name = "zz_" + draw(st.from_regex(r"[a-z]{1,6}", fullmatch=True))
        node[name] = draw(st.sampled_from([1, "x", None, [2]]))
    return params, ".".join((*where, name)), kind


@SETTINGS
@given(case=mutated())
def test_any_single_mistake_is_a_config_error_naming_its_key(tmp_path_factory, case):
    params, key, kind = case
    event(kind)
    event(key.split(".")[0])
    with pytest.raises(ConfigError) as e:
        write_and_load(tmp_path_factory, params)
    msg = str(e.value)
    assert msg.startswith(f"{key}: "), (kind, key, msg)
    assert "\n" not in msg
    if kind == "unknown":
        assert "unknown key" in msg


REQUIRED_FOR_PARQUET = ("labeled", "test", "features", "label")


@settings(max_examples=20, deadline=None)
@given(missing=st.sampled_from(REQUIRED_FOR_PARQUET), blank=st.sampled_from([None, "", "del"]))
def test_deleting_a_required_key_names_it(missing, blank):
    from kd.config import parse_config

    data = {"source": "parquet", "inputs": ".", "labeled": "l.parquet", "test": "t.parquet",
            "features": "pixels", "label": "y"}
    if blank == "del":
        del data[missing]
    else:
        data[missing] = blank
    with pytest.raises(ConfigError, match=rf"^data\.{missing}: required"):
        parse_config({"data": data})
