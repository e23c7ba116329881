"""Benchmark the `student` stage: its shard data path, online distillation, and what it bought.

    KD_TRACKING=0 python benchmarks/student.py            # ~2-3 min on 2 busy cores
    KD_TRACKING=0 python benchmarks/student.py --quick    # smoke run, under a minute
    KD_TRACKING=0 python benchmarks/student.py --variant medium   # another student variant

One student variant: `--variant`, else the one the pipeline chose (data/report/metrics.json's
`chosen_variant`, else kd/evaluate/choose.py on data/student: benchmarks/chosen.py); the JSON
says which and why.

(a) Data path. `kd.train.loop.fit` with the variant's config, fed by the real
    `kd.train.student.shard_batches` over the soft-target shards (the variant's `rows`),
    against the same loop fed by a factory that shuffles the same rows held in memory as
    tensors (features, labels, member logits (M, B, C)), same batch size, same model init, same
    loss, same epochs (2). Target: shard-fed samples/s >= 0.9 x in-memory samples/s.
(b) Online distillation, the usual approach: the 5 teacher members (kd.models.load_model)
    run forward on every batch of every epoch to make the logits, on the same in-memory rows.
    Reported: how many times faster a shard-fed student epoch is.
(c) Quality, from the pipeline's outputs: student and ensemble parameters (target ratio >= 30),
    the ensemble's test accuracy (members loaded, softmax probabilities averaged on
    data/prepared/test.parquet), student accuracy / ensemble accuracy (target >= 0.99), and
    whether the student beats the baseline.

All arms run in this one process, after a warm-up, in rotating order round after round;
figures are medians. Shards: data/soft_targets if it is present and verifies, else a fresh
export into a temporary directory. Needs data/prepared and data/teachers/* (`dvc repro export`);
exits 1 without them. (c) also reads data/student/<variant> and data/baseline/<variant> (`dvc
repro student@<variant> baseline@<variant>`) and reports null for what is missing. Threads: 1
by default (`--threads 0`: torch's default), as in benchmarks/export.py: 2 OpenMP threads on 2
shared cores are slow and noisy.
Writes benchmarks/results/student.json (student-quick.json with --quick).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("KD_TRACKING", "0")  # benchmarks never write MLflow runs

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from chosen import which_variant  # noqa: E402

from kd.config import parse_config  # noqa: E402
from kd.distill.losses import kd_loss, soft_targets  # noqa: E402
from kd.errors import ArtifactError  # noqa: E402
from kd.models import build_model, count_params, load_model  # noqa: E402
from kd.prepared import load_meta, read_split  # noqa: E402
from kd.targets.manifest import read_manifest  # noqa: E402
from kd.targets.reader import ShardReader  # noqa: E402
from kd.targets.shardset import verify  # noqa: E402
from kd.train.batches import Batch  # noqa: E402
from kd.train.loop import fit, predict  # noqa: E402
from kd.train.student import ensemble_targets, shard_batches  # noqa: E402
from stages import export  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DATA = ROOT / "data"


def machine_info() -> dict:
    return {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "pyarrow": pa.__version__, "numpy": np.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "loadavg_start": list(os.getloadavg())}


def check_inputs(prepared: Path, teachers: Path, members: list[str]) -> None:
    missing = [str(p) for p in [prepared / "meta.json", prepared / "test.parquet",
                                *(teachers / m / "model.safetensors" for m in members)]
               if not p.is_file()]
    if missing:
        sys.exit(f"missing inputs: {', '.join(missing)}\n"
                 "run `dvc repro export` (or `kd prepare` and `kd teacher <member>`) first")


def find_shards(cfg, shards: Path, prepared: Path, teachers: Path, tmp: Path) -> tuple[Path, str]:
    """The existing soft targets when they verify and hold the configured members, else a
    fresh export into `tmp`."""
    try:
        verify(shards)
        if read_manifest(shards)["members"] == list(cfg.teacher.members):
            return shards, "existing"
    except ArtifactError as e:
        print(f"  {shards}: not usable ({e}); exporting into a temporary directory")
    out = tmp / "soft_targets"
    export.run(cfg, out, prepared, teachers)
    return out, "exported"


# ------------------------------------------------------------------------ batch factories


def in_memory(x: torch.Tensor, y: torch.Tensor, t: torch.Tensor | None, batch_size: int,
              seed: int, teachers: list[torch.nn.Module] | None = None):
    """epoch -> shuffled batches of tensors in memory; with `teachers`, the logits are made
    online by running every member on every batch (t is then unused)."""

    def batches(epoch: int):
        gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        order = torch.randperm(len(y), generator=gen)
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            xb = x[idx]  # (B, F)
            if teachers is None:
                tb = t[:, idx]  # (M, B, C)
            else:
                with torch.no_grad():  # closed before the yield: the student's step needs grad
                    tb = torch.stack([m(xb) for m in teachers])  # (M, B, C)
            yield Batch(xb, y[idx], tb)

    return batches


class DataWait:
    """Wraps a factory; sums the seconds the training loop spends waiting in next() for a
    batch. Within one run, so machine noise between runs does not blur it."""

    def __init__(self, factory):
        self.factory, self.seconds = factory, 0.0

    def __call__(self, epoch: int):
        it = iter(self.factory(epoch))
        while True:
            t0 = time.perf_counter()
            try:
                b = next(it)
            except StopIteration:
                self.seconds += time.perf_counter() - t0
                return
            self.seconds += time.perf_counter() - t0
            yield b


def warm(factory, n: int):
    """The first `n` batches of epoch 0 only: a warm-up epoch."""
    return lambda epoch: itertools.islice(factory(epoch), n)


# ---------------------------------------------------------------------------- (a) and (b)


def speed(st, shards: Path, teachers_dir: Path, epochs: int, rounds: int, online_rounds: int,
          budget_s: float) -> dict:
    """`st`: the variant's resolved StudentConfig."""
    reader = ShardReader(shards, rows=st.rows)
    shape, n_classes = reader.feature_shape, reader.num_classes
    parts = list(reader.iter_batches(65_536, shuffle=False, drop_val=True))
    x = torch.from_numpy(np.concatenate([p["features"] for p in parts]))  # (N, F)
    y = torch.from_numpy(np.concatenate([p["label"] for p in parts]))  # (N,)
    t = torch.from_numpy(np.concatenate([p["logits"] for p in parts], axis=1))  # (M, N, C)
    n, bs = len(y), st.train.batch_size
    assert n == reader.num_rows(drop_val=True)
    steps = -(-n // bs)
    teachers = [load_model(teachers_dir / m)[0] for m in reader.members]  # eval mode

    def loss_fn(s_logits: torch.Tensor, b: Batch) -> torch.Tensor:  # as kd/train/student.py's
        t_probs, T = ensemble_targets(b.t_logits, st)  # (B, C); the variant's soft or hard targets
        return kd_loss(s_logits, t_probs, b.y, T, st.alpha)

    factories = {
        "shards": DataWait(shard_batches(reader, bs, st.train.seed, st.shuffle_buffer)),
        "memory": DataWait(in_memory(x, y, t, bs, st.train.seed)),
        "online": DataWait(in_memory(x, y, None, bs, st.train.seed, teachers)),
    }

    def train(kind: str, n_epochs: int, factory=None) -> list[dict]:
        torch.manual_seed(st.train.seed)  # the same initial weights for every variant
        model = build_model(st.arch, shape, n_classes, st.knobs)
        tc = st.train.model_copy(update={"epochs": n_epochs, "warmup_epochs": 0})
        return fit(model, factory or factories[kind], loss_fn, tc, steps_per_epoch=steps)

    for kind in factories:  # warm-up: allocator, oneDNN primitives, Parquet decoding, threads
        train(kind, 1, warm(factories[kind], 20))
    epochs_of = {"shards": [], "memory": [], "online": []}  # per-epoch (samples, seconds)
    wait = {"shards": [], "memory": [], "online": []}  # data-wait share of each run's epochs
    t_start, done = time.perf_counter(), 0
    for r in range(rounds):
        kinds = ["shards", "memory"] + (["online"] if r < online_rounds else [])
        kinds = kinds[r % len(kinds):] + kinds[: r % len(kinds)]  # rotate: drift cancels
        for kind in kinds:
            factories[kind].seconds = 0.0
            hist = train(kind, 1 if kind == "online" else epochs)
            wait[kind].append(factories[kind].seconds / sum(h["epoch_time_s"] for h in hist))
            epochs_of[kind] += [(h["samples"], h["epoch_time_s"]) for h in hist]
            rate = sum(h["samples"] for h in hist) / sum(h["epoch_time_s"] for h in hist)
            print(f"  round {r + 1}: {kind:6s} {len(hist)} epoch(s) {rate:9.0f} samples/s",
                  flush=True)
        done = r + 1
        spent = time.perf_counter() - t_start
        if done >= max(2, online_rounds) and spent * (done + 1) / done > budget_s:
            break

    def rate(kind: str) -> list[float]:  # samples/s of each fit run (epochs pooled per run)
        per_run, e = [], epochs_of[kind]
        k = 1 if kind == "online" else epochs
        for i in range(0, len(e), k):
            per_run.append(sum(s for s, _ in e[i : i + k]) / sum(d for _, d in e[i : i + k]))
        return per_run

    rates = {k: rate(k) for k in epochs_of}
    med = {k: statistics.median(v) for k, v in rates.items()}
    epoch_s = {k: statistics.median(d for _, d in v) for k, v in epochs_of.items()}
    ratio = med["shards"] / med["memory"]
    paired = [a / b for a, b in zip(rates["shards"], rates["memory"], strict=True)]  # same round
    speedup = epoch_s["online"] / epoch_s["shards"]
    return {"rows": n, "batch_size": bs, "steps_per_epoch": steps, "epochs_per_run": epochs,
            "rounds": done, "members": reader.members, "shards_dir": str(shards),
            "samples_per_s": rates, "samples_per_s_median": med, "epoch_s_median": epoch_s,
            "data_path": {"shards_samples_per_s": med["shards"],
                          "memory_samples_per_s": med["memory"], "ratio": ratio,
                          "target": ">= 0.9", "target_met": ratio >= 0.9},
            "online": {"online_epoch_s": epoch_s["online"], "shards_epoch_s": epoch_s["shards"],
                       "speedup": speedup,
                       "samples_per_s_ratio": med["shards"] / med["online"]},
            # share of epoch time the loop waited for its next batch (online: the teachers'
            # forward passes are in it); (1 - shards) / (1 - memory) estimates (a)'s ratio
            # from inside each run, free of the drift between runs
            "data_wait_share": wait,
            "data_wait_share_median": {k: statistics.median(v) for k, v in wait.items()},
            "paired_ratios": paired, "paired_ratio_median": statistics.median(paired)}


# -------------------------------------------------------------------------------- (c)


def read_metrics(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def quality(cfg, prepared: Path, teachers_dir: Path, student_dir: Path,
            baseline_dir: Path) -> dict:
    test, _ = read_split(prepared, "test")
    shape = tuple(load_meta(prepared)["feature_shape"])
    xt, yt = torch.from_numpy(test.x.reshape(-1, *shape)), torch.from_numpy(test.y)
    members = {m: load_model(teachers_dir / m)[0] for m in cfg.teacher.members}
    logits = torch.stack([predict(m, xt) for m in members.values()])  # (M, N, C)
    probs = soft_targets(logits, 1.0, "mean_probs")  # (N, C) mean of member softmaxes
    ens_acc = (probs.argmax(1) == yt).float().mean().item()
    ens_params = sum(count_params(m) for m in members.values())
    member_acc = {m: (logits[i].argmax(1) == yt).float().mean().item()
                  for i, m in enumerate(members)}
    out = {"test_rows": len(yt), "ensemble_test_accuracy": ens_acc, "ensemble_params": ens_params,
           "member_test_accuracy": member_acc,
           "member_metrics": {m: read_metrics(teachers_dir / m / "metrics.json") for m in members}}
    s_metrics = read_metrics(student_dir / "metrics.json")
    b_metrics = read_metrics(baseline_dir / "metrics.json")
    out["student_metrics"], out["baseline_metrics"] = s_metrics, b_metrics
    s_acc = s_params = None
    if s_metrics is not None and (student_dir / "model.safetensors").is_file():
        student, _ = load_model(student_dir)
        s_params = count_params(student)
        s_acc = (predict(student, xt).argmax(1) == yt).float().mean().item()
        out["student_accuracy_recomputed"] = s_acc  # must equal metrics.json's test_accuracy
        s_acc = s_metrics["test_accuracy"]
    b_acc = b_metrics["test_accuracy"] if b_metrics else None
    params_ratio = ens_params / s_params if s_params else None
    acc_ratio = s_acc / ens_acc if s_acc is not None else None
    out.update({
        "student_params": s_params, "student_test_accuracy": s_acc,
        "baseline_test_accuracy": b_acc,
        "params_ratio": params_ratio, "params_ratio_target": ">= 30",
        "params_ratio_met": params_ratio >= 30 if params_ratio else None,
        "accuracy_ratio": acc_ratio, "accuracy_ratio_target": ">= 0.99",
        "accuracy_ratio_met": acc_ratio >= 0.99 if acc_ratio is not None else None,
        "student_beats_baseline": s_acc > b_acc if None not in (s_acc, b_acc) else None,
    })
    return out


# ------------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="1 epoch a run, 2 rounds, online distillation once")
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    ap.add_argument("--prepared", type=Path, default=DATA / "prepared")
    ap.add_argument("--teachers", type=Path, default=DATA / "teachers")
    ap.add_argument("--shards", type=Path, default=DATA / "soft_targets")
    ap.add_argument("--student", type=Path, default=DATA / "student",
                    help="the students' folder (one subfolder per variant)")
    ap.add_argument("--baseline", type=Path, default=DATA / "baseline",
                    help="the baselines' folder (one subfolder per variant)")
    ap.add_argument("--variant", default=None,
                    help="the student variant (default: the one the pipeline chose)")
    ap.add_argument("--epochs", type=int, default=2, help="(a) epochs per training run")
    ap.add_argument("--rounds", type=int, default=7, help="(a) rounds at most (>= 2 run)")
    ap.add_argument("--online-rounds", type=int, default=3,
                    help="(b) rounds that also run one online-distillation epoch")
    ap.add_argument("--budget-s", type=float, default=150.0,
                    help="stop adding rounds past this many seconds")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    ap.add_argument("--out", type=Path, default=None, help="the JSON to write")
    args = ap.parse_args()
    default_threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    if args.quick:
        args.epochs, args.rounds, args.online_rounds = 1, 2, 1

    cfg = parse_config(yaml.safe_load(args.params.read_text()))  # what `kd student` validates
    check_inputs(args.prepared, args.teachers, list(cfg.teacher.members))
    pick = which_variant(cfg, args.student.parent, args.variant)
    variant = pick["variant"]
    st = cfg.student.variant(variant)
    print(f"student variant {variant} ({pick['source']})", flush=True)
    result: dict = {"benchmark": "student", "quick": args.quick,
                    "machine": {**machine_info(), "torch_default_threads": default_threads},
                    "params": str(args.params), "variant": variant,
                    "variant_source": pick["source"], "student": st.model_dump()}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="kd-bench-student-") as d:
        shards, origin = find_shards(cfg, args.shards, args.prepared, args.teachers, Path(d))
        print(f"(a)+(b) speed: {st.arch} {st.knobs}, batch {st.train.batch_size}, rows "
              f"{st.rows}, shards {shards} ({origin}), {threads} torch threads", flush=True)
        result["speed"] = speed(st, shards, args.teachers, args.epochs, args.rounds,
                                args.online_rounds, args.budget_s)
        result["speed"]["shards_origin"] = origin
    print("(c) quality", flush=True)
    result["quality"] = quality(cfg, args.prepared, args.teachers, args.student / variant,
                                args.baseline / variant)
    result["machine"]["loadavg_end"] = list(os.getloadavg())
    result["wall_s"] = time.perf_counter() - t0

    s, q = result["speed"], result["quality"]
    a, b = s["data_path"], s["online"]

    def f(v, spec: str) -> str:
        return "n/a" if v is None else format(v, spec)

    print(f"\nkd student benchmark, variant {variant}" + (" (quick)" if args.quick else ""))
    print(f"{'measure':<46}{'subject':>12}{'baseline':>12}{'ratio':>8}{'target':>9}  met")
    print(f"{'(a) samples/s: shards vs in-memory tensors':<46}{a['shards_samples_per_s']:>12.0f}"
          f"{a['memory_samples_per_s']:>12.0f}{a['ratio']:>8.3f}{a['target']:>9}  "
          f"{a['target_met']}")
    print(f"{'(b) epoch s: online teachers vs shards':<46}{b['online_epoch_s']:>12.2f}"
          f"{b['shards_epoch_s']:>12.2f}{b['speedup']:>8.1f}{'':>9}  "
          f"(shard-fed epoch {b['speedup']:.1f}x faster)")
    print(f"{'(c) params: ensemble vs student':<46}{q['ensemble_params']:>12,}"
          f"{f(q['student_params'], ','):>12}{f(q['params_ratio'], '.1f'):>8}"
          f"{q['params_ratio_target']:>9}  {q['params_ratio_met']}")
    print(f"{'(c) test accuracy: student vs ensemble':<46}"
          f"{f(q['student_test_accuracy'], '.4f'):>12}{q['ensemble_test_accuracy']:>12.4f}"
          f"{f(q['accuracy_ratio'], '.4f'):>8}{q['accuracy_ratio_target']:>9}  "
          f"{q['accuracy_ratio_met']}")
    print(f"{'(c) test accuracy: student vs baseline':<46}"
          f"{f(q['student_test_accuracy'], '.4f'):>12}{f(q['baseline_test_accuracy'], '.4f'):>12}"
          f"{'':>8}{'beats':>9}  {q['student_beats_baseline']}")
    w = s["data_wait_share_median"]
    print("    (a) paired ratios " + ", ".join(f"{p:.3f}" for p in s["paired_ratios"])
          + f"; share of epoch time waiting for data: shards {w['shards']:.3f}, "
          f"memory {w['memory']:.3f}, online {w['online']:.3f} (teacher forwards)")
    print(f"    {s['rows']} training rows, {s['rounds']} rounds of {s['epochs_per_run']} "
          f"epoch(s); samples/s per run: "
          + "; ".join(f"{k} " + ", ".join(f"{v:.0f}" for v in vs)
                      for k, vs in s["samples_per_s"].items()))
    print(f"machine: {result['machine']['cpu_count']} CPUs, {threads} torch threads, "
          f"torch {torch.__version__}, pyarrow {pa.__version__}, load "
          f"{result['machine']['loadavg_start'][0]:.1f} -> "
          f"{result['machine']['loadavg_end'][0]:.1f}"
          f"; {result['wall_s']:.0f} s in all")
    out = args.out or RESULTS / ("student-quick.json" if args.quick else "student.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
