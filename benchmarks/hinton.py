"""Hinton, Vinyals & Dean (2015)'s experiments on MNIST-1D, side by side with the paper's numbers.

    python benchmarks/hinton.py --seeds 0 1 2 --out benchmarks/results/hinton.json
    python benchmarks/hinton.py --quick          # a reduced run (fewer rows and epochs)
    python benchmarks/hinton.py --work /tmp/h --only omit_8   # keep and reuse; one experiment
    python benchmarks/hinton.py --only member_sized --seeds $(seq 0 19) --eval-rows 100000 \
        --out benchmarks/results/hinton_member_eval.json   # the share on 100,000 fresh rows

Builds a small pipeline in a temporary directory (prepare, the teacher members, export; MLflow
off, data/ untouched, one torch thread), then trains student variants once per seed, exactly as
`kd student` does with `train.seed` set:

- member-sized: a second pipeline of 10 MLP members (VARIED: weaker and more varied than the
  cnn1d's, whose 0.5-point gain drowned in seed noise) distilled into one MLP of their size; the
  share of the ensemble's gain over its mean member that it keeps, with a bootstrap interval over
  seeds and test rows (paper, speech: 86%). On the standard 1,000 test rows a 2-point gain is
  known only to about a point, so --eval-rows N also scores the members, the ensemble and the
  students on N fresh rows from MNIST-1D's generator (same distribution, another seed: never
  trained, distilled or validated on) and reports the share on them;
- omit: every transfer row of one class dropped (`omit: [c]`, T = 20, 40 epochs), for two
  classes, on a student of the members' size and on the default one; test accuracy on that
  class's rows before and after the bias chosen on validation rows (paper: 98.6% of 3s);
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

from kd.config import MNIST1D_SEED, deep_merge, parse_config  # noqa: E402
from kd.datasets import PORTABLE_DECIMALS, _mnist1d  # noqa: E402
from kd.distill.rows import with_bias  # noqa: E402
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


# members that differ more than the cnn1d's (MLPs on MNIST-1D: weaker, and their errors
# less alike), so that the ensemble's gain over its mean member stands well above the seed
# noise of one student, which the cnn1d's 0.5-point gain did not
VARIED = {"arch": "mlp", "knobs": {"depth": 2, "width": 128}, "count": 10}  # the paper: 10


def member_params(quick: bool, width: int | None = None, shift: int | None = None) -> dict:
    """The member-sized experiment's pipeline: VARIED's members (or of another MLP width, or
    trained with another shift augmentation), the student their size."""
    p = params(quick)
    arch = {"arch": VARIED["arch"], "knobs": {**VARIED["knobs"],
                                              **({"width": width} if width else {})}}
    train = deep_merge(p["teacher"]["defaults"]["train"],
                       {} if shift is None else {"augment": {"shift": shift}})
    p["teacher"] = {"defaults": {**arch, "train": train},
                    "members": {f"m{i}": {"train": {"seed": i}} for i in range(VARIED["count"])}}
    p["student"]["defaults"] = {**arch, "train": p["student"]["defaults"]["train"]}
    return p


# student epochs of the omit runs: a class the student never sees lives only in its logit's
# extrapolation from the other classes' soft targets, which keeps improving after the seen
# classes' accuracy has settled (omitted 8, default student, seed 0, after the bias: 82% at 20
# epochs, 82-93% at 40, 90% at 80; the member-sized student at 40: 96%)
OMIT_EPOCHS = {True: 12, False: 40}


def experiments(omit: list[int], fraction: float, fraction_epochs: int,
                omit_T: float, omit_epochs: int) -> dict[str, dict]:
    few = {"rows": "labeled", "fraction": fraction, "train": {"epochs": fraction_epochs,
                                                               "batch_size": 32}}
    return {
        **{f"combine_{c}": {"combine": c} for c in ("mean_probs", "mean_logits",
                                                     "kl_per_member", "random_member")},
        # the paper's MNIST temperature (20). omit_<c>: a student of the members' size (the
        # paper's distilled MNIST net had 800 units a layer to its teacher's 1,200);
        # omit_<c>_default: the project's default student, a quarter of a member's parameters
        **{f"omit_{c}{tag}": {"omit": [c], "temperature": omit_T, **arch,
                               "train": {"epochs": omit_epochs}}
           for c in omit for tag, arch in (("", MEMBER), ("_default", {}))},
        "fraction_soft": {**few, "alpha": 1.0},
        "fraction_hard": {**few, "alpha": 0.0},  # the true labels alone, on the same rows
    }


def upstream(cfg, raw: dict, stamp: Path) -> None:
    """prepare, the members and export, unless `stamp` says they ran with these data, teacher
    and export params (a kept --work directory)."""
    key = json.dumps({k: raw.get(k) for k in ("data", "teacher", "export")}, sort_keys=True)
    if stamp.exists() and stamp.read_text() == key:
        print(f"reusing the prepared data, members and shards in {stamp.parent}", flush=True)
        return
    shutil.rmtree("s", ignore_errors=True)  # students of other members
    prepare.run(cfg, Path("data/prepared"))
    for m in cfg.teacher.members:
        teacher.run(cfg, m)
    export.run(cfg)
    stamp.write_text(key)


def student_run(cfg, variant: str, root: Path) -> dict:
    """student.run, or the metrics of the same variant's run already in `root` (a kept --work
    directory: its params stamped beside them, the upstream unchanged since)."""
    stamp = root / variant / "bench_params.json"
    key = json.dumps(cfg.student.variant(variant).model_dump(), sort_keys=True, default=str)
    if stamp.exists() and stamp.read_text() == key:
        print(f"reusing {root / variant}", flush=True)
        return json.loads((root / variant / "metrics.json").read_text())
    m = student.run(cfg, variant, out_root=root)
    stamp.write_text(key)
    return m


# the evaluation rows' generator seed: neither the standard split's (42) nor the transfer set's
# (data.unlabeled_seed, 1 by default); fixed before any evaluation row was scored
EVAL_SEED = 2015


def eval_rows(n: int, seed: int, unlabeled_seed: int, prepared: Path
              ) -> tuple[np.ndarray, np.ndarray]:
    """`n` fresh MNIST-1D rows (n/10 a class) and their labels from the package's generator at
    `seed`, made as the transfer set is (kd/datasets.py: rounded to PORTABLE_DECIMALS) and
    normalised as prepare normalised the pipeline's rows (its meta.json's statistics): the test
    rows' distribution, another draw. Refused when `seed` is the standard split's or the
    transfer set's, or when any row equals one of the prepared rows (labeled, validation,
    unlabeled, test): these rows score, they never train, distil or choose."""
    if n <= 0 or n % 10:
        raise SystemExit(f"--eval-rows: {n} is not a positive multiple of 10 (the generator "
                         "makes as many rows of each class)")
    if seed in (MNIST1D_SEED, unlabeled_seed):
        raise SystemExit(f"--eval-seed: {seed} is the seed of the pipeline's own rows (standard "
                         f"split {MNIST1D_SEED}, transfer set {unlabeled_seed}); pick another")
    d = _mnist1d(n, seed, 1.0)
    norm = load_meta(prepared)["normalization"]
    x = np.round(d["x"], PORTABLE_DECIMALS).astype(np.float32)  # as_split's float32, then
    x = ((x - np.asarray(norm["mean"])) / np.asarray(norm["std"])).astype(np.float32)  # prepare's
    seen = {r.tobytes() for split in ("labeled", "unlabeled", "test")
            for r in np.ascontiguousarray(read_split(prepared, split)[0].x)}
    if clash := [i for i, r in enumerate(x) if r.tobytes() in seen]:
        raise SystemExit(f"--eval-seed {seed}: {len(clash)} of its rows (first {clash[0]}) equal "
                         "a prepared row; pick another seed")
    return x, np.asarray(d["y"], np.int64)


def scored(members: dict, x: np.ndarray, y: np.ndarray, shape: tuple) -> dict:
    """The members' and their ensemble's (mean probabilities) answers on rows `x`."""
    logits = member_logits(members, x, shape)
    m_probs = {m: torch.softmax(torch.from_numpy(z), 1).numpy() for m, z in logits.items()}
    t_probs = ensemble_probs([torch.from_numpy(z) for z in logits.values()])
    return {"y": y, "t_probs": t_probs, "m_probs": m_probs, "right": t_probs.argmax(1) == y,
            "member_acc": {m: float((p.argmax(1) == y).mean()) for m, p in m_probs.items()}}


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
    ap.add_argument("--work", type=Path, help="keep the pipelines here and reuse their prepared "
                    "data, members and shards when their params match (default: a temporary "
                    "directory, removed)")
    ap.add_argument("--only", nargs="+", help="run these experiments alone (names as in the "
                    "JSON: member_sized, omit_3, fraction_soft, combine_mean_probs, ...)")
    ap.add_argument("--members-width", type=int, help="member-sized experiment: the MLP members' "
                    f"(and student's) width (default {VARIED['knobs']['width']})")
    ap.add_argument("--members-shift", type=int, help="member-sized experiment: the members' "
                    "shift augmentation (default 6, as the cnn1d members')")
    ap.add_argument("--eval-rows", type=int, default=0, help="member-sized experiment: also "
                    "score it on this many fresh generator rows (a multiple of 10; default 0: "
                    "the test rows alone)")
    ap.add_argument("--eval-seed", type=int, default=EVAL_SEED, help="the fresh rows' generator "
                    f"seed (default {EVAL_SEED}; not 42 nor data.unlabeled_seed)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    base = params(args.quick)
    runs = experiments(args.omit, 0.03, 40 if args.quick else 100, args.omit_temperature,
                       OMIT_EPOCHS[args.quick])
    varied = member_params(args.quick, args.members_width, args.members_shift)
    wanted = {"member_sized"} | set(runs) if not args.only else set(args.only)
    runs = {v: r for v, r in runs.items() if v in wanted}
    work = args.work.resolve() if args.work else Path(tempfile.mkdtemp(prefix="kd-bench-hinton-"))
    t_start = time.perf_counter()
    try:
        found = {}
        if runs:
            found["main"] = pipeline(base, runs, args.seeds, work / "main")
        if "member_sized" in wanted:
            found["varied"] = pipeline(varied, {"member_sized": {}}, args.seeds, work / "varied",
                                       (args.eval_rows, args.eval_seed))
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    result = summarise(found, args)
    result["command"] = " ".join(["python", "benchmarks/hinton.py", *sys.argv[1:]])
    result["wall_s"] = round(time.perf_counter() - t_start)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print_table(result)


def pipeline(raw: dict, runs: dict[str, dict], seeds: list[int], work: Path,
             fresh: tuple[int, int] = (0, EVAL_SEED)) -> dict:
    """Prepare, members and export in `work` (reused when kept with the same params), then
    every variant of `runs` once per seed: test figures per variant, and the ensemble's; with
    fresh = (rows, seed), rows > 0, the same on that many eval_rows too."""
    raw = deep_merge(raw, {"student": {"variants": runs}})
    work.mkdir(parents=True, exist_ok=True)
    old = os.getcwd()
    os.chdir(work)
    try:
        cfg = parse_config(raw)
        upstream(cfg, raw, work / "upstream.json")
        meta = load_meta(Path("data/prepared"))
        test, _ = read_split(Path("data/prepared"), "test")
        members = load_members(cfg, meta, Path("data/teachers"))
        shape = tuple(meta["feature_shape"])
        ens = scored(members, test.x, test.y, shape)
        t_probs = ens["t_probs"]
        print(f"ensemble test {ens['right'].mean():.4f}; members {ens['member_acc']}", flush=True)
        if fresh[0]:
            ex, ey = eval_rows(*fresh, cfg.data.unlabeled_seed, Path("data/prepared"))
            ens["eval"] = scored(members, ex, ey, shape) | {"seed": fresh[1]}
            print(f"ensemble on {len(ey)} eval rows {ens['eval']['right'].mean():.4f}; mean "
                  f"member {statistics.fmean(ens['eval']['member_acc'].values()):.4f}",
                  flush=True)
        out: dict[str, dict] = {v: {"test": [], "val": [], "right": [], "agree": [], "kl": [],
                                    "ece": [], "omit": []} for v in runs}
        for seed in seeds:
            cfg = parse_config(deep_merge(raw, {"student": {"variants": {
                v: {"train": {"seed": seed}} for v in runs}}}))
            for v in runs:
                t0 = time.perf_counter()
                m = student_run(cfg, v, work / "s" / str(seed))
                model, _ = load_model(work / "s" / str(seed) / v)
                p = torch.softmax(predict(model, test.x), 1).numpy()
                o = out[v]
                o["test"].append(m["test_accuracy"])
                o["val"].append(m.get("val_accuracy"))
                o["right"].append(p.argmax(1) == test.y)
                o["agree"].append(float((p.argmax(1) == t_probs.argmax(1)).mean()))
                o["kl"].append(kl_from(t_probs, p))
                o["ece"].append(expected_calibration_error(p, test.y))
                if fresh[0]:
                    o.setdefault("eval_right", []).append(
                        predict(model, ex).numpy().argmax(1) == ey)
                if "omit" in m:
                    o["omit"].append(m["omit"])
                    o.setdefault("logits", []).append(predict(model, test.x).numpy())
                print(f"seed {seed} {v}: test {m['test_accuracy']:.4f} val "
                      f"{m.get('val_accuracy', float('nan')):.4f} "
                      f"({time.perf_counter() - t0:.0f}s)", flush=True)
    finally:
        os.chdir(old)
    return {"ensemble": ens, "variants": out}


def paired(a: list[np.ndarray], b: list[np.ndarray]) -> dict:
    """a - b over the test rows of every seed (paired: the same rows, the same seeds)."""
    return stats.compare(np.concatenate(a), np.concatenate(b))


def gain_kept(student: list[np.ndarray], ens: np.ndarray, members: np.ndarray,
              n_boot: int = 4000, seed: int = 0) -> dict:
    """The share of the ensemble's gain over its mean member that the student keeps,
    (student - mean member) / (ensemble - mean member) on the test rows, with a 95% bootstrap
    interval that resamples the seeds and, within them, the rows (the same rows for the
    student, the ensemble and the members: paired). student: (N,) bools per seed; ens: (N,)
    bools; members: (M, N) bools."""
    s = np.stack(student).astype(np.float64)  # (S, N)
    e, b = ens.astype(np.float64), members.astype(np.float64).mean(0)  # (N,), (N,)
    rng = np.random.default_rng(seed)
    boots, gains = [], []
    for _ in range(n_boot):
        rows = rng.integers(0, s.shape[1], s.shape[1])
        seeds = rng.integers(0, s.shape[0], s.shape[0])
        gap = e[rows].mean() - b[rows].mean()
        gains.append(gap)
        # s[seeds][:, rows].mean() without the (S, N) copy: each seed weighted by its draws
        kept = (np.bincount(seeds, minlength=len(s)) @ s)[rows].mean() / len(s)
        boots.append((kept - b[rows].mean()) / gap if gap > 0 else np.nan)
    lo, hi = np.nanpercentile(boots, [2.5, 97.5])
    per_seed = [(float(r.mean()) - b.mean()) / (e.mean() - b.mean()) for r in s]
    return {"mean": (s.mean() - b.mean()) / (e.mean() - b.mean()), "ci_low": float(lo),
            "ci_high": float(hi), "per_seed": per_seed,
            "ensemble_gain_points": 100 * (e.mean() - b.mean()),
            "ensemble_gain_ci_points": [100 * v for v in np.nanpercentile(gains, [2.5, 97.5])]}


def fresh_figures(ev: dict, student: list[np.ndarray]) -> dict:
    """The member-sized experiment on the fresh evaluation rows: levels, and the share kept
    with its interval over those rows and the seeds."""
    members = np.stack([p.argmax(1) == ev["y"] for p in ev["m_probs"].values()])
    return {"rows": len(ev["y"]), "generator_seed": ev["seed"],
            "ensemble": float(ev["right"].mean()),
            "members": ev["member_acc"], "mean_member": float(members.mean()),
            "student": level([float(r.mean()) for r in student]),
            "gain_kept": gain_kept(student, ev["right"], members)}


def omitted_accuracy(o: dict, y: np.ndarray, c: int) -> dict:
    """The omitted class's test rows right before and after each seed's validation-chosen bias,
    levels over seeds and a bootstrap interval over the rows of all seeds."""
    rows = y == c
    before = [(z.argmax(1) == y)[rows] for z in o["logits"]]
    after = [(with_bias(z, [c], r["bias"]).argmax(1) == y)[rows]
             for z, r in zip(o["logits"], o["omit"], strict=True)]
    res = {k: level([r[k] for r in o["omit"]]) for k in (
        "bias", "test_accuracy_omitted", "test_accuracy_omitted_corrected",
        "test_accuracy_corrected")}
    return res | {"test_rows": int(rows.sum()),
                  "corrected_ci": stats.accuracy_interval(np.concatenate(after)),
                  "uncorrected_ci": stats.accuracy_interval(np.concatenate(before))}


def figures(out: dict, ens: dict) -> dict:
    """Levels over seeds for every variant, and the ensemble's and its members' own."""
    y, t_probs = ens["y"], ens["t_probs"]
    return {"ensemble": {"test_accuracy": float(ens["right"].mean()),
                         "ece": expected_calibration_error(t_probs, y)},
            "members": {"test_accuracy": ens["member_acc"],
                        "mean": statistics.fmean(ens["member_acc"].values()),
                        "ece": {m: expected_calibration_error(p, y)
                                for m, p in ens["m_probs"].items()}},
            "variants": {v: {"test_accuracy": level(o["test"]), "val_accuracy": level(o["val"]),
                             "agreement": level(o["agree"]), "kl_from_ensemble": level(o["kl"]),
                             "ece": level(o["ece"])} for v, o in out.items()}}


def summarise(found: dict, args) -> dict:
    res = {"seeds": args.seeds, "quick": args.quick, "paper": PAPER,
           "omit_temperature": args.omit_temperature}
    if "varied" in found:
        ens, out = found["varied"]["ensemble"], found["varied"]["variants"]
        members = np.stack([p.argmax(1) == ens["y"] for p in ens["m_probs"].values()])
        res["member_sized"] = figures(out, ens) | {
            "setup": {"members": len(members), **VARIED, "width": args.members_width or
                      VARIED["knobs"]["width"], "shift": 6 if args.members_shift is None
                      else args.members_shift},
            "gain_kept": gain_kept(out["member_sized"]["right"], ens["right"], members)}
        if ev := ens.get("eval"):
            res["member_sized"]["eval"] = fresh_figures(ev, out["member_sized"]["eval_right"])
    if "main" not in found:
        return res
    ens, out = found["main"]["ensemble"], found["main"]["variants"]
    res |= figures(out, ens)
    res["omit"] = {f"{c}{tag}": omitted_accuracy(out[f"omit_{c}{tag}"], ens["y"], c)
                   for c in args.omit for tag in ("", "_default") if f"omit_{c}{tag}" in out}
    if "fraction_soft" in out and "fraction_hard" in out:
        fs, fh = out["fraction_soft"], out["fraction_hard"]
        res["fraction"] = {"soft_minus_hard": paired(fs["right"], fh["right"]),
                           "val_soft_minus_hard": [a - b for a, b in zip(fs["val"], fh["val"],
                                                                          strict=True)]}
    if (ref := out.get("combine_mean_probs")) is None:
        return res
    res["combine"] = {c: {"vs_mean_probs": paired(out[f"combine_{c}"]["right"], ref["right"]),
                          "val_minus_mean_probs": [a - b for a, b in zip(
                              out[f"combine_{c}"]["val"], ref["val"], strict=True)]}
                      for c in ("mean_logits", "kl_per_member", "random_member")
                      if f"combine_{c}" in out}
    return res


def pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def ci(c: dict) -> str:
    return f"{100 * c['diff']:+.2f} [{100 * c['ci_low']:+.2f}, {100 * c['ci_high']:+.2f}]"


def print_table(r: dict) -> None:
    rows = []
    if ms := r.get("member_sized"):
        k = ms["gain_kept"]
        rows.append((f"member-sized student ({ms['setup']['members']} {ms['setup']['arch']} "
                     "members): share of the gain kept", "86%",
                     f"{pct(k['mean'])} [{pct(k['ci_low'])}, {pct(k['ci_high'])}] of a "
                     f"{k['ensemble_gain_points']:.1f}-point gain "
                     f"[{k['ensemble_gain_ci_points'][0]:.1f}, "
                     f"{k['ensemble_gain_ci_points'][1]:.1f}]; per seed "
                     + "/".join(pct(v) for v in k["per_seed"])))
        if ev := ms.get("eval"):
            k = ev["gain_kept"]
            rows.append((f"  the same on {ev['rows']:,} fresh rows (ensemble "
                         f"{pct(ev['ensemble'])}, mean member {pct(ev['mean_member'])}, "
                         f"student {pct(ev['student']['mean'])})", "86%",
                         f"{pct(k['mean'])} [{pct(k['ci_low'])}, {pct(k['ci_high'])}] of a "
                         f"{k['ensemble_gain_points']:.2f}-point gain "
                         f"[{k['ensemble_gain_ci_points'][0]:.2f}, "
                         f"{k['ensemble_gain_ci_points'][1]:.2f}]; per seed "
                         + "/".join(pct(v) for v in k["per_seed"])))
    for name, o in r.get("omit", {}).items():
        lo, hi = o["corrected_ci"]
        who = "default student" if name.endswith("_default") else "member-sized"
        rows.append((f"omitted {name.split('_')[0]} ({who}): its test rows right, before -> after",
                     "-> 98.6% (3s)", f"{pct(o['test_accuracy_omitted']['mean'])} -> "
                     f"{pct(o['test_accuracy_omitted_corrected']['mean'])} [{pct(lo)}, "
                     f"{pct(hi)}] (per seed " + "/".join(
                         pct(v) for v in o["test_accuracy_omitted_corrected"]["per_seed"]) + ")"))
    if "fraction" in r:
        v = r["variants"]
        rows.append(("3% of labeled rows: soft - hard targets (points)", "+12.5",
                     f"{ci(r['fraction']['soft_minus_hard'])}; soft "
                     f"{pct(v['fraction_soft']['test_accuracy']['mean'])}, hard "
                     f"{pct(v['fraction_hard']['test_accuracy']['mean'])}"))
    for c, o in r.get("combine", {}).items():
        rows.append((f"combine {c} - mean_probs (points; val mean)", "-",
                     f"{ci(o['vs_mean_probs'])}; val "
                     f"{100 * statistics.fmean(o['val_minus_mean_probs']):+.2f}"))
    if "ensemble" in r:
        print(f"\nensemble test {pct(r['ensemble']['test_accuracy'])}, mean member "
              f"{pct(r['members']['mean'])}", end="")
    print(f"; seeds {r['seeds']}{' (quick)' if r['quick'] else ''}")
    for name, paper, ours in rows:
        print(f"{name:<68}{paper:>14}  {ours}")


if __name__ == "__main__":
    main()
