"""Re-check on validation rows the default that was once chosen on test rows: BatchNorm in cnn1d.

    dvc repro prepare && python benchmarks/batchnorm.py    # ~2.5 min at one thread
    python benchmarks/batchnorm.py --epochs 2 --out /tmp/batchnorm-smoke.json   # a smoke run

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

from kd.config import deep_merge, parse_config  # noqa: E402
from stages import teacher  # noqa: E402


def member_params(base: dict, seed: int, batchnorm: bool, epochs: int | None = None) -> dict:
    """`base` with one teacher member, `m`: the default member with `batchnorm` and `seed`
    (and `epochs`, when given)."""
    p = deep_merge(base, {"teacher": {"defaults": {"knobs": {"batchnorm": batchnorm}}}})
    train = {"seed": seed} if epochs is None else {"seed": seed, "epochs": epochs}
    p["teacher"]["members"] = {"m": {"train": train}}
    return p


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=None, help="default: the teacher's")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/batchnorm.json")
    args = ap.parse_args()
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
                cfg = parse_config(member_params(base, seed, bn, args.epochs))
                m = teacher.run(cfg, "m", work / f"{seed}-{bn}", prepared)
                out[f"seed{seed}.batchnorm_{str(bn).lower()}"] = {
                    "val_accuracy": m["val_accuracy"], "val_nll": m["val_nll"]}
    finally:
        os.chdir(old)
        shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(out, indent=2)
    print(text)
    args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
