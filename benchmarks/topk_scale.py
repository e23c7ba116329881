"""Scale of top-k soft targets (export.top_k) on this machine, through the pipeline's own stages:
export speed against the bare forward pass of the same members over the same inputs, export
peak memory at 2M rows against 200k rows, and the student's shard loader against the same
tensors in RAM; then what the codec costs at 1,000 and 32k classes.

    python benchmarks/topk_scale.py                       # 200k and 2M rows (~12 min, 1 thread)
    python benchmarks/topk_scale.py --sizes 20000 --out /tmp/s.json   # a smoke run

For each size N: `kd prepare` of the chars source (100 classes; 20k labeled windows, N - 20k
unlabeled), two cheap teacher members (1-layer transformers, width 32, one epoch on the
labeled rows: their accuracy does not matter here, their cost per row does), then in a child
process each (its own peak RSS from resource.getrusage, ru_maxrss):
- `export`: stages/export.py with top_k 8, float16 (what examples/chars.yaml uses);
- `forward`: the same members over the same inputs, streamed in the same batches from the
  prepared files; the time counted is the members' forward calls alone (the bare forward pass).
Export maxrss at the largest size <= 1.3 x at the smallest. At the smallest size a dense
float16 export gives the bytes top-k saves.

Target: export rows/s >= 0.9 x forward rows/s. The two run apart, so the machine's load can
differ between them: at the smallest size they alternate `--repeats` times (medians), and the
export's own forward share (its forward calls' time over its wall time, same moments) is
reported beside it.

Loader: a student (1-layer transformer, width 32: examples/chars.yaml's w32) takes the same
training steps (Hinton's loss, AdamW, T = 2) from batches streamed off the top-k shards by
kd.train.student.shard_batches and from the same rows' features, labels and decoded logits
held in RAM as tensors; alternated A B A B A B, median steps/s of each. Target: shards >= 0.9
x RAM.

Codec cost at C = 1,000 and 32,000 classes: ShardWriter with top_k 8 (float16) against the dense
float16 writer over random logits, measured per row (encode + Parquet + zstd), and the bytes a
row on disk; with the export figures above, the cost of 1,000 classes x 1.28M rows and 32k
classes x 100M positions (written down in the JSON's `extrapolation`).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ["KD_TRACKING"] = "0"
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

from kd.config import parse_config  # noqa: E402

K, LABELED = 8, 20_000
TEACHER = {"arch": "transformer",
           "knobs": {"layers": 1, "width": 32, "heads": 2, "mlp_ratio": 2, "pool": "cls",
                     "vocab": 100},
           "train": {"epochs": 1, "batch_size": 256, "optimizer": "adamw", "lr": 0.003}}


def params(rows: int, top_k: int | None = K) -> dict:
    return {
        "data": {"source": "chars", "vocab_size": 100, "normalize": "none", "context": 32,
                 "labeled_rows": LABELED, "unlabeled_rows": rows - LABELED, "test_rows": 1000},
        "teacher": {"defaults": TEACHER, "members": {"t0": {"train": {"seed": 0}},
                                                     "t1": {"train": {"seed": 1}}}},
        "export": {"rows_per_shard": 200_000, "row_group_size": 8192, "batch_size": 1024,
                   "logits_dtype": "float16", "top_k": top_k},
        "student": {"defaults": {"arch": "transformer", "knobs": TEACHER["knobs"],
                                 "temperature": 2.0, "train": {"epochs": 1, "batch_size": 256}},
                    "variants": {"s": {}}},
        "runtime": {"threads": 1},
        "tracking": {"enabled": False},
    }


def kd_cmd(work: Path, *args: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "KD_TRACKING": "0"}
    subprocess.run([sys.executable, "-m", "kd.cli", *args], cwd=work, env=env, check=True,
                   stdout=subprocess.DEVNULL)


def child(mode: str, work: Path) -> None:
    """Run in a fresh process: print {elapsed_s, rows, maxrss_mb, ...} as JSON."""
    os.chdir(work)
    torch.set_num_threads(1)
    cfg = parse_config(yaml.safe_load(Path("params.yaml").read_text()))
    out = {}
    if mode == "export":
        from stages import export
        t0 = time.perf_counter()
        m = export.run(cfg, Path(os.environ.get("KD_SCALE_OUT", "data/soft_targets")))
        out = {"elapsed_s": time.perf_counter() - t0, "rows": m["rows"], "bytes": m["bytes"],
               "forward_s_inside": m["rows"] / m["forward_rows_per_s"]}
    elif mode == "forward":
        from kd.prepared import interleave, load_meta
        from kd.teachers.members import load_members, member_outputs
        meta = load_meta(Path("data/prepared"))
        models = load_members(cfg, meta, Path("data/teachers"))
        shape, rows, fwd = tuple(meta["feature_shape"]), 0, 0.0
        t0 = time.perf_counter()
        for _, part, _ in interleave([(Path("data/prepared"), "labeled"),
                                      (Path("data/prepared"), "unlabeled")],
                                     cfg.export.batch_size):
            f0 = time.perf_counter()
            member_outputs(models, part.x, shape)
            fwd += time.perf_counter() - f0
            rows += len(part.row_id)
        out = {"elapsed_s": time.perf_counter() - t0, "forward_s": fwd, "rows": rows}
    out["maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(out))


def run_child(mode: str, work: Path, **env) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", mode, "--work", str(work)],
                          env={**os.environ, "PYTHONPATH": str(ROOT), **env},
                          capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"{mode} in {work} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def build(work: Path, rows: int) -> None:
    """Prepared data and members in `work` (kept from an earlier run with the same params)."""
    if (work / "params.yaml").is_file() and (work / "data/teachers/t1/model.json").is_file() \
            and yaml.safe_load((work / "params.yaml").read_text()) == params(rows):
        return
    work.mkdir(parents=True, exist_ok=True)
    (work / "params.yaml").write_text(yaml.safe_dump(params(rows)))
    kd_cmd(work, "prepare")
    for m in ("t0", "t1"):
        kd_cmd(work, "teacher", m)


def loader(work: Path, steps: int, rounds: int) -> dict:
    """The student's training steps from the shards vs from the same rows in RAM."""
    from kd.distill.losses import kd_loss, soft_targets
    from kd.models import build_model
    from kd.targets.reader import ShardReader
    from kd.train.student import shard_batches

    torch.set_num_threads(1)
    reader = ShardReader(work / "data/soft_targets")
    n_rows = steps * 256
    ram = {"features": [], "label": [], "logits": []}
    got = 0
    for b in reader.iter_batches(65_536, shuffle=False, drop_val=True):
        for k in ram:
            ram[k].append(b[k])
        got += len(b["label"])
        if got >= n_rows:
            break
    x = torch.from_numpy(np.concatenate(ram["features"])[:n_rows])
    y = torch.from_numpy(np.concatenate(ram["label"])[:n_rows])
    z = torch.from_numpy(np.concatenate(ram["logits"], axis=1)[:, :n_rows])

    def ram_batches():
        perm = torch.randperm(n_rows, generator=torch.Generator().manual_seed(0))
        for i in range(0, n_rows, 256):
            idx = perm[i:i + 256]
            yield x[idx], y[idx], z[:, idx]

    def shard_stream():
        for b in shard_batches(reader, 256, seed=0, buffer_rows=50_000)(0):
            yield b.x, b.y, b.t_logits

    def timed(source) -> float:
        torch.manual_seed(0)
        model = build_model("transformer", (32,), 100, TEACHER["knobs"])
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        t0, n = time.perf_counter(), 0
        for xb, yb, zb in source():
            loss = kd_loss(model(xb), soft_targets(zb, 2.0), yb, 2.0, 0.9)
            opt.zero_grad()
            loss.backward()
            opt.step()
            n += 1
            if n == steps:
                break
        return n / (time.perf_counter() - t0)

    shards, ram_rate = [], []
    for _ in range(rounds):
        shards.append(timed(shard_stream))
        ram_rate.append(timed(ram_batches))
    s, r = statistics.median(shards), statistics.median(ram_rate)
    paired = [a / b for a, b in zip(shards, ram_rate, strict=True)]  # each round's own ratio
    return {"steps": steps, "batch": 256, "rounds": rounds, "shards_steps_per_s": shards,
            "ram_steps_per_s": ram_rate, "ratio": s / r, "round_ratios": paired,
            "median_round_ratio": statistics.median(paired), "target_met": s / r >= 0.9}


def codec_cost(classes: int, rows: int, members: int = 1) -> dict:
    """Per-row cost of writing top-8 and dense float16 shards of random logits at C classes."""
    from kd.io.storage import locate
    from kd.targets.shards import ShardWriter
    from kd.targets.shardset import target_bytes

    rng = np.random.default_rng(0)
    out = {"classes": classes, "rows": rows}
    batch = min(1024, max(16, 2**20 // classes))
    x = np.zeros((batch, 1), np.float32)
    for name, top_k in (("top8", K), ("dense", None)):
        d = Path(tempfile.mkdtemp(prefix="kd-codec-"))
        try:
            w = ShardWriter(d, members=[f"m{i}" for i in range(members)],
                            class_names=[str(c) for c in range(classes)], feature_shape=(1,),
                            rows_per_shard=rows + 1, row_group_size=min(rows, 8192),
                            logits_dtype="float16", top_k=top_k)
            elapsed = 0.0  # write() alone (encode, checks, Parquet + zstd of full row groups):
            for i in range(0, rows, batch):  # fresh logits each batch, drawn off the clock
                n = min(batch, rows - i)
                z = {f"m{j}": rng.normal(0, 3, (n, classes)).astype(np.float32)
                     for j in range(members)}
                t0 = time.perf_counter()
                w.write(np.arange(i, i + n), "unlabeled", None, None, x[:n], z)
                elapsed += time.perf_counter() - t0
            t0 = time.perf_counter()
            shards = w.close()
            close_s = time.perf_counter() - t0  # the last group, fsync, sha256: once a shard
            man = {"members": [f"m{i}" for i in range(members)], "top_k": w.codec,
                   "class_names": [0] * classes, "logits_dtype": "float16",
                   "totals": {"rows": rows}, "shards": shards}
            tb = target_bytes(locate(d), man)
            out[name] = {"us_per_row_member": elapsed / rows / members * 1e6,
                         "close_s": close_s,
                         "disk_bytes_per_row_member": tb["disk_bytes_per_member"],
                         "raw_bytes_per_row_member": tb["raw_bytes_per_member"]}
        finally:
            shutil.rmtree(d, ignore_errors=True)
    return out


def extrapolate(scale: dict, codecs: dict[int, dict]) -> dict:
    """Bytes and hours of the two cases the issue names, from the measured figures."""
    big = max(scale, key=int)
    e = scale[big]
    fwd_us = e["forward"]["forward_s"] / e["forward"]["rows"] / 2 * 1e6  # a member, a row
    over_us = (e["export"]["elapsed_s"] - e["export"]["forward_s_inside"]) / e["export"]["rows"]
    out = {"measured": {"chars_100_classes": {
        "forward_us_per_row_member": fwd_us,
        "export_overhead_us_per_row": over_us * 1e6,
        "note": "export time not spent in the members' forward (read, encode, write), 2 members"}}}
    cases = {"imagenet_1k": (1_000, 1_280_000), "lm_32k": (32_000, 100_000_000)}
    for name, (c, rows) in cases.items():
        m = codecs[c]
        out[name] = {
            "classes": c, "rows": rows,
            "top8_fp16_bytes_per_member": rows * m["top8"]["disk_bytes_per_row_member"],
            "dense_fp16_bytes_per_member": rows * m["dense"]["disk_bytes_per_row_member"],
            "top8_fp16_raw_bytes_per_member": rows * m["top8"]["raw_bytes_per_row_member"],
            "dense_fp16_raw_bytes_per_member": rows * c * 2,
            "top8_write_hours_per_member": rows * m["top8"]["us_per_row_member"] / 1e6 / 3600,
            "dense_write_hours_per_member": rows * m["dense"]["us_per_row_member"] / 1e6 / 3600,
            "note": "one thread of this machine; add the teachers' own forward pass, which "
                    "dominates for real teachers (ResNet-50, a 7B LM) and is not measured here",
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[200_000, 2_000_000])
    ap.add_argument("--work", type=Path, default=None, help="working folder (default: a temp)")
    ap.add_argument("--child", choices=["export", "forward"], default=None)
    ap.add_argument("--loader-steps", type=int, default=400)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3,
                    help="export / forward runs, alternated, at the smallest size")
    ap.add_argument("--codec-rows", type=int, nargs=2, default=[50_000, 4_000],
                    help="rows written at 1,000 and at 32,000 classes")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/topk_scale.json")
    ap.add_argument("--loader-only", action="store_true",
                    help="rerun the loader comparison on --work's smallest size into --out's "
                         "`loader_rerun` (the rest of --out is kept)")
    a = ap.parse_args()
    if a.child:
        return child(a.child, a.work)
    if a.loader_only:
        res = json.loads(a.out.read_text())
        res.setdefault("loader_reruns", []).append(
            loader(a.work / f"n{min(a.sizes)}", a.loader_steps, a.rounds))
        a.out.write_text(json.dumps(res, indent=2))
        print(json.dumps(res["loader_reruns"][-1]))
        return None
    torch.set_num_threads(1)
    work = a.work or Path(tempfile.mkdtemp(prefix="kd-topk-scale-"))
    res: dict = {"sizes": {}, "k": K, "logits_dtype": "float16", "threads": 1,
                 "members": "2 x transformer (1 layer, width 32), 100 classes"}
    for n in a.sizes:
        d = work / f"n{n}"
        t0 = time.perf_counter()
        build(d, n)
        row = {"build_s": time.perf_counter() - t0, "export_runs": [], "forward_runs": []}
        for _ in range(a.repeats if n == min(a.sizes) else 1):  # alternated: load drifts
            row["export_runs"].append(run_child("export", d))
            row["forward_runs"].append(run_child("forward", d))
        if n == min(a.sizes):  # the same rows, dense float16: what top-k saves on disk
            (d / "params.yaml").write_text(yaml.safe_dump(params(n, None)))
            row["export_dense"] = run_child("export", d, KD_SCALE_OUT="data/dense")
            (d / "params.yaml").write_text(yaml.safe_dump(params(n)))
        ex = [r["rows"] / r["elapsed_s"] for r in row["export_runs"]]
        fw = [r["rows"] / r["forward_s"] for r in row["forward_runs"]]
        row["export"] = row["export_runs"][int(np.argsort(ex)[len(ex) // 2])]  # the median run
        row["forward"] = row["forward_runs"][int(np.argsort(fw)[len(fw) // 2])]
        row["export_rows_per_s"], row["forward_rows_per_s"] = statistics.median(ex), \
            statistics.median(fw)
        # export against the bare forward pass run apart (both exposed to the machine's load
        # at different moments), and against its own forward calls (the same moments)
        row["ratio"] = row["export_rows_per_s"] / row["forward_rows_per_s"]
        row["ratio_same_run"] = statistics.median(
            r["forward_s_inside"] / r["elapsed_s"] for r in row["export_runs"])
        row["export_maxrss_mb"] = max(r["maxrss_mb"] for r in row["export_runs"])
        res["sizes"][str(n)] = row
        print(json.dumps({n: row}), flush=True)
    lo, hi = str(min(a.sizes)), str(max(a.sizes))
    res["rss_ratio"] = res["sizes"][hi]["export_maxrss_mb"] / \
        res["sizes"][lo]["export_maxrss_mb"]
    res["targets"] = {"export_vs_forward_ge_0.9": all(r["ratio"] >= 0.9
                                                      for r in res["sizes"].values()),
                      "export_vs_own_forward_ge_0.9": all(r["ratio_same_run"] >= 0.9
                                                          for r in res["sizes"].values()),
                      "rss_ratio_le_1.3": res["rss_ratio"] <= 1.3}
    res["loader"] = loader(work / f"n{lo}", a.loader_steps, a.rounds)
    res["targets"]["loader_ge_0.9"] = res["loader"]["target_met"]
    print(json.dumps({"loader": res["loader"]}), flush=True)
    codecs = {1_000: codec_cost(1_000, a.codec_rows[0]),
              32_000: codec_cost(32_000, a.codec_rows[1])}
    res["codec_cost"] = {str(c): v for c, v in codecs.items()}
    res["extrapolation"] = extrapolate(res["sizes"], codecs)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=2))
    print(json.dumps({"targets": res["targets"], "rss_ratio": res["rss_ratio"],
                      "extrapolation": res["extrapolation"]}, indent=2))
    if a.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
