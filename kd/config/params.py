"""The whole params file: every section, the checks that span sections, and what is derived
from more than one of them.

    cfg.baseline_spec("small")     # the variant's network with the baseline's own training
    cfg.model_specs()              # every model the pipeline trains, by its params key
    data_warnings(cfg, meta)       # valid settings that are probably not meant

Whether an architecture exists, takes its knobs or fits the data is the models' to say
(kd/model_checks.py): this module knows no model family.
"""

from __future__ import annotations

from pydantic import Field, ValidationError, model_validator

from kd.config.data import DataConfig
from kd.config.messages import one_line
from kd.config.sections import (
    BaselineConfig,
    DeployConfig,
    ExportConfig,
    ModelConfig,
    ReportConfig,
    RuntimeConfig,
    Section,
    TeacherConfig,
    TrackingConfig,
    TrainConfig,
    TransferConfig,
    check_top_k,
)
from kd.config.student import StudentConfig, StudentsConfig
from kd.errors import ConfigError

# the keys each source reads; a key set in params.yaml that the source does not read is
# probably a leftover from another source
_SOURCE_KEYS = {"mnist1d": ("unlabeled_size", "unlabeled_seed"),
                "digits": ("test_fraction", "unlabeled_fraction"),
                "chars": ("context", "labeled_rows", "unlabeled_rows", "test_rows",
                          "test_fraction")}


class Config(Section):
    data: DataConfig = Field(
        DataConfig(), description="where the rows come from and how they are split and scaled")
    teacher: TeacherConfig = Field(
        TeacherConfig(), description="the ensemble: members trained here and imported ones")
    transfer: TransferConfig = Field(
        TransferConfig(), description="synthetic transfer rows (MUNGE)")
    export: ExportConfig = Field(
        ExportConfig(), description="the soft-target shards: every member's logits on every row")
    student: StudentsConfig = Field(StudentsConfig(), description="the student variants")
    baseline: BaselineConfig = Field(
        BaselineConfig(), description="each variant's network on labels alone")
    report: ReportConfig = Field(
        ReportConfig(), description="the report and the choice of the shipped variant")
    tracking: TrackingConfig = Field(TrackingConfig(), description="MLflow tracking")
    runtime: RuntimeConfig = Field(
        RuntimeConfig(),
        description="how the training and export stages run (processes, threads, device)")
    deploy: DeployConfig = Field(
        DeployConfig(), description="the shipped student as ONNX fp32 and int8")

    def baseline_spec(self, variant: str) -> ModelConfig:
        """The variant's architecture and training settings with the baseline's own
        augmentation and epochs, validated like any other (warm-up shorter than the epochs)."""
        st = self.student.variant(variant)
        update = {"augment": self.baseline.augment.model_dump()}
        if self.baseline.epochs is not None:
            update["epochs"] = self.baseline.epochs
        train = TrainConfig.model_validate({**st.train.model_dump(), **update})
        return ModelConfig(arch=st.arch, knobs=st.knobs, train=train)

    def model_specs(self) -> dict[str, ModelConfig]:
        """Every model the pipeline trains, by the params key that defines it."""
        specs = {f"teacher.members.{m}": self.teacher.member(m) for m in self.teacher.members}
        for v in self.student.variants:
            st = self.student.variant(v)
            specs[f"student.variants.{v}"] = ModelConfig(arch=st.arch, knobs=st.knobs,
                                                         train=st.train)
        first = next(iter(self.student.variants))  # the baselines' augmentation is shared
        specs["baseline"] = self.baseline_spec(first)
        return specs

    @model_validator(mode="after")
    def _check_transfer(self) -> Config:
        # MUNGE draws each attribute from a Gaussian around a neighbour's value: for token ids
        # that is a real number, not an id, which the transformer's embedding lookup refuses
        if self.transfer.method == "munge" and self.data.vocab_size is not None:
            raise ConfigError("transfer.method: 'munge' draws real values, not token ids, and "
                              f"data.vocab_size ({self.data.vocab_size}) says the features are "
                              "ids; use transfer.method: none")
        return self

    @model_validator(mode="after")
    def _check_members(self) -> Config:
        # validate the shared defaults, then every member's merged settings, each with the key
        # path where the mistake was written
        try:
            ModelConfig.model_validate(self.teacher.defaults)
        except ValidationError as e:
            raise ConfigError(one_line(e, prefix="teacher.defaults", model=ModelConfig)) from None
        for name in self.teacher.members:
            try:
                self.teacher.member(name)
            except ValidationError as e:
                raise ConfigError(
                    one_line(e, prefix=f"teacher.members.{name}", model=ModelConfig)
                ) from None
        try:
            StudentConfig.model_validate(self.student.defaults)
        except ValidationError as e:
            raise ConfigError(one_line(e, prefix="student.defaults", model=StudentConfig)) from None
        rt = self.runtime
        for name in self.student.variants:
            key = f"student.variants.{name}"
            try:
                st = self.student.variant(name)
            except ValidationError as e:
                raise ConfigError(one_line(e, prefix=key, model=StudentConfig)) from None
            if rt.nproc > 1 and rt.batch == "global" and st.train.batch_size % rt.nproc:
                raise ConfigError(f"{key}.train.batch_size: {st.train.batch_size} rows do not "
                                  f"split evenly over runtime.nproc {rt.nproc} ranks "
                                  "(or set runtime.batch: per_rank)")
            try:
                self.baseline_spec(name)
            except ValidationError as e:
                raise ConfigError(one_line(e, prefix=f"{key}.train")
                                  + " (in the baseline's run, with baseline.epochs)") from None
        _check_hidden_and_init(self)
        _check_top_k(self)
        _check_omit_and_mixup(self)
        return self


def _check_hidden_and_init(cfg: Config) -> None:
    """The names the hidden vectors and layer-skip init refer to: export.hidden's members, and
    each variant's hidden_from and init.from. Which architectures have hidden vectors or can
    be copied is checked with the models (kd/model_checks.py)."""
    members = list(cfg.teacher.members)
    for i, name in enumerate(cfg.export.hidden):
        if name not in members:
            raise ConfigError(f"export.hidden.{i}: {name!r} is not a teacher member "
                              f"(members: {', '.join(members)})")
    for variant in cfg.student.variants:
        key, st = f"student.variants.{variant}", cfg.student.variant(variant)
        if st.beta > 0 and st.hidden_from is None and len(cfg.export.hidden) != 1:
            raise ConfigError(f"{key}.beta: {st.beta} needs exactly one member in export.hidden "
                              f"or {key}.hidden_from, got export.hidden {cfg.export.hidden}")
        if st.hidden_from is not None and st.hidden_from not in cfg.export.hidden:
            raise ConfigError(f"{key}.hidden_from: {st.hidden_from!r} is not in export.hidden "
                              f"{cfg.export.hidden}")
        if st.init is not None and st.init.from_ not in members:
            raise ConfigError(f"{key}.init.from: {st.init.from_!r} is not a teacher member "
                              f"(members: {', '.join(members)})")


def known_classes(data: DataConfig) -> int | None:
    """The number of classes when params.yaml alone says it (None: only prepare knows)."""
    if data.source in ("digits", "mnist1d"):
        return 10
    if data.source == "chars":
        return data.vocab_size
    return len(data.classes) if data.classes else None


def _check_omit_and_mixup(cfg: Config) -> None:
    """A variant that omits classes cannot read mixup views: a view's partner may be a row of
    an omitted class, whose input (and its share of the soft targets) the view carries."""
    if not (cfg.export.views and cfg.export.mixup):
        return
    for variant in cfg.student.variants:
        st = cfg.student.variant(variant)
        if st.omit and st.views != "none":
            raise ConfigError(f"student.variants.{variant}.omit: mixup views (export.mixup "
                              f"{cfg.export.mixup}) mix rows of the omitted classes into other "
                              "rows' inputs as partners; give this variant `views: none`, or "
                              "set export.mixup: 0")


def _check_top_k(cfg: Config) -> None:
    """export.top_k against the classes params.yaml names (export checks it against the
    prepared data's), and the combine rule each variant reads the stored targets with."""
    k = cfg.export.top_k
    if k is None:
        return
    if (n := known_classes(cfg.data)) is not None:
        check_top_k(k, n)
    for variant in cfg.student.variants:
        if cfg.student.variant(variant).combine == "mean_logits":
            raise ConfigError(f"student.variants.{variant}.combine: 'mean_logits' averages every "
                              f"member's full logits, which export.top_k {k} does not store; use "
                              "mean_probs (or kl_per_member, random_member) or remove "
                              "export.top_k")


def data_warnings(cfg: Config, meta: dict | None = None) -> list[str]:
    """Settings that are valid but probably not meant: keys the source does not read, and
    shift augmentation over tabular columns, which have no order to shift along."""
    out = []
    d = cfg.data
    readers: dict[str, list[str]] = {}  # a key set but not read -> the sources that read it
    for source, keys in _SOURCE_KEYS.items():
        for k in keys:
            if k in d.model_fields_set and k not in _SOURCE_KEYS.get(d.source, ()):
                readers.setdefault(k, []).append(f"'{source}'")
    out += [f"warning: data.{k} is set but only read when data.source is {' or '.join(s)} "
            f"(source is '{d.source}'): remove it" for k, s in readers.items()]
    columns = (meta or {}).get("feature_columns")
    if columns:
        shown = ", ".join(columns[:3]) + (", ..." if len(columns) > 3 else "")
        for key, spec in cfg.model_specs().items():
            where = "baseline.augment" if key == "baseline" else f"{key}.train.augment"
            if spec.train.augment.shift:
                out.append(f"warning: {where}.shift={spec.train.augment.shift} shifts each row "
                           f"across the columns {shown}, which have no order: use shift: 0 for "
                           "tabular data")
    return out
