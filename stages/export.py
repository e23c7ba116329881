"""Stage `export`: every teacher member's logits on every labeled and unlabeled row -> shards.

    kd export                         # or: dvc repro export

Streams the prepared labeled and unlabeled splits in batches of `export.batch_size`, runs each
member forward, and writes `data/soft_targets/part-*.parquet` + `manifest.json` (stages/shards.py
holds the schema). Logits, not probabilities: the student applies its own temperature, so a new
`T` never needs a new export. Memory stays flat in the number of rows. The directory appears
whole when complete (the manifest last inside it), so a killed export leaves nothing a student
could mistake for a finished one; a rerun gives byte-identical shards.

Under torch.distributed (`runtime.nproc > 1`, or torchrun) each rank takes a contiguous range of
whole batches of each split, reads only those rows and writes its own shards
(`part-r<rank>-NNNNN.parquet`) into the one temporary directory; rank 0 writes the manifest once
every rank has finished, then publishes the directory. The rows, ids and logits are exactly a
single process's (the same batches go through the same members); only shard boundaries differ.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from stages.atomic import atomic_dir
from stages.config import Config
from stages.datasets import iter_split, load_meta, split_rows
from stages.distributed import CPU, SINGLE, Dist
from stages.faults import failpoint
from stages.models import check_fits, load_model, model_fingerprint
from stages.shards import MANIFEST, ShardWriter, summary, write_manifest
from stages.tracking import stage_run, tag_output


def load_members(cfg: Config, meta: dict, root: Path) -> dict[str, torch.nn.Module]:
    """Every member, checked against the prepared data (and so against each other)."""
    models = {}
    for name in cfg.teacher.members:
        model, spec = load_model(root / name)
        check_fits(spec, root / name, meta, f"member '{name}'")
        models[name] = model.eval()
    return models


@torch.no_grad()
def member_logits(models: dict[str, torch.nn.Module], x: np.ndarray, shape: tuple[int, ...],
                  device: torch.device = CPU) -> dict[str, np.ndarray]:
    xt = torch.from_numpy(x).view(len(x), *shape).to(device)  # (B, *shape)
    return {name: m(xt).cpu().numpy() for name, m in models.items()}  # each (B, C)


def rank_rows(n: int, batch_size: int, dist: Dist) -> tuple[int, int]:
    """This rank's rows of a split of `n`: a contiguous run of whole batches."""
    batches = -(-n // batch_size)
    lo, hi = batches * dist.rank // dist.world, batches * (dist.rank + 1) // dist.world
    return min(lo * batch_size, n), min(hi * batch_size, n)


@contextlib.contextmanager
def shared_atomic_dir(out_dir: Path, dist: Dist) -> Iterator[Path]:
    """atomic_dir for all ranks: rank 0 makes the temporary directory and tells the others its
    name; it is published (by rank 0) only when the block completes on rank 0."""
    if not dist.active:
        with atomic_dir(out_dir) as tmp:
            yield tmp
        return
    if dist.is_main:
        with atomic_dir(out_dir) as tmp:
            dist.broadcast_bytes(str(tmp).encode())
            yield tmp
    else:
        yield Path(dist.broadcast_bytes(None).decode())


def run(cfg: Config, out_dir: Path = Path("data/soft_targets"),
        prepared: Path = Path("data/prepared"), teachers: Path = Path("data/teachers"),
        dist: Dist = SINGLE) -> dict:
    meta = load_meta(prepared)
    models = {name: m.to(dist.device) for name, m in load_members(cfg, meta, teachers).items()}
    shape = tuple(meta["feature_shape"])
    ex = cfg.export
    params = {"export": ex.model_dump(), "members": list(models), "world_size": dist.world}
    with stage_run(cfg, "export", params=params, main=dist.is_main) as tracking:
        t0, rows, forward_s = time.perf_counter(), 0, 0.0
        with shared_atomic_dir(out_dir, dist) as tmp:
            writer = ShardWriter(
                tmp, members=list(models), class_names=meta["class_names"],
                feature_shape=shape, rows_per_shard=ex.rows_per_shard,
                row_group_size=ex.row_group_size, compression=ex.compression,
                logits_dtype=ex.logits_dtype,
                extra_metadata={"prepared_fingerprint": meta["fingerprint"]},
                prefix=f"part-r{dist.rank:03d}" if dist.active else "part")
            with writer:
                for split in ("labeled", "unlabeled"):
                    span = rank_rows(split_rows(prepared, split), ex.batch_size, dist)
                    for part, is_val in iter_split(prepared, split, ex.batch_size, span):
                        f0 = time.perf_counter()
                        logits = member_logits(models, part.x, shape, dist.device)
                        forward_s += time.perf_counter() - f0
                        writer.write(part.row_id, split, part.y, is_val, part.x, logits)
                        rows += len(part.row_id)
                shards = writer.close()
            # a collective: past it, every rank has finished and renamed its shards
            per_rank = dist.gather_json({"shards": shards, "rows": rows, "forward_s": forward_s})
            if dist.is_main:
                failpoint("export.manifest")  # every shard in place, the set not yet complete
                write_manifest(
                    tmp, [s for r in per_rank for s in r["shards"]], members=list(models),
                    class_names=meta["class_names"], feature_shape=shape,
                    logits_dtype=ex.logits_dtype,
                    member_fingerprints={m: model_fingerprint(teachers / m) for m in models},
                    params={"export": ex.model_dump(), "teacher": cfg.teacher.model_dump()},
                    extra={"prepared_fingerprint": meta["fingerprint"], "ranks": dist.world})
        if not dist.is_main:
            return {}
        elapsed = time.perf_counter() - t0
        rows = sum(r["rows"] for r in per_rank)
        forward_s = max(r["forward_s"] for r in per_rank)  # ranks run side by side
        info = summary(out_dir)
        metrics = {"rows": rows, "shards": info["shards"], "bytes": info["bytes"],
                   "rows_per_s": rows / elapsed, "forward_rows_per_s": rows / max(forward_s, 1e-9),
                   "elapsed_s": elapsed}
        tracking.log_metrics(metrics)
        tracking.log_artifact(out_dir / MANIFEST)
        tag_output(tracking, out_dir / MANIFEST)
    ranks = f" on {dist.world} ranks" if dist.active else ""
    print(f"export: {rows} rows ({info['splits']}) from {len(models)} members -> "
          f"{info['shards']} shards, {info['bytes'] / 1e6:.1f} MB in {out_dir} "
          f"({metrics['rows_per_s']:.0f} rows/s{ranks})")
    return metrics
