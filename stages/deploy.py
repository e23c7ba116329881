"""Stage `deploy`: the chosen student variant as a standard file, fp32 and int8 ONNX, checked
before written.

    kd deploy                         # or: dvc repro deploy
    kd predict --model data/deploy/student.int8.onnx rows.parquet predictions.parquet

Ships the variant kd/evaluate/choose.py picks on validation rows (the smallest that keeps
`report.retain_target` of the ensemble's validation accuracy), so it reads every
`data/student/<variant>/metrics.json` and the shards' validation logits, then that variant's
model and `data/prepared/` (the normalisation and class names go into the ONNX
files' metadata; test rows check the export; labeled training rows calibrate static int8;
validation rows judge its accuracy drop). Writes `data/deploy/student.onnx`,
`student.int8.onnx` and `metrics.json` at once, or nothing when a check fails. The work is
kd/deploy/build.py; the MLflow run holds the figures and both files as `mlflow.onnx` models
(`student_onnx`, `student_onnx_int8`).
"""

from __future__ import annotations

from pathlib import Path

from kd.config import Config
from kd.deploy.build import build
from kd.deploy.export import FP32, INT8
from kd.evaluate.choose import choose_variant
from kd.io.atomic import atomic_dir, write_json
from kd.io.faults import failpoint
from kd.models import check_fits, load_model
from kd.prepared import load_meta, read_split
from kd.tracking import flatten, log_onnx_model, stage_run, tag_output


def run(cfg: Config, out_dir: Path = Path("data/deploy"), prepared: Path = Path("data/prepared"),
        student_root: Path = Path("data/student"),
        shards: Path = Path("data/soft_targets")) -> dict:
    meta = load_meta(prepared)
    choice = choose_variant(cfg, student_root, shards)
    variant = choice["variant"]
    model, spec = load_model(student_root / variant)
    check_fits(spec, student_root / variant, meta, f"student '{variant}'")
    params = flatten({"deploy": cfg.deploy.model_dump(), "report": cfg.report.model_dump()})
    with stage_run(cfg, "deploy", params=params) as tracking:
        tracking.set_tags({"kd.variant": variant})
        with atomic_dir(out_dir) as tmp:
            figures = {"variant": variant,
                       **build(model, spec, meta, cfg.deploy, prepared, tmp)}
            failpoint("deploy.write")
            write_json(tmp / "metrics.json", figures)
        tracking.log_metrics({k: v for k, v in flatten(figures).items()
                              if isinstance(v, int | float)})
        tracking.set_tags({"kd.quantization": figures["quantization"]})
        example = read_split(prepared, "test")[0].x[:5]  # (5, F) normalised rows, as stored
        log_onnx_model(tracking, out_dir / FP32, "student_onnx", example)
        log_onnx_model(tracking, out_dir / INT8, "student_onnx_int8", example)
        tag_output(tracking, out_dir / INT8)
    f, q = figures["fp32"], figures["int8"]
    print(f"deploy: student '{variant}' ({choice['reason']})")
    print(f"deploy: fp32 {f['bytes'] / 1024:.1f} KiB, test accuracy {f['accuracy']:.4f}, "
          f"max |logit diff| {f['max_abs_logit_diff']:.2g} against PyTorch; int8 "
          f"({figures['quantization']}) {q['bytes'] / 1024:.1f} KiB ({q['size_ratio']:.2f}x), "
          f"test accuracy {q['accuracy']:.4f} -> {out_dir}")
    g = q["gate"]
    print(f"deploy: int8 gate {g['verdict']}: on {g['rows']} validation rows int8 lost "
          f"{g['lost']} and gained {g['gained']} against fp32, drop {g['drop']:+.4f} (at least "
          f"{g['drop_lower_bound']:+.4f} at {g['confidence']:.0%}; max {g['max_drop']:g})")
    return figures
