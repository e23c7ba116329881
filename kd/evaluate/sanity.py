"""Does a validation accuracy mean anything? Judgements the stages print as `warning:` lines as
soon as they know the figures, and the report repeats beside its headline.

    chance = chance_level(y_val, n_classes)          # the majority-class rate on these rows
    warnings = model_warnings({"teacher@mlp_0": 0.27}, chance, "teacher member")
    warnings += ensemble_warnings(0.51, {"mlp_0": 0.55, "mlp_1": 0.49}, chance)

Pure functions of figures already measured: the stages read the rows, these only judge.

"Chance" is what always answering the commonest validation class scores on the validation rows
(at least 1/C; more on unbalanced data, where 1/C would flatter a model). An accuracy measured on
n rows has a binomial standard error of sqrt(p (1 - p) / n) at the chance rate p, so a model
that is no better than chance lands above p + 2 standard errors only about 2% of the time:
anything at or below that line is "barely above chance" (below p: "below chance"), because the
rows cannot tell it from a model that learned nothing. On 64 validation rows of a 63/37 table the
line is at 75%; on 400 rows of ten balanced classes, at 13%.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SIGMAS = 2.0  # how many binomial standard errors above chance a model must be to count
EXAMPLES = ("start from the settings of examples/tabular.yaml for a table (examples/digits.yaml "
            "for images)")


@dataclass(frozen=True)
class Chance:
    """The chance rate of a set of validation rows, and how far above it noise reaches."""

    rate: float  # the majority class's share of the rows
    rows: int
    majority: int  # the commonest class's index

    @property
    def line(self) -> float:
        """The accuracy at or below which a model is indistinguishable from chance here."""
        return self.rate + SIGMAS * math.sqrt(self.rate * (1 - self.rate) / self.rows)


def chance_level(y: np.ndarray, n_classes: int) -> Chance | None:
    """The chance rate of labels `y` (N,); None when there are no rows to judge on."""
    y = np.asarray(y, np.int64)
    if len(y) == 0:
        return None
    counts = np.bincount(y, minlength=n_classes)
    return Chance(rate=float(counts.max() / len(y)), rows=len(y), majority=int(counts.argmax()))


def validation_chance(prepared: Path, n_classes: int) -> Chance | None:
    """The chance level of the prepared data's validation rows (None when there are none)."""
    from kd.prepared import read_split

    labeled, is_val = read_split(prepared, "labeled")
    return chance_level(labeled.y[is_val], n_classes)


def _pct(v: float) -> str:
    return f"{100 * v:.1f}%"


def model_warnings(accuracy: dict[str, float | None], chance: Chance | None,
                   what: str) -> list[str]:
    """One warning for each model whose validation accuracy is below chance or within noise
    of it; `what` says what the models are ("teacher member", "baseline", ...)."""
    if chance is None:
        return []
    out = []
    for name, acc in accuracy.items():
        if acc is None or acc > chance.line:
            continue
        where = "below chance" if acc < chance.rate else "barely above chance"
        out.append(f"{what} {name} is {where} on the validation rows: {_pct(acc)} against "
                   f"{_pct(chance.rate)} for always answering the commonest class "
                   f"({chance.rows:,} rows; anything up to {_pct(chance.line)} is within noise "
                   f"of that). It has learned little: check its epochs, learning rate and "
                   f"augmentation, and {EXAMPLES}")
    return out


def ensemble_warnings(ensemble: float | None, members: dict[str, float | None],
                      chance: Chance | None) -> list[str]:
    """The ensemble near chance, or no better than its best member (its soft targets then carry
    nothing one member's would not; not said when that member is already perfect)."""
    out = model_warnings({"(the ensemble)": ensemble}, chance, "the teacher")
    known = {m: a for m, a in members.items() if a is not None}
    if ensemble is None or len(known) < 2:
        return out
    best = max(known, key=known.get)
    if ensemble <= known[best] < 1.0:
        rows = f" ({chance.rows:,} rows)" if chance else ""
        out.append(f"the ensemble's validation accuracy {_pct(ensemble)} is no better than its "
                   f"best member's ({best}, {_pct(known[best])}){rows}: the members are too alike "
                   f"or too weak to gain from averaging, so distilling the ensemble buys nothing "
                   f"over that one member; {EXAMPLES}")
    return out



def pipeline_warnings(val: dict[str, float | None], members: list[str], variants: list[str],
                      chance: Chance | None) -> list[str]:
    """Everything above on the report's validation accuracies (`val` keyed by member,
    "teacher" for the ensemble, "baseline@<variant>"): what the report repeats by its headline."""
    acc = {m: val.get(m) for m in members}
    return (model_warnings(acc, chance, "teacher member")
            + ensemble_warnings(val.get("teacher"), acc, chance)
            + model_warnings({v: val.get(f"baseline@{v}") for v in variants}, chance,
                             "baseline"))

