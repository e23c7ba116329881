"""Hinton, Vinyals & Dean (2015)'s experiments on MNIST-1D, side by side with the paper's numbers.

    python benchmarks/hinton.py --seeds 0 1 2 --out benchmarks/results/hinton.json
    python benchmarks/hinton.py --quick          # a reduced run (fewer rows and epochs)

Builds a small pipeline in a temporary directory (prepare, the teacher members, export; MLflow
off, data/ untouched, one torch thread), then trains student variants once per seed, exactly as
`kd student` does with `train.seed` set:

- member-sized: the ensemble distilled into one member's architecture; the share of the
  ensemble's gain over its mean member that it keeps (paper, speech: 86%);
- omit: every transfer row of one class dropped (`omit: [c]`), for two classes; test accuracy on
  that class's rows before and after the bias chosen on validation rows (paper: 98.6% of 3s);
- fraction: `rows: labeled, fraction: 0.03`, soft targets (alpha 1) against the true labels
  alone (alpha 0) on the same rows (paper, speech: 57.0% against 44.5%);
- combine: mean_probs, mean_logits, kl_per_member, random_member on the default student, each
  against mean_probs with a paired interval (rows x seeds), validation and test.

Every setting is the params' default or written here; nothing is tuned on test rows, and the
default combine is compared on validation rows. Intervals: a paired bootstrap over test rows of
all seeds (kd/evaluate/stats.py) for differences, mean and min-max over seeds for levels.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ["KD_TRACKING"] = "0"

import numpy as np  # noqa: E402
import torch  # noqa: E402

from kd.config import deep_merge, parse_config  # noqa: E402
from kd.evaluate import stats  # noqa: E402
from kd.evaluate.metrics import ensemble_probs, expected_calibration_error, kl_from  # noqa: E402
from kd.models import load_model  # noqa: E402
from kd.prepared import load_meta, read_split  # noqa: E402
from kd.teachers.members import load_members, member_logits  # noqa: E402
from kd.train.loop import predict  # noqa: E402
from stages import export, prepare, student, teacher  # noqa: E402

PAPER = {"member_sized_gain_kept": 0.86, "omit_corrected": 0.986, "omit_uncorrected": None,
         "fraction_soft": 0.570, "fraction_hard": 0.445, "fraction_all_data": 0.589}
MEMBER = {"arch": "cnn1d", "knobs": {"channels": 32, "depth": 4, "kernel": 5,
                                      "batchnorm": True, "pool_every": 2}}


def params(quick: bool) -> dict:
    ep_t, ep_s = (15, 6) if quick else (40, 20)
    return {
        "data": {"source": "mnist1d", "unlabeled_size": 8000 if quick else 40000},
        "teacher": {"defaults": {**MEMBER, "train": {"epochs": ep_t, "augment": {"shift": 6}}},
                    "members": {f"m{i}": {"train": {"seed": i}} for i in range(4)}},
        # the project's default student (params.yaml): a cnn1d of 16 channels
        "student": {"defaults": {"arch": "cnn1d", "knobs": {**MEMBER["knobs"], "channels": 16},
                                 "train": {"epochs": ep_s}}, "variants": {}},
        "tracking": {"enabled": False}, "runtime": {"threads": 1},
    }


def experiments(omit: list[int], fraction: float, fraction_epochs: int,
                omit_T: float) -> dict[str, dict]:
    few = {"rows": "labeled", "fraction": fraction, "train": {"epochs": fraction_epochs,
                                                               "batch_size": 32}}
    return {
        **{f"combine_{c}": {"combine": c} for c in ("mean_probs", "mean_logits",
                                                     "kl_per_member", "random_member")},
        "member_sized": dict(MEMBER),
        # the paper's MNIST temperature (20): the omitted class lives only in the dark
        # knowledge of the other classes' rows, which a low T flattens away
        **{f"omit_{c}": {"omit": [c], "temperature": omit_T} for c in omit},
        "fraction_soft": {**few, "alpha": 1.0},
        "fraction_hard": {**few, "alpha": 0.0},  # the true labels alone, on the same rows
    }


def level(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values),
            "per_seed": values}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--quick", action="store_true", help="8,000 unlabeled rows, fewer epochs")
    ap.add_argument("--omit", type=int, nargs="+", default=[3, 8])
    ap.add_argument("--omit-temperature", type=float, default=20.0)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/hinton.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    base = params(args.quick)
    runs = experiments(args.omit, 0.03, 40 if args.quick else 100, args.omit_temperature)
    base["student"]["variants"] = runs
    work = Path(tempfile.mkdtemp(prefix="kd-bench-hinton-"))
    old, t_start = os.getcwd(), time.perf_counter()
    os.chdir(work)
    try:
        cfg = parse_config(base)
        prepare.run(cfg, Path("data/prepared"))
        for m in cfg.teacher.members:
            teacher.run(cfg, m)
        export.run(cfg)
        meta = load_meta(Path("data/prepared"))
        shape = tuple(meta["feature_shape"])
        test, _ = read_split(Path("data/prepared"), "test")
        members = load_members(cfg, meta, Path("data/teachers"))
        logits = member_logits(members, test.x, shape)
        m_probs = {m: torch.softmax(torch.from_numpy(z), 1).numpy() for m, z in logits.items()}
        t_probs = ensemble_probs([torch.from_numpy(z) for z in logits.values()])
        ens_right = t_probs.argmax(1) == test.y
        member_acc = {m: float((p.argmax(1) == test.y).mean()) for m, p in m_probs.items()}
        print(f"ensemble test {ens_right.mean():.4f}; members {member_acc}", flush=True)
        out: dict[str, dict] = {v: {"test": [], "val": [], "right": [], "agree": [], "kl": [],
                                    "ece": [], "omit": []} for v in runs}
        for seed in args.seeds:
            seeded = deep_merge(base, {"student": {"variants": {
                v: deep_merge(r, {"train": {"seed": seed}}) for v, r in runs.items()}}})
            cfg = parse_config(seeded)
            for v in runs:
                t0 = time.perf_counter()
                m = student.run(cfg, v, out_root=work / "s" / str(seed))
                model, _ = load_model(work / "s" / str(seed) / v)
                p = torch.softmax(predict(model, test.x), 1).numpy()
                o = out[v]
                o["test"].append(m["test_accuracy"])
                o["val"].append(m.get("val_accuracy"))
                o["right"].append(p.argmax(1) == test.y)
                o["agree"].append(float((p.argmax(1) == t_probs.argmax(1)).mean()))
                o["kl"].append(kl_from(t_probs, p))
                o["ece"].append(expected_calibration_error(p, test.y))
                if "omit" in m:
                    o["omit"].append(m["omit"])
                print(f"seed {seed} {v}: test {m['test_accuracy']:.4f} val "
                      f"{m.get('val_accuracy', float('nan')):.4f} "
                      f"({time.perf_counter() - t0:.0f}s)", flush=True)
    finally:
        os.chdir(old)
        shutil.rmtree(work, ignore_errors=True)
    result = summarise(out, args, ens_right, member_acc, t_probs, test.y, m_probs)
    result["wall_s"] = round(time.perf_counter() - t_start)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print_table(result)


def paired(a: list[np.ndarray], b: list[np.ndarray]) -> dict:
    """a - b over the test rows of every seed (paired: the same rows, the same seeds)."""
    return stats.compare(np.concatenate(a), np.concatenate(b))


def summarise(out: dict, args, ens_right: np.ndarray, member_acc: dict, t_probs: np.ndarray,
              y: np.ndarray, m_probs: dict) -> dict:
    ens, mean_member = float(ens_right.mean()), statistics.fmean(member_acc.values())
    variants = {v: {"test_accuracy": level(o["test"]), "val_accuracy": level(o["val"]),
                    "agreement": level(o["agree"]), "kl_from_ensemble": level(o["kl"]),
                    "ece": level(o["ece"])} for v, o in out.items()}
    ms = out["member_sized"]
    kept = [(a - mean_member) / (ens - mean_member) for a in ms["test"]]
    res = {"seeds": args.seeds, "quick": args.quick, "paper": PAPER,
           "omit_temperature": args.omit_temperature,
           "ensemble": {"test_accuracy": ens, "ece": expected_calibration_error(t_probs, y)},
           "members": {"test_accuracy": member_acc, "mean": mean_member,
                       "ece": {m: expected_calibration_error(p, y) for m, p in m_probs.items()}},
           "variants": variants,
           "member_sized": {"gain_kept": level(kept),
                            "vs_ensemble": paired(ms["right"], [ens_right] * len(ms["right"]))}}
    res["omit"] = {}
    for c in args.omit:
        o = out[f"omit_{c}"]["omit"]
        res["omit"][str(c)] = {k: level([r[k] for r in o]) for k in (
            "bias", "test_accuracy_omitted", "test_accuracy_omitted_corrected",
            "test_accuracy_corrected")} | {"test_rows": o[0]["test_rows"]}
    fs, fh = out["fraction_soft"], out["fraction_hard"]
    res["fraction"] = {"soft_minus_hard": paired(fs["right"], fh["right"]),
                       "val_soft_minus_hard": [a - b for a, b in zip(fs["val"], fh["val"],
                                                                      strict=True)]}
    ref = out["combine_mean_probs"]
    res["combine"] = {c: {"vs_mean_probs": paired(out[f"combine_{c}"]["right"], ref["right"]),
                          "val_minus_mean_probs": [a - b for a, b in zip(
                              out[f"combine_{c}"]["val"], ref["val"], strict=True)]}
                      for c in ("mean_logits", "kl_per_member", "random_member")}
    return res


def pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def ci(c: dict) -> str:
    return f"{100 * c['diff']:+.2f} [{100 * c['ci_low']:+.2f}, {100 * c['ci_high']:+.2f}]"


def print_table(r: dict) -> None:
    v = r["variants"]
    kept = r["member_sized"]["gain_kept"]
    rows = [("member-sized student: share of the ensemble's gain kept", "86%",
             f"{pct(kept['mean'])} ({pct(kept['min'])}-{pct(kept['max'])})")]
    for c, o in r["omit"].items():
        rows.append((f"omitted {c}: its test rows right, before -> after the bias",
                     "-> 98.6% (3s)", f"{pct(o['test_accuracy_omitted']['mean'])} -> "
                     f"{pct(o['test_accuracy_omitted_corrected']['mean'])} (min "
                     f"{pct(o['test_accuracy_omitted_corrected']['min'])})"))
    rows.append(("3% of labeled rows: soft - hard targets (points)", "+12.5",
                 f"{ci(r['fraction']['soft_minus_hard'])}; soft "
                 f"{pct(v['fraction_soft']['test_accuracy']['mean'])}, hard "
                 f"{pct(v['fraction_hard']['test_accuracy']['mean'])}"))
    for c, o in r["combine"].items():
        rows.append((f"combine {c} - mean_probs (points; val mean)", "-",
                     f"{ci(o['vs_mean_probs'])}; val "
                     f"{100 * statistics.fmean(o['val_minus_mean_probs']):+.2f}"))
    print(f"\nensemble test {pct(r['ensemble']['test_accuracy'])}, mean member "
          f"{pct(r['members']['mean'])}; seeds {r['seeds']}{' (quick)' if r['quick'] else ''}")
    for name, paper, ours in rows:
        print(f"{name:<62}{paper:>14}  {ours}")


if __name__ == "__main__":
    main()
