"""Stage `export`: every teacher member's logits on every labeled and unlabeled row -> shards.

    kd export                         # or: dvc repro export

Streams the prepared labeled and unlabeled splits in batches of `export.batch_size`, runs each
member forward, and writes `data/soft_targets/part-*.parquet` + `manifest.json` (stages/shards.py
holds the schema). Logits, not probabilities: the student applies its own temperature, so a new
`T` never needs a new export. Memory stays flat in the number of rows. The directory appears
whole when complete (the manifest last inside it), so a killed export leaves nothing a student
could mistake for a finished one; a rerun gives byte-identical shards.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from stages.atomic import atomic_dir
from stages.config import Config
from stages.datasets import iter_split, load_meta
from stages.errors import ArtifactError
from stages.faults import failpoint
from stages.models import load_model, model_fingerprint
from stages.shards import MANIFEST, ShardWriter, summary, write_manifest
from stages.tracking import stage_run, tag_output


def load_members(cfg: Config, meta: dict, root: Path) -> dict[str, torch.nn.Module]:
    """Every member, checked against the prepared data (and so against each other)."""
    models = {}
    for name in cfg.teacher.members:
        model, spec = load_model(root / name)
        where = root / name / "model.json"
        if spec["n_classes"] != meta["n_classes"]:
            raise ArtifactError(f"{where}: member '{name}' predicts {spec['n_classes']} classes, "
                                f"the prepared data has {meta['n_classes']}")
        if list(spec["input_shape"]) != list(meta["feature_shape"]):
            raise ArtifactError(f"{where}: member '{name}' takes features of shape "
                                f"{tuple(spec['input_shape'])}, the prepared data has "
                                f"{tuple(meta['feature_shape'])}")
        models[name] = model.eval()
    return models


@torch.no_grad()
def member_logits(models: dict[str, torch.nn.Module], x: np.ndarray,
                  shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    xt = torch.from_numpy(x).view(len(x), *shape)  # (B, *shape)
    return {name: m(xt).numpy() for name, m in models.items()}  # each (B, C)


def run(cfg: Config, out_dir: Path = Path("data/soft_targets"),
        prepared: Path = Path("data/prepared"), teachers: Path = Path("data/teachers")) -> dict:
    meta = load_meta(prepared)
    models = load_members(cfg, meta, teachers)
    shape = tuple(meta["feature_shape"])
    ex = cfg.export
    params = {"export": ex.model_dump(), "members": list(models)}
    with stage_run(cfg, "export", params=params) as tracking:
        t0, rows, forward_s = time.perf_counter(), 0, 0.0
        with atomic_dir(out_dir) as tmp:
            writer = ShardWriter(
                tmp, members=list(models), class_names=meta["class_names"],
                feature_shape=shape, rows_per_shard=ex.rows_per_shard,
                row_group_size=ex.row_group_size, compression=ex.compression,
                logits_dtype=ex.logits_dtype,
                extra_metadata={"prepared_fingerprint": meta["fingerprint"]})
            with writer:
                for split in ("labeled", "unlabeled"):
                    for part, is_val in iter_split(prepared, split, ex.batch_size):
                        f0 = time.perf_counter()
                        logits = member_logits(models, part.x, shape)
                        forward_s += time.perf_counter() - f0
                        writer.write(part.row_id, split, part.y, is_val, part.x, logits)
                        rows += len(part.row_id)
                shards = writer.close()
            failpoint("export.manifest")  # every shard in place, the set not yet complete
            write_manifest(
                tmp, shards, members=list(models), class_names=meta["class_names"],
                feature_shape=shape, logits_dtype=ex.logits_dtype,
                member_fingerprints={m: model_fingerprint(teachers / m) for m in models},
                params={"export": ex.model_dump(), "teacher": cfg.teacher.model_dump()},
                extra={"prepared_fingerprint": meta["fingerprint"]})
        elapsed = time.perf_counter() - t0
        info = summary(out_dir)
        metrics = {"rows": rows, "shards": info["shards"], "bytes": info["bytes"],
                   "rows_per_s": rows / elapsed, "forward_rows_per_s": rows / max(forward_s, 1e-9),
                   "elapsed_s": elapsed}
        tracking.log_metrics(metrics)
        tracking.log_artifact(out_dir / MANIFEST)
        tag_output(tracking, out_dir / MANIFEST)
    print(f"export: {rows} rows ({info['splits']}) from {len(models)} members -> "
          f"{info['shards']} shards, {info['bytes'] / 1e6:.1f} MB in {out_dir} "
          f"({metrics['rows_per_s']:.0f} rows/s)")
    return metrics
