"""Each student variant's baseline spec as a file: what `baseline@<variant>` trains.

    write_baseline_specs(cfg, Path("data/baseline_specs"))     # stage baseline_specs
    spec = read_baseline_spec(cfg, "small", Path("data/baseline_specs"))   # baseline@small

A baseline uses a variant's `arch`, `knobs` and `train` with the `baseline` section on top
(`Config.baseline_spec`), never its temperature, alpha, combine, targets or rows. DVC can declare
a params key, not "the keys of this variant that a baseline reads" (a variant may leave any of
them to `student.defaults`), so `baseline@<variant>` depends on this file instead: canonical JSON
(sorted keys) that is the same bytes whenever the resolved spec is the same, and the baseline
trains on what the file holds, so its deps are exactly what it uses.
"""

from __future__ import annotations

from pathlib import Path

from kd.config import Config, ModelConfig
from kd.errors import ArtifactError
from kd.io.atomic import atomic_dir, read_json, write_json


def spec_json(spec: ModelConfig) -> dict:
    return spec.model_dump(mode="json")


def write_baseline_specs(cfg: Config, out_dir: Path) -> dict[str, dict]:
    """`<variant>.json` for every variant, replacing `out_dir` whole (a removed variant's file
    goes with it)."""
    specs = {v: spec_json(cfg.baseline_spec(v)) for v in cfg.student.variants}
    with atomic_dir(out_dir) as tmp:
        for variant, spec in specs.items():
            write_json(tmp / f"{variant}.json", spec)
    return specs


def read_baseline_spec(cfg: Config, variant: str, specs_dir: Path) -> ModelConfig:
    """The variant's baseline spec as its file holds it, refused when params.yaml now resolves
    to another (an edit since `kd baseline-specs` ran: training on the file would ignore it,
    training on the params would leave DVC's record of the inputs wrong)."""
    want = spec_json(cfg.baseline_spec(variant))  # an unknown variant is one line first
    path = specs_dir / f"{variant}.json"
    fix = f"run `kd baseline-specs` first (`dvc repro baseline@{variant}` runs both)"
    if not path.is_file():
        raise ArtifactError(f"{path}: file not found: {fix}")
    held = read_json(path, ArtifactError)
    if held != want:
        raise ArtifactError(f"{path}: not the spec params.yaml gives baseline@{variant} now: "
                            f"{fix}")
    return ModelConfig.model_validate(held)
