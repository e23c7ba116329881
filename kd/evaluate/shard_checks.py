"""The export stage's warnings about the ensemble, judged on the validation rows of the shards
it has just written: the first place where every member's logits sit side by side.

    for w in shard_warnings("data/soft_targets", "mean_probs", imported=[], n_classes=10):
        print(f"warning: {w}")
"""

from __future__ import annotations

from pathlib import Path

import torch

from kd.evaluate.metrics import ensemble_probs
from kd.evaluate.sanity import chance_level, ensemble_warnings, model_warnings
from kd.targets.reader import ShardReader


def shard_warnings(shards: str | Path, combine: str, imported: list[str],
                   n_classes: int) -> list[str]:
    """The ensemble judged on the shards' validation rows (export is the first stage that has
    every member's logits side by side): near chance, or no better than its best member; and
    the `imported` members near chance (the teacher stage judged the others)."""
    reader = ShardReader(shards)
    v, members = reader.validation_rows(), reader.members  # logits in the manifest's order
    if v is None:
        return []
    y, logits = v["label"], torch.from_numpy(v["logits"])  # (N,), (M, N, C)
    acc = {m: float((logits[i].argmax(1).numpy() == y).mean()) for i, m in enumerate(members)}
    ensemble = float((ensemble_probs(list(logits), combine).argmax(1) == y).mean())
    chance = chance_level(y, n_classes)
    return (model_warnings({m: a for m, a in acc.items() if m in imported}, chance,
                           "imported teacher member")
            + ensemble_warnings(ensemble, acc, chance))
