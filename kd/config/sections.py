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
    shift: Annotated[int, Field(ge=0)] = Field(
        0, description="random circular shift of up to +-shift positions per spatial axis")
    noise: Annotated[float, Field(ge=0)] = Field(
        0.0, description="std of Gaussian noise added to the features")


class TrainConfig(Section):
    epochs: PositiveInt = Field(20, description="passes over the training rows")
    batch_size: PositiveInt = Field(128, description="rows per optimizer step")
    optimizer: Literal["adamw", "sgd"] = Field(
        "adamw", description="adamw, or sgd (Nesterov, with `momentum`)")
    lr: Annotated[float, Field(gt=0, le=10)] = Field(
        3e-3, description="learning rate (peak, after warm-up)")
    momentum: Annotated[float, Field(ge=0, lt=1)] = Field(0.9, description="sgd's momentum")
    weight_decay: Annotated[float, Field(ge=0)] = Field(1e-4, description="decoupled weight decay")
    schedule: Literal["cosine", "constant", "onecycle"] = Field(
        "cosine",
        description="learning-rate schedule after `warmup_epochs`: cosine, constant, or onecycle "
                    "(linear decay)")
    warmup_epochs: Annotated[int, Field(ge=0)] = Field(
        0, description="epochs of linear warm-up; must be < epochs")
    augment: AugmentConfig = Field(
        AugmentConfig(),
        description="live augmentation of the training rows (teachers and baselines; students must"
                    " keep it off)")
    seed: Annotated[int, Field(ge=0)] = Field(
        0, description="every random choice of an epoch derives from (seed, epoch)")

    @model_validator(mode="after")
    def _check_warmup(self) -> TrainConfig:
        if self.warmup_epochs >= self.epochs:
            raise ValueError(
                f"warmup_epochs: must be < epochs ({self.epochs}), got {self.warmup_epochs}"
            )
        return self


class ModelConfig(Section):
    arch: str = Field(
        "cnn1d",
        description="a registered architecture (cnn1d, cnn2d, mlp, soft_tree, transformer) or your"
                    " own `package.module:ClassName`")
    knobs: dict[str, Knob] = Field(
        {},
        description="the architecture's constructor keywords (table of knobs below); an own `arch`"
                    " drops the shared knobs")
    train: TrainConfig = Field(TrainConfig(), description="training settings")


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

    kind: Literal["mlflow", "onnx", "torch_export"] = Field(
        description="how the model is stored and run")
    source: Annotated[str, Field(min_length=1)] = Field(
        description="mlflow: models:/<name>/<version>, models:/<name>@<alias> or "
                    "runs:/<run>/<path>; onnx, torch_export: a local .onnx / .pt2 file")
    outputs: Literal["probs", "logits"] | None = Field(
        None,
        description="what the model returns: class probabilities (their log is taken as logits) "
                    "or logits; null: probs for mlflow (a classifier logged with "
                    "pyfunc_predict_fn='predict_proba'), logits for onnx and torch_export")
    inputs: Literal["raw", "prepared"] = Field(
        "raw",
        description="raw: the features as your files hold them (the prepared normalisation is "
                    "undone); prepared: the normalised features the native members see")
    classes: Annotated[list[str], Field(min_length=2)] | None = Field(
        None,
        description="the classes of the model's outputs, in its order, when the model carries no "
                    "names")

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

    defaults: dict[str, Any] = Field(
        {},
        description="what the members share (arch, knobs, train); each member overrides any part")
    members: dict[str, dict[str, Any]] = Field(
        {"cnn_0": {}},
        description="the members trained here, one `teacher@<member>` stage each: name -> own "
                    "settings on top of the defaults")
    imports: dict[str, ImportedMember] = Field(
        {},
        description="members trained elsewhere, one `import@<name>` stage each (MLflow model, ONNX"
                    " or torch.export file)")

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
    rows_per_shard: PositiveInt = Field(20_000, description="rows per Parquet shard")
    row_group_size: PositiveInt = Field(
        4_096, description="rows per Parquet row group; must be <= rows_per_shard")
    batch_size: PositiveInt = Field(1_024, description="rows per forward pass of the ensemble")
    compression: Literal["zstd", "snappy", "gzip", "lz4", "none"] = Field(
        "zstd", description="Parquet compression of the shards")
    logits_dtype: Literal["float32", "float16"] = Field(
        "float32", description="how the logits are stored (float16 halves them)")
    hidden: list[str] = Field(
        [],
        description="members whose pooled hidden vector is stored too (`hidden.<member>` columns),"
                    " for a student's cosine term (student beta); each must be a model with "
                    "forward_features")
    views: Annotated[int, Field(ge=0, le=64)] = Field(
        0,
        description="stored views: K augmented views of every training row besides the row itself,"
                    " each with the ensemble's logits on exactly that input (0: none)")
    augment: AugmentConfig = Field(
        AugmentConfig(), description="the views' shift and noise (as train.augment)")
    mixup: Annotated[float, Field(ge=0, le=100)] = Field(
        0.0, description="a of the views' mixup weight lam ~ Beta(a, a); 0: no mixup")
    partners: Literal["all", "labeled"] = Field(
        "all", description="mixup partners: every training row, or the labeled ones alone")
    seed: Annotated[int, Field(ge=0)] = Field(
        0, description="keys every view's draw, with its row id and view")
    top_k: Annotated[int, Field(ge=1)] | None = Field(
        None, description="store per member only the k largest logits, their class ids and the "
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


_NAME = re.compile(r"[A-Za-z0-9_-]+")


def check_names(what: str, names: dict, empty_ok: bool = False) -> dict:
    if not names and not empty_ok:
        raise ValueError(f"needs at least one {what}, got none")
    for name in names:
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ValueError(f"{what} names use letters, digits, '_' and '-', got {name!r}")
    return names


class ReportConfig(Section):
    retain_target: Annotated[float, Field(gt=0, le=1)] = Field(
        0.99,
        description="the chosen variant: the one with the fewest parameters whose validation "
                    "accuracy keeps this fraction of the ensemble's (validation rows only)")


class TransferConfig(Section):
    """Synthetic transfer rows for the ensemble to label (stages/transfer.py). MUNGE (Bucilua,
    Caruana & Niculescu-Mizil 2006): each training row and its nearest neighbour trade
    attribute values, with probability `p` each, drawn from N(other's value, |a - b| / s)."""

    method: Literal["none", "munge"] = Field(
        "none", description="none, or munge: synthetic transfer rows for the ensemble to label")
    rows: PositiveInt = Field(
        100_000,
        description="synthetic rows to generate (passes over the labeled training rows, the last "
                    "cut short). Not `size`: DVC's run cache leaves keys named size or nfiles out "
                    "of a stage's hash")
    p: Annotated[float, Field(ge=0, le=1)] = Field(
        0.5, description="probability that a row and its nearest neighbour trade an attribute")
    s: Annotated[float, Field(gt=0, le=1e6)] = Field(
        10.0,
        description="local spread: a traded value is drawn from N(the other's value, |a - b| / s)")
    seed: Annotated[int, Field(ge=0)] = Field(
        0, description="the draws (same params and prepared data: the same bytes)")


class BaselineConfig(Section):
    """The baseline is the student's architecture and training settings on labels alone; only
    its augmentation is its own, so it gets every advantage labels alone can give."""

    augment: AugmentConfig = Field(
        AugmentConfig(), description="the baseline's own live augmentation")
    epochs: PositiveInt | None = Field(
        None,
        description="the baseline's epochs (labels alone see far fewer rows an epoch than the "
                    "student); null: the student's")


class TrackingConfig(Section):
    enabled: bool = Field(
        True, description="log every stage to MLflow (KD_TRACKING=0 turns it off for one command)")
    experiment: str = Field("kd-pipeline", description="the MLflow experiment name")
    uri: str | None = Field(
        None,
        description="tracking URI; null: MLFLOW_TRACKING_URI, else sqlite mlflow.db at the "
                    "repository root")
    timeout_s: Annotated[float, Field(gt=0, le=600)] = Field(
        10.0,
        description="seconds the up-front reachability check waits; logging keeps MLflow's own "
                    "retries and timeouts")


class RuntimeConfig(Section):
    """How the training and export stages run: one process, or `nproc` under torchrun."""

    nproc: PositiveInt = Field(
        1,
        description="processes per training/export stage on this machine (torchrun --nproc-per-"
                    "node); above 1 the stage starts torchrun itself")
    backend: Literal["auto", "gloo", "nccl"] = Field(
        "auto", description="torch.distributed backend; auto: nccl with CUDA GPUs, else gloo")
    threads: Annotated[int, Field(ge=0)] = Field(
        1,
        description="torch threads per process (every kd command); 0: the cores / nproc. 1 by "
                    "default: on a shared machine more threads wait on descheduled peers")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto",
        description="where one process trains and exports; auto takes a CUDA GPU when one is "
                    "visible")
    batch: Literal["global", "per_rank"] = Field(
        "global",
        description="global: train.batch_size is the effective batch, split over the ranks; "
                    "per_rank: every rank takes train.batch_size rows a step")


class DeployConfig(Section):
    """The deploy stage: the student as ONNX fp32 and int8 (kd/deploy/)."""

    quantize: Literal["auto", "dynamic", "static"] = Field(
        "auto",
        description="int8 kind: auto (the kind measured best for the student's family), dynamic or"
                    " static")
    max_accuracy_drop: Annotated[float, Field(ge=0, le=1)] = Field(
        0.01,
        description="largest int8 accuracy loss against fp32 on validation rows, judged by its 95%"
                    " lower bound")
    atol: Annotated[float, Field(gt=0)] = Field(
        1e-4,
        description="largest |logit difference| between the fp32 ONNX file and PyTorch on test "
                    "rows")
    per_channel: bool = Field(
        False, description="int8 scales per output channel (measured: no gain here, a larger file)")
    calibration_rows: PositiveInt = Field(
        1000,
        description="labeled training rows that calibrate static int8 (never validation or test "
                    "rows)")
    calibration_seed: Annotated[int, Field(ge=0)] = Field(
        0, description="which calibration rows are drawn")
