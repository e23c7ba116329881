"""Benchmark the `export` stage: throughput against bare forward passes, and memory vs. rows.

    KD_TRACKING=0 python benchmarks/export.py                    # ~3-4 min on 2 busy cores
    KD_TRACKING=0 python benchmarks/export.py --quick            # smoke run, ~1 min
    KD_TRACKING=0 python benchmarks/export.py --skip throughput --mem-members all  # 5 members

(a) Throughput. `stages.export.run` (params.yaml, the default teachers, data/prepared, into a
    temporary directory) against the floor it cannot beat: a loop of
    `kd.teachers.members.member_logits` (what the stage calls) over the same labeled +
    unlabeled rows, already in memory as one array, in batches of `export.batch_size`. Runs
    alternate (ABBA...) in this one process after a warm-up; the figure is the median rows/s
    of each. Target: export >= 0.9 x bare.
(b) Memory. Peak RSS of a whole export in a fresh child process over a synthetic prepared
    directory of 1,000,000 unlabeled rows against one of 100,000 (same members, same batch
    size; random float32 features of the real width, written like `kd prepare` writes them, in
    row groups of 8192). The peak is the child's VmHWM (/proc/self/status), cross-checked by
    `/usr/bin/time -f %M` around it. Not ru_maxrss from inside the child or RUSAGE_CHILDREN here:
    Linux carries the forking parent's RSS into the child's ru_maxrss across exec, so both
    would report this process's ~0.5 GB. The small export runs 3 times (its peak varies by
    +-30 MB), the median is used. Target: peak(1M) <= 1.3 x peak(100k). Both exports use the
    first member only by default, to fit the time budget: members run one after another on
    the same batch, so their number changes the constant part of the peak (weights, one batch
    of logits each), not how it grows with rows. `--mem-members all` runs the full ensemble
    (~2.7 min per 1M-row export here; measured growth the same, ~200 MB).

Threads: 1 by default, here and in the children (`--threads 0`: torch's default). On 2 cores
shared with other work, 2 OpenMP threads make every forward wait on a descheduled thread
(measured 3-8x slower and far noisier); both sides of every ratio use the same setting.

Needs data/prepared and data/teachers/* (`dvc repro export` makes them); exits 1 without them.
Writes benchmarks/results/export.json (export-quick.json with --quick).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("KD_TRACKING", "0")  # benchmarks never write MLflow runs

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

from kd.config import parse_config  # noqa: E402
from kd.datasets import Split  # noqa: E402
from kd.prepared import load_meta, read_split, to_table
from kd.teachers.members import load_members, member_logits  # noqa: E402
from stages import export  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def machine_info() -> dict:
    return {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "pyarrow": pa.__version__, "numpy": np.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "loadavg_start": list(os.getloadavg())}


def check_inputs(prepared: Path, teachers: Path, members: list[str]) -> None:
    missing = [str(p) for p in [prepared / "meta.json", prepared / "labeled.parquet",
                                prepared / "unlabeled.parquet",
                                *(teachers / m / "model.safetensors" for m in members)]
               if not p.is_file()]
    if missing:
        sys.exit(f"missing inputs: {', '.join(missing)}\n"
                 "run `dvc repro export` (or `kd prepare` and `kd teacher <member>`) first")


# ------------------------------------------------------------------- prepared directories


def write_prepared(dst: Path, src: Path, unlabeled: Split | int, seed: int = 0) -> int:
    """A prepared directory like `kd prepare` writes: the real labeled and test splits, and
    `unlabeled` (a Split, or a number of random rows, streamed in row groups of 8192).
    Returns the number of unlabeled rows."""
    dst.mkdir(parents=True)
    for name in ("labeled", "test"):
        shutil.copy(src / f"{name}.parquet", dst / f"{name}.parquet")
    meta = load_meta(src)
    width = int(meta["n_features"])
    path = dst / "unlabeled.parquet"
    if isinstance(unlabeled, Split):
        n = len(unlabeled.row_id)
        pq.write_table(to_table(unlabeled, np.zeros(n, bool)), path, compression="zstd",
                       row_group_size=8192)
    else:
        n, rng, chunk = unlabeled, np.random.default_rng(seed), 65_536
        first_id = 1 << 40  # far from every real row id: ids stay unique across splits
        with pq.ParquetWriter(path, to_table(_random_split(rng, 0, 0, width),
                                             np.zeros(0, bool)).schema,
                              compression="zstd") as w:
            for i in range(0, n, chunk):
                k = min(chunk, n - i)
                w.write_table(to_table(_random_split(rng, first_id + i, k, width),
                                       np.zeros(k, bool)), row_group_size=8192)
    meta["rows"] = {**meta["rows"], "unlabeled": n}
    (dst / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
    return n


def _random_split(rng: np.random.Generator, first_id: int, n: int, width: int) -> Split:
    return Split(np.arange(first_id, first_id + n, dtype=np.int64),
                 rng.standard_normal((n, width), dtype=np.float32), np.full(n, -1, np.int64))


# ------------------------------------------------------------------------ (a) throughput


def throughput(cfg, prepared: Path, teachers: Path, tmp: Path, repeats: int,
               budget_s: float) -> dict:
    meta = load_meta(prepared)
    models = load_members(cfg, meta, teachers)
    shape, bs = tuple(meta["feature_shape"]), cfg.export.batch_size
    x = np.ascontiguousarray(np.concatenate([read_split(prepared, s)[0].x
                                             for s in ("labeled", "unlabeled")]))  # (N, F)
    n = len(x)

    def bare() -> float:
        t0 = time.perf_counter()
        for i in range(0, n, bs):
            member_logits(models, x[i : i + bs], shape)
        return n / (time.perf_counter() - t0)

    shares: list[float] = []  # within one export: time in forward / all its time

    def stage(i: int) -> float:
        out = tmp / f"soft_targets-{i}"
        t0 = time.perf_counter()
        m = export.run(cfg, out, prepared, teachers)
        rate = n / (time.perf_counter() - t0)
        assert m["rows"] == n, (m["rows"], n)
        shares.append(m["rows_per_s"] / m["forward_rows_per_s"])
        shutil.rmtree(out)
        return rate

    # warm-up: oneDNN primitive caches for both batch shapes, the Parquet/zstd code paths
    member_logits(models, x[:bs], shape)
    member_logits(models, x[: n % bs or bs], shape)
    runs: dict[str, list[float]] = {"bare": [], "export": []}
    t_start = time.perf_counter()
    for r in range(repeats):
        order = ("bare", "export") if r % 2 == 0 else ("export", "bare")  # ABBA: drift cancels
        for what in order:
            runs[what].append(bare() if what == "bare" else stage(r))
            print(f"  (a) round {r + 1}: {what:6s} {runs[what][-1]:9.0f} rows/s", flush=True)
        spent = time.perf_counter() - t_start
        if r >= 1 and spent * (r + 2) / (r + 1) > budget_s:
            break  # two rounds are the minimum; stop when the next would overrun the budget
    med = {k: statistics.median(v) for k, v in runs.items()}
    paired = [e / b for e, b in zip(runs["export"], runs["bare"], strict=True)]
    ratio = med["export"] / med["bare"]
    return {"rows": n, "members": list(models), "batch_size": bs, "rounds": len(paired),
            "bare_rows_per_s": runs["bare"], "export_rows_per_s": runs["export"],
            "bare_rows_per_s_median": med["bare"], "export_rows_per_s_median": med["export"],
            "ratio": ratio, "paired_ratios": paired,
            "paired_ratio_median": statistics.median(paired),
            # noise-free view of the same question: the share of each export's own wall time
            # spent in member forward passes (1 - share = reading, checking, writing shards)
            "export_forward_share": shares,
            "export_forward_share_median": statistics.median(shares),
            "target": ">= 0.9", "target_met": ratio >= 0.9}


# ---------------------------------------------------------------------------- (b) memory

CHILD = """
import json, os, resource, sys, time
from pathlib import Path
import torch, yaml
torch.set_num_threads(int(sys.argv[5]))
from stages import export
from kd.config import parse_config
raw = yaml.safe_load(Path(sys.argv[1]).read_text())
raw["teacher"]["members"] = {m: raw["teacher"]["members"][m] for m in sys.argv[6].split(",")}
cfg = parse_config(raw)
t0 = time.perf_counter()
m = export.run(cfg, Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]))
status = Path("/proc/self/status").read_text()  # VmHWM: this image's peak RSS, from exec on
print("RESULT " + json.dumps({"rows": m["rows"], "elapsed_s": time.perf_counter() - t0,
      "vmhwm_kb": int(status.split("VmHWM:")[1].split()[0]),
      "ru_maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""
TIME = "/usr/bin/time"  # GNU time: its child's ru_maxrss is clean (time itself is tiny)


def export_child(params: Path, out: Path, prepared: Path, teachers: Path, threads: int,
                 members: list[str]) -> dict:
    cmd = [sys.executable, "-c", CHILD, str(params), str(out), str(prepared), str(teachers),
           str(threads), ",".join(members)]
    timed = os.access(TIME, os.X_OK)
    if timed:
        cmd = [TIME, "-f", "TIME_MAXRSS_KB %M", *cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=out.parent,
                          env={**os.environ, "KD_TRACKING": "0"})
    if proc.returncode != 0:
        sys.exit(f"export child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    result = json.loads(line[len("RESULT "):])
    result["maxrss_kb"] = result["vmhwm_kb"]
    if timed:
        t = [ln for ln in proc.stderr.splitlines() if ln.startswith("TIME_MAXRSS_KB ")]
        result["time_maxrss_kb"] = int(t[-1].split()[1])
    shutil.rmtree(out)
    return result


def memory(params: Path, prepared: Path, teachers: Path, tmp: Path, sizes: tuple[int, int],
           threads: int, members: list[str], small_repeats: int) -> dict:
    """The small export `small_repeats` times (its peak varies by tens of MB from run to run;
    the median is used), then the big one once."""
    out: dict = {"members": members, "threads": threads, "runs": {}}
    for n, repeats in ((sizes[0], small_repeats), (sizes[1], 1)):
        t0 = time.perf_counter()
        src = tmp / f"prepared-{n}"
        write_prepared(src, prepared, n)
        gen_s = time.perf_counter() - t0
        runs = []
        for _ in range(repeats):
            r = export_child(params, tmp / f"out-{n}", src, teachers, threads, members)
            r.update(unlabeled_rows=n, generate_s=gen_s, peak_rss_mb=r["maxrss_kb"] / 1024,
                     rows_per_s=r["rows"] / r["elapsed_s"])
            runs.append(r)
            print(f"  (b) {n:>9,} unlabeled rows: peak RSS {r['peak_rss_mb']:7.1f} MB, "
                  f"export {r['elapsed_s']:6.1f} s ({r['rows_per_s']:.0f} rows/s), "
                  f"data written in {gen_s:.1f} s", flush=True)
        out["runs"][str(n)] = runs
        shutil.rmtree(src)
    small = statistics.median(r["peak_rss_mb"] for r in out["runs"][str(sizes[0])])
    big_run = out["runs"][str(sizes[1])][0]
    ratio = big_run["peak_rss_mb"] / small
    out.update(small_rows=sizes[0], big_rows=sizes[1], peak_rss_mb_small=small,
               peak_rss_mb_big=big_run["peak_rss_mb"], ratio=ratio,
               growth_mb=big_run["peak_rss_mb"] - small,
               growth_bytes_per_extra_row=(big_run["peak_rss_mb"] - small) * 2**20
               / (sizes[1] - sizes[0]),
               # /usr/bin/time's view of each child agrees with its VmHWM (within 2%)
               time_maxrss_agrees=all(abs(r["time_maxrss_kb"] / r["vmhwm_kb"] - 1) < 0.02
                                      for rs in out["runs"].values() for r in rs
                                      if "time_maxrss_kb" in r) or None,
               target="<= 1.3", target_met=ratio <= 1.3)
    return out


# ------------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="(a) on 8,000 of the unlabeled rows, 2 rounds; (b) 10k vs 100k rows")
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    ap.add_argument("--prepared", type=Path, default=ROOT / "data" / "prepared")
    ap.add_argument("--teachers", type=Path, default=ROOT / "data" / "teachers")
    ap.add_argument("--repeats", type=int, default=5, help="(a) rounds at most (>= 2 run)")
    ap.add_argument("--budget-s", type=float, default=120.0,
                    help="(a) stop adding rounds past this many seconds (after 2 rounds)")
    ap.add_argument("--mem-rows", type=int, nargs=2, default=None, metavar=("SMALL", "BIG"),
                    help="(b) unlabeled rows of the two exports (default 100000 1000000)")
    ap.add_argument("--mem-members", default="1",
                    help="(b) how many configured members, in order, or 'all'")
    ap.add_argument("--mem-small-repeats", type=int, default=3,
                    help="(b) runs of the small export (median peak)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads, here and in the children (0: torch's default)")
    ap.add_argument("--skip", choices=["throughput", "memory"], default=None)
    ap.add_argument("--out", type=Path, default=None, help="the JSON to write")
    args = ap.parse_args()
    default_threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()

    cfg = parse_config(yaml.safe_load(args.params.read_text()))  # what `kd export` validates
    members = list(cfg.teacher.members)
    check_inputs(args.prepared, args.teachers, members)
    mem_members = members if args.mem_members == "all" else members[: int(args.mem_members)]
    sizes = tuple(args.mem_rows or ((10_000, 100_000) if args.quick else (100_000, 1_000_000)))
    result: dict = {"benchmark": "export", "quick": args.quick,
                    "machine": {**machine_info(), "torch_default_threads": default_threads},
                    "params": str(args.params), "export": cfg.export.model_dump()}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="kd-bench-export-") as d:
        tmp = Path(d)
        if args.skip != "throughput":
            prepared = args.prepared
            if args.quick:  # the first 8,000 real unlabeled rows, the real labeled split
                un, _ = read_split(args.prepared, "unlabeled")
                prepared = tmp / "prepared-quick"
                write_prepared(prepared, args.prepared, Split(un.row_id[:8000], un.x[:8000],
                                                              un.y[:8000]))
            print(f"(a) throughput: export.run vs bare member_logits, {len(members)} members, "
                  f"batch {cfg.export.batch_size}, {threads} torch threads", flush=True)
            result["throughput"] = throughput(cfg, prepared, args.teachers, tmp,
                                              2 if args.quick else args.repeats, args.budget_s)
        if args.skip != "memory":
            print(f"(b) memory: peak RSS of an export in a fresh process, {len(mem_members)} "
                  f"members", flush=True)
            result["memory"] = memory(args.params, args.prepared, args.teachers, tmp, sizes,
                                      threads, mem_members, args.mem_small_repeats)
    result["machine"]["loadavg_end"] = list(os.getloadavg())
    result["wall_s"] = time.perf_counter() - t0

    print("\nkd export benchmark" + (" (quick)" if args.quick else ""))
    print(f"{'measure':<44}{'subject':>14}{'baseline':>14}{'ratio':>8}{'target':>9}  met")
    if t := result.get("throughput"):
        print(f"{'(a) rows/s: export.run vs bare forward':<44}"
              f"{t['export_rows_per_s_median']:>14.0f}{t['bare_rows_per_s_median']:>14.0f}"
              f"{t['ratio']:>8.3f}{t['target']:>9}  {t['target_met']}")
        print(f"    {t['rows']} rows, {t['rounds']} rounds, paired ratios "
              + ", ".join(f"{p:.3f}" for p in t["paired_ratios"])
              + f"; forward share of export time {t['export_forward_share_median']:.3f}")
    if m := result.get("memory"):
        label = f"(b) peak RSS MB: {m['big_rows']:,} vs {m['small_rows']:,} rows"
        print(f"{label:<44}"
              f"{m['peak_rss_mb_big']:>14.1f}{m['peak_rss_mb_small']:>14.1f}"
              f"{m['ratio']:>8.3f}{m['target']:>9}  {m['target_met']}")
        for n, rs in m["runs"].items():
            print(f"    {int(n):>9,} unlabeled rows: peak RSS "
                  + ", ".join(f"{r['peak_rss_mb']:.1f}" for r in rs) + " MB; export "
                  + ", ".join(f"{r['elapsed_s']:.1f}" for r in rs) + " s "
                  f"({statistics.median(r['rows_per_s'] for r in rs):.0f} rows/s), "
                  f"{len(m['members'])} member(s)")
        print(f"    growth {m['growth_mb']:.1f} MB = {m['growth_bytes_per_extra_row']:.0f} "
              "bytes per extra row")
    print(f"machine: {result['machine']['cpu_count']} CPUs, {threads} torch threads, "
          f"torch {torch.__version__}, pyarrow {pa.__version__}, load "
          f"{result['machine']['loadavg_start'][0]:.1f} -> "
          f"{result['machine']['loadavg_end'][0]:.1f}"
          f"; {result['wall_s']:.0f} s in all")
    out = args.out or RESULTS / ("export-quick.json" if args.quick else "export.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
