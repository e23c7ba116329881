"""A student as a self-contained ONNX file: fp32, a dynamic batch dimension, and everything a
user needs to run it on raw rows (class names, the prepared data's normalisation) in the
file's metadata_props.

    model, spec = load_model("data/student")
    export_onnx(model, spec, meta["normalization"], "data/deploy/student.onnx")
    read_metadata("data/deploy/student.onnx")   # {"class_names": [...], "normalization": ...}

The graph takes flat, *normalised* rows `features` (B, F), as the prepared data and the shards
store them (the same input as the MLflow pyfunc student), and gives `logits` (B, C) and
`probabilities` (B, C). The normalisation stays out of the graph so that the ONNX model's
outputs can be compared with the PyTorch student's on the very same input tensors.

Exporter: torch's TorchScript-based exporter (`dynamo=False`), pinned with torch in
requirements.lock. It needs no package beyond `onnx`, exports this project's small models in
well under a second, and folds eval-mode BatchNorm into the convolutions. The
torch.export-based exporter (`dynamo=True`) gives the same operators here but needs
`onnxscript` and `onnx-ir` and takes ~8 s per export on 2 cores; the choice is one flag below.
"""

from __future__ import annotations

import io
import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn as nn

from kd.errors import ArtifactError
from kd.io.atomic import atomic_path

OPSET = 17
FORMAT = "kd-pipeline-onnx/1"  # metadata_props "kd.format": what read_metadata understands
INPUT, LOGITS, PROBS = "features", "logits", "probabilities"
FP32, INT8 = "student.onnx", "student.int8.onnx"  # the file names in data/deploy/


class _LogitsAndProbs(nn.Module):
    """The student with a softmax head beside its logits: users want probabilities, the
    equivalence check wants the logits."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # x: (B, F)
        logits = self.model(x)  # (B, C)
        return logits, torch.softmax(logits, dim=1)  # (B, C), (B, C)


def metadata(spec: dict[str, Any], normalization: dict[str, Any], **extra: str) -> dict[str, str]:
    """The metadata_props an exported file carries (string values, JSON where structured)."""
    return {"kd.format": FORMAT,
            "kd.arch": spec["arch"],
            "kd.input_shape": json.dumps(list(spec["input_shape"])),
            "kd.class_names": json.dumps(list(spec["class_names"])),
            "kd.normalization": json.dumps(normalization, sort_keys=True),
            "kd.student_sha256": spec.get("weights_sha256", ""),
            **extra}


def set_metadata(model: onnx.ModelProto, props: dict[str, str]) -> None:
    del model.metadata_props[:]
    for key in sorted(props):
        model.metadata_props.add(key=key, value=props[key])


def export_onnx(model: nn.Module, spec: dict[str, Any], normalization: dict[str, Any],
                path: str | os.PathLike) -> Path:
    """Write `model` (eval mode, CPU) to `path` as fp32 ONNX with a dynamic batch dimension;
    the same model gives the same bytes."""
    path = Path(path)
    n_features = int(np.prod(spec["input_shape"]))
    wrapped = _LogitsAndProbs(model.cpu().eval()).eval()
    example = torch.zeros(2, n_features)  # (B, F); B is dynamic in the graph
    buf = io.BytesIO()
    with warnings.catch_warnings():
        # "You are using the legacy TorchScript-based ONNX export": chosen, see the docstring
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        torch.onnx.export(wrapped, (example,), buf, dynamo=False, opset_version=OPSET,
                          input_names=[INPUT], output_names=[LOGITS, PROBS],
                          dynamic_axes={INPUT: {0: "batch"}, LOGITS: {0: "batch"},
                                        PROBS: {0: "batch"}},
                          do_constant_folding=True)
    proto = onnx.load_from_string(buf.getvalue())
    proto.producer_name, proto.doc_string = "kd-pipeline", ""
    set_metadata(proto, metadata(spec, normalization, **{"kd.precision": "fp32"}))
    save(proto, path)
    return path


def compact(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Short names (t0, t1, ...) for every tensor but the graph's inputs and outputs, no node
    names, no intermediate shapes (value_info): none of it changes what the graph computes, and
    for a 5,658-parameter student the exporters' and quantizer's long names are a third of the
    int8 file. Applied to the fp32 and the int8 file alike, so their size ratio stays fair."""
    keep = {v.name for v in proto.graph.input} | {v.name for v in proto.graph.output}
    names: dict[str, str] = {}

    def short(name: str) -> str:
        if not name or name in keep:
            return name
        return names.setdefault(name, f"t{len(names)}")

    for t in proto.graph.initializer:
        t.name, t.doc_string = short(t.name), ""
    for node in proto.graph.node:
        assert not any(a.g.node or a.graphs for a in node.attribute), "subgraphs: not handled"
        node.name, node.doc_string = "", ""
        node.input[:] = [short(x) for x in node.input]
        node.output[:] = [short(x) for x in node.output]
    del proto.graph.value_info[:]
    return proto


def save(proto: onnx.ModelProto, path: Path) -> None:
    """Write `proto`, compacted, atomically."""
    compact(proto)
    onnx.checker.check_model(proto)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_bytes(proto.SerializeToString())


def load(path: str | os.PathLike) -> onnx.ModelProto:
    """The ONNX file at `path`, or an ArtifactError naming it."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: file not found")
    try:
        return onnx.load(str(path))
    except Exception as e:  # protobuf's DecodeError and friends: a truncated or foreign file
        raise ArtifactError(f"{path}: not a readable ONNX file ({str(e).splitlines()[0]})") \
            from None


def read_metadata(path: str | os.PathLike, proto: onnx.ModelProto | None = None) -> dict:
    """Class names, normalisation and input shape from a file this module wrote; an
    ArtifactError naming the file for any other ONNX file."""
    proto = proto if proto is not None else load(path)
    props = {p.key: p.value for p in proto.metadata_props}
    if props.get("kd.format") != FORMAT:
        raise ArtifactError(f"{path}: not an ONNX file exported by kd-pipeline (no "
                            f"metadata_props kd.format = {FORMAT!r}); run `kd deploy`")
    try:
        out = {"class_names": json.loads(props["kd.class_names"]),
               "normalization": json.loads(props["kd.normalization"]),
               "input_shape": json.loads(props["kd.input_shape"])}
    except (KeyError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{path}: metadata_props are incomplete or not JSON ({e})") from None
    return out | {k.removeprefix("kd."): v for k, v in props.items()
                  if k in ("kd.arch", "kd.precision", "kd.quantization", "kd.student_sha256")}


def deployed_files(deploy_dir: str | Path, spec: dict[str, Any]
                   ) -> dict[str, Path]:
    """{"student_onnx": fp32 path, "student_int8": int8 path} of `deploy_dir`, each checked to be
    an export of the student whose model.json is `spec` (ArtifactError naming the file)."""
    files = {"student_onnx": Path(deploy_dir) / FP32, "student_int8": Path(deploy_dir) / INT8}
    for path in files.values():
        exported_from = read_metadata(path).get("student_sha256")
        if exported_from != spec.get("weights_sha256"):
            which = f"data/student/{spec['variant']}" if spec.get("variant") else "the student"
            raise ArtifactError(f"{path}: exported from another student than the chosen one "
                                f"({which}: weights sha256 differ); rerun `kd deploy`")
    return files
