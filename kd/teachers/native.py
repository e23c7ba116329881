"""Native members: trained here by `kd teacher`, a model directory under data/teachers/<member>/.

    models = load_members(cfg, meta, Path("data/teachers"))
    logits = member_logits(models, x, shape)       # {member: (B, C)}
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from kd.config import Config
from kd.models import check_fits, load_model


def load_members(cfg: Config, meta: dict, root: Path) -> dict[str, torch.nn.Module]:
    """Every member, checked against the prepared data (and so against each other)."""
    models = {}
    for name in cfg.teacher.members:
        model, spec = load_model(root / name)
        check_fits(spec, root / name, meta, f"member '{name}'")
        models[name] = model.eval()
    return models


@torch.no_grad()
def member_logits(models: dict[str, torch.nn.Module], x: np.ndarray, shape: tuple[int, ...],
                  device: torch.device | None = None) -> dict[str, np.ndarray]:
    xt = torch.from_numpy(x).view(len(x), *shape).to(device or "cpu")  # (B, *shape)
    return {name: m(xt).cpu().numpy() for name, m in models.items()}  # each (B, C)
