"""The student as an MLflow pyfunc model, logged "from code" (no pickled Python object).

    model = mlflow.pyfunc.load_model("runs:/<run_id>/student")
    probs = model.predict(x)          # x: (N, F) float32 flat rows, as stored -> (N, C)

The weights travel as the run's `model_dir` artifact (model.safetensors + model.json) and are
rebuilt by `kd.models.load_model`; the `kd` package is bundled with the model. The student
stage logs it with `log_pyfunc_model`, which lives here rather than in kd.tracking: every stage
imports kd.tracking, and only the student needs the model families to log its model.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel

if TYPE_CHECKING:
    from kd.tracking import StageRun


class KDStudent(PythonModel):
    def load_context(self, context) -> None:
        from kd.models import load_model

        self.model, self.spec = load_model(context.artifacts["model_dir"])

    # MLflow warns at every log and load of a predict without a type hint. It infers no schema
    # from an ndarray hint and converts nothing, so the logged signature (a (-1, F) float32
    # tensor, from the input example) still describes the input, and a DataFrame still works.
    def predict(self, context, model_input: np.ndarray, params: dict | None = None) -> np.ndarray:
        import torch

        x = np.asarray(getattr(model_input, "values", model_input), dtype=np.float32)
        x = x.reshape(len(x), *self.spec["input_shape"])  # (N, *shape)
        with torch.no_grad():
            return torch.softmax(self.model(torch.from_numpy(x)), dim=1).numpy()  # (N, C)


def log_pyfunc_model(run: StageRun, model_dir: Path, input_example) -> None:
    """Log a trained model directory as an MLflow pyfunc model named "student", with a
    signature and an input example, from code (this file): nothing is pickled."""
    if run.client is None:
        return
    from mlflow.models import infer_signature

    kd_package = Path(__file__).resolve().parent  # bundled: load_context imports kd.models
    example = np.asarray(input_example, dtype=np.float32)
    probe = KDStudent()
    probe.load_context(type("Ctx", (), {"artifacts": {"model_dir": str(model_dir)}})())
    signature = infer_signature(example, probe.predict(None, example))
    previous = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
    mlflow.set_tracking_uri(run.uri)  # the fluent API below logs to the stage's store
    try:
        with mlflow.start_run(run_id=run.run_id):
            mlflow.pyfunc.log_model(
                name="student", python_model=str(Path(__file__).resolve()),  # run by MLflow on load
                artifacts={"model_dir": str(model_dir)}, code_paths=[str(kd_package)],
                signature=signature, input_example=example,
                pip_requirements=["torch==2.13.0", "safetensors", "numpy", "mlflow"],
            )
    finally:
        mlflow.set_tracking_uri(previous)


mlflow.models.set_model(KDStudent())  # what MLflow loads when it runs this file
