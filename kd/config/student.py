"""The student section: the variants of the student and each variant's recipe.

    cfg.student.variant("small")    # StudentConfig: the shared defaults, the variant's own on top

Split from sections.py, which keeps the sections every stage shares (model and training,
teacher, export, ...); StudentConfig extends ModelConfig with the distillation keys.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from kd.config.sections import ModelConfig, PositiveInt, Section, check_names, merge_spec
from kd.errors import ConfigError


class InitConfig(Section):
    """Layer-skip initialisation (DistilBERT): the student starts as a copy of a teacher
    member's embeddings, its encoder layers `layers` (in order) and its head."""

    model_config = ConfigDict(populate_by_name=True)
    from_: str = Field(
        alias="from", description="a teacher member of the student's family and width to copy")
    layers: Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)] = Field(
        description="the member's encoder layers the student's blocks start as, in order")


class StudentConfig(ModelConfig):
    """One student variant, resolved: `student.defaults` with the variant's overrides on top."""

    temperature: Annotated[float, Field(gt=0, le=100)] = Field(
        4.0,
        description="T: the softmax temperature of the soft targets and the student's soft term")
    alpha: Annotated[float, Field(ge=0, le=1)] = Field(
        0.9,
        description="weight of the soft term; 1 - alpha weighs the labeled rows' cross-entropy")
    combine: Literal["mean_probs", "mean_logits", "kl_per_member", "random_member"] = Field(
        "mean_probs",
        description="how the members' logits become the targets (kd/distill/losses.py): "
                    "mean_probs (the paper's), mean_logits, kl_per_member (the mean of per-member "
                    "soft losses), random_member (one member's targets per row per epoch, drawn "
                    "by (train.seed, epoch, row id))")
    targets: Literal["soft", "hard"] = Field(
        "soft",
        description="soft: the ensemble's distribution at T (Hinton); hard: its argmax as the "
                    "label of every row, at T = 1 (the pseudo-label control)")
    rows: Literal["all", "labeled"] = Field(
        "all",
        description="all: every exported training row; labeled: the labeled training rows only "
                    "(the control without a transfer set)")
    omit: list[int | str] = Field(
        [],
        description="classes (names, or indices into the class names) whose transfer rows the "
                    "student never trains on (Hinton et al.'s omitted 3); the report scores them "
                    "with and without a bias chosen on validation rows. A control")
    fraction: Annotated[float, Field(gt=0, le=1)] = Field(
        1.0,
        description="a seeded share of the labeled training rows (kept by row id and train.seed); "
                    "unlabeled and synthetic rows are kept. A control below 1")
    control: bool = Field(
        False,
        description="true: the variant exists to explain (an ablation) and is never shipped; other"
                    " targets/rows, omit or fraction make it a control whatever this says, and "
                    "`false` beside them is refused")
    views: Literal["sample", "all", "none"] = Field(
        "sample",
        description="the shards' stored views: sample (one view in 0..K per row per epoch, seeded "
                    "by train.seed), all (every view every epoch), none (the rows as stored alone:"
                    " a control)")
    view_labels: Literal["row", "unmixed", "mixed"] = Field(
        "row",
        description="the label term of a labeled row's views: row (on the stored row alone), "
                    "unmixed (also on its views without a mixup partner) or mixed (as unmixed, "
                    "and a mixup view of two labeled rows gets lam * CE(row's label) + "
                    "(1 - lam) * CE(partner's); with an unlabeled partner the soft term alone)")
    shuffle_buffer: PositiveInt = Field(
        50_000, description="rows mixed in memory while streaming the shards")
    cache_mb: Annotated[int, Field(ge=0, le=1_048_576)] = Field(
        1024,
        description="MiB of decoded shard rows kept in memory for the next epochs (the first "
                    "epoch decodes them, later ones reuse them; beyond it rows are decoded each "
                    "epoch); the batches are the same whatever it is. 0: decode every epoch")
    init: InitConfig | None = Field(
        None,
        description="layer-skip initialisation from a transformer member (DistilBERT); null: "
                    "random initialisation from train.seed")
    beta: Annotated[float, Field(ge=0, le=100)] = Field(
        0.0,
        description="weight of the cosine term beta * (1 - cos(h_student, h_teacher)) on the "
                    "pooled hidden vectors (export.hidden); 0 reads no hidden columns")
    hidden_from: str | None = Field(
        None, description="the member to align with; null: export.hidden's only member")

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


class StudentsConfig(Section):
    """`defaults` hold what the student variants share; each variant overrides any part of it
    (a variant with its own `arch` keeps the shared settings but not the shared knobs), like
    `teacher.members`. Each variant is a `student@<variant>` and a `baseline@<variant>` stage."""

    defaults: dict[str, Any] = Field(
        {},
        description="what the variants share (any student setting); each variant overrides any "
                    "part")
    variants: dict[str, dict[str, Any] | None] = Field(
        {"main": {}},
        description="the student variants, one `student@<variant>` and one `baseline@<variant>` "
                    "stage each: name -> own settings on top of the defaults")

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
