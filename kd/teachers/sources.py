"""Where an imported member comes from: resolve its source to a version, fetch its files, check
it against the prepared data.

    resolved = resolve(spec, tracking_uri)          # {"kind", "source", "version", ...}
    record = fetch_and_check("hgb", spec, resolved, Path("tmp/hgb"), meta, x, uri)

`kd source <name>` (stage `source@<name>`, always run) writes what `resolve` returns; `kd import
<name>` (stage `import@<name>`) fetches exactly that version, so an MLflow alias that moves to
another version, or a local file that changes, reruns the import and nothing else does.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import torch

from kd.config import Config, ImportedMember
from kd.errors import ArtifactError, ConfigError
from kd.io.atomic import read_json
from kd.teachers.imported import FILE_NAMES, FILES, files_digest, open_model

PROBE_ROWS = 8  # prepared rows the member runs on at import: width, classes, outputs


def import_spec(cfg: Config, name: str) -> ImportedMember:
    """`teacher.imports.<name>`, or ConfigError naming the imports there are."""
    if name not in cfg.teacher.imports:
        known = ", ".join(cfg.teacher.imports) or "none"
        raise ConfigError(f"teacher.imports: no import named {name!r} (imports: {known})")
    return cfg.teacher.imports[name]


def earlier_answer(path: Path, spec: ImportedMember) -> dict | None:
    """What `resolve` answered before for this very source (`data/sources/<name>.json`), if
    anything."""
    if not path.is_file():
        return None
    old = read_json(path, ArtifactError)
    same = isinstance(old, dict) and (old.get("kind"), old.get("source")) == (spec.kind,
                                                                               spec.source)
    return old if same else None


def resolve(spec: ImportedMember, tracking_uri: str, timeout: float = 10.0) -> dict:
    """The version `spec.source` names now: an MLflow model version (an alias followed) or
    run, or a local file's sha256. ArtifactError (one line) when it cannot be reached."""
    out = {"kind": spec.kind, "source": spec.source}
    if spec.kind == "mlflow":
        import kd.teachers.mlflow_source as mlflow_source

        return out | mlflow_source.resolve(spec.source, tracking_uri, timeout)
    path = Path(spec.source)
    if not path.is_file():
        raise ArtifactError(f"{path}: file not found (teacher import of kind {spec.kind!r})")
    with open(path, "rb") as f:
        return out | {"version": "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()}


def _fetch(spec: ImportedMember, resolved: dict, files: Path, tracking_uri: str,
           timeout: float) -> None:
    files.mkdir(parents=True, exist_ok=True)
    if spec.kind == "mlflow":
        import kd.teachers.mlflow_source as mlflow_source

        mlflow_source.download(resolved["uri"], files, tracking_uri, timeout)
        return
    dest = files / FILE_NAMES[spec.kind]
    shutil.copyfile(spec.source, dest)
    with open(dest, "rb") as f:  # the file changed between resolve and copy: resolve again
        if "sha256:" + hashlib.file_digest(f, "sha256").hexdigest() != resolved["version"]:
            raise ArtifactError(f"{spec.source}: changed since it was resolved; rerun "
                                f"`kd source` (or dvc repro)")


def class_columns(model_names: list[str] | None, n_out: int, meta: dict,
                  where: str) -> list[int]:
    """For each prepared class, the model's output column that holds it: mapped by name when
    the model (or the member's `classes`) names its outputs, else the same order when the
    counts agree. ArtifactError when they cannot be matched."""
    ours = list(meta["class_names"])
    if model_names is None:
        if n_out != len(ours):
            raise ArtifactError(f"{where}: the model gives {n_out} outputs per row, the "
                                f"prepared data has {len(ours)} classes")
        return list(range(n_out))
    if len(model_names) != n_out:
        raise ArtifactError(f"{where}: {len(model_names)} class names for {n_out} outputs")
    if sorted(model_names) != sorted(ours):
        raise ArtifactError(f"{where}: the model's classes {model_names} are not the prepared "
                            f"data's {ours}")
    return [model_names.index(c) for c in ours]


def fetch_and_check(name: str, spec: ImportedMember, resolved: dict, out_dir: Path,
                    meta: dict, x: np.ndarray, tracking_uri: str, timeout: float = 10.0) -> dict:
    """Copy the member's files to out_dir/files, run it on a few prepared rows `x` and return
    its model.json record. ArtifactError (one line) for a model that takes another width,
    predicts other classes, or returns what `outputs` says it does not."""
    where = f"teacher.imports.{name} ({spec.source})"
    files = out_dir / FILES
    _fetch(spec, resolved, files, tracking_uri, timeout)
    model, names = open_model(spec.kind, files, meta, inputs=spec.inputs,
                              outputs="logits", columns=None, where=where)
    names = spec.classes or names  # the member's `classes` say what the model does not
    rows = torch.from_numpy(np.ascontiguousarray(x[:PROBE_ROWS]))
    rows = rows.view(len(rows), *meta["feature_shape"])  # (B, *shape)
    try:
        raw = model(rows).numpy().astype(np.float64)  # (B, K)
    except Exception as e:  # whatever the model's runtime raises for rows it cannot take
        first = (str(e).splitlines() or [type(e).__name__])[0][:200]
        raise ArtifactError(f"{where}: the model fails on rows of {meta['n_features']} "
                            f"features shaped {tuple(meta['feature_shape'])} ({first})") from None
    if raw.ndim != 2 or len(raw) != len(rows):
        raise ArtifactError(f"{where}: the model returns shape {raw.shape} for {len(rows)} "
                            "rows; expected one row of class scores per input row")
    columns = class_columns(names, raw.shape[1], meta, where)
    outputs = spec.output_kind()
    sums = raw.sum(1)
    if outputs == "probs" and (raw.min() < -1e-6 or np.abs(sums - 1).max() > 1e-3):
        raise ArtifactError(f"{where}: outputs are not probabilities (a row sums to "
                            f"{sums[np.abs(sums - 1).argmax()]:.3g}); set outputs: logits")
    return {"kind": spec.kind, "source": spec.source, "version": resolved["version"],
            "resolved_uri": resolved.get("uri", spec.source), "run_id": resolved.get("run_id"),
            "digest": files_digest(files), "inputs": spec.inputs, "outputs": outputs,
            "model_classes": names, "columns": columns,
            "class_names": list(meta["class_names"]), "n_classes": meta["n_classes"],
            "input_shape": list(meta["feature_shape"]), "params": model.params}
