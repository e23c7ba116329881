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
    source: Literal["mnist1d", "digits", "chars", "parquet"] = "mnist1d"
    # mnist1d: the standard 4,000/1,000 split (seed 42) plus a transfer set from another seed
    unlabeled_size: Annotated[int, Field(ge=0)] = 40_000
    unlabeled_seed: Annotated[int, Field(ge=0)] = 1
    # chars: next character after `context` characters of the Python standard library's source
    # (kd/chars.py); rows drawn from the training files, test rows from held-out files
    context: Annotated[int, Field(ge=1, le=4096)] = 32
    labeled_rows: Annotated[int, Field(ge=1)] = 20_000
    unlabeled_rows: Annotated[int, Field(ge=0)] = 100_000
    test_rows: Annotated[int, Field(ge=1)] = 10_000
    # digits: fractions of the 1,797 images; the labeled split is what is left (chars: the
    # share of files held out as the test split)
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
    # transformer reads them through its embedding table (knob vocab, which must equal this);
    # chars: also the number of classes (the vocab_size - 1 most frequent characters + other)
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
