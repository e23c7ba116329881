"""The CUDA paths against the CPU: a teacher member, the export and the student, in one run.

    python benchmarks/gpu.py --out benchmarks/results/gpu.json          # on a machine with a GPU

No test here runs on a GPU (none is available to the project's CI). A session that has one runs
this script as is (a few minutes on the default data with the shortened epochs below):

1. prepares the default data once (CPU);
2. in one working directory per device, trains the first teacher member, exports its logits and
   distils one student variant (`--variant`, else the one the pipeline chose, else the first
   listed: benchmarks/chosen.py), exactly as `kd teacher`, `kd export` and `kd student VARIANT`
   do, with `runtime.device` set to `cpu` and to `cuda`, timing each stage;
3. runs the CPU-trained member forward on both devices over the same rows (max abs logit
   difference: the same weights must give the same logits up to float rounding);
4. runs the student once more under torchrun with one rank and the nccl backend.

Prints and writes JSON: {machine, variant, variant_source, cpu: {stage: {seconds,
test_accuracy}}, cuda: {...}, logits_max_abs_diff, argmax_agreement, accuracy_gap: {stage: cuda
- cpu}, nccl: {...}}. Training on different devices takes different float paths, so accuracies
are compared with a tolerance, not for equality. `--device cpu` runs the "cuda" arm on the CPU
too (a dry run of the script).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ["KD_TRACKING"] = "0"

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from chosen import which_variant  # noqa: E402

from kd.config import deep_merge, parse_config  # noqa: E402
from kd.prepared import read_split  # noqa: E402
from kd.runtime.distributed import session  # noqa: E402
from kd.teachers.members import load_members, member_logits  # noqa: E402
from stages import export, prepare, student, teacher  # noqa: E402


def timed(fn, *args, **kwargs) -> tuple[dict, float]:
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, round(time.perf_counter() - t0, 3)


def arm(params: dict, work: Path, member: str, variant: str) -> dict:
    """teacher@member, export and student in `work` (which holds data/prepared)."""
    cfg = parse_config(params)
    old = os.getcwd()
    os.chdir(work)
    try:
        with session(cfg.runtime) as dist:
            t, t_s = timed(teacher.run, cfg, member, dist=dist)
            _, e_s = timed(export.run, cfg, dist=dist)
            s, s_s = timed(student.run, cfg, variant, dist=dist)
    finally:
        os.chdir(old)
    return {"device": str(dist.device),
            "teacher": {"seconds": t_s, "test_accuracy": t["test_accuracy"]},
            "export": {"seconds": e_s},
            "student": {"seconds": s_s, "test_accuracy": s["test_accuracy"]}}


def short_params(base: dict, variant: str, teacher_epochs: int, student_epochs: int,
                 unlabeled: int) -> dict:
    """`base` with its first teacher member alone, every epoch count shortened (the variant's
    own, which would win over the defaults', included) and tracking off."""
    member = next(iter(base["teacher"]["members"]))
    short = {"teacher": {"defaults": {"train": {"epochs": teacher_epochs}}},
             "student": {"variants": {variant: {"train": {"epochs": student_epochs}}}},
             "tracking": {"enabled": False}}
    if base.get("data", {}).get("source", "mnist1d") == "mnist1d":
        short["data"] = {"unlabeled_size": unlabeled}
    params = deep_merge(base, short)
    params["teacher"]["members"] = {member: deep_merge(
        base["teacher"]["members"][member] or {}, {"train": {"epochs": teacher_epochs}})}
    return params


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                    help="the device of the second arm (cpu: a dry run on a machine without GPU)")
    ap.add_argument("--teacher-epochs", type=int, default=20)
    ap.add_argument("--student-epochs", type=int, default=5)
    ap.add_argument("--unlabeled", type=int, default=10_000, help="mnist1d transfer rows")
    ap.add_argument("--variant", default=None,
                    help="the student variant (default: the one the pipeline chose)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/gpu.json")
    args = ap.parse_args()

    base = yaml.safe_load(args.params.read_text())
    pick = which_variant(parse_config(base), ROOT / "data", args.variant)
    variant = pick["variant"]
    params = short_params(base, variant, args.teacher_epochs, args.student_epochs,
                          args.unlabeled)
    member = next(iter(params["teacher"]["members"]))

    work = Path(tempfile.mkdtemp(prefix="kd-bench-gpu-"))
    result: dict = {"machine": {"cpu": platform.processor() or platform.machine(),
                                "torch": torch.__version__,
                                "cuda": torch.cuda.get_device_name(0)
                                if torch.cuda.is_available() else None},
                    "variant": variant, "variant_source": pick["source"]}
    try:
        cfg = parse_config(params)
        prepare.run(cfg, work / "cpu" / "data" / "prepared", root=ROOT)
        shutil.copytree(work / "cpu" / "data" / "prepared", work / "gpu" / "data" / "prepared")
        for name, device in (("cpu", "cpu"), ("cuda", args.device)):
            dev_params = deep_merge(params, {"runtime": {"device": device}})
            result[name] = arm(dev_params, work / ("cpu" if name == "cpu" else "gpu"), member,
                               variant)
        result["accuracy_gap"] = {s: round(result["cuda"][s]["test_accuracy"]
                                           - result["cpu"][s]["test_accuracy"], 4)
                                  for s in ("teacher", "student")}

        # the same (CPU-trained) weights forward on both devices
        meta = json.loads((work / "cpu/data/prepared/meta.json").read_text())
        models = load_members(cfg, meta, work / "cpu/data/teachers")
        test, _ = read_split(work / "cpu/data/prepared", "test")
        shape = tuple(meta["feature_shape"])
        on_cpu = member_logits(models, test.x, shape)[member]
        device = torch.device(args.device)
        on_dev = member_logits({k: m.to(device) for k, m in models.items()}, test.x, shape,
                               device)[member]
        result["logits_max_abs_diff"] = float(np.abs(on_cpu - on_dev).max())
        result["argmax_agreement"] = float((on_cpu.argmax(1) == on_dev.argmax(1)).mean())

        if args.device == "cuda":  # one rank under torchrun with nccl
            (work / "gpu/params.yaml").write_text(yaml.safe_dump(
                deep_merge(params, {"runtime": {"backend": "nccl"}})))
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                                   "--nproc-per-node", "1", "-m", "kd.cli", "student",
                                   variant], cwd=work / "gpu", capture_output=True, text=True)
            metrics = work / "gpu/data/student" / variant / "metrics.json"
            result["nccl"] = {"exit": proc.returncode,
                              "seconds": round(time.perf_counter() - t0, 3),
                              "test_accuracy": json.loads(metrics.read_text())["test_accuracy"]
                              if proc.returncode == 0 else None,
                              "stderr_tail": proc.stderr[-2000:]}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(result, indent=2)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
