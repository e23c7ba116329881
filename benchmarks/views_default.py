"""Stored views on the default recipe: issue 27's targets 1, 3 and 4 (benchmarks/views.py
holds the reduced runs and digits).

    python benchmarks/views_default.py --work /tmp/vd --seeds 0   # teachers, exports, seed 0
    python benchmarks/views_default.py --work /tmp/vd --seeds 1 2   # the same teachers
    python benchmarks/views_default.py --work /tmp/vd --online --seeds 0 1 2   # target 3
    python benchmarks/views_default.py --work /tmp/vd --loader                 # target 4
    python benchmarks/views_default.py --work /tmp/vd --summarize --out benchmarks/results/x.json

params.yaml's data (40,000 unlabeled rows unless --unlabeled) and its ensemble (the 5 cnn1d
members, trained once in --work and reused by every seed, as benchmarks/frontier.py reuses
data/soft_targets); two exports with K views a row: `shift` (circular shifts of up to
--shift, the teachers' augmentation) and `mixup` (the same shifts, mixed with a partner row,
lam ~ Beta(--mixup, --mixup)). The student is `small` (cnn1d, 8 channels: 1,874 parameters,
60 epochs); a seed is its train.seed, so every arm of a seed is paired on the same teachers.

Arms (target 1): no_views (student.views: none, the control), shift_unmixed (one of K + 1
views a row each epoch, the label term on shifted views too), mixup_row (mixup views, the
label term on the stored row alone) and mixup_mixed (mixup views, view_labels mixed).
Every view every epoch, at (K + 1) x the steps: shift_all, mixup_all, and their control
no_views_long (no views, small's epochs x (K + 1)). `--views 0 --unlabeled 400000 --arms
no_views` is the bound: ten times the real unlabeled rows (the teacher passes of K = 9 views)
at small's epochs.
--online (target 3): at --online-epochs, the stored shift views (shift_unmixed) against
online distillation: the same student, loss and steps, the stored rows shifted afresh each
batch (up to --shift) and the 5 members run on every batch; the student stage's time of
each, and the export's one-off time, alone and shared by the default's 6 variants.
--loader (target 4): one thread, rows/s of the student's loader over the shift export's views
(sample) against the same epoch's tensors held in RAM, bare and with the student's training
step. --export-times: the shift export again and the same rows without views, each export's
rows/s over its members' bare forward rows/s (the export's own figure).
Validation rows choose; test rows only report. Each run writes --work/<part>-seed<s>.json;
--summarize gathers them into --out (paired t intervals over the seeds).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402
import torch  # noqa: E402
from views import PARAMS, ROOT, VARIANT, paired, summary  # noqa: E402  (sets up the path)

from kd.config import AugmentConfig, deep_merge, parse_config  # noqa: E402
from kd.prepared import load_meta  # noqa: E402
from kd.targets.reader import ShardReader  # noqa: E402
from kd.teachers.members import load_members  # noqa: E402
from kd.train.batches import Batch, augment, epoch_seed, prefetch  # noqa: E402
from kd.train.runner import train_and_write  # noqa: E402
from kd.train.student import distill_job  # noqa: E402
from stages import export, prepare, student, teacher  # noqa: E402

VARIANTS = 6  # params.yaml's student variants: what one export is shared by
ARMS = {"no_views": ("shift", {"views": "none"}),
        "shift_unmixed": ("shift", {"views": "sample", "view_labels": "unmixed"}),
        "mixup_row": ("mixup", {"views": "sample", "view_labels": "row"}),
        "mixup_mixed": ("mixup", {"views": "sample", "view_labels": "mixed"}),
        # every view every epoch: (K + 1) x the steps of one view a row; the control given
        # as many steps (small's epochs x (K + 1)) is no_views_long
        "shift_all": ("shift", {"views": "all", "view_labels": "unmixed"}),
        "mixup_all": ("mixup", {"views": "all", "view_labels": "mixed"}),
        "no_views_long": ("shift", {"views": "none"})}
SMALL_EPOCHS = PARAMS["student"]["variants"]["small"]["train"]["epochs"]


def raw_params(args, seed: int = 0, epochs: int | None = None, **variant) -> dict:
    """params.yaml with the benchmark's rows, members and the student `small` as VARIANT."""
    st = deep_merge(PARAMS["student"]["defaults"], PARAMS["student"]["variants"]["small"])
    st = deep_merge(st, {"train": {"seed": seed, **({"epochs": epochs} if epochs else {})}})
    members = dict(list(PARAMS["teacher"]["members"].items())[:args.members])
    tdef = deep_merge(PARAMS["teacher"]["defaults"], {"train": {"epochs": args.teacher_epochs}}
                      if args.teacher_epochs else {})
    return {"data": {**PARAMS["data"], "unlabeled_size": args.unlabeled},
            "teacher": {"defaults": tdef, "members": members},
            "export": {**PARAMS["export"], "views": args.views,
                       "augment": {"shift": args.shift}, "mixup": 0.0},
            "student": {"defaults": st, "variants": {VARIANT: variant}},
            "tracking": {"enabled": False}, "runtime": {"threads": 1, "device": "cpu"}}


def setup(args) -> dict:
    """Prepared data, the members and both exports in --work, each made once."""
    work = args.work
    done = work / "setup.json"
    if done.exists():
        return json.loads(done.read_text())
    raw = raw_params(args)
    cfg = parse_config(raw)
    info: dict = {}
    t0 = time.perf_counter()
    prepare.run(cfg, work / "prepared")
    info["prepare_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    for member in cfg.teacher.members:
        teacher.run(cfg, member, work / "teachers", work / "prepared")
    info["teacher_s"] = time.perf_counter() - t0
    for name, mix in (("shift", 0.0), ("mixup", args.mixup)):
        c = parse_config(deep_merge(raw, {"export": {"mixup": mix}}))
        t0 = time.perf_counter()
        em = export.run(c, work / name, work / "prepared", work / "teachers")
        info[name] = {"export_s": time.perf_counter() - t0, "rows_per_s": em["rows_per_s"],
                      "forward_rows_per_s": em["forward_rows_per_s"],
                      "export_vs_forward": em["rows_per_s"] / em["forward_rows_per_s"]}
    t0 = time.perf_counter()  # the same rows without views: what the views add to the export
    em = export.run(parse_config(deep_merge(raw, {"export": {"views": 0}})), work / "plain",
                    work / "prepared", work / "teachers")
    info["plain"] = {"export_s": time.perf_counter() - t0, "rows_per_s": em["rows_per_s"]}
    done.write_text(json.dumps(info, indent=2))
    return info


def run_arm(args, name: str, shards: str, seed: int, epochs: int | None = None,
            **variant) -> dict:
    raw = raw_params(args, seed, epochs, **variant)
    t0 = time.perf_counter()
    m = student.run(parse_config(raw), VARIANT, args.work / f"s-{name}-{seed}",
                    args.work / shards, args.work / "prepared")
    return {"test_accuracy": m["test_accuracy"], "val_accuracy": m["val_accuracy"],
            "stage_s": time.perf_counter() - t0}


def online_arm(args, seed: int, epochs: int) -> dict:
    """Online distillation: the distill job of the stored rows (views none), its batches
    shifted afresh (kd/train/batches.py augment, seeded per epoch) and labelled by the
    members' forward on exactly the shifted input; the label term on every row."""
    cfg = parse_config(raw_params(args, seed, epochs, views="none"))
    t0 = time.perf_counter()
    shards, meta = args.work / "shift", load_meta(args.work / "prepared")
    members = list(load_members(cfg, meta, args.work / "teachers").values())
    job = distill_job(cfg, VARIANT, shards, args.work / "prepared")
    reader = ShardReader(shards, columns=["label", "features"])  # no stored logits read
    st = cfg.student.variant(VARIANT)
    shape, aug = job.spec["input_shape"], AugmentConfig(shift=args.shift)

    def batches(epoch: int):
        gen = torch.Generator().manual_seed(epoch_seed(seed, epoch))
        for b in prefetch(reader.iter_batches(st.train.batch_size, shuffle=True, seed=seed,
                                              epoch=epoch, buffer_rows=st.shuffle_buffer,
                                              drop_val=True)):
            x = augment(torch.from_numpy(b["features"]), shape, aug, gen)  # (B, F)
            with torch.no_grad():
                z = torch.stack([m(x.view(len(x), *shape)) for m in members])  # (M, B, C)
            yield Batch(x, torch.from_numpy(b["label"]), z)

    job = dataclasses.replace(job, batches=batches, fingerprint=job.fingerprint + ":online",
                              stage=f"online@{VARIANT}")
    m = train_and_write(job, args.work / f"s-online-{seed}")
    return {"test_accuracy": m["test_accuracy"], "val_accuracy": m["val_accuracy"],
            "stage_s": time.perf_counter() - t0}


def export_times(args) -> dict:
    """Target 4's export half: the shift export again (into --work/retime-*), and the same
    rows without views; each export's rows/s over its members' bare forward rows/s."""
    raw, out = raw_params(args), {}
    for name, views in (("shift", args.views), ("plain", 0)):
        c = parse_config(deep_merge(raw, {"export": {"views": views}}))
        t0 = time.perf_counter()
        em = export.run(c, args.work / f"retime-{name}", args.work / "prepared",
                        args.work / "teachers")
        out[name] = {"export_s": time.perf_counter() - t0, "rows_per_s": em["rows_per_s"],
                     "forward_rows_per_s": em["forward_rows_per_s"],
                     "export_vs_forward": em["rows_per_s"] / em["forward_rows_per_s"]}
    out["views_vs_plain_rows_per_s"] = out["shift"]["rows_per_s"] / out["plain"]["rows_per_s"]
    return out


def loader(args) -> dict:
    """Target 4: rows/s of an epoch of the shift export's sampled views read by the student's
    loader, against the same batches' tensors in RAM; bare, and with the training step. The
    student's loader as configured (student.cache_mb: decoded row groups reused after the
    first epoch) and with cache_mb 0 (every epoch decodes, as before), side by side; each
    epoch after a warm-up epoch, so the cached loader is measured once its cache is full."""
    def job_with(**variant):
        cfg = parse_config(raw_params(args, 0, 1, views="sample", view_labels="unmixed",
                                      **variant))
        return cfg.student.variant(VARIANT), distill_job(cfg, VARIANT, args.work / "shift",
                                                         args.work / "prepared")
    st, job = job_with()
    _, uncached = job_with(cache_mb=0)
    held = list(job.batches(0))  # an epoch's rows, held as tensors: x (N, F), y (N,), z (M, N, C)
    for _ in uncached.batches(0):  # its views' replay table read, as the cached job's was
        pass
    x, y = torch.cat([b.x for b in held]), torch.cat([b.y for b in held])
    z, rows, bs = torch.cat([b.t_logits for b in held], 1), len(y), st.train.batch_size

    def in_ram(epoch: int):  # a TensorDataset-style loader: a permutation, gathered batches
        idx = torch.from_numpy(np.random.default_rng(epoch).permutation(rows))
        for i in range(0, rows, bs):
            j = idx[i:i + bs]
            yield Batch(x[j], y[j], z[:, j])
    opt = torch.optim.AdamW(job.model.parameters(), lr=st.train.lr)

    def step(b: Batch) -> None:
        opt.zero_grad()
        job.loss_fn(job.model(b.x), b).backward()
        opt.step()

    out: dict = {"rows": rows, "batch_size": bs, "cache_mb": st.cache_mb,
                 "epochs": args.loader_epochs}
    sources = {"shards": job.batches, "shards_uncached": uncached.batches, "ram": in_ram}
    for train in (False, True):
        for src, stream in sources.items():
            t0 = time.perf_counter()
            for epoch in range(args.loader_epochs):  # the shards: another epoch, other views
                for b in stream(epoch + 1):
                    if train:
                        step(b)
            out[f"{src}{'_train' if train else ''}_rows_per_s"] = (
                rows * args.loader_epochs / (time.perf_counter() - t0))
    for src in ("shards", "shards_uncached"):
        out[f"{src}_loader_ratio"] = out[f"{src}_rows_per_s"] / out["ram_rows_per_s"]
        out[f"{src}_train_ratio"] = out[f"{src}_train_rows_per_s"] / out["ram_train_rows_per_s"]
    return out


def summarize(args) -> None:
    info = json.loads((args.work / "setup.json").read_text())
    runs = {}
    for f in sorted(args.work.glob("*-seed*.json")):
        part, seed = f.stem.rsplit("-seed", 1)
        runs.setdefault(part, {})[int(seed)] = json.loads(f.read_text())
    result: dict = {"settings": {k: str(v) for k, v in vars(args).items()}, "setup": info}
    for part, by_seed in runs.items():
        seeds = sorted(by_seed)
        arms = list(by_seed[seeds[0]])
        r = {"seeds": seeds, "arms": {a: {k: summary([by_seed[s][a][k] for s in seeds])
                                          for k in ("val_accuracy", "test_accuracy", "stage_s")}
                                      for a in arms}, "paired": {}}
        base = next(a for a in ("no_views", "no_views_long", "shift_unmixed", arms[0])
                    if a in arms)
        for a in arms:
            if a != base:
                for split in ("val", "test"):
                    r["paired"][f"{a}-{base}.{split}"] = paired(
                        [by_seed[s][a][f"{split}_accuracy"] - by_seed[s][base][f"{split}_accuracy"]
                         for s in seeds])
        if part == "online":
            stored = r["arms"]["shift_unmixed"]["stage_s"]["mean"]
            online = r["arms"]["online"]["stage_s"]["mean"]
            times = args.work / "export_times.json"  # the export as the code is now, if timed
            ex = json.loads(times.read_text()) if times.exists() else info
            extra = ex["shift"]["export_s"] - ex["plain"]["export_s"]  # what the views add
            per_epoch = (online - stored) / args.online_epochs  # the members' share an epoch
            r["time"] = {"stored_stage_s": stored, "online_stage_s": online,
                         "speedup": online / stored, "export_views_s": ex["shift"]["export_s"],
                         "export_plain_s": ex["plain"]["export_s"],
                         "export_views_extra_s": extra,
                         "online_extra_s_per_epoch": per_epoch,
                         "export_extra_in_online_epochs": extra / per_epoch,
                         "speedup_with_export_shared": online / (stored + extra / VARIANTS),
                         "speedup_with_whole_export_one_variant": online / (stored + extra)}
        result[part] = r
    for part in ("loader", "export_times"):
        if (args.work / f"{part}.json").exists():
            result[part] = json.loads((args.work / f"{part}.json").read_text())
    result["machine"] = {"python": platform.python_version(), "torch": torch.__version__,
                         "cpu": platform.processor() or platform.machine(), "threads": 1}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for part in runs:
        for k, v in result[part]["arms"].items():
            print(f"{part} {k}: test {v['test_accuracy']['mean']:.4f} +- "
                  f"{v['test_accuracy']['std']:.4f} val {v['val_accuracy']['mean']:.4f}")
        for k, v in result[part]["paired"].items():
            print(f"  {k}: {v['mean']:+.4f} ({v['ci95'][0]:+.4f} .. {v['ci95'][1]:+.4f})")
    print(f"-> {args.out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--seeds", type=int, nargs="*", default=[])
    ap.add_argument("--members", type=int, default=5)
    ap.add_argument("--teacher-epochs", type=int, default=0, help="0: params.yaml's 80")
    ap.add_argument("--unlabeled", type=int, default=40_000)
    ap.add_argument("--views", type=int, default=4)
    ap.add_argument("--shift", type=int, default=6)
    ap.add_argument("--mixup", type=float, default=0.4)
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    ap.add_argument("--online", action="store_true")
    ap.add_argument("--online-epochs", type=int, default=10)
    ap.add_argument("--loader", action="store_true")
    ap.add_argument("--loader-epochs", type=int, default=2)
    ap.add_argument("--export-times", action="store_true")
    ap.add_argument("--summarize", action="store_true")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/views-default.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    args.work = args.work.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    # checkpoints (data/.checkpoints/<stage>) in a folder of this process's own: runs of
    # other seeds may share --work at the same time
    cwd = args.work / f"cwd-{os.getpid()}"
    cwd.mkdir()
    os.chdir(cwd)
    if args.summarize:
        return summarize(args)
    info = setup(args)
    print(json.dumps(info), flush=True)
    for seed in args.seeds:
        if args.online:
            out = {"shift_unmixed": run_arm(args, "stored", "shift", seed, args.online_epochs,
                                            views="sample", view_labels="unmixed"),
                   "online": online_arm(args, seed, args.online_epochs)}
        else:
            long = {"train": {"epochs": SMALL_EPOCHS * (args.views + 1)}}
            out = {a: run_arm(args, a, ARMS[a][0], seed,
                              **deep_merge(ARMS[a][1], long if a.endswith("_long") else {}))
                   for a in args.arms}
        part = "online" if args.online else "arms"
        (args.work / f"{part}-seed{seed}.json").write_text(json.dumps(out, indent=2))
        print(f"seed {seed}: " + ", ".join(f"{a} test {v['test_accuracy']:.4f} val "
                                           f"{v['val_accuracy']:.4f} ({v['stage_s']:.0f} s)"
                                           for a, v in out.items()), flush=True)
    if args.export_times:
        out = export_times(args)
        (args.work / "export_times.json").write_text(json.dumps(out, indent=2))
        print(json.dumps(out), flush=True)
    if args.loader:
        out = loader(args)
        (args.work / "loader.json").write_text(json.dumps(out, indent=2))
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
