"""The report's figures: PNG plots for people, confusion JSON for `dvc plots`.

    write_figures(out_dir, st, meta, evals, probs, y, points, dirs, shards)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from kd.config import StudentConfig
from kd.distill.losses import soft_targets
from kd.evaluate.metrics import entropy, reliability
from kd.io.atomic import write_json
from kd.report import plots
from kd.report.explain import tree_pictures
from kd.targets.reader import ShardReader


def soft_target_entropy(shards: Path, T: float, combine: str) -> dict[str, np.ndarray]:
    """Entropy of the ensemble's soft targets over every exported row, at T=1 and at T."""
    out: dict[str, list] = {"T=1": [], f"T={T:g}": []}
    for b in ShardReader(shards, columns=["logits"]).iter_batches(65_536, shuffle=False):
        logits = torch.from_numpy(b["logits"])  # (M, B, C)
        out["T=1"].append(entropy(soft_targets(logits, 1.0, combine).numpy()))
        out[f"T={T:g}"].append(entropy(soft_targets(logits, T, combine).numpy()))
    return {k: np.concatenate(v) for k, v in out.items()}


def write_figures(out: Path, st: StudentConfig, meta: dict, evals: dict, probs: dict, y: np.ndarray,
                  points: dict[str, tuple[int, float]], dirs: dict, shards: Path) -> None:
    """The PNGs of data/report/plots and the confusion JSON; `points` holds each model's
    (parameters, test accuracy), for the models of known size."""
    # an imported member was trained elsewhere: no curves; a model of unknown size: no point
    histories = {name: json.loads((d / "history.json").read_text()) for name, d in dirs.items()
                 if (d / "history.json").is_file()}
    plots.training_curves(histories, out / "plots" / "training_curves.png")
    plots.accuracy_vs_params(points, out / "plots" / "accuracy_vs_params.png")
    plots.reliability_diagram({n: reliability(probs[n], y) for n in ("teacher", "student",
                                                                      "baseline")},
                              out / "plots" / "reliability.png")
    plots.entropy_histogram(soft_target_entropy(shards, st.temperature, st.combine),
                            float(np.log(meta["n_classes"])), out / "plots" / "entropy.png")
    for name in ("teacher", "student", "baseline"):
        plots.confusion_matrix(np.array(evals[name]["confusion"]), meta["class_names"],
                               f"{name} (test)", out / "plots" / f"confusion_{name}.png")
        pred = probs[name].argmax(1)
        names = meta["class_names"]
        write_json(out / "confusion" / f"{name}.json",
                   [{"actual": names[a], "predicted": names[p]} for a, p in zip(y, pred,
                                                                                   strict=True)])


def tree_figures(out: Path, models: dict, specs: dict, test, meta: dict) -> dict | None:
    """When the student is a soft decision tree: it and the baseline (the same tree on labels)
    drawn, with the first test row's path through each; None otherwise."""
    if specs["student"]["arch"] != "soft_tree" or len(test.y) == 0:
        return None
    row_id, figures = int(test.row_id[0]), []
    for name in ("student", "baseline"):
        if specs[name]["arch"] != "soft_tree":
            continue
        tree_pictures(models[name], test.x[0], row_id, int(test.y[0]), meta["class_names"],
                      out, name=f"{name}_")
        figures += [(f"{name}_tree.png", f"The {name} tree (test row {row_id}'s path in red)"),
                    (f"{name}_path_{row_id}.png", f"Test row {row_id} through the {name} tree")]
    knobs = specs["student"]["knobs"]
    return {"depth": knobs["depth"], "inference": knobs["inference"], "row_id": row_id,
            "figures": figures}
