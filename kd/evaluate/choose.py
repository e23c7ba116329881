"""Which student variant to ship: the smallest that keeps enough of the ensemble's accuracy,
judged on the validation rows alone.

    choice = choose_variant(cfg, Path("data/student"), Path("data/soft_targets"))
    choice["variant"], choice["meets_target"], choice["reason"]

Deploy (which ships the chosen variant) and the report (which names it) call this one function
on the same inputs, so they cannot disagree. Test rows are never read: a variant chosen because
it happened to do well on test would be a number the next data set does not repeat.

Controls (`control: true`, or another recipe than soft targets on all rows: kd/config.py) are
never candidates: they exist to explain what KD's parts do, and a pseudo-label or labeled-only
student that happens to score well on validation is not the recipe the pipeline stands for.

The rule: among the variants that are not controls, those whose validation accuracy is at least
`report.retain_target` times the ensemble's, the one with the fewest parameters (ties: the
higher validation accuracy, then the name); when none reaches it, the most accurate on
validation, and the reason says so. With no validation rows (`data.val_fraction: 0`) nothing
can be judged: the first variant listed that is not a control. When every variant is a
control there is nothing to ship: one line, exit status 2.
"""

from __future__ import annotations

from pathlib import Path

import torch

from kd.config import Config
from kd.distill.losses import soft_targets
from kd.errors import ArtifactError, ConfigError
from kd.io.atomic import read_json
from kd.targets.reader import ShardReader


def ensemble_val_accuracy(shards: Path | str, combine: str) -> tuple[float | None, int]:
    """The ensemble's accuracy on the shards' validation rows (the members' stored logits,
    combined as the students combine them), and the number of those rows."""
    v = ShardReader(shards, columns=["label", "logits"]).validation_rows()
    if v is None:
        return None, 0
    t_logits = torch.from_numpy(v["logits"])  # (M, N, C)
    top = soft_targets(t_logits, 1.0, combine).argmax(1).numpy()  # (N,)
    return float((top == v["label"]).mean()), len(v["label"])


def pick(val_acc: dict[str, float | None], params: dict[str, int], reference: float | None,
         target: float) -> dict:
    """The rule above on plain numbers: variant -> validation accuracy and parameter count."""
    names = list(val_acc)
    if reference is None or any(v is None for v in val_acc.values()):
        return {"variant": names[0], "meets_target": None, "threshold": None,
                "reason": "no validation rows: the first variant listed (nothing was judged)"}
    threshold = target * reference
    meeting = [n for n in names if val_acc[n] >= threshold]
    if meeting:
        best = min(meeting, key=lambda n: (params[n], -val_acc[n], n))
        return {"variant": best, "meets_target": True, "threshold": threshold,
                "reason": f"the fewest parameters ({params[best]:,}) among the "
                          f"{len(meeting)} of {len(names)} variants whose validation accuracy "
                          f"keeps >= {target:g} of the ensemble's ({threshold:.4f})"}
    best = max(names, key=lambda n: (val_acc[n], -params[n], n))
    return {"variant": best, "meets_target": False, "threshold": threshold,
            "reason": f"no variant keeps {target:g} of the ensemble's validation accuracy "
                      f"({threshold:.4f}): the most accurate on validation"}


def choose_variant(cfg: Config, student_root: Path, shards: Path | str) -> dict:
    """The chosen variant of `cfg.student.variants`, controls left out, from each candidate
    student's metrics.json (its final validation accuracy and parameter count) and the shards'
    validation rows. `controls` lists the variants left out."""
    candidates = [v for v in cfg.student.variants if not cfg.student.variant(v).is_control]
    if not candidates:
        raise ConfigError("student.variants: every variant is a control (control: true, or "
                          "targets/rows other than soft/all), and controls are never shipped: "
                          "add a variant with the full recipe")
    val_acc, params = {}, {}
    for name in candidates:
        path = student_root / name / "metrics.json"
        if not path.is_file():
            raise ArtifactError(f"{path}: missing; run `kd student {name}` (or dvc repro)")
        m = read_json(path, ArtifactError)
        if not isinstance(m, dict) or not isinstance(m.get("params"), int):
            raise ArtifactError(f"{path}: not a student's metrics.json (no parameter count)")
        val_acc[name], params[name] = m.get("val_accuracy"), m["params"]
    reference, rows = ensemble_val_accuracy(shards, cfg.student.shared().combine)
    choice = pick(val_acc, params, reference, cfg.report.retain_target)
    controls = [v for v in cfg.student.variants if v not in candidates]
    if controls:  # what the report and deploy say: why a better-scoring control lost
        choice["reason"] += f" ({', '.join(controls)}: controls, which are never shipped)"
    return choice | {"ensemble_val_accuracy": reference, "validation_rows": rows,
                     "retain_target": cfg.report.retain_target,
                     "val_accuracy": val_acc, "params": params,
                     "controls": controls}
