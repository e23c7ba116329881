"""How an ensemble member produces logits, whatever made it.

    from kd.teachers.members import load_member, load_members, member_logits
    model = load_member(Path("data/teachers/hgb"), meta)      # (B, *shape) -> (B, C) logits
    models = load_members(cfg, meta, Path("data/teachers"))   # every member, in order
    logits = member_logits(models, x, shape)                  # {member: (B, C)}
    logits, hidden = member_outputs(models, x, shape, hidden=["t0"])   # + {member: (B, D)}

A member is native (trained here: model.safetensors + model.json, kd/models/io.py) or
imported (an MLflow model, an ONNX file or a torch.export file, stored by `kd import`:
kd/teachers/imported.py). Both load as an `nn.Module` on the prepared features that returns
logits in the prepared class order, so export, the report and sharing never branch on the kind.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from kd.config import Config
from kd.errors import ArtifactError
from kd.io.atomic import read_json
from kd.models import check_fits, count_params, load_model, model_fingerprint


def _record(member_dir: Path) -> dict:
    record = read_json(member_dir / "model.json", ArtifactError)
    if not isinstance(record, dict):
        raise ArtifactError(f"{member_dir / 'model.json'}: expected a JSON object, got "
                            f"{type(record).__name__}")
    return record


def is_imported(member_dir: Path) -> bool:
    return "kind" in _record(member_dir)


def load_member(member_dir: Path, meta: dict, what: str | None = None) -> torch.nn.Module:
    """The member in `member_dir`, checked against the prepared data (`meta`: its meta.json):
    its feature shape, its classes and their order. `what` names it in errors."""
    what = what or f"member '{member_dir.name}'"
    if is_imported(member_dir):
        from kd.teachers.imported import load_imported

        spec = _record(member_dir)
        check_fits(spec, member_dir, meta, what)
        return load_imported(member_dir, meta)
    model, spec = load_model(member_dir)
    check_fits(spec, member_dir, meta, what)
    return model.eval()


def load_members(cfg: Config, meta: dict, root: Path) -> dict[str, torch.nn.Module]:
    """Every member of the ensemble (trained here, then imported), checked against the
    prepared data (and so against each other)."""
    return {name: load_member(root / name, meta) for name in cfg.teacher.names()}


def member_params(model: torch.nn.Module) -> int | None:
    """Scalar parameters of a member; None where the kind has no such count (a scikit-learn
    model): the report says n/a."""
    from kd.teachers.imported import ImportedModel

    return model.params if isinstance(model, ImportedModel) else count_params(model)


def member_bytes(member_dir: Path) -> int:
    """Bytes of the member's model files (the weights, or everything an import stored)."""
    files = member_dir / "files"
    if files.is_dir():
        return sum(p.stat().st_size for p in files.rglob("*") if p.is_file())
    return (member_dir / "model.safetensors").stat().st_size


def member_output(member_dir: Path) -> tuple[str, Path]:
    """(stage, file) of the stage that wrote the member, for linking the report's MLflow run
    to it: teacher@<name>'s weights, or import@<name>'s model.json."""
    if is_imported(member_dir):
        return f"import@{member_dir.name}", member_dir / "model.json"
    return f"teacher@{member_dir.name}", member_dir / "model.safetensors"


def member_fingerprint(member_dir: Path) -> str:
    """What identifies the member in a shard manifest: the weights' sha256, or the digest of
    an import's files."""
    if is_imported(member_dir):
        return _record(member_dir)["digest"]
    return model_fingerprint(member_dir)


@torch.no_grad()
def member_logits(models: dict[str, torch.nn.Module], x: np.ndarray, shape: tuple[int, ...],
                  device: torch.device | None = None) -> dict[str, np.ndarray]:
    xt = torch.from_numpy(x).view(len(x), *shape).to(device or "cpu")  # (B, *shape)
    return {name: m(xt).cpu().numpy() for name, m in models.items()}  # each (B, C)


@torch.no_grad()
def member_outputs(models: dict[str, torch.nn.Module], x: np.ndarray, shape: tuple[int, ...],
                   device: torch.device | None = None, hidden: list[str] = (),
                   batch_size: int = 0) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Every member's logits (B, C), and the pooled hidden vectors (B, D) of the members
    `hidden` names (export.hidden), from the same forward pass as their logits. `batch_size`
    (> 0): forward at most that many rows at a time (a row's views, K x export.batch_size
    rows at once, ran at half the rows/s of export.batch_size on one CPU thread)."""
    if 0 < batch_size < len(x):
        parts = [member_outputs(models, x[i:i + batch_size], shape, device, hidden)
                 for i in range(0, len(x), batch_size)]
        return tuple({k: np.concatenate([p[j][k] for p in parts]) for k in parts[0][j]}
                     for j in (0, 1))
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
        # params.yaml names a transformer, but the member on disk was trained as another arch
        if not hasattr(models[name], "forward_with_hidden"):
            raise ArtifactError(f"data/teachers/{name}/model.json: member {name!r} has no pooled "
                                "hidden vector (export.hidden); rerun `kd teacher`")
    return {name: int(models[name].width) for name in hidden}
