"""Imported members: a model trained elsewhere, as `kd import <name>` stored it.

    model = load_imported(Path("data/teachers/hgb"), meta)   # an nn.Module: (B, *shape) -> (B, C)

data/teachers/<name>/ holds `files/` (the model as its source gives it: model.onnx, model.pt2,
or an MLflow model directory) and `model.json`: kind, source, resolved version, the digest of
`files/`, and how to run it (inputs raw or prepared, outputs probs or logits, which output
column is which prepared class). Every kind is wrapped in one `nn.Module` whose forward takes
the prepared features and returns logits in the prepared class order, so export, the report
and the speed figures run it like a native member: one batch, one call, no per-row Python.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from kd.errors import ArtifactError
from kd.io.atomic import read_json

FILES = "files"  # the model as its source gives it
FILE_NAMES = {"onnx": "model.onnx", "torch_export": "model.pt2"}
KINDS = ("mlflow", "onnx", "torch_export")
PROBS_FLOOR = 1e-12  # log(0) would be -inf: a probability of exactly 0 becomes log(1e-12)


def files_digest(files: Path) -> str:
    """sha256 over every file under `files` (relative path and bytes, in sorted order)."""
    h = hashlib.sha256()
    for path in sorted(p for p in files.rglob("*") if p.is_file()):
        h.update(path.relative_to(files).as_posix().encode() + b"\0")
        with open(path, "rb") as f:
            h.update(hashlib.file_digest(f, "sha256").digest())
    return h.hexdigest()


# -----------------------------------------------------------------------------
# opening each kind: a numpy predict function, the class names it carries, its size


def _open_onnx(files: Path, where: str) -> tuple[Callable, list[str] | None, int | None, tuple]:
    import json

    import onnx

    from kd.deploy.runtime import open_session

    path = files / FILE_NAMES["onnx"]
    sess = open_session(path, threads=torch.get_num_threads())  # runtime.threads, as torch
    inp, out = sess.get_inputs()[0], sess.get_outputs()[0].name
    dims = tuple(inp.shape)  # (batch, ...): names or None where dynamic
    if isinstance(dims[0], int) and dims[0] != -1:
        raise ArtifactError(f"{where}: the ONNX input {inp.name!r} takes batches of exactly "
                            f"{dims[0]} rows; export it with a dynamic batch axis")
    proto = onnx.load(str(path), load_external_data=False)
    params = sum(int(np.prod(t.dims)) for t in proto.graph.initializer)
    props = {p.key: p.value for p in proto.metadata_props}
    raw_names = props.get("kd.class_names") or props.get("class_names")
    names = [str(c) for c in json.loads(raw_names)] if raw_names else None
    dtype = np.float64 if inp.type == "tensor(double)" else np.float32  # skl2onnx: often double
    return (lambda x: sess.run([out], {inp.name: x.astype(dtype, copy=False)})[0]), names, \
        params, dims[1:]


def _open_export(files: Path, where: str) -> tuple[Callable, list[str] | None, int | None, tuple]:
    path = files / FILE_NAMES["torch_export"]
    try:
        program = torch.export.load(str(path))  # unpickles: the user's own, trusted file
    except Exception as e:
        first = (str(e).splitlines() or [type(e).__name__])[0][:200]
        raise ArtifactError(f"{path}: torch.export cannot load it ({first})") from None
    user = set(program.graph_signature.user_inputs)
    first_in = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name in user)
    dims = tuple(first_in.meta["val"].shape)
    if isinstance(dims[0], int):
        raise ArtifactError(f"{where}: the exported program takes batches of exactly {dims[0]} "
                            "rows; export it with dynamic_shapes={'x': {0: Dim('batch')}}")
    module = program.module()
    params = sum(p.numel() for p in module.parameters())

    @torch.no_grad()
    def predict(x: np.ndarray) -> np.ndarray:
        return module(torch.from_numpy(x)).numpy()

    return predict, None, params, tuple(int(d) for d in dims[1:])


def _open_mlflow(files: Path, where: str) -> tuple[Callable, list[str] | None, int | None, tuple]:
    import kd.teachers.mlflow_source as mlflow_source

    predict, names = mlflow_source.load(files)
    return predict, names, None, ()  # () : (N, F) rows, the pyfunc convention


OPENERS = {"mlflow": _open_mlflow, "onnx": _open_onnx, "torch_export": _open_export}


# -----------------------------------------------------------------------------
# the member as an nn.Module


class ImportedModel(nn.Module):
    """(B, *shape) prepared features -> (B, C) logits in the prepared class order."""

    def __init__(self, predict: Callable[[np.ndarray], np.ndarray], *, feature_shape: tuple,
                 model_shape: tuple, inputs: str, outputs: str, columns: list[int] | None,
                 normalization: dict, params: int | None):
        super().__init__()
        self.predict, self.outputs, self.params = predict, outputs, params
        self.feature_shape, self.model_shape = tuple(feature_shape), tuple(model_shape)
        # the model's output column of each prepared class; None: its own order
        self.columns = slice(None) if columns is None else np.asarray(columns)
        raw = inputs == "raw"
        # raw: undo `kd prepare`'s normalisation, the features as the user's files hold them
        self.mean = np.asarray(normalization["mean"], np.float64) if raw else None
        self.std = np.asarray(normalization["std"], np.float64) if raw else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = x.detach().cpu().numpy().reshape(len(x), -1)  # (B, F)
        if self.mean is not None:
            a = a.astype(np.float64) * self.std + self.mean
        a = np.ascontiguousarray(a, dtype=np.float32)
        if self.model_shape:
            a = a.reshape(len(a), *self.model_shape)  # (B, *model's shape)
        out = np.asarray(self.predict(a), dtype=np.float64)[:, self.columns]  # (B, C)
        if self.outputs == "probs":
            out = np.log(np.clip(out, PROBS_FLOOR, None))
        return torch.from_numpy(out.astype(np.float32)).to(x.device)  # (B, C)


def open_model(kind: str, files: Path, meta: dict, *, inputs: str, outputs: str,
               columns: list[int] | None, where: str) -> tuple[ImportedModel, list[str] | None]:
    """The member at `files` wrapped for the prepared data; also the class names the model
    carries (None when it carries none). `columns` None: the model's own order."""
    predict, names, params, dims = OPENERS[kind](files, where)
    n_features = int(meta["n_features"]) if "n_features" in meta else \
        int(np.prod(meta["feature_shape"]))
    # rows go in flat (N, F) when the model takes rank-2 input (or says nothing, as pyfunc),
    # else in the model's own shape when it declares one, else in the prepared shape
    model_shape = tuple(meta["feature_shape"]) if len(dims) > 1 else ()
    known = bool(dims) and all(isinstance(d, int) and d > 0 for d in dims)
    if known and int(np.prod(dims)) != n_features:
        raise ArtifactError(f"{where}: the model takes {int(np.prod(dims))} features per row "
                            f"{tuple(dims)}, the prepared data has {n_features} "
                            f"{tuple(meta['feature_shape'])}")
    if known and len(dims) > 1:
        model_shape = tuple(int(d) for d in dims)
    model = ImportedModel(predict, feature_shape=meta["feature_shape"], model_shape=model_shape,
                          inputs=inputs, outputs=outputs, columns=columns,
                          normalization=meta["normalization"], params=params)
    return model, names


def load_imported(member_dir: Path, meta: dict) -> ImportedModel:
    """An imported member from its directory: model.json read, the files checked against
    its digest (a changed file would change every soft target silently), then opened."""
    record = read_json(member_dir / "model.json", ArtifactError)
    where = member_dir / "model.json"
    if not isinstance(record, dict) or record.get("kind") not in KINDS:
        raise ArtifactError(f"{where}: not an imported member's model.json (no kind)")
    files = member_dir / FILES
    if not files.is_dir():
        raise ArtifactError(f"{files}: directory not found; rerun `kd import "
                            f"{member_dir.name}` or `dvc pull`")
    if files_digest(files) != record.get("digest"):
        raise ArtifactError(f"{files}: contents do not match the digest in {where} (changed "
                            "or corrupt); rerun `kd import`")
    model, _ = open_model(record["kind"], files, meta, inputs=record["inputs"],
                          outputs=record["outputs"], columns=record["columns"], where=str(where))
    return model.eval()
