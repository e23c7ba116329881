"""Native members: trained here by `kd teacher`, a model directory under data/teachers/<member>/.

    models = load_members(cfg, meta, Path("data/teachers"))
    logits = member_logits(models, x, shape)       # {member: (B, C)}
    logits, hidden = member_outputs(models, x, shape, hidden=["t0"])   # + {member: (B, D)}
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from kd.config import Config
from kd.errors import ArtifactError
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


@torch.no_grad()
def member_outputs(models: dict[str, torch.nn.Module], x: np.ndarray, shape: tuple[int, ...],
                   device: torch.device | None = None, hidden: list[str] = ()
                   ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Every member's logits (B, C), and the pooled hidden vectors (B, D) of the members
    `hidden` names (export.hidden), from the same forward pass as their logits."""
    if not hidden:
        return member_logits(models, x, shape, device), {}
    xt = torch.from_numpy(x).view(len(x), *shape).to(device or "cpu")  # (B, *shape)
    logits, vectors = {}, {}
    for name, m in models.items():
        if name in hidden:  # a transformer (config checks export.hidden's architectures)
            z, h = m.forward_with_hidden(xt)  # (B, C), (B, D)
            vectors[name] = h.cpu().numpy()
        else:
            z = m(xt)  # (B, C)
        logits[name] = z.cpu().numpy()
    return logits, vectors


def hidden_widths(models: dict[str, torch.nn.Module], hidden: list[str]) -> dict[str, int]:
    """member -> width of its pooled hidden vector, for the shard schema."""
    for name in hidden:
        if not hasattr(models[name], "forward_with_hidden"):  # a member saved before a change
            raise ArtifactError(f"data/teachers/{name}/model.json: member {name!r} has no pooled "
                                "hidden vector (export.hidden); rerun `kd teacher`")
    return {name: int(models[name].width) for name in hidden}
