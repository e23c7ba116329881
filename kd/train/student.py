"""Distillation from soft-target shards: the student's training job.

    job = distill_job(cfg, "data/soft_targets", Path("data/prepared"), dist)
    metrics = train_and_write(job, out_dir, callbacks=...)

Each batch carries its rows' own member logits (same Parquet row as the features, so shuffling
can never mis-pair them); the ensemble's soft targets are formed here at `student.temperature`,
and the loss is Hinton's (kd/distill/losses.py). Labeled validation rows are held out of
training and used for the per-epoch curves, with the student's agreement with the ensemble.

Under torch.distributed it is DistributedDataParallel over row ranges: each epoch the shuffled
order of row groups is cut into one equal run of rows per rank (ShardReader.rank_ranges), each
rank streams its own, and with `runtime.batch: global` each takes `batch_size / world` rows a
step, so the effective batch, the loss and the number of steps are a single process's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch

from kd.config import Config, StudentConfig
from kd.distill.losses import cosine_loss, kd_loss, member_targets, soft_targets
from kd.distill.rows import (
    choose_bias,
    fraction_mask,
    omit_mask,
    pick_members,
    random_members,
    with_bias,
)
from kd.errors import ArtifactError, ConfigError
from kd.io.storage import locate
from kd.models import (
    build_model,
    count_params,
    load_model,
    model_fingerprint,
    output_components,
    resolve_knobs,
)
from kd.models.transformer import init_from, init_problem
from kd.prepared import read_split
from kd.runtime.distributed import SINGLE, Dist, global_batch, ranks
from kd.targets.manifest import MANIFEST, read_manifest
from kd.targets.provenance import check_same_test_split, check_test_split
from kd.targets.reader import ShardReader
from kd.train.batches import Batch, prefetch
from kd.train.checkpoints import fingerprint
from kd.train.loop import evaluate, predict, seed_everything
from kd.train.runner import TrainJob


def shard_batches(reader: ShardReader, batch_size: int, seed: int, buffer_rows: int,
                  dist: Dist = SINGLE, combine: str = "mean_probs", view_labels: str = "row",
                  partner_kept: Callable | None = None) -> Callable[[int], Iterable[Batch]]:
    """epoch -> shuffled training batches streamed from the shards (validation rows held out);
    distributed, from this rank's run of rows of the epoch only. combine random_member: each
    row carries the logits of the one member drawn for it by (seed, epoch, row id), (1, B, C).
    A stored view keeps its row's label only where `view_labels` (student.view_labels) says;
    a mixup partner's label only where `partner_kept` (partner_labels_kept) keeps that row."""

    def batches(epoch: int) -> Iterable[Batch]:
        if dist.active:
            stream = reader.iter_rank_batches(batch_size, world=dist.world, rank=dist.rank,
                                              seed=seed, epoch=epoch, buffer_rows=buffer_rows)
        else:
            stream = reader.iter_batches(batch_size, shuffle=True, seed=seed, epoch=epoch,
                                         buffer_rows=buffer_rows, drop_val=True)
        for b in prefetch(stream):  # decode the next batch while this one trains
            h = torch.from_numpy(b["hidden"]) if "hidden" in b else None  # (B, D)
            y, z, mix = b["label"], b["logits"], None  # (B,), (M, B, C)
            if "view" in b:  # a stored view keeps the soft term; the label term as asked
                if partner_kept is not None and "partner_label" in b:  # a label the variant
                    # drops (fraction, omit) is no mixup partner's either
                    known = b["partner_label"] >= 0
                    known[known] = partner_kept(b["partner"][known], b["partner_label"][known])
                    b["partner_label"] = np.where(known, b["partner_label"], -1)
                y, mix = view_label_terms(b, view_labels)
            if combine == "random_member":
                z = pick_members(z, random_members(seed, epoch, b["row_id"], len(z)))
            yield Batch(torch.from_numpy(b["features"]), torch.from_numpy(y),
                        torch.from_numpy(z), t_hidden=h, mix=mix)  # (B, F), (B,), (M, B, C)

    return batches


def view_label_terms(b: dict, view_labels: str
                     ) -> tuple[np.ndarray, tuple[torch.Tensor, torch.Tensor] | None]:
    """The labels (B,) of a batch with stored views (-1: no label term) and, for
    view_labels mixed, the mixup term (partner labels (B,), lam (B,)) of kd_loss's `mix`.
    row: views carry no label; unmixed: views without a partner keep their row's; mixed: as
    unmixed, and a view mixed with a labeled partner keeps both (a labeled row mixed with an
    unlabeled one: no label term, as its label would claim 1 - lam of a class it lacks)."""
    y, view, mixed = b["label"], b["view"] > 0, b["partner"] >= 0
    if view_labels == "row":
        return np.where(view, -1, y), None
    if view_labels == "unmixed":
        return np.where(mixed, -1, y), None
    y = np.where(mixed & (b["partner_label"] < 0), -1, y)
    return y, (torch.from_numpy(np.where(mixed, b["partner_label"], -1)),
               torch.from_numpy(b["lam"].astype(np.float32)))


def held_out(reader: ShardReader) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The labeled validation rows of a shard set: features, labels, member logits."""
    v = reader.validation_rows()
    if v is None:
        return np.zeros((0, 0), np.float32), np.zeros(0, np.int64), np.zeros((0, 0, 0))
    return v["features"], v["label"], v["logits"]


def ensemble_targets(t_logits: torch.Tensor, st: StudentConfig) -> tuple[torch.Tensor, float]:
    """(B, C) targets of a batch's (M, B, C) member logits, and the temperature they are at.
    soft: the ensemble's distribution at T; hard: its argmax as a one-hot label at T = 1
    (the pseudo-label control), so the same Hinton loss is plain cross-entropy on it.
    combine kl_per_member with soft targets: (M, B, C), every member's own distribution at T
    (the loss averages their soft terms)."""
    if st.targets == "hard":
        top = soft_targets(t_logits, 1.0, st.combine).argmax(1)  # (B,)
        return torch.nn.functional.one_hot(top, t_logits.shape[-1]).to(t_logits.dtype), 1.0
    if st.combine == "kl_per_member":
        return member_targets(t_logits, st.temperature), st.temperature
    return soft_targets(t_logits, st.temperature, st.combine), st.temperature


def omitted_classes(st: StudentConfig, class_names: list[str], variant: str) -> list[int]:
    """student.omit as class indices: a name of the shards' classes, or an index into them."""
    out = []
    for c in st.omit:
        i = class_names.index(c) if isinstance(c, str) and c in class_names else c
        if not isinstance(i, int) or not 0 <= i < len(class_names):
            raise ConfigError(f"student.variants.{variant}.omit: {c!r} is not a class of the "
                              f"shards (names {class_names}, or indices 0-"
                              f"{len(class_names) - 1})")
        out.append(i)
    if len(set(out)) == len(class_names):
        raise ConfigError(f"student.variants.{variant}.omit: every class omitted, nothing left "
                          "to train on")
    return sorted(set(out))


def row_filter(st: StudentConfig, omitted: list[int]) -> Callable[[dict], np.ndarray] | None:
    """The reader's `keep` for the variant's omitted classes and fraction; None: every row."""
    if not omitted and st.fraction >= 1:
        return None

    def keep(part: dict) -> np.ndarray:
        mask = fraction_mask(st.train.seed, part["row_id"], part["is_labeled"], st.fraction)
        return mask & omit_mask(part["label"], part["logits"], omitted, st.combine)

    return keep


def partner_labels_kept(st: StudentConfig, omitted: list[int]
                        ) -> Callable[[np.ndarray, np.ndarray], np.ndarray] | None:
    """For view_labels mixed: (partner ids, their labels) -> which labeled partners the variant
    keeps (fraction, omit), so that a mixup view never carries a label its row filter drops.
    None: every one."""
    if not omitted and st.fraction >= 1:
        return None

    def kept(ids: np.ndarray, labels: np.ndarray) -> np.ndarray:
        labeled = np.ones(len(ids), bool)
        return (fraction_mask(st.train.seed, ids, labeled, st.fraction)
                & ~np.isin(labels, np.asarray(omitted, np.int64)))

    return kept


def bias_correction(omitted: list[int], val: tuple[np.ndarray, np.ndarray],
                    test: tuple[np.ndarray, np.ndarray]) -> Callable[[torch.nn.Module], dict]:
    """After training: the bias for the omitted classes chosen on the validation rows alone,
    and the test accuracy on the omitted classes' rows (and on all) without and with it."""

    def after(model: torch.nn.Module) -> dict:
        b = choose_bias(predict(model, val[0]).numpy(), val[1], omitted)
        z, y = predict(model, test[0]).numpy(), test[1]
        fixed = with_bias(z, omitted, b)
        rows = np.isin(y, omitted)
        return {"omit": {
            "classes": omitted, "bias": b, "validation_rows": len(val[1]),
            "test_rows": int(rows.sum()),
            "test_accuracy_omitted": float((z.argmax(1) == y)[rows].mean()) if rows.any()
            else None,
            "test_accuracy_omitted_corrected": float((fixed.argmax(1) == y)[rows].mean())
            if rows.any() else None,
            "test_accuracy_corrected": float((fixed.argmax(1) == y).mean())}}

    return after


def hidden_member(st: StudentConfig, exported: list[str]) -> str | None:
    """The member whose hidden vectors the student aligns with (`exported`: export.hidden);
    None when beta is 0."""
    if st.beta == 0:
        return None
    return st.hidden_from or exported[0]  # the config checked: exactly one when not named


def init_student(model: torch.nn.Module, st: StudentConfig, teachers: Path) -> None:
    """Layer-skip initialisation (student.init) from the member's saved model directory; the
    member on disk must still fit (params can change after it was trained)."""
    name = st.init.from_
    teacher, spec = load_model(teachers / name)
    why = init_problem(resolve_knobs(st.arch, st.knobs), spec["arch"],
                       resolve_knobs(spec["arch"], spec["knobs"]), st.init.layers)
    if why:
        raise ArtifactError(f"{teachers / name / 'model.json'}: student.init cannot copy it: "
                            f"{why}; rerun `kd teacher`")
    init_from(model, teacher, st.init.layers)


def distill_job(cfg: Config, variant: str, shards: Path | str, prepared: Path,
                dist: Dist = SINGLE, teachers: Path = Path("data/teachers")) -> TrainJob:
    """Student variant `variant` on the (already verified) shard set `shards`."""
    st = cfg.student.variant(variant)
    stage = f"student@{variant}"
    manifest = read_manifest(shards)
    h_member = hidden_member(st, cfg.export.hidden)
    omitted = omitted_classes(st, manifest["class_names"], variant)
    reader = ShardReader(shards, hidden=h_member, rows=st.rows, keep=row_filter(st, omitted),
                         view_seed=st.train.seed, cache_bytes=st.cache_mb * 2**20,
                         views="base" if st.views == "none" else st.views)
    shape = tuple(manifest["feature_shape"])
    n_classes = len(manifest["class_names"])
    test, _ = read_split(prepared, "test")
    where = locate(shards).show(MANIFEST)
    check_same_test_split(manifest, prepared / "test.parquet", where)
    check_test_split(test, manifest, prepared / "test.parquet", where)
    seed_everything(st.train.seed)  # the initial weights come from this seed too
    knobs = dict(st.knobs)
    if h_member is not None and reader.hidden_width != resolve_knobs(st.arch, knobs)["width"]:
        knobs["align"] = reader.hidden_width  # FitNets: a learned map to the teacher's width
    model = build_model(st.arch, shape, n_classes, knobs)
    if st.init is not None:
        init_student(model, st, teachers)
    n_params = count_params(model)
    n_train = reader.num_rows(drop_val=True)
    batch = global_batch(st.train.batch_size, cfg.runtime, dist)
    if batch % dist.world:  # torchrun started by hand, with another count than runtime.nproc
        raise ConfigError(f"student.variants.{variant}.train.batch_size: {batch} rows do not "
                          f"split evenly over "
                          f"{dist.world} ranks")
    # distributed: each rank takes an equal run of the rows, so as many steps as one process
    steps = reader.rank_steps(batch // dist.world, dist.world)
    val_x, val_y, val_t = held_out(reader)
    alpha, beta = st.alpha, st.beta
    if n_train == 0:
        key = "rows" if reader.keep is None else "omit" if st.fraction >= 1 else "fraction"
        raise ConfigError(f"student.variants.{variant}.{key}: the shards hold no "
                          f"{'labeled ' if st.rows == 'labeled' else ''}training rows"
                          f"{'' if reader.keep is None else ' that the variant keeps'}")
    s_hidden: list[torch.Tensor] = []  # the last forward's pooled hidden vector, (B, D_s)

    def keep_hidden(_module, _inputs, out: torch.Tensor) -> None:
        s_hidden[:] = [out]

    if h_member is not None:  # the loop calls model(x): the final norm's output is h_student
        model.norm.register_forward_hook(keep_hidden)

    def loss_fn(s_logits: torch.Tensor, b: Batch) -> torch.Tensor:
        t_probs, T = ensemble_targets(b.t_logits, st)  # (B, C)
        # distributed: the hard term divides by the global batch's labeled rows (per rank),
        # not this rank's, so ranks dealt more or fewer labeled rows weigh them as one process
        labeled = dist.mean_over_ranks((b.y >= 0).sum()) if dist.active else None
        # a model whose output is a mixture may ask for the loss's expectation over its parts
        loss = kd_loss(s_logits, t_probs, b.y, T, alpha, labeled, output_components(model),
                       mix=b.mix)
        if h_member is None:
            return loss
        h = s_hidden[0] if model.align is None else model.align(s_hidden[0])  # (B, D_t)
        return loss + beta * cosine_loss(h, b.t_hidden)

    def evaluate_fn(m: torch.nn.Module) -> dict:
        out = evaluate(m, val_x, val_y)
        if len(val_y):  # how closely the student follows the ensemble on held-out rows
            t_top = soft_targets(torch.from_numpy(val_t), 1.0, st.combine).argmax(1)
            s_top = predict(m, val_x).argmax(1)  # eval mode, no graph, batched
            out["agreement"] = (t_top == s_top).float().mean().item()
        return out

    return TrainJob(
        stage=stage, model=model, train=st.train,
        batches=shard_batches(reader, batch // dist.world, st.train.seed, st.shuffle_buffer,
                              dist, st.combine, st.view_labels,
                              partner_labels_kept(st, omitted)),
        steps=steps, loss_fn=loss_fn, evaluate_fn=evaluate_fn,
        # the manifest holds every shard's sha256 (rows, splits, is_val) and the prepared test
        # split's; an init copies a member's weights, which may have been retrained since
        fingerprint=fingerprint(st.model_dump(), manifest, dist.world, batch,
                                model_fingerprint(teachers / st.init.from_) if st.init else None,
                                device=dist.device),
        test=(test.x, test.y),
        after=bias_correction(omitted, (val_x, val_y), (test.x, test.y)) if omitted else None,
        spec={"arch": st.arch, "knobs": knobs, "input_shape": list(shape),
              "n_classes": n_classes, "class_names": manifest["class_names"],
              "params": n_params, "stage": stage, "variant": variant},
        metrics={"temperature": st.temperature, "alpha": alpha, **({"beta": beta} if beta else {})},
        params={"student": st.model_dump(), "variant": variant,
                "shards": {"rows": manifest["totals"]["rows"], "members": manifest["members"]},
                "world_size": dist.world},
        intro=f"{stage}: {st.arch} {knobs}, {n_params:,} parameters, {st.targets} targets"
              f"{f' T={st.temperature:g}' if st.targets == 'soft' else ''}, alpha={alpha}, "
              + (f"beta={beta} (hidden.{h_member}), " if h_member else "")
              + (f"init from {st.init.from_} layers {st.init.layers}, " if st.init else "")
              + (f"combine {st.combine}, " if st.combine != "mean_probs" else "")
              + (f"omitting classes {omitted}, " if omitted else "")
              + (f"fraction {st.fraction:g} of the labeled rows, " if st.fraction < 1 else "")
              + f"{n_train} {'labeled ' if st.rows == 'labeled' else ''}training rows "
              + (f"(views: {st.views}, {reader.view_settings['count']} stored a row) "
                 if reader.view_settings else "") + "from "
              f"{len(reader.files)} shards, "
              f"{st.train.epochs} epochs{ranks(dist, batch)}")

