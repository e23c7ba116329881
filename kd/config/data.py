"""The `data` section: where the rows come from and how they are split and scaled.

    DataConfig(source="digits", val_fraction=0.1)
"""

from __future__ import annotations

import posixpath
from pathlib import PurePosixPath
from typing import Annotated, Literal

from pydantic import Field, model_validator

from kd.config.sections import Fraction, PositiveInt, Section

MNIST1D_SEED = 42  # the seed of MNIST-1D's standard 4,000/1,000 split

class DataConfig(Section):
    source: Literal["mnist1d", "digits", "chars", "parquet"] = Field(
        "mnist1d",
        description="where the rows come from: mnist1d, digits, chars (the standard library's "
                    "source) or parquet (your own files)")
    unlabeled_size: Annotated[int, Field(ge=0)] = Field(
        40_000, description="mnist1d: rows in the unlabeled transfer set")
    unlabeled_seed: Annotated[int, Field(ge=0)] = Field(
        1,
        description="mnist1d: generator seed of the transfer set (must differ from 42, the labeled"
                    " split's)")
    context: Annotated[int, Field(ge=1, le=4096)] = Field(
        32, description="chars: characters before the one to predict (the features)")
    labeled_rows: Annotated[int, Field(ge=1)] = Field(
        20_000, description="chars: labeled windows drawn from the training files")
    unlabeled_rows: Annotated[int, Field(ge=0)] = Field(
        100_000, description="chars: unlabeled windows drawn from the training files")
    test_rows: Annotated[int, Field(ge=1)] = Field(
        10_000, description="chars: test windows drawn from the held-out files")
    test_fraction: Annotated[float, Field(gt=0, lt=1)] = Field(
        0.2,
        description="digits: share of the 1,797 images in the test split; chars: share of the "
                    "files held out as the test split")
    unlabeled_fraction: Fraction = Field(
        0.4,
        description="digits: share used as unlabeled transfer data (labels dropped); the labeled "
                    "split is what is left")
    split_seed: Annotated[int, Field(ge=0)] = Field(
        0,
        description="seed of the validation split (and of the digits splits, and of the chars row "
                    "sampling)")
    val_fraction: Annotated[float, Field(ge=0, le=0.5)] = Field(
        0.1, description="share of the labeled rows held out for validation (`is_val`)")
    normalize: Literal["global", "per_feature", "none"] = Field(
        "global",
        description="global (one mean/std), per_feature or none; statistics of the labeled "
                    "training rows (validation rows excluded)")
    allow_test_overlap: bool = Field(
        False,
        description="true: a test row whose features also occur among the labeled or unlabeled "
                    "rows does not stop prepare (the report then says so)")
    inputs: str = Field(
        "data/inputs",
        description="the folder (or file) holding your own data files: prepare depends on it, and "
                    "every parquet path must lie inside it")
    labeled: str | None = Field(None, description="parquet: the labeled rows' file (required)")
    unlabeled: str | None = Field(
        None, description="parquet: the unlabeled rows' file (optional; labels in it are ignored)")
    test: str | None = Field(None, description="parquet: the test rows' file (required)")
    features: str | list[str] | None = Field(
        None,
        description="parquet (required): one list column, a list of scalar columns, patterns "
                    "(px_*), or '*' (every column but the label and the id)")
    label: str | None = Field(
        None, description="parquet (required): the label column (integer or string labels)")
    id: str | None = Field(
        None,
        description="parquet: an integer id column, unique across the three files; null: rows "
                    "numbered labeled, test, then unlabeled")
    shape: list[PositiveInt] | None = Field(
        None, description="parquet: reshape the flat features (e.g. [8, 8]); null: flat")
    classes: Annotated[list[str], Field(min_length=2)] | None = Field(
        None, description="parquet: the class order; null: sorted (numbers by value)")
    vocab_size: Annotated[int, Field(ge=2, le=2**24)] | None = Field(
        None,
        description="token ids: every feature is an integer id in [0, vocab_size) (with normalize:"
                    " none); a transformer's knob vocab must equal it; chars (required): also the "
                    "number of classes, the vocab_size - 1 most frequent characters plus other")

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
                        "classes") + (() if self.source == "chars" else ("vocab_size",))
        if self.source in ("parquet", "chars") and self.vocab_size is not None \
                and self.normalize != "none":
            raise ValueError(f"normalize: must be 'none' with data.vocab_size (token ids "
                             f"are not scaled), got '{self.normalize}'")
        if self.source == "chars" and self.vocab_size is None:
            raise ValueError("vocab_size: required when data.source is 'chars' (the classes: "
                             "the vocab_size - 1 most frequent characters plus 'other')")
        if self.source == "parquet":
            for key in ("labeled", "test", "features", "label"):
                if getattr(self, key) in (None, "", []):
                    raise ValueError(f"{key}: required when data.source is 'parquet'")
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
