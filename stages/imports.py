"""Stage `import@<name>`: an existing model joins the ensemble.

    kd import hgb                     # or: dvc repro import@hgb

Fetches the version that `source@<name>` resolved (data/sources/<name>.json; resolved here when
that file is absent) of `teacher.imports.<name>`: an MLflow model URI, an ONNX file or a
torch.export file. Writes `data/teachers/<name>/files/` (the model as the source gives it),
`model.json` (kind, source, resolved version, digest of files/, how to run it) and
`metrics.json` (test and validation accuracy and NLL, as a native member's). The member is run
on prepared rows first: a model that takes another width, predicts other classes, or says
probabilities and returns something else stops here in one line. DVC versions the directory,
so `dvc push` shares it and a teammate's `dvc pull` needs no access to the registry.
"""

from __future__ import annotations

from pathlib import Path

import torch

from kd.config import Config
from kd.evaluate.metrics import quality, softmax
from kd.io.atomic import atomic_dir, write_json
from kd.prepared import load_meta, read_split
from kd.teachers.imported import load_imported
from kd.teachers.sources import earlier_answer, fetch_and_check, import_spec, resolve
from kd.tracking import stage_run, tag_output, tracking_uri


def score(model: torch.nn.Module, x, y, shape: tuple, n_classes: int) -> dict:
    with torch.no_grad():
        logits = model(torch.from_numpy(x).view(len(x), *shape))  # (N, C)
    q = quality(softmax(logits), y, n_classes)
    return {"accuracy": q["accuracy"], "nll": q["nll"]}


def run(cfg: Config, name: str, out_root: Path = Path("data/teachers"),
        prepared: Path = Path("data/prepared"), sources: Path = Path("data/sources")) -> dict:
    spec = import_spec(cfg, name)
    meta = load_meta(prepared)
    uri, timeout = tracking_uri(cfg), cfg.tracking.timeout_s
    resolved = earlier_answer(sources / f"{name}.json", spec) or resolve(spec, uri, timeout)
    labeled, is_val = read_split(prepared, "labeled")
    test, _ = read_split(prepared, "test")
    shape, n = tuple(meta["feature_shape"]), meta["n_classes"]
    out = out_root / name
    with stage_run(cfg, f"import@{name}", params={"kind": spec.kind, "source": spec.source,
                                                  "version": resolved["version"]}) as tracking:
        with atomic_dir(out) as tmp:
            record = fetch_and_check(name, spec, resolved, tmp, meta, labeled.x, uri, timeout)
            write_json(tmp / "model.json", record)
            model = load_imported(tmp, meta)
            t = score(model, test.x, test.y, shape, n)
            metrics = {"test_accuracy": t["accuracy"], "test_nll": t["nll"]}
            if is_val.any():
                v = score(model, labeled.x[is_val], labeled.y[is_val], shape, n)
                metrics |= {"val_accuracy": v["accuracy"], "val_nll": v["nll"]}
            if record["params"] is not None:
                metrics["params"] = record["params"]
            write_json(tmp / "metrics.json", metrics)
        tracking.log_metrics(metrics)
        tracking.log_artifact(out / "model.json")
        tag_output(tracking, out / "model.json")
    print(f"import@{name}: {spec.source} (version {resolved['version']}): test accuracy "
          f"{metrics['test_accuracy']:.4f}, NLL {metrics['test_nll']:.4f} -> {out}")
    return metrics
