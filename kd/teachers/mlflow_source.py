"""MLflow members: resolve a model URI to the version it names today, download that version,
load it with `mlflow.pyfunc`.

    version = resolve("models:/digits-hgb@champion", tracking)   # {"version": "3", ...}
    download("models:/digits-hgb/3", Path("data/teachers/hgb/files"), tracking)
    predict = load(Path("data/teachers/hgb/files"))             # (N, F) -> (N, C)

The one module of kd/teachers that talks to MLflow (docs/architecture.md). The registry is the
tracking store's (`tracking.uri`, or MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI). Loading a
scikit-learn model unpickles the user's own artifact: trusted sources only (docs/own-teacher.md).
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from kd.errors import ArtifactError
from kd.tracking import TrackingError, check_reachable

_MODELS = re.compile(r"models:/(?P<name>[^/@]+)(?:/(?P<version>[^/]+)|@(?P<alias>[^/]+))$")
_RUNS = re.compile(r"runs:/(?P<run>[0-9a-f]+)/(?P<path>.+)$")


def _reachable(source: str, uri: str, timeout: float) -> None:
    """A server that is down: one line now, not after the client's minutes of retries."""
    try:
        check_reachable(uri, timeout)
    except TrackingError as e:  # its advice (tracking off) does not bring a registry back
        what = str(e).split("; set")[0].replace("MLflow tracking server", "the MLflow registry")
        raise ArtifactError(f"{source}: {what}; `dvc pull` brings a teammate's import "
                            "without it") from None


def _client(source: str, uri: str, timeout: float):
    _reachable(source, uri, timeout)
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def resolve(source: str, uri: str, timeout: float = 10.0) -> dict:
    """What `source` names now: a registered model's version (an alias followed), or a run.
    ArtifactError, one line, when the store has no such model, version, alias or run."""
    from mlflow.exceptions import MlflowException

    client = _client(source, uri, timeout)
    try:
        if m := _MODELS.match(source):
            name = m["name"]
            if m["alias"]:
                mv = client.get_model_version_by_alias(name, m["alias"])
            elif m["version"].isdigit():
                mv = client.get_model_version(name, m["version"])
            else:
                raise ArtifactError(f"{source}: name a version number or an @alias (stages "
                                    "are deprecated in MLflow)")
            return {"version": str(mv.version), "run_id": mv.run_id,
                    "uri": f"models:/{name}/{mv.version}"}
        if m := _RUNS.match(source):
            run = client.get_run(m["run"])
            return {"version": run.info.run_id, "run_id": run.info.run_id, "uri": source}
    except MlflowException as e:
        first = str(e.message).splitlines()[0][:200]
        raise ArtifactError(f"{source}: not found in the MLflow store {uri} ({first})") from None
    raise ArtifactError(f"{source}: not an MLflow model URI (models:/<name>/<version>, "
                        "models:/<name>@<alias> or runs:/<run>/<path>)")


def download(resolved_uri: str, dest: Path, uri: str, timeout: float = 10.0) -> None:
    """The model directory (MLmodel, its flavor's files) of `resolved_uri`, copied to `dest`
    (replaced) as the store holds it."""
    import os

    import mlflow
    from mlflow.exceptions import MlflowException

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # plain stage logs
    _reachable(resolved_uri, uri, timeout)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    with tempfile.TemporaryDirectory(prefix="kd-import-") as tmp:
        try:
            got = Path(mlflow.artifacts.download_artifacts(artifact_uri=resolved_uri,
                                                           dst_path=tmp))
        except (MlflowException, OSError) as e:
            first = (str(e).splitlines() or [type(e).__name__])[0][:200]
            raise ArtifactError(f"{resolved_uri}: cannot download it ({first})") from None
        if not (got / "MLmodel").is_file():
            raise ArtifactError(f"{resolved_uri}: not an MLflow model (no MLmodel file)")
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(got, dest)


def load(model_dir: Path) -> tuple[Callable[[np.ndarray], np.ndarray], list[str] | None]:
    """(predict, class names or None) of a downloaded MLflow model: predict takes (N, F)
    float32 rows and returns (N, C) as the model gives them (probabilities for a classifier
    logged with pyfunc_predict_fn="predict_proba")."""
    import mlflow.pyfunc

    try:
        model = mlflow.pyfunc.load_model(str(model_dir))
    except Exception as e:  # any flavor's loader: unpickling, missing packages, ...
        first = (str(e).splitlines() or [type(e).__name__])[0][:200]
        raise ArtifactError(f"{model_dir}: mlflow.pyfunc cannot load it ({first})") from None
    try:
        raw = model.get_raw_model()
    except Exception:  # a flavor without a raw model: no class names to read
        raw = None
    classes = getattr(raw, "classes_", None)
    names = [str(c) for c in classes] if classes is not None else None

    def predict(x: np.ndarray) -> np.ndarray:
        out = model.predict(x)
        return np.asarray(getattr(out, "values", out), dtype=np.float64)  # (N, C)

    return predict, names
