"""MLflow: one run per stage, opened by one context manager.

    with stage_run(cfg, "teacher@cnn_0", params={...}) as run:
        run.log_metrics({"val_acc": 0.98}, step=epoch)
        run.log_artifact("data/teachers/cnn_0/model.json")

Every run is tagged with the stage, the git commit and the DVC experiment name (when DVC runs
the stage inside `dvc exp run`), so the runs of one variant are found together, and named
`<stage> · <experiment>` (`report · t8`) so the variants are told apart at a glance. The
experiment is tagged as one of training runs (`mlflow.experimentKind`), so MLflow 3's UI opens
it on its runs rather than on the GenAI traces overview, with `val_acc` as its primary metric
(the chart that leads when runs are compared). The default
store is `mlflow.db` at the repository root as an absolute URI: `dvc exp run --queue` workers
run in a temporary copy under `.dvc/tmp/exps/`, and must still write to the user's store.
`MLFLOW_TRACKING_URI` overrides it; `tracking.enabled: false` or `KD_TRACKING=0` turns it off,
and then the same calls do nothing, so stage code never branches on tracking.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from kd.config import Config
from kd.errors import KDError

# MLflow 3 sends usage telemetry from every process that imports it: a pipeline run (and the
# UI) should not call out of the user's network, nor wait on it at exit. The user's own
# setting wins.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


class TrackingError(KDError):
    """The tracking store cannot be reached: reported before any work starts."""


def repo_root() -> Path:
    """The user's repository root, also from inside a `dvc exp run --queue` temporary copy."""
    root = Path(os.environ.get("DVC_ROOT") or os.getcwd()).resolve()
    parts = root.parts
    if ".dvc" in parts:  # .../repo/.dvc/tmp/exps/<tmp>/ -> .../repo
        root = Path(*parts[: parts.index(".dvc")])
    return root


def tracking_uri(cfg: Config) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or cfg.tracking.uri or \
        f"sqlite:///{repo_root() / 'mlflow.db'}"


def tracking_enabled(cfg: Config) -> bool:
    env = os.environ.get("KD_TRACKING", "").strip().lower()
    if env in ("0", "false", "off", "no"):
        return False
    return cfg.tracking.enabled


def check_reachable(uri: str, timeout: float) -> None:
    """Fail in `timeout` seconds, not after the MLflow client's minutes of retries: one
    request of our own, with its own timeout, before the MLflow client makes any."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as r:
            r.read()
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise TrackingError(f"MLflow tracking server {uri} is unreachable ({reason}); set "
                            "tracking.enabled: false or KD_TRACKING=0 to run without it") from None


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10, cwd=os.environ.get("DVC_ROOT") or None)
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}: how params and nested metrics reach MLflow."""
    if isinstance(obj, Mapping):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: obj}


COMPARE_BY = "val_acc"  # the metric variants are chosen by: the report run logs it first
# Experiment tags MLflow 3's UI reads: open on training runs ("Machine learning"), not on GenAI
# traces; and the metric whose chart leads when runs are compared.
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development",
                   "mlflow.experiment.primaryMetric.name": COMPARE_BY}
DESCRIPTION = "mlflow.note.content"  # a run's description in the UI


def run_name(stage: str) -> str:
    """`report`, or `report · t8` inside `dvc exp run` (DVC sets DVC_EXP_NAME per stage)."""
    exp = os.environ.get("DVC_EXP_NAME", "").strip()
    return f"{stage} · {exp}" if exp else stage


def ui_url(base: str, experiment_id: str | None) -> str:
    """Where the MLflow 3 UI shows an experiment's training runs: its hash route to the
    `runs` tab, in the "machine learning" workflow (the UI's default is the GenAI one)."""
    base = base.rstrip("/")
    if experiment_id is None:
        return f"{base}/#/experiments?workflowType=machine_learning"
    return f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def training_experiment(client, name: str, artifact_location: str | None,
                        create: bool = True) -> str | None:
    """The id of experiment `name` (created when absent and `create`), with EXPERIMENT_TAGS
    where the user has not set those tags otherwise."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        return _create_experiment(client, name, artifact_location) if create else None
    for key, value in EXPERIMENT_TAGS.items():  # made in the UI or a script: tags missing
        if key not in exp.tags:
            client.set_experiment_tag(exp.experiment_id, key, value)
    return exp.experiment_id


class StageRun:
    """What a stage logs through; a disabled run accepts the same calls and drops them."""

    def __init__(self, client=None, run_id: str | None = None, uri: str | None = None):
        self.client, self.run_id, self.uri = client, run_id, uri

    def log_params(self, params: Mapping[str, Any]) -> None:
        if self.client is None:
            return
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in flatten(params).items()]
        for i in range(0, len(items), 100):  # the REST API takes at most 100 params a call
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        if self.client is None:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step or 0) for k, v in flatten(metrics).items()
                 if isinstance(v, int | float) and not isinstance(v, bool)]
        for i in range(0, len(items), 500):
            self.client.log_batch(self.run_id, metrics=items[i : i + 500])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if self.client is not None:
            for k, v in tags.items():
                self.client.set_tag(self.run_id, k, str(v))

    def describe(self, text: str) -> None:
        """The run's description: the first thing the run page shows."""
        self.set_tags({DESCRIPTION: text})

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.client is not None:
            if Path(path).is_dir():
                self.client.log_artifacts(self.run_id, str(path), artifact_path)
            else:
                self.client.log_artifact(self.run_id, str(path), artifact_path)


@contextlib.contextmanager
def stage_run(
    cfg: Config, stage: str, params: Mapping[str, Any] | None = None, *, main: bool = True
) -> Iterator[StageRun]:
    """One MLflow run for one stage execution; FAILED if the stage raises, else FINISHED.
    Under torch.distributed only rank 0 (`main`) has a run: one run per stage, not per rank."""
    if not main or not tracking_enabled(cfg):
        yield StageRun()
        return
    uri = tracking_uri(cfg)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # stage logs stay plain
    # Fail fast only here, before any work: a server that is down is one line in timeout_s.
    # The logging calls below keep MLflow's own retries and timeouts (MLFLOW_HTTP_REQUEST_*,
    # 7 retries with backoff by default): one 503 after an hour of training must not fail
    # the stage.
    check_reachable(uri, cfg.tracking.timeout_s)

    from mlflow.tracking import MlflowClient

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # no INFO chatter in stage output
    client = MlflowClient(tracking_uri=uri)
    exp_id = training_experiment(client, cfg.tracking.experiment, artifact_root(uri))
    name = run_name(stage)
    tags = {
        "kd.stage": stage.split("@")[0],
        "kd.stage_name": stage,
        "mlflow.source.git.commit": git_commit(),
        "dvc.exp_name": os.environ.get("DVC_EXP_NAME", ""),
        "mlflow.runName": name,
    }
    run = client.create_run(exp_id, run_name=name, tags=tags)
    handle = StageRun(client, run.info.run_id, uri)
    try:
        if params:  # inside: a run whose params could not be logged ends FAILED, not RUNNING
            handle.log_params(params)
        yield handle
    except BaseException:
        client.set_terminated(run.info.run_id, status="FAILED")
        raise
    client.set_terminated(run.info.run_id, status="FINISHED")


def artifact_root(uri: str) -> str | None:
    """Artifacts of a SQLite store go beside the database file. MLflow's default is ./mlruns
    in the working directory, and a `dvc exp run --queue` worker's working directory is a
    temporary copy that is deleted afterwards, artifacts and all."""
    if not uri.startswith("sqlite:///"):
        return None  # a server or another store decides for itself
    return (Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlartifacts").as_uri()


def _create_experiment(client, name: str, artifact_location: str | None) -> str:
    from mlflow.exceptions import MlflowException

    try:
        return client.create_experiment(name, artifact_location=artifact_location,
                                        tags=EXPERIMENT_TAGS)
    except MlflowException:  # another process (a queued experiment) created it first
        return client.get_experiment_by_name(name).experiment_id


def log_onnx_model(run: StageRun, path: Path, name: str, input_example) -> None:
    """Log an exported ONNX file with the `mlflow.onnx` flavor under `name`, with a tensor
    signature and an input example. `mlflow.pyfunc.load_model(uri).predict(x)` on a float32
    array x (N, F) of normalised rows returns {"logits": (N, C), "probabilities": (N, C)}; the
    tensor signature makes a DataFrame of the same rows give the same (without it, the flavor
    would flatten each (N, C) output into one column N * C rows long)."""
    if run.client is None:
        return
    import mlflow
    import numpy as np
    import onnx
    import onnxruntime as ort
    from mlflow.models import infer_signature

    example = np.asarray(input_example, dtype=np.float32)  # (n, F)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outputs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {
        sess.get_inputs()[0].name: example}), strict=True))
    signature = infer_signature(example, outputs)
    previous = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
    mlflow.set_tracking_uri(run.uri)  # the fluent API below logs to the stage's store
    try:
        with mlflow.start_run(run_id=run.run_id):
            mlflow.onnx.log_model(onnx.load(str(path)), name=name, signature=signature,
                                  input_example=example, save_as_external_data=False,
                                  onnx_execution_providers=["CPUExecutionProvider"],
                                  pip_requirements=[f"onnx=={onnx.__version__}",
                                                    f"onnxruntime=={ort.__version__}"])
    finally:
        mlflow.set_tracking_uri(previous)


OUTPUT_TAG = "kd.output_sha256"


def tag_output(run: StageRun, path: Path) -> None:
    """Tag a stage's run with the sha256 of its key output (weights, or the shard manifest),
    so a later stage that reads that exact file can find the run that made it."""
    if run.client is not None:
        import hashlib

        run.set_tags({OUTPUT_TAG: hashlib.sha256(Path(path).read_bytes()).hexdigest()})


def link_input_runs(run: StageRun, inputs: Mapping[str, Path]) -> None:
    """Tag `run` with `kd.input_run.<stage>` = the id of the run that produced each input."""
    if run.client is None:
        return
    import hashlib

    exp_id = run.client.get_run(run.run_id).info.experiment_id
    tags = {}
    for stage, path in inputs.items():
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        # and by stage: two variants' baselines of one network write the same bytes
        found = run.client.search_runs(
            [exp_id], filter_string=f"tags.`{OUTPUT_TAG}` = '{digest}' and "
                                    f"tags.`kd.stage_name` = '{stage}'",
            order_by=["attributes.start_time DESC"], max_results=1)
        # MLflow tag keys take no '@': teacher@cnn_0 -> kd.input_run.teacher/cnn_0
        key = f"kd.input_run.{stage.replace('@', '/')}"
        tags[key] = found[0].info.run_id if found else "not tracked"
    run.set_tags(tags)
