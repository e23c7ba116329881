"""The params sections: each one's keys, types, bounds, defaults and its own checks.

    TrainConfig(epochs=20)          # pydantic models, strict and frozen
    cfg.teacher.member("cnn_0")     # a member's settings: the shared defaults, its own on top

Each section owns its defaults; a key left out of params.yaml takes the default written here.
Checks that span sections live with the whole file (kd/config/params.py), and checks that need
a model family with the models (kd/model_checks.py).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from kd.errors import ConfigError

PositiveInt = Annotated[int, Field(gt=0)]
Fraction = Annotated[float, Field(ge=0, lt=1)]
Knob = int | float | bool | str


class Section(BaseModel):
    # strict: YAML already gives typed values, so "10" for an int or 3.5 for an epoch count is
    # a mistake to report, not something to coerce.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


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


def deep_merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def merge_spec(defaults: dict, own: dict) -> dict:
    """A member's or variant's settings: the shared defaults with its own on top."""
    base = dict(defaults)
    if "arch" in own and own["arch"] != base.get("arch", ModelConfig().arch):
        base.pop("knobs", None)  # another architecture's knobs mean nothing to this one
    return deep_merge(base, own)


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
        return check_names("member", members, empty_ok=True)  # imports may be the ensemble

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
        return ModelConfig.model_validate(merge_spec(self.defaults, self.members[name] or {}))


# ------------------------------------------------------------------ export, student, tracking


VIEW_KEYS = ("views", "augment", "mixup", "partners", "seed")  # export's stored-view keys


class ExportConfig(Section):
    rows_per_shard: PositiveInt = 20_000
    row_group_size: PositiveInt = 4_096
    batch_size: PositiveInt = 1_024
    compression: Literal["zstd", "snappy", "gzip", "lz4", "none"] = "zstd"
    logits_dtype: Literal["float32", "float16"] = "float32"
    # members whose pooled hidden vector is stored too (`hidden.<member>` columns), for a
    # student's cosine term (student.beta); each must be a model with forward_features
    hidden: list[str] = []
    # stored views (kd/augment.py): K augmented views of every training row besides the row
    # itself, each with the ensemble's logits on exactly that input, kept as parameters
    views: Annotated[int, Field(ge=0, le=64)] = 0
    augment: AugmentConfig = AugmentConfig()  # the views' shift and noise (as train.augment)
    mixup: Annotated[float, Field(ge=0, le=100)] = 0.0  # lam ~ Beta(a, a); 0: no mixup
    partners: Literal["all", "labeled"] = "all"  # mixup partners: training rows of which splits
    seed: Annotated[int, Field(ge=0)] = 0  # keys every view's draw, with its row id and view
    top_k: Annotated[int, Field(ge=1)] | None = Field(
        None, description="Store per member only the k largest logits, their class ids and the "
        "tail's log-sum-exp (kd/targets/topk.py); null: every class's logit (dense)")

    def recorded(self) -> dict:
        """The settings a manifest records: without the view keys when there are no views and
        without top_k when it is off, so such a set is byte for byte what it was before views
        and top-k existed."""
        skip = (set() if self.views else set(VIEW_KEYS)) | (set() if self.top_k else {"top_k"})
        return self.model_dump(exclude=skip or None)

    @model_validator(mode="after")
    def _check_views(self) -> ExportConfig:
        augments = bool(self.augment.shift or self.augment.noise or self.mixup)
        if self.views and not augments:
            raise ValueError(f"views: {self.views} views need export.augment (shift, noise) or "
                             "export.mixup; without them every view is the row itself")
        # views 0 with view settings is allowed: `-S export.views=0` turns views off (the
        # settings are then neither used nor recorded)
        return self

    @model_validator(mode="after")
    def _check_groups(self) -> ExportConfig:
        if self.row_group_size > self.rows_per_shard:
            raise ValueError(
                f"row_group_size: must be <= rows_per_shard ({self.rows_per_shard}), "
                f"got {self.row_group_size}"
            )
        return self


def check_top_k(k: int, n_classes: int, key: str = "export.top_k") -> int:
    """k, or ConfigError (one line naming `key`) when top-k cannot pay off for `n_classes`."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"{key}: must be an integer >= 1, got {k!r}")
    if n_classes < 3:
        raise ConfigError(f"{key}: the data has {n_classes} classes; top-k needs at least 3 "
                          f"(dense logits are exact and smaller): remove {key}")
    if k >= n_classes:
        raise ConfigError(f"{key}: k={k} must be below the number of classes ({n_classes}): "
                          f"dense logits are exact and smaller; remove {key}")
    return k


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
    # how the members' logits become the targets (kd/distill/losses.py): mean_probs (the
    # paper's), mean_logits, kl_per_member (the mean of per-member soft losses), random_member
    # (one member's targets per row per epoch, drawn by (train.seed, epoch, row id))
    combine: Literal["mean_probs", "mean_logits", "kl_per_member", "random_member"] = \
        "mean_probs"
    # soft: the ensemble's distribution at T (Hinton); hard: its argmax as the label of every
    # row, at T = 1 (the pseudo-label control: what is left of KD without the dark knowledge)
    targets: Literal["soft", "hard"] = "soft"
    # all: every exported training row; labeled: the labeled training rows only (the control
    # without a transfer set: what is left of KD without the extra inputs)
    rows: Literal["all", "labeled"] = "all"
    # classes (names, or indices into the shards' class names) whose transfer rows the student
    # never trains on: by label where known, by the ensemble's argmax otherwise (Hinton et al.'s
    # omitted 3); the report scores it with and without a bias for them chosen on validation rows
    omit: list[int | str] = []
    # a seeded share of the labeled training rows (each kept by its id and train.seed);
    # unlabeled and synthetic rows are kept: `rows: labeled` with it is the paper's
    # soft-targets-as-regulariser experiment on a few labels
    fraction: Annotated[float, Field(gt=0, le=1)] = 1.0
    # true: the variant exists to explain (an ablation, omitted classes, ...) and is never
    # shipped (kd/evaluate/choose.py skips it). A variant whose targets or rows differ from
    # soft/all, that omits classes or trains on a fraction is a control whatever this says;
    # `false` beside them is refused
    control: bool = False
    # the shards' stored views (export.views): sample: one view in 0..K per row per epoch,
    # seeded by train.seed; all: every view every epoch; none: the rows as stored alone (the
    # control: what the views bought). A set without views trains on its rows whatever this says
    views: Literal["sample", "all", "none"] = "sample"
    # the label term of a labeled row's views: row: on the stored row (view 0) alone; unmixed:
    # also on its views without a mixup partner (a shifted row keeps its class, as the
    # teachers' augmentation assumes); a mixed view never has one label
    view_labels: Literal["row", "unmixed"] = "row"
    shuffle_buffer: PositiveInt = 50_000
    init: InitConfig | None = None  # None: random initialisation from train.seed
    # + beta * (1 - cos(h_student, h_teacher)) on the pooled hidden vectors (export.hidden);
    # 0 reads no hidden columns
    beta: Annotated[float, Field(ge=0, le=100)] = 0.0
    hidden_from: str | None = None  # the member to align with; None: export.hidden's only one

    @property
    def is_control(self) -> bool:
        """A control explains and is never shipped: `control: true`, or another recipe than
        the full one (soft targets on all rows, every class, every labeled row, the stored
        views where there are any)."""
        return self.control or self.recipe_change() is not None

    def recipe_change(self) -> str | None:
        """What makes the recipe other than the full one, in words; None when it is the full."""
        if self.targets != "soft":
            return f"targets '{self.targets}'"
        if self.rows != "all":
            return f"rows '{self.rows}'"
        if self.omit:
            return f"omit {list(self.omit)}"
        if self.fraction < 1:
            return f"fraction {self.fraction}"
        if self.views == "none":
            return "views 'none'"
        return None

    @model_validator(mode="after")
    def _control_is_consistent(self) -> StudentConfig:
        if "control" in self.model_fields_set and not self.control and self.is_control:
            raise ValueError(f"control: false, but {self.recipe_change()} makes the variant a "
                             "control (it explains KD, it is never shipped); remove `control`")
        if bad := [c for c in self.omit if c == "" or (isinstance(c, int) and c < 0)]:
            raise ValueError(f"omit: a class is a name or an index >= 0, got {bad[0]!r}")
        if len(set(map(str, self.omit))) < len(self.omit):
            raise ValueError(f"omit: each class once, got {list(self.omit)}")
        return self

    @model_validator(mode="after")
    def _no_augmentation(self) -> StudentConfig:
        # The soft targets were computed on the rows as stored; a shifted input would be paired
        # with the logits of the unshifted one: the classic cached-logit KD bug.
        a = self.train.augment
        if a.shift or a.noise:
            raise ValueError(
                "train: augment must stay off for the student: the exported soft targets belong "
                f"to the unaugmented rows (export.views stores augmented views with their own "
                f"targets), got shift={a.shift}, noise={a.noise}"
            )
        return self


_NAME = re.compile(r"[A-Za-z0-9_-]+")


def check_names(what: str, names: dict, empty_ok: bool = False) -> dict:
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
        return check_names("variant", variants)

    def shared(self) -> StudentConfig:
        """The defaults alone, resolved: the ensemble's combine rule the report and the
        variant choice measure the ensemble by (one reference for every variant)."""
        return StudentConfig.model_validate(self.defaults)

    def variant(self, name: str) -> StudentConfig:
        """The variant's full settings: the shared defaults with its own overrides on top."""
        if name not in self.variants:
            raise ConfigError(f"student.variants: no variant named {name!r} "
                              f"(variants: {', '.join(self.variants)})")
        return StudentConfig.model_validate(merge_spec(self.defaults, self.variants[name] or {}))


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
