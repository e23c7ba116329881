"""Stage `student`: distil the ensemble into a small model, streaming the soft-target shards.

    kd student                        # or: dvc repro student; dvc exp run -S student.temperature=8

Reads only `data/soft_targets/` (verified against its manifest first) and the prepared test
split for evaluation. Each batch carries its rows' own member logits (same Parquet row as the
features, so shuffling can never mis-pair them); the ensemble's soft targets are formed here at
`student.temperature`, and the loss is Hinton's (stages/losses.py). Labeled validation rows are
held out of training and used for the per-epoch curves. Writes `data/student/` like a teacher
member, and logs the student to MLflow as a pyfunc model (`mlflow.pyfunc.load_model` predicts
with it; the weights still travel as safetensors).

Under torch.distributed it is DistributedDataParallel over row ranges: each epoch the shuffled
order of row groups is cut into one equal run of rows per rank (ShardReader.rank_ranges), each
rank streams its own, and with `runtime.batch: global` each takes `batch_size / world` rows a
step, so the effective batch, the loss and the number of steps are a single process's.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from stages.config import Config
from stages.datasets import Split, read_split
from stages.distributed import SINGLE, Dist, global_batch, progress, ranks, say
from stages.errors import ArtifactError, ConfigError
from stages.losses import kd_loss, soft_targets
from stages.models import build_model, count_params
from stages.shard_reader import ShardReader
from stages.shards import MANIFEST, check_members, read_manifest, verify
from stages.storage import locate
from stages.tracking import log_pyfunc_model, stage_run
from stages.training import (
    CHECKPOINTS,
    Batch,
    clear_checkpoint,
    evaluate,
    fingerprint,
    fit,
    predict,
    prefetch,
    seed_everything,
    write_outputs,
)


def shard_batches(reader: ShardReader, batch_size: int, seed: int, buffer_rows: int,
                  dist: Dist = SINGLE):
    """epoch -> shuffled training batches streamed from the shards (validation rows held out);
    distributed, from this rank's run of rows of the epoch only."""

    def batches(epoch: int):
        if dist.active:
            stream = reader.iter_rank_batches(batch_size, world=dist.world, rank=dist.rank,
                                              seed=seed, epoch=epoch, buffer_rows=buffer_rows)
        else:
            stream = reader.iter_batches(batch_size, shuffle=True, seed=seed, epoch=epoch,
                                         buffer_rows=buffer_rows, drop_val=True)
        for b in prefetch(stream):  # decode the next batch while this one trains
            yield Batch(torch.from_numpy(b["features"]), torch.from_numpy(b["label"]),
                        torch.from_numpy(b["logits"]))  # (B, F), (B,), (M, B, C)

    return batches


def held_out(reader: ShardReader) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The labeled validation rows: features, labels, member logits."""
    parts = list(reader.iter_batches(65_536, shuffle=False, only_val=True))
    if not parts:
        return np.zeros((0, 0), np.float32), np.zeros(0, np.int64), np.zeros((0, 0, 0))
    return (np.concatenate([p["features"] for p in parts]),
            np.concatenate([p["label"] for p in parts]),
            np.concatenate([p["logits"] for p in parts], axis=1))


def check_test_split(test: Split, manifest: dict, path: Path, manifest_path: str) -> None:
    """The test split must be the shards' data set: same feature width, labels among their
    classes. A test split from another prepare would otherwise fail mid-evaluation, after
    the training, or score the student against the wrong labels."""
    width, n_classes = int(np.prod(manifest["feature_shape"])), len(manifest["class_names"])
    if len(test.y) and test.x.shape[1] != width:
        raise ArtifactError(f"{path}: rows have {test.x.shape[1]} features, the shards in "
                            f"{manifest_path} have {width}")
    if len(test.y) and not 0 <= test.y.min() <= test.y.max() < n_classes:
        raise ArtifactError(f"{path}: labels {test.y.min()}..{test.y.max()} are not classes "
                            f"of {manifest_path} ({n_classes} classes)")


def run(cfg: Config, out_dir: Path = Path("data/student"),
        shards: Path | str = Path("data/soft_targets"), prepared: Path = Path("data/prepared"),
        dist: Dist = SINGLE) -> dict:
    st = cfg.student
    # every checksum and row count, before an hour of training: the ranks share the hashing,
    # and a bad shard fails all of them with one line
    dist.fail_together(verify, shards, part=(dist.rank, dist.world))
    manifest = read_manifest(shards)
    check_members(shards, manifest, list(cfg.teacher.members))
    reader = ShardReader(shards)
    shape = tuple(manifest["feature_shape"])
    n_classes = len(manifest["class_names"])
    test, _ = read_split(prepared, "test")
    check_test_split(test, manifest, prepared / "test.parquet", locate(shards).show(MANIFEST))
    seed_everything(st.train.seed)  # the initial weights come from this seed too
    model = build_model(st.arch, shape, n_classes, st.knobs)
    n_params = count_params(model)
    n_train = reader.num_rows(drop_val=True)
    batch = global_batch(st.train.batch_size, cfg.runtime, dist)
    if batch % dist.world:  # torchrun started by hand, with another count than runtime.nproc
        raise ConfigError(f"student.train.batch_size: {batch} rows do not split evenly over "
                          f"{dist.world} ranks")
    # distributed: each rank takes an equal run of the rows, so as many steps as one process
    steps = reader.rank_steps(batch // dist.world, dist.world)
    val_x, val_y, val_t = held_out(reader)
    T, alpha = st.temperature, st.alpha

    def loss_fn(s_logits: torch.Tensor, b: Batch) -> torch.Tensor:
        t_probs = soft_targets(b.t_logits, T, st.combine)  # (B, C)
        # distributed: the hard term divides by the global batch's labeled rows (per rank),
        # not this rank's, so ranks dealt more or fewer labeled rows weigh them as one process
        labeled = dist.mean_over_ranks((b.y >= 0).sum()) if dist.active else None
        return kd_loss(s_logits, t_probs, b.y, T, alpha, labeled)

    def evaluate_fn(m: torch.nn.Module) -> dict:
        out = evaluate(m, val_x, val_y)
        if len(val_y):  # how closely the student follows the ensemble on held-out rows
            t_top = soft_targets(torch.from_numpy(val_t), 1.0, st.combine).argmax(1)
            s_top = predict(m, val_x).argmax(1)  # eval mode, no graph, batched
            out["agreement"] = (t_top == s_top).float().mean().item()
        return out

    stage = "student"
    params = {"student": st.model_dump(), "shards": {"rows": manifest["totals"]["rows"],
                                                     "members": manifest["members"]},
              "world_size": dist.world}
    with stage_run(cfg, stage, params=params, main=dist.is_main) as tracking:
        say(dist, f"{stage}: {st.arch} {st.knobs}, {n_params:,} parameters, T={T}, "
                  f"alpha={alpha}, {n_train} training rows from {len(reader.files)} shards, "
                  f"{st.train.epochs} epochs{ranks(dist, batch)}")
        t0 = time.perf_counter()
        ckpt = CHECKPOINTS / stage
        history = fit(model, shard_batches(reader, batch // dist.world, st.train.seed,
                                           st.shuffle_buffer, dist),
                      loss_fn, st.train, steps_per_epoch=steps, evaluate_fn=evaluate_fn,
                      checkpoint=ckpt,
                      fingerprint=fingerprint(st.model_dump(), manifest, dist.world, batch),
                      callbacks=progress(dist, stage, tracking), dist=dist)
        train_time = time.perf_counter() - t0
        test_m = evaluate(model, test.x, test.y)
        metrics = {"test_accuracy": test_m["accuracy"], "test_nll": test_m["nll"],
                   "params": n_params, "epochs": st.train.epochs, "temperature": T,
                   "alpha": alpha, "train_loss": history[-1]["train_loss"]}
        metrics.update({k: v for k, v in history[-1].items() if k.startswith("val_")})
        spec = {"arch": st.arch, "knobs": st.knobs, "input_shape": list(shape),
                "n_classes": n_classes, "class_names": manifest["class_names"],
                "params": n_params, "stage": stage}
        if dist.is_main:
            write_outputs(out_dir, model, spec, history, metrics, train_time, tracking)
            log_pyfunc_model(tracking, out_dir, test.x[:5])  # flat rows (N, F), as stored
    if not dist.is_main:
        return metrics
    clear_checkpoint(ckpt)
    print(f"{stage}: test accuracy {metrics['test_accuracy']:.4f}, "
          f"NLL {metrics['test_nll']:.4f} ({train_time:.1f}s) -> {out_dir}")
    return metrics
