"""Re-check on validation rows the default that was once chosen on test rows: BatchNorm in cnn1d.

    dvc repro prepare && python benchmarks/batchnorm.py    # ~2.5 min at one thread

Trains the default teacher member (params.yaml) with `batchnorm: true` and `false`, seeds 0
and 1, exactly as `kd teacher` does, on data/prepared, and prints and writes the validation
accuracy and NLL of each (the test rows are not read for the choice; the stage's own test
figure is printed by it, not recorded here).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ["KD_TRACKING"] = "0"

import torch  # noqa: E402
import yaml  # noqa: E402

from kd.config import _deep_merge, parse_config  # noqa: E402
from stages import teacher  # noqa: E402


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
    torch.set_num_threads(1)
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    prepared = (ROOT / "data/prepared").resolve()
    work = Path(tempfile.mkdtemp(prefix="kd-bench-bn-"))
    out: dict = {}
    old = os.getcwd()
    os.chdir(work)
    try:
        for seed in (0, 1):
            for bn in (True, False):
                p = _deep_merge(base, {"teacher": {"defaults": {"knobs": {"batchnorm": bn}}}})
                p["teacher"]["members"] = {"m": {"train": {"seed": seed}}}
                m = teacher.run(parse_config(p), "m", work / f"{seed}-{bn}", prepared)
                out[f"seed{seed}.batchnorm_{str(bn).lower()}"] = {
                    "val_accuracy": m["val_accuracy"], "val_nll": m["val_nll"]}
    finally:
        os.chdir(old)
        shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(out, indent=2)
    print(text)
    (ROOT / "benchmarks/results/batchnorm.json").write_text(text + "\n")


if __name__ == "__main__":
    main()
