"""Stage `export`: every member's logits on every labeled, unlabeled and synthetic row -> shards.

    kd export                         # or: dvc repro export

Streams the prepared labeled and unlabeled splits, then the synthetic rows of the transfer
stage (`data/transfer/synthetic.parquet`, split `synthetic`; none when `transfer.method: none`),
in batches of `export.batch_size`, runs each member forward (kd/teachers/), and writes
`data/soft_targets/part-*.parquet` + `manifest.json` (kd/targets/manifest.py holds the schema).
Logits, not probabilities: a new `T` never needs a new export. With `export.top_k: k` each
member keeps its k largest logits, their ids and the tail's log-sum-exp (kd/targets/topk.py),
and the manifest records how close that is to the dense logits on the first rows exported.
Memory is flat in the rows but with `export.views` (kd/augment.py: K views follow each training
row; features held to replay).
The directory appears whole when complete (the manifest last inside it), so a killed export
leaves nothing a student could mistake for a finished one; a rerun gives byte-identical shards.

Under torch.distributed (`runtime.nproc > 1`, or torchrun) each rank takes a contiguous range of
whole batches of each split and writes its own shards (`part-r<rank>-NNNNN.parquet`) into the
one temporary directory; rank 0 writes the manifest once every rank has finished. Rows, ids,
views and logits are exactly a single process's; only shard boundaries differ.
"""

from __future__ import annotations

import time
from pathlib import Path

from kd.augment import ViewSource, settings_of
from kd.config import Config
from kd.evaluate.shard_checks import shard_warnings
from kd.io.faults import failpoint
from kd.prepared import load_meta
from kd.progress import plural
from kd.runtime.distributed import SINGLE, Dist, shared_atomic_dir
from kd.targets.manifest import MANIFEST, write_manifest
from kd.targets.provenance import prepared_digests
from kd.targets.shards import ShardWriter
from kd.targets.shardset import summary
from kd.targets.topk import check_k
from kd.teachers.export import export_rows
from kd.teachers.members import hidden_widths, load_members, member_fingerprint
from kd.tracking import stage_run, tag_output
from kd.transfer.stored import SYNTHETIC, transfer_about, transfer_set


def run(cfg: Config, out_dir: Path = Path("data/soft_targets"),
        prepared: Path = Path("data/prepared"), teachers: Path = Path("data/teachers"),
        dist: Dist = SINGLE, transfer: Path = Path("data/transfer")) -> dict:
    meta, digests = load_meta(prepared), prepared_digests(prepared)
    synthetic = transfer_set(transfer, prepared, digests["prepared_sha256"])
    sources = [(prepared, "labeled"), (prepared, "unlabeled")]
    sources += [(transfer, SYNTHETIC)] if synthetic else []
    about = transfer_about(synthetic)  # what the report says the student learned from
    models = {name: m.to(dist.device) for name, m in load_members(cfg, meta, teachers).items()}
    shape, ex = tuple(meta["feature_shape"]), cfg.export
    hidden = hidden_widths(models, ex.hidden)  # member -> D of its `hidden.<member>` column
    params = {"export": ex.recorded(), "members": list(models), "world_size": dist.world}
    views = ViewSource(settings_of(ex), sources, shape) if ex.views else None
    if ex.top_k:  # against the prepared data's classes (a parquet source's are known here)
        check_k(ex.top_k, meta["n_classes"])
    with stage_run(cfg, "export", params=params, main=dist.is_main) as tracking:
        t0 = time.perf_counter()
        with shared_atomic_dir(out_dir, dist) as tmp:
            writer = ShardWriter(
                tmp, members=list(models), class_names=meta["class_names"],
                feature_shape=shape, rows_per_shard=ex.rows_per_shard,
                row_group_size=ex.row_group_size, compression=ex.compression,
                logits_dtype=ex.logits_dtype,
                extra_metadata={"prepared_fingerprint": meta["fingerprint"]},
                prefix=f"part-r{dist.rank:03d}" if dist.active else "part", hidden=hidden,
                views=views and views.settings, top_k=ex.top_k)
            with writer:
                rows, forward_s, fid = export_rows(models, sources, ex, writer, views, shape, dist)
                shards = writer.close()
            # a collective: past it, every rank has finished and renamed its shards
            per_rank = dist.gather_json({"shards": shards, "rows": rows, "forward_s": forward_s})
            if dist.is_main:
                failpoint("export.manifest")  # every shard in place, the set not yet complete
                write_manifest(
                    tmp, [s for r in per_rank for s in r["shards"]], members=list(models),
                    class_names=meta["class_names"], feature_shape=shape,
                    logits_dtype=ex.logits_dtype,
                    member_fingerprints={m: member_fingerprint(teachers / m) for m in models},
                    params={"export": ex.recorded(), "teacher": cfg.teacher.model_dump()},
                    extra={"prepared_fingerprint": meta["fingerprint"], "ranks": dist.world,
                           **digests, **about}, hidden=hidden, views=views and views.settings,
                    top_k=writer.codec, fidelity=fid)
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
    print(f"export: {rows} rows ({info['splits']}) from {plural(len(models), 'member')} -> "
          f"{info['shards']} shards, {info['bytes'] / 1e6:.1f} MB in {out_dir} "
          f"({metrics['rows_per_s']:.0f} rows/s{ranks})")
    for w in shard_warnings(out_dir, cfg.student.shared().combine, list(cfg.teacher.imports),
                            meta["n_classes"]):
        print(f"warning: {w}")
    return metrics

