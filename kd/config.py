"""params.yaml -> one typed, validated `Config` that every stage receives.

    from kd.config import load_config
    cfg = load_config("params.yaml")
    # a mistake raises ConfigError("student.temperature: must be > 0, got -1")

Every `kd` command validates the whole file, not only its own section, so a typo in the
student's settings stops `kd prepare` rather than an hour of teacher training later. Each
section owns its defaults; a key left out of params.yaml takes the default written here.
The YAML is read with a safe loader that also rejects duplicate keys: no tags, no code.
"""

from __future__ import annotations

import difflib
import math
import posixpath
import re
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from kd.errors import ConfigError

PositiveInt = Annotated[int, Field(gt=0)]
Fraction = Annotated[float, Field(ge=0, lt=1)]
Knob = int | float | bool | str
MNIST1D_SEED = 42  # the seed of MNIST-1D's standard 4,000/1,000 split


class Section(BaseModel):
    # strict: YAML already gives typed values, so "10" for an int or 3.5 for an epoch count is
    # a mistake to report, not something to coerce.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


# --------------------------------------------------------------------------------- data


class DataConfig(Section):
    source: Literal["mnist1d", "digits", "parquet"] = "mnist1d"
    # mnist1d: the standard 4,000/1,000 split (seed 42) plus a transfer set from another seed
    unlabeled_size: Annotated[int, Field(ge=0)] = 40_000
    unlabeled_seed: Annotated[int, Field(ge=0)] = 1
    # digits: fractions of the 1,797 images; the labeled split is what is left
    test_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.2
    unlabeled_fraction: Fraction = 0.4
    # all sources: the validation rows are drawn from the labeled split with this seed
    split_seed: Annotated[int, Field(ge=0)] = 0
    val_fraction: Annotated[float, Field(ge=0, le=0.5)] = 0.1
    normalize: Literal["global", "per_feature", "none"] = "global"
    # a test row whose features also occur among the labeled or unlabeled rows stops prepare,
    # unless the user says they know (the report then says so)
    allow_test_overlap: bool = False
    # the folder (or file) holding the user's own data files: `prepare` depends on it in
    # dvc.yaml (`${data.inputs}`), so editing any file in it reruns prepare and what follows;
    # every parquet path must lie inside it
    inputs: str = "data/inputs"
    # parquet: the user's own files
    labeled: str | None = None
    unlabeled: str | None = None
    test: str | None = None
    features: str | list[str] | None = None
    label: str | None = None
    id: str | None = None
    shape: list[PositiveInt] | None = None
    classes: Annotated[list[str], Field(min_length=2)] | None = None  # class order; default sorted
    # token ids: every feature is an integer id in [0, vocab_size), checked at prepare; a
    # transformer reads them through its embedding table (knob vocab, which must equal this)
    vocab_size: Annotated[int, Field(ge=2, le=2**24)] | None = None  # float32 holds ids exactly

    @model_validator(mode="after")
    def _check_source(self) -> DataConfig:
        if self.source == "mnist1d" and self.unlabeled_seed == MNIST1D_SEED:
            raise ValueError(
                f"unlabeled_seed: must differ from the labeled split's seed ({MNIST1D_SEED}), "
                f"or the transfer set repeats the labeled rows, got {MNIST1D_SEED}"
            )
        if self.source == "digits" and self.test_fraction + self.unlabeled_fraction >= 0.95:
            raise ValueError(
                "unlabeled_fraction: test_fraction + unlabeled_fraction must leave labeled "
                f"rows (< 0.95), got {self.test_fraction} + {self.unlabeled_fraction}"
            )
        parquet_keys = ("labeled", "unlabeled", "test", "features", "label", "id", "shape",
                        "classes", "vocab_size")
        if self.source == "parquet":
            for key in ("labeled", "test", "features", "label"):
                if getattr(self, key) in (None, "", []):
                    raise ValueError(f"{key}: required when data.source is 'parquet'")
            if self.vocab_size is not None and self.normalize != "none":
                raise ValueError(f"normalize: must be 'none' with data.vocab_size (token ids "
                                 f"are not scaled), got '{self.normalize}'")
            if self.classes and len(set(self.classes)) < len(self.classes):
                twice = next(c for c in self.classes if self.classes.count(c) > 1)
                raise ValueError(f"classes: {twice!r} is listed twice")
            for key in ("labeled", "unlabeled", "test"):
                path = getattr(self, key)
                if path is not None and not _inside(path, self.inputs):
                    raise ValueError(
                        f"{key}: {path!r} is not inside data.inputs ({self.inputs!r}), the "
                        "path prepare depends on: DVC would not rerun prepare when the file "
                        "changes; move it there or point data.inputs at its folder")
        else:
            for key in parquet_keys:
                if getattr(self, key) is not None:
                    raise ValueError(
                        f"{key}: only used when data.source is 'parquet', "
                        f"got source '{self.source}'"
                    )
        return self


def _inside(path: str, folder: str) -> bool:
    """`path` is `folder` or lies under it (both relative to the repository root)."""
    p, f = PurePosixPath(posixpath.normpath(path)), PurePosixPath(posixpath.normpath(folder))
    if ".." in p.parts or p.is_absolute() != f.is_absolute():
        return False
    return str(f) == "." or p == f or f in p.parents


# ------------------------------------------------------------------------ model + training


class AugmentConfig(Section):
    shift: Annotated[int, Field(ge=0)] = 0  # random circular shift of up to +-shift positions
    noise: Annotated[float, Field(ge=0)] = 0.0  # std of Gaussian noise added to the features


class TrainConfig(Section):
    epochs: PositiveInt = 20
    batch_size: PositiveInt = 128
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: Annotated[float, Field(gt=0, le=10)] = 3e-3
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9
    weight_decay: Annotated[float, Field(ge=0)] = 1e-4
    schedule: Literal["cosine", "constant", "onecycle"] = "cosine"
    warmup_epochs: Annotated[int, Field(ge=0)] = 0
    augment: AugmentConfig = AugmentConfig()
    seed: Annotated[int, Field(ge=0)] = 0

    @model_validator(mode="after")
    def _check_warmup(self) -> TrainConfig:
        if self.warmup_epochs >= self.epochs:
            raise ValueError(
                f"warmup_epochs: must be < epochs ({self.epochs}), got {self.warmup_epochs}"
            )
        return self


class ModelConfig(Section):
    arch: str = "cnn1d"
    knobs: dict[str, Knob] = {}
    train: TrainConfig = TrainConfig()


def _deep_merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _merge_spec(defaults: dict, own: dict) -> dict:
    """A member's or variant's settings: the shared defaults with its own on top."""
    base = dict(defaults)
    if "arch" in own and own["arch"] != base.get("arch", ModelConfig().arch):
        base.pop("knobs", None)  # another architecture's knobs mean nothing to this one
    return _deep_merge(base, own)


_SOURCE_FORMS = {"mlflow": ("models:/", "runs:/"), "onnx": (".onnx",), "torch_export": (".pt2",)}


class ImportedMember(Section):
    """A member trained elsewhere (`teacher.imports.<name>`), imported by `kd import <name>`
    into data/teachers/<name>/ (kd/teachers/): an MLflow model URI, an ONNX file or a
    torch.export file. Loading an MLflow scikit-learn model or a .pt2 file unpickles it: trusted
    sources only; ONNX is the safe format."""

    kind: Literal["mlflow", "onnx", "torch_export"]
    # mlflow: models:/<name>/<version>, models:/<name>@<alias> or runs:/<run>/<path>;
    # onnx, torch_export: a local .onnx / .pt2 file
    source: Annotated[str, Field(min_length=1)]
    # what the model returns: class probabilities (their log is taken as logits) or logits;
    # None: probs for mlflow (a classifier logged with pyfunc_predict_fn="predict_proba"),
    # logits for onnx and torch_export
    outputs: Literal["probs", "logits"] | None = None
    # raw: the features as the user's files hold them (the prepared normalisation is undone);
    # prepared: the normalised features the native members see
    inputs: Literal["raw", "prepared"] = "raw"
    # the classes of the model's outputs, in its order, when the model carries no names
    classes: Annotated[list[str], Field(min_length=2)] | None = None

    @model_validator(mode="after")
    def _check_source(self) -> ImportedMember:
        forms = _SOURCE_FORMS[self.kind]
        ok = (self.source.startswith(forms) if self.kind == "mlflow"
              else self.source.endswith(forms))
        if not ok:
            want = " or ".join(f"{f}..." if self.kind == "mlflow" else f"a *{f} file"
                               for f in forms)
            raise ValueError(f"source: kind {self.kind!r} needs {want}, got {self.source!r}")
        if self.classes and len(set(self.classes)) < len(self.classes):
            raise ValueError(f"classes: names must be unique, got {self.classes}")
        return self

    def output_kind(self) -> str:
        return self.outputs or ("probs" if self.kind == "mlflow" else "logits")


class TeacherConfig(Section):
    """`defaults` hold what members share; each member overrides any part of it. A member
    with its own `arch` keeps the shared training settings but not the shared knobs.
    `members` are trained here (`teacher@<name>`), `imports` come from elsewhere
    (`import@<name>`); the ensemble is both, members first."""

    defaults: dict[str, Any] = {}
    members: dict[str, dict[str, Any]] = {"cnn_0": {}}
    imports: dict[str, ImportedMember] = {}

    @field_validator("members", "imports")
    @classmethod
    def _check_member_names(cls, members: dict) -> dict:
        return _check_names("member", members, empty_ok=True)  # imports may be the ensemble

    @model_validator(mode="after")
    def _check_ensemble(self) -> TeacherConfig:
        if not self.members and not self.imports:
            raise ValueError("members: the ensemble needs at least one member or import, got "
                             "none")
        if twice := sorted(set(self.members) & set(self.imports)):
            raise ValueError(f"imports: {twice[0]!r} is also a key of teacher.members; an "
                             "ensemble member's name is its own")
        return self

    def names(self) -> list[str]:
        """Every member of the ensemble, in the order its logits are exported."""
        return [*self.members, *self.imports]

    def member(self, name: str) -> ModelConfig:
        """The member's full settings: the shared defaults with its own overrides on top."""
        return ModelConfig.model_validate(_merge_spec(self.defaults, self.members[name] or {}))


# ------------------------------------------------------------------ export, student, tracking


class ExportConfig(Section):
    rows_per_shard: PositiveInt = 20_000
    row_group_size: PositiveInt = 4_096
    batch_size: PositiveInt = 1_024
    compression: Literal["zstd", "snappy", "gzip", "lz4", "none"] = "zstd"
    logits_dtype: Literal["float32", "float16"] = "float32"
    # members whose pooled hidden vector is stored too (`hidden.<member>` columns), for a
    # student's cosine term (student.beta); each must be a model with forward_features
    hidden: list[str] = []

    @model_validator(mode="after")
    def _check_groups(self) -> ExportConfig:
        if self.row_group_size > self.rows_per_shard:
            raise ValueError(
                f"row_group_size: must be <= rows_per_shard ({self.rows_per_shard}), "
                f"got {self.row_group_size}"
            )
        return self


class InitConfig(Section):
    """Layer-skip initialisation (DistilBERT): the student starts as a copy of a teacher
    member's embeddings, its encoder layers `layers` (in order) and its head."""

    model_config = ConfigDict(populate_by_name=True)
    from_: str = Field(alias="from")  # a teacher member of the student's family and width
    layers: Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]


class StudentConfig(ModelConfig):
    """One student variant, resolved: `student.defaults` with the variant's overrides on top."""

    temperature: Annotated[float, Field(gt=0, le=100)] = 4.0
    alpha: Annotated[float, Field(ge=0, le=1)] = 0.9
    combine: Literal["mean_probs", "mean_logits"] = "mean_probs"
    # soft: the ensemble's distribution at T (Hinton); hard: its argmax as the label of every
    # row, at T = 1 (the pseudo-label control: what is left of KD without the dark knowledge)
    targets: Literal["soft", "hard"] = "soft"
    # all: every exported training row; labeled: the labeled training rows only (the control
    # without a transfer set: what is left of KD without the extra inputs)
    rows: Literal["all", "labeled"] = "all"
    shuffle_buffer: PositiveInt = 50_000
    init: InitConfig | None = None  # None: random initialisation from train.seed
    # + beta * (1 - cos(h_student, h_teacher)) on the pooled hidden vectors (export.hidden);
    # 0 reads no hidden columns
    beta: Annotated[float, Field(ge=0, le=100)] = 0.0
    hidden_from: str | None = None  # the member to align with; None: export.hidden's only one

    @model_validator(mode="after")
    def _no_augmentation(self) -> StudentConfig:
        # The soft targets were computed on the rows as stored; a shifted input would be paired
        # with the logits of the unshifted one: the classic cached-logit KD bug.
        a = self.train.augment
        if a.shift or a.noise:
            raise ValueError(
                "train: augment must stay off for the student: the exported soft targets belong "
                f"to the unaugmented rows, got shift={a.shift}, noise={a.noise}"
            )
        return self


_NAME = re.compile(r"[A-Za-z0-9_-]+")


def _check_names(what: str, names: dict, empty_ok: bool = False) -> dict:
    if not names and not empty_ok:
        raise ValueError(f"needs at least one {what}, got none")
    for name in names:
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ValueError(f"{what} names use letters, digits, '_' and '-', got {name!r}")
    return names


class StudentsConfig(Section):
    """`defaults` hold what the student variants share; each variant overrides any part of it
    (a variant with its own `arch` keeps the shared settings but not the shared knobs), like
    `teacher.members`. Each variant is a `student@<variant>` and a `baseline@<variant>` stage."""

    defaults: dict[str, Any] = {}
    variants: dict[str, dict[str, Any] | None] = {"main": {}}

    @field_validator("variants")
    @classmethod
    def _check_variants(cls, variants: dict) -> dict:
        return _check_names("variant", variants)

    def shared(self) -> StudentConfig:
        """The defaults alone, resolved: the ensemble's combine rule the report and the
        variant choice measure the ensemble by (one reference for every variant)."""
        return StudentConfig.model_validate(self.defaults)

    def variant(self, name: str) -> StudentConfig:
        """The variant's full settings: the shared defaults with its own overrides on top."""
        if name not in self.variants:
            raise ConfigError(f"student.variants: no variant named {name!r} "
                              f"(variants: {', '.join(self.variants)})")
        return StudentConfig.model_validate(_merge_spec(self.defaults, self.variants[name] or {}))


class ReportConfig(Section):
    # the chosen variant: the one with the fewest parameters whose validation accuracy keeps
    # this fraction of the ensemble's (validation rows only; test rows only report)
    retain_target: Annotated[float, Field(gt=0, le=1)] = 0.99


class TransferConfig(Section):
    """Synthetic transfer rows for the ensemble to label (stages/transfer.py). MUNGE (Bucilua,
    Caruana & Niculescu-Mizil 2006): each training row and its nearest neighbour trade
    attribute values, with probability `p` each, drawn from N(other's value, |a - b| / s)."""

    method: Literal["none", "munge"] = "none"
    # synthetic rows to generate. Not `size`: DVC's run cache leaves any key named `size` (or
    # `nfiles`) out of a stage's hash, so a new `size` would restore the old rows from cache
    rows: PositiveInt = 100_000
    p: Annotated[float, Field(ge=0, le=1)] = 0.5  # per-attribute swap probability
    s: Annotated[float, Field(gt=0, le=1e6)] = 10.0  # local spread: sd = |a - b| / s
    seed: Annotated[int, Field(ge=0)] = 0


class BaselineConfig(Section):
    """The baseline is the student's architecture and training settings on labels alone; only
    its augmentation is its own, so it gets every advantage labels alone can give."""

    augment: AugmentConfig = AugmentConfig()
    # labels alone see ~12x fewer rows per epoch than the student: let them train to convergence
    epochs: PositiveInt | None = None  # None: the student's


class TrackingConfig(Section):
    enabled: bool = True
    experiment: str = "kd-pipeline"
    uri: str | None = None  # None: sqlite mlflow.db at the repository root (absolute URI)
    # the up-front reachability check's; logging keeps MLflow's own retries and timeouts
    timeout_s: Annotated[float, Field(gt=0, le=600)] = 10.0


class RuntimeConfig(Section):
    """How the training and export stages run: one process, or `nproc` under torchrun."""

    nproc: PositiveInt = 1  # processes per stage on this machine (torchrun --nproc-per-node)
    backend: Literal["auto", "gloo", "nccl"] = "auto"  # auto: nccl with CUDA GPUs, else gloo
    # torch threads per process (every kd command); 0: the cores / nproc. 1 by default: on a
    # machine shared with any other busy process, one OpenMP thread per core waits on
    # descheduled peers (benchmarks/threads.py measured 2 threads at 0.16-0.2x of 1)
    threads: Annotated[int, Field(ge=0)] = 1
    # where one process trains and exports: auto takes a CUDA GPU when one is visible
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # global: train.batch_size is the effective batch, split over the ranks (the same
    # optimisation as one process); per_rank: every rank takes train.batch_size rows a step
    batch: Literal["global", "per_rank"] = "global"


class DeployConfig(Section):
    """The deploy stage: the student as ONNX fp32 and int8 (kd/deploy/)."""

    # auto: the kind measured best for the student's family (kd/deploy/quantize.py)
    quantize: Literal["auto", "dynamic", "static"] = "auto"
    max_accuracy_drop: Annotated[float, Field(ge=0, le=1)] = 0.01  # int8 vs fp32, validation
    atol: Annotated[float, Field(gt=0)] = 1e-4  # max |logit difference|, fp32 ONNX vs PyTorch
    per_channel: bool = False  # int8 scales per output channel (measured: no gain here)
    calibration_rows: PositiveInt = 1000  # labeled training rows (never validation or test)
    calibration_seed: Annotated[int, Field(ge=0)] = 0


class Config(Section):
    data: DataConfig = DataConfig()
    teacher: TeacherConfig = TeacherConfig()
    transfer: TransferConfig = TransferConfig()
    export: ExportConfig = ExportConfig()
    student: StudentsConfig = StudentsConfig()
    baseline: BaselineConfig = BaselineConfig()
    report: ReportConfig = ReportConfig()
    tracking: TrackingConfig = TrackingConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    deploy: DeployConfig = DeployConfig()

    def baseline_spec(self, variant: str) -> ModelConfig:
        """The variant's architecture and training settings with the baseline's own
        augmentation and epochs, validated like any other (warm-up shorter than the epochs)."""
        st = self.student.variant(variant)
        update = {"augment": self.baseline.augment.model_dump()}
        if self.baseline.epochs is not None:
            update["epochs"] = self.baseline.epochs
        train = TrainConfig.model_validate({**st.train.model_dump(), **update})
        return ModelConfig(arch=st.arch, knobs=st.knobs, train=train)

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
            defaults = ModelConfig.model_validate(self.teacher.defaults)
        except ValidationError as e:
            raise ConfigError(_format(e, prefix="teacher.defaults", model=ModelConfig)) from None
        if "arch" in self.teacher.defaults:  # blame the defaults, not the first member
            _check_arch("teacher.defaults", defaults)
        for name in self.teacher.members:
            try:
                member = self.teacher.member(name)
            except ValidationError as e:
                raise ConfigError(
                    _format(e, prefix=f"teacher.members.{name}", model=ModelConfig)
                ) from None
            _check_arch(f"teacher.members.{name}", member)
        try:
            shared = StudentConfig.model_validate(self.student.defaults)
        except ValidationError as e:
            raise ConfigError(_format(e, prefix="student.defaults", model=StudentConfig)) from None
        if {"arch", "knobs"} & set(self.student.defaults):  # blame the defaults, not a variant
            _check_arch("student.defaults", shared)
        rt = self.runtime
        for name in self.student.variants:
            key = f"student.variants.{name}"
            try:
                st = self.student.variant(name)
            except ValidationError as e:
                raise ConfigError(_format(e, prefix=key, model=StudentConfig)) from None
            _check_arch(key, st)
            if rt.nproc > 1 and rt.batch == "global" and st.train.batch_size % rt.nproc:
                raise ConfigError(f"{key}.train.batch_size: {st.train.batch_size} rows do not "
                                  f"split evenly over runtime.nproc {rt.nproc} ranks "
                                  "(or set runtime.batch: per_rank)")
            try:
                self.baseline_spec(name)
            except ValidationError as e:
                raise ConfigError(_format(e, prefix=f"{key}.train")
                                  + " (in the baseline's run, with baseline.epochs)") from None
        _check_transformer(self)
        return self


def _check_arch(key: str, spec: ModelConfig) -> None:
    """Architecture, knob names and knob values are checked now, by building the model on the
    small input its class declares (`probe_shape`); whether it fits the data's feature shape is
    checked by the stage."""
    from kd.models import check_arch

    try:
        check_arch(spec.arch, spec.knobs)
    except ConfigError as e:
        msg = str(e)
        what = "arch" if msg.startswith(("unknown architecture", "architecture ")) else "knobs"
        raise ConfigError(f"{key}.{what}: {e}") from None


def _check_transformer(cfg: Config) -> None:
    """The transformer recipe's keys against each other: hidden members and the student's
    cosine term, layer-skip init, and token ids (data.vocab_size) against knob vocab."""
    from kd.models import resolve_knobs

    members = list(cfg.teacher.members)
    for i, name in enumerate(cfg.export.hidden):
        if name not in members:
            raise ConfigError(f"export.hidden.{i}: {name!r} is not a teacher member "
                              f"(members: {', '.join(members)})")
        if (arch := cfg.teacher.member(name).arch) != "transformer":
            raise ConfigError(f"export.hidden.{i}: member {name!r} is a {arch!r}, which has "
                              "no pooled hidden vector (a 'transformer' has)")
    vocab = cfg.data.vocab_size or 0
    specs: dict[str, ModelConfig] = {f"teacher.members.{m}": cfg.teacher.member(m)
                                     for m in members}
    for variant in cfg.student.variants:
        key, st = f"student.variants.{variant}", cfg.student.variant(variant)
        specs[key] = st
        _check_student_recipe(cfg, key, st, members)
    for key, spec in specs.items():
        if spec.arch == "transformer":
            have = resolve_knobs("transformer", spec.knobs)["vocab"]
            if have != vocab:
                raise ConfigError(f"{key}.knobs: vocab={have} must equal data.vocab_size "
                                  f"({cfg.data.vocab_size}; 0 when the features are not ids)")


def _check_student_recipe(cfg: Config, key: str, st: StudentConfig, members: list[str]) -> None:
    """One variant's cosine term and layer-skip init against the members and export.hidden."""
    from kd.models import resolve_knobs
    from kd.models.transformer import init_problem

    if st.beta > 0:
        if st.arch != "transformer":
            raise ConfigError(f"{key}.beta: the cosine term needs a 'transformer' student "
                              f"(its pooled hidden vector), got arch {st.arch!r}")
        if st.hidden_from is None and len(cfg.export.hidden) != 1:
            raise ConfigError(f"{key}.beta: {st.beta} needs exactly one member in export.hidden "
                              f"or {key}.hidden_from, got export.hidden {cfg.export.hidden}")
    if st.hidden_from is not None and st.hidden_from not in cfg.export.hidden:
        raise ConfigError(f"{key}.hidden_from: {st.hidden_from!r} is not in export.hidden "
                          f"{cfg.export.hidden}")
    if st.init is not None:
        name = st.init.from_
        if name not in members:
            raise ConfigError(f"{key}.init.from: {name!r} is not a teacher member "
                              f"(members: {', '.join(members)})")
        if st.arch != "transformer":
            raise ConfigError(f"{key}.init: layer-skip init needs a 'transformer' student, "
                              f"got arch {st.arch!r}")
        member = cfg.teacher.member(name)
        why = init_problem(resolve_knobs(st.arch, st.knobs), member.arch,
                           resolve_knobs(member.arch, member.knobs), st.init.layers)
        if why:
            raise ConfigError(f"{key}.init: cannot copy member {name!r}: {why}")


# ------------------------------------------------------------------------------ loading


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader (no tags that build objects) that also rejects duplicate keys."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                line = key_node.start_mark.line + 1
                raise ConfigError(f"{key}: duplicate key (line {line})")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _show(value: Any) -> str:
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return str(int(value))  # "must be > 0", not "must be > 0.0"
    return repr(value) if isinstance(value, str) else str(value)


def _unknown_key_hint(loc: tuple, model: type[BaseModel] | None) -> str:
    if model is None:
        return ""
    fields: Any = model
    for part in loc[:-1]:
        ann = fields.model_fields.get(part) if hasattr(fields, "model_fields") else None
        fields = ann.annotation if ann else None
        if not (isinstance(fields, type) and issubclass(fields, BaseModel)):
            return ""
    close = difflib.get_close_matches(str(loc[-1]), list(fields.model_fields), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


_UNION_TAG = re.compile(r"str|int|float|bool|(list|dict|union|function-\w+)\[.*\]")

_MESSAGES = {
    "greater_than": "must be > {gt}",
    "greater_than_equal": "must be >= {ge}",
    "less_than": "must be < {lt}",
    "less_than_equal": "must be <= {le}",
    "int_type": "must be an integer",
    "int_from_float": "must be an integer",
    "float_type": "must be a number",
    "bool_type": "must be true or false",
    "string_type": "must be a string",
    "dict_type": "must be a mapping",
    "list_type": "must be a list",
    "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
    "missing": "required",
    "finite_number": "must be a finite number",
}


def _format(err: ValidationError, prefix: str = "", model: type[BaseModel] | None = None) -> str:
    """One line for the first error: `key.path: what is wrong, got <value>`."""
    e = err.errors(include_url=False)[0]
    # a union (`str | list[str]`) adds the member type to the path: name the key only
    loc = tuple(p for p in e["loc"] if not _UNION_TAG.fullmatch(str(p)))
    key = ".".join(str(p) for p in ((prefix,) if prefix else ()) + loc)
    kind = e["type"]
    ctx = {k: _show(v) if isinstance(v, float) else v for k, v in (e.get("ctx") or {}).items()}
    if kind == "extra_forbidden":
        return f"{key}: unknown key{_unknown_key_hint(loc, model)}"
    if kind == "value_error":
        msg = str(ctx.get("error", e["msg"]))
        field, sep, rest = msg.partition(": ")
        if sep and field.isidentifier():  # a model validator names the field it blames
            return f"{key + '.' if key else ''}{field}: {rest}"
        return f"{key}: {msg}"
    if kind == "literal_error":
        what = f"must be one of {ctx.get('expected')}"
    else:
        what = _MESSAGES.get(kind, e["msg"][:1].lower() + e["msg"][1:]).format(**ctx)
    if kind == "missing":
        return f"{key}: {what}"
    return f"{key}: {what}, got {_show(e['input'])}"


def parse_config(raw: Any) -> Config:
    """Validate an already-parsed params mapping."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"params: must be a mapping of sections, got {type(raw).__name__}")
    student = raw.get("student")
    if isinstance(student, dict) and (flat := sorted(set(student) & set(StudentConfig.model_fields)
                                                     - {"defaults", "variants"})):
        # the section before student variants: say where the key moved, not "unknown key"
        raise ConfigError(f"student.{flat[0]}: the student section holds `defaults` and "
                          f"`variants` (README \"Student variants\"): move it to "
                          f"student.defaults.{flat[0]}")
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format(e, model=Config)) from None


def load_config(path: str | Path = "params.yaml") -> Config:
    """Read and validate params.yaml; every problem is a one-line `ConfigError`."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: params file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: cannot read params file (it is a directory)") from None
    except PermissionError:
        raise ConfigError(f"{path}: cannot read params file (permission denied)") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: cannot read params file (not UTF-8 text)") from None
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or "invalid YAML"
        tag = re.search(r"tag:yaml\.org,2002:(python/\S+?)'?$", problem)
        if tag:  # the safe loader never builds Python objects: say so rather than "invalid"
            problem = f"tag '!!{tag[1]}' is not allowed, params are plain data"
        raise ConfigError(f"{path}: invalid YAML{where}: {problem}") from None
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(f"{path}: must be a mapping of sections, got {type(raw).__name__}")
    return parse_config(raw)
