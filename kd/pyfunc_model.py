"""The student as an MLflow pyfunc model, logged "from code" (no pickled Python object).

    model = mlflow.pyfunc.load_model("runs:/<run_id>/student")
    probs = model.predict(x)          # x: (N, F) float32 flat rows, as stored -> (N, C)

The weights travel as the run's `model_dir` artifact (model.safetensors + model.json) and are
rebuilt by `kd.models.load_model`; the `kd` package is bundled with the model.
"""

from __future__ import annotations

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel


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


mlflow.models.set_model(KDStudent())
