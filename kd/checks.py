"""Params checked against the prepared data: what `kd prepare` and `kd check-params` say before
an hour of training does.

    fit_to_data(cfg, meta)        # ConfigError naming the member and data.shape, or None
    for line in data_warnings(cfg, meta): print(line)

Params alone are validated by kd/config.py; whether each architecture takes the data's feature
shape, and whether a setting makes sense for this kind of data, needs meta.json.
"""

from __future__ import annotations

from kd.config import Config, ModelConfig
from kd.errors import ConfigError

# the keys each source reads; a key set in params.yaml that the source does not read is
# probably a leftover from another source
_SOURCE_KEYS = {"mnist1d": ("unlabeled_size", "unlabeled_seed"),
                "digits": ("test_fraction", "unlabeled_fraction")}


def model_specs(cfg: Config) -> dict[str, ModelConfig]:
    """Every model the pipeline trains, by the params key that defines it."""
    specs = {f"teacher.members.{m}": cfg.teacher.member(m) for m in cfg.teacher.members}
    for v in cfg.student.variants:
        st = cfg.student.variant(v)
        specs[f"student.variants.{v}"] = ModelConfig(arch=st.arch, knobs=st.knobs,
                                                     train=st.train)
    first = next(iter(cfg.student.variants))  # the baselines' augmentation is shared
    specs["baseline"] = cfg.baseline_spec(first)
    return specs


def fit_to_data(cfg: Config, meta: dict) -> None:
    """ConfigError (one line, naming the params key and data.shape) for the first model that
    cannot take the prepared features."""
    from kd.models import build_model

    shape = tuple(meta["feature_shape"])
    for key, spec in model_specs(cfg).items():
        if key == "baseline":
            continue  # the student's architecture: checked as the student
        try:
            build_model(spec.arch, shape, meta["n_classes"], spec.knobs)
        except ConfigError as e:
            raise ConfigError(f"{key}.arch: {e} (the prepared features have shape "
                              f"{list(shape)}; set data.shape, or choose another arch)") from None


def data_warnings(cfg: Config, meta: dict | None = None) -> list[str]:
    """Settings that are valid but probably not meant: keys the source does not read, and
    shift augmentation over tabular columns, which have no order to shift along."""
    out = []
    d = cfg.data
    for source, keys in _SOURCE_KEYS.items():
        if d.source != source:
            out += [f"warning: data.{k} is set but only read when data.source is '{source}' "
                    f"(source is '{d.source}'): remove it" for k in keys if k in d.model_fields_set]
    columns = (meta or {}).get("feature_columns")
    if columns:
        shown = ", ".join(columns[:3]) + (", ..." if len(columns) > 3 else "")
        for key, spec in model_specs(cfg).items():
            where = "baseline.augment" if key == "baseline" else f"{key}.train.augment"
            if spec.train.augment.shift:
                out.append(f"warning: {where}.shift={spec.train.augment.shift} shifts each row "
                           f"across the columns {shown}, which have no order: use shift: 0 for "
                           "tabular data")
    return out
