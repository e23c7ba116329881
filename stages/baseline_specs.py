"""Stage `baseline_specs`: every student variant's baseline spec, one small file each.

    kd baseline-specs                 # or: dvc repro baseline_specs

Writes `data/baseline_specs/<variant>.json`: the variant's `arch`, `knobs` and `train` with the
`baseline` section on top, as canonical JSON (kd/specs.py). `baseline@<variant>` depends on its
file, not on the student params, so a temperature, alpha, combine, targets or rows change reruns
this stage (a second, no training) and no baseline: the files come out the same bytes. One stage
for all variants: one Python start, and a removed variant's file goes with the folder.
No MLflow run: like `source@`, a stage this small would bury the runs that trained something.
"""

from __future__ import annotations

from pathlib import Path

from kd.config import Config
from kd.specs import write_baseline_specs


def run(cfg: Config, out_dir: Path = Path("data/baseline_specs")) -> dict[str, dict]:
    specs = write_baseline_specs(cfg, out_dir)
    print(f"baseline_specs: {len(specs)} variant{'s' * (len(specs) != 1)} -> {out_dir}/")
    return specs
