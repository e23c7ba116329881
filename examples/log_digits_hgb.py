"""A model trained elsewhere, for examples/byot_digits.yaml: a scikit-learn
HistGradientBoostingClassifier on the digits' labeled training rows, logged to the local MLflow
store and registered as `digits-hgb` with the alias `champion`.

    dvc repro prepare && python examples/log_digits_hgb.py [--prepared data/prepared]

It reads the prepared labeled rows (never the validation or test rows) and undoes `kd prepare`'s
normalisation, so the model sees the raw pixel values (0-16) as a user's own training would;
the member says `inputs: raw`. Logged with pyfunc_predict_fn="predict_proba": `mlflow.pyfunc`
then returns class probabilities, whose log the pipeline takes as logits.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

# the tree type of a HistGradientBoostingClassifier, which skops will not load unless told
TRUSTED = ["sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor"]


def raw_training_rows(prepared: Path) -> tuple[np.ndarray, np.ndarray]:
    """(N, 64) raw pixel values and (N,) labels of the labeled training rows."""
    from kd.prepared import load_meta, read_split

    meta = load_meta(prepared)
    labeled, is_val = read_split(prepared, "labeled")
    norm = meta["normalization"]
    x = labeled.x[~is_val].astype(np.float64) * np.asarray(norm["std"]) + np.asarray(norm["mean"])
    return np.round(x).astype(np.float32), labeled.y[~is_val]  # pixels are integers 0-16


def fit_and_register(prepared: Path, tracking_uri: str, seed: int = 0,
                     name: str = "digits-hgb", alias: str = "champion") -> str:
    """Fit, log, register; point `alias` at the new version and return it."""
    import mlflow
    from sklearn.ensemble import HistGradientBoostingClassifier

    x, y = raw_training_rows(prepared)
    clf = HistGradientBoostingClassifier(max_iter=200, learning_rate=0.1, random_state=seed)
    clf.fit(x, y)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment("digits-hgb")
    with mlflow.start_run(run_name=f"hgb seed {seed}"):
        mlflow.log_params({"max_iter": 200, "learning_rate": 0.1, "seed": seed})
        info = mlflow.sklearn.log_model(clf, name="model", pyfunc_predict_fn="predict_proba",
                                        input_example=x[:2], registered_model_name=name,
                                        pip_requirements=["scikit-learn"],
                                        # MLflow 3 stores it with skops (no pickle), which
                                        # loads only the types named here as trusted
                                        skops_trusted_types=TRUSTED)
    version = str(info.registered_model_version)
    mlflow.MlflowClient().set_registered_model_alias(name, alias, version)
    return version


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prepared", type=Path, default=Path("data/prepared"))
    p.add_argument("--tracking-uri", default=f"sqlite:///{Path('mlflow.db').resolve()}",
                   help="default: mlflow.db in this directory (the pipeline's default store)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    version = fit_and_register(args.prepared, args.tracking_uri, args.seed)
    print(f"registered digits-hgb version {version} as digits-hgb@champion")


if __name__ == "__main__":
    main()
