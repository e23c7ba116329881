"""The shared training loop: augmentation, schedules, batching, determinism, checkpoints, resume.

All on tiny in-memory tensors; the whole file runs in a few seconds on CPU.
"""

from __future__ import annotations

import io
import json
import math
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open

from kd.config import AugmentConfig, TrainConfig
from kd.models import build_model
from kd.train.batches import augment, in_memory_batches
from kd.train.callbacks import PrintProgress
from kd.train.checkpoints import load_checkpoint, save_checkpoint
from kd.train.loop import evaluate, fit, lr_at, make_optimizer

# --------------------------------------------------------------------------- augment


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _rolls_1d(row: torch.Tensor, src: torch.Tensor, max_shift: int) -> list[int]:
    return [s for s in range(-max_shift, max_shift + 1) if torch.equal(row, torch.roll(src, s))]


def test_augment_1d_is_a_circular_shift_within_bound():
    b, n, shift = 200, 11, 3
    x = torch.arange(b * n, dtype=torch.float32).view(b, n)  # distinct values: a roll is unique
    out = augment(x, (n,), AugmentConfig(shift=shift), _gen())
    assert out.shape == x.shape and out.dtype == x.dtype
    seen = []
    for i in range(b):
        match = _rolls_1d(out[i], x[i], shift)
        assert len(match) == 1, (i, out[i], x[i])  # the row is x[i] rolled by s, |s| <= shift
        seen.append(match[0])
    # the shifts are random and use the whole range, both directions
    assert set(seen) == set(range(-shift, shift + 1))


def test_augment_2d_shifts_both_axes():
    b, h, w, shift = 200, 5, 6, 1
    x = torch.arange(b * h * w, dtype=torch.float32).view(b, h * w)  # flat, as batches are
    out = augment(x, (h, w), AugmentConfig(shift=shift), _gen(1))
    assert out.shape == (b, h * w)
    shifts = []
    for i in range(b):
        img, src = out[i].view(h, w), x[i].view(h, w)
        match = [(s0, s1) for s0 in range(-shift, shift + 1) for s1 in range(-shift, shift + 1)
                 if torch.equal(img, torch.roll(src, (s0, s1), dims=(0, 1)))]
        assert len(match) == 1, (i, img, src)
        shifts.append(match[0])
    rows, cols = {s[0] for s in shifts}, {s[1] for s in shifts}
    assert rows == {-1, 0, 1} and cols == {-1, 0, 1}  # both axes move, not just the flat one
    # a flat roll by one position is not what happens to a 2-D image
    assert any(s[1] != 0 for s in shifts) and any(s[0] != 0 for s in shifts)


def test_augment_noise_changes_values_and_has_the_configured_scale():
    x = torch.zeros(500, 20)
    out = augment(x, (20,), AugmentConfig(noise=0.5), _gen())
    assert out.shape == x.shape
    assert not torch.equal(out, x)
    assert abs(out.std().item() - 0.5) < 0.03 and abs(out.mean().item()) < 0.03


def test_augment_zero_is_identity():
    x = torch.randn(16, 12, generator=_gen(3))
    out = augment(x, (3, 4), AugmentConfig(shift=0, noise=0.0), _gen())
    assert torch.equal(out, x)
    # shift 0 with noise: values move, positions do not (the noise is additive only)
    noisy = augment(x, (3, 4), AugmentConfig(shift=0, noise=1e-3), _gen())
    assert not torch.equal(noisy, x) and torch.allclose(noisy, x, atol=1e-2)


def test_augment_is_a_function_of_the_generator():
    x = torch.randn(32, 40, generator=_gen(5))
    cfg = AugmentConfig(shift=4, noise=0.1)
    a, b = augment(x, (40,), cfg, _gen(7)), augment(x, (40,), cfg, _gen(7))
    c = augment(x, (40,), cfg, _gen(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


# --------------------------------------------------------------------------- lr schedule


def _train(**kw) -> TrainConfig:
    return TrainConfig(**{"lr": 0.1, "epochs": 10, **kw})


def test_lr_constant():
    cfg = _train(schedule="constant")
    assert [lr_at(s, 100, 0, cfg) for s in (0, 50, 99)] == [0.1, 0.1, 0.1]


def test_lr_cosine_start_middle_end():
    cfg = _train(schedule="cosine")
    assert lr_at(0, 100, 0, cfg) == pytest.approx(0.1)
    assert lr_at(50, 100, 0, cfg) == pytest.approx(0.05)
    assert lr_at(25, 100, 0, cfg) == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert lr_at(99, 100, 0, cfg) < 1e-3
    assert lr_at(100, 100, 0, cfg) == pytest.approx(0.0, abs=1e-12)
    lrs = [lr_at(s, 100, 0, cfg) for s in range(100)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:], strict=False))  # monotone decay


def test_lr_onecycle_warms_up_then_decays_linearly():
    cfg = _train(schedule="onecycle", warmup_epochs=1)
    total, warmup = 100, 10
    assert lr_at(0, total, warmup, cfg) == pytest.approx(0.01)  # (0 + 1) / 10 of the peak
    assert lr_at(4, total, warmup, cfg) == pytest.approx(0.05)
    assert lr_at(9, total, warmup, cfg) == pytest.approx(0.1)  # warm-up ends at the peak
    assert lr_at(10, total, warmup, cfg) == pytest.approx(0.1)
    assert lr_at(55, total, warmup, cfg) == pytest.approx(0.05)  # halfway through the decay
    assert lr_at(100, total, warmup, cfg) == pytest.approx(0.0, abs=1e-12)


def test_lr_warmup_then_cosine():
    cfg = _train(schedule="cosine", warmup_epochs=2)
    total, warmup = 100, 20
    ramp = [lr_at(s, total, warmup, cfg) for s in range(warmup)]
    assert ramp[0] == pytest.approx(0.1 / 20) and ramp[-1] == pytest.approx(0.1)
    assert all(b > a for a, b in zip(ramp, ramp[1:], strict=False))
    assert lr_at(20, total, warmup, cfg) == pytest.approx(0.1)  # cosine starts at the peak
    assert lr_at(60, total, warmup, cfg) == pytest.approx(0.05)  # its middle
    assert lr_at(100, total, warmup, cfg) == pytest.approx(0.0, abs=1e-12)


# --------------------------------------------------------------------------- batching


def _rows(n: int = 103, f: int = 6):
    x = (np.arange(n * f, dtype=np.float32).reshape(n, f))  # row i starts with i * f
    return x, np.arange(n, dtype=np.int64)


def _epoch(batches, epoch: int):
    got = list(batches(epoch))
    return got, torch.cat([b.y for b in got])


def test_batches_visit_every_row_once_per_epoch_and_keep_pairs():
    x, y = _rows()
    batches = in_memory_batches(x, y, 16, 0, (6,), AugmentConfig())
    for epoch in range(3):
        got, ys = _epoch(batches, epoch)
        assert sorted(ys.tolist()) == list(range(103))
        assert [len(b.y) for b in got] == [16] * 6 + [7]
        for b in got:  # features still belong to their label after shuffling
            assert torch.equal(b.x[:, 0], b.y.float() * 6)
            assert b.x.dtype == torch.float32 and b.y.dtype == torch.int64


def test_batches_order_depends_on_epoch_and_seed_only():
    x, y = _rows()
    a = in_memory_batches(x, y, 16, 0, (6,), AugmentConfig())
    b = in_memory_batches(x, y, 16, 0, (6,), AugmentConfig())
    other_seed = in_memory_batches(x, y, 16, 1, (6,), AugmentConfig())
    e0, e1 = _epoch(a, 0)[1], _epoch(a, 1)[1]
    assert not torch.equal(e0, e1)  # reshuffled every epoch
    assert not torch.equal(e0, torch.arange(103))
    assert torch.equal(_epoch(a, 1)[1], e1)  # asking again gives the same epoch
    assert torch.equal(_epoch(b, 1)[1], e1)  # another closure, same (seed, epoch)
    _epoch(b, 5)  # drawing other epochs first does not shift epoch 0's stream
    assert torch.equal(_epoch(b, 0)[1], e0)
    assert not torch.equal(_epoch(other_seed, 0)[1], e0)


def test_batches_augment_per_epoch_reproducibly():
    x, y = _rows(64, 10)
    aug = AugmentConfig(shift=2, noise=0.0)
    a = in_memory_batches(x, y, 64, 3, (10,), aug)
    b = in_memory_batches(x, y, 64, 3, (10,), aug)
    (a0,), (b0,) = list(a(0)), list(b(0))
    assert torch.equal(a0.x, b0.x)
    assert not torch.equal(a0.x, torch.from_numpy(x)[a0.y])  # some rows were shifted
    for row, label in zip(a0.x, a0.y, strict=True):  # each a roll of its own source row
        assert _rolls_1d(row, torch.from_numpy(x[label]), 2)


# --------------------------------------------------------------------------- fit

N_FEAT, N_CLASSES = 8, 3


def _toy(n: int = 240, seed: int = 0):
    """A learnable problem: the label is the argmax of a fixed linear map of the features."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, N_FEAT)).astype(np.float32)
    w = rng.standard_normal((N_FEAT, N_CLASSES))
    return x, (x @ w).argmax(1).astype(np.int64)


def _model(init_seed: int = 0) -> torch.nn.Module:
    # BatchNorm (buffers incl. an int64 counter) and dropout (RNG per epoch) both have to
    # survive a checkpoint for resume to be exact
    torch.manual_seed(init_seed)
    return build_model("cnn1d", (N_FEAT,), N_CLASSES,
                       {"channels": 4, "depth": 2, "kernel": 3, "dropout": 0.2})


CFG = TrainConfig(epochs=5, batch_size=32, lr=0.02, warmup_epochs=1, schedule="cosine",
                  augment=AugmentConfig(shift=1, noise=0.05), seed=3)


class Counter:
    def __init__(self):
        self.starts: list[int] = []
        self.ends: list[int] = []

    def on_epoch_start(self, epoch, epochs, steps):
        self.starts.append(epoch)

    def on_epoch_end(self, epoch, metrics):
        self.ends.append(epoch)


class Interrupt(Exception):
    pass


class StopAfter:
    """Simulates a kill right after epoch `k` was completed (and checkpointed)."""

    def __init__(self, k: int):
        self.k = k

    def on_epoch_end(self, epoch, metrics):
        if epoch == self.k:
            raise Interrupt


def _fit(model, cfg=CFG, data=None, **kw):
    x, y = data if data is not None else _toy()
    batches = in_memory_batches(x, y, cfg.batch_size, cfg.seed, (N_FEAT,), cfg.augment)
    steps = -(-len(y) // cfg.batch_size)
    return fit(model, batches, lambda logits, b: F.cross_entropy(logits, b.y), cfg,
               steps_per_epoch=steps, **kw)


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def _curves(history):
    return [{k: v for k, v in h.items() if k != "epoch_time_s"} for h in history]


@pytest.fixture(scope="module")
def reference():
    """One uninterrupted run: (model, history)."""
    model = _model()
    history = _fit(model)
    return model, history


def test_fit_is_deterministic(reference):
    ref_model, ref_history = reference
    torch.rand(17)  # whatever ran before in the process must not matter
    model = _model()
    history = _fit(model)
    _assert_same_weights(model, ref_model)
    assert _curves(history) == _curves(ref_history)


def test_fit_learns_the_toy_problem():
    # no shifts here: this toy label depends on positions, so shifting would make it noisy
    cfg = TrainConfig(epochs=6, batch_size=32, lr=0.05, augment=AugmentConfig(noise=0.05))
    model = _model()
    history = _fit(model, cfg)
    x, y = _toy()
    assert [h["epoch"] for h in history] == [1, 2, 3, 4, 5, 6]
    assert all(h["samples"] == 240 for h in history)
    assert history[-1]["train_loss"] < 0.6 * history[0]["train_loss"]
    untrained, trained = evaluate(_model(), x, y), evaluate(model, x, y)
    assert trained["nll"] < 0.7 * untrained["nll"]
    assert trained["accuracy"] > 0.75 > 0.4 > untrained["accuracy"]
    assert not model.training  # fit leaves the model in eval mode


def test_fit_reports_validation_metrics_and_lr():
    x, y = _toy(seed=1)
    cfg = TrainConfig(epochs=2, batch_size=64, lr=0.01, seed=0)
    history = _fit(_model(), cfg, data=_toy(), evaluate_fn=lambda m: evaluate(m, x, y))
    assert {"val_accuracy", "val_nll", "train_loss", "lr"} <= history[0].keys()
    assert history[-1]["lr"] < history[0]["lr"]  # cosine decays across epochs


def test_resume_after_interruption_matches_uninterrupted_run(reference, tmp_path, capsys):
    ref_model, ref_history = reference
    ckpt = tmp_path / "ckpt"
    with pytest.raises(Interrupt):
        _fit(_model(), checkpoint=ckpt, fingerprint="fp", callbacks=[StopAfter(1)])
    state = json.loads((ckpt / "state.json").read_text())
    assert state["epoch"] == 1 and state["fingerprint"] == "fp" and len(state["history"]) == 2
    capsys.readouterr()

    counter = Counter()
    model = _model(init_seed=99)  # another init: only the checkpoint can make it match
    history = _fit(model, checkpoint=ckpt, fingerprint="fp", callbacks=[counter])
    assert counter.starts == [2, 3, 4]  # only the epochs that had not completed
    assert "resuming from epoch 2" in capsys.readouterr().err
    _assert_same_weights(model, ref_model)
    assert _curves(history) == _curves(ref_history)


def test_resume_twice_interrupted(reference, tmp_path):
    ref_model, _ = reference
    ckpt = tmp_path / "ckpt"
    with pytest.raises(Interrupt):
        _fit(_model(), checkpoint=ckpt, fingerprint="fp", callbacks=[StopAfter(0)])
    with pytest.raises(Interrupt):
        _fit(_model(1), checkpoint=ckpt, fingerprint="fp", callbacks=[StopAfter(3)])
    model = _model(2)
    history = _fit(model, checkpoint=ckpt, fingerprint="fp")
    assert len(history) == CFG.epochs
    _assert_same_weights(model, ref_model)


def test_checkpoint_of_another_fingerprint_is_ignored(reference, tmp_path, capsys):
    ref_model, _ = reference
    ckpt = tmp_path / "ckpt"
    with pytest.raises(Interrupt):
        _fit(_model(init_seed=5), checkpoint=ckpt, fingerprint="old", callbacks=[StopAfter(2)])
    capsys.readouterr()
    counter = Counter()
    model = _model()  # the reference's init: from scratch, it must end where the reference did
    _fit(model, checkpoint=ckpt, fingerprint="new", callbacks=[counter])
    assert counter.starts == [0, 1, 2, 3, 4]
    assert "resuming" not in capsys.readouterr().err
    _assert_same_weights(model, ref_model)
    assert json.loads((ckpt / "state.json").read_text())["fingerprint"] == "new"


def test_resume_with_weights_newer_than_state_json(reference, tmp_path):
    """A kill between writing state.safetensors (epoch k) and state.json (epoch k) leaves the
    JSON of epoch k-1 beside the weights of epoch k. The rerun must not pair them: it should
    still end with the uninterrupted run's weights (by redoing work or detecting the mismatch).
    """
    ref_model, _ = reference
    ckpt = tmp_path / "ckpt"
    with pytest.raises(Interrupt):
        _fit(_model(), checkpoint=ckpt, fingerprint="fp", callbacks=[StopAfter(1)])
    old_json = (ckpt / "state.json").read_bytes()
    with pytest.raises(Interrupt):
        _fit(_model(), checkpoint=ckpt, fingerprint="fp", callbacks=[StopAfter(2)])
    (ckpt / "state.json").write_bytes(old_json)  # as if killed just before the JSON's rename
    model = _model()
    _fit(model, checkpoint=ckpt, fingerprint="fp")
    _assert_same_weights(model, ref_model)


def test_corrupt_checkpoint_weights_start_over(reference, tmp_path):
    ref_model, _ = reference
    ckpt = tmp_path / "ckpt"
    with pytest.raises(Interrupt):
        _fit(_model(), checkpoint=ckpt, fingerprint="fp", callbacks=[StopAfter(1)])
    (ckpt / "state.safetensors").write_bytes(b"not a safetensors file")
    model = _model()
    _fit(model, checkpoint=ckpt, fingerprint="fp")  # starts over instead of crashing
    _assert_same_weights(model, ref_model)


# --------------------------------------------------------------------------- checkpoints


def _stepped(model, cfg: TrainConfig, steps: int = 3):
    opt = make_optimizer(model, cfg)
    x, y = _toy(64)
    model.train()
    for _ in range(steps):
        loss = F.cross_entropy(model(torch.from_numpy(x)), torch.from_numpy(y))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return opt


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_checkpoint_round_trip_without_pickle(tmp_path, monkeypatch, optimizer):
    cfg = TrainConfig(optimizer=optimizer, lr=0.01, epochs=3)
    model = _model()
    opt = _stepped(model, cfg)
    history = [{"epoch": 1, "train_loss": 1.25}, {"epoch": 2, "train_loss": 0.5}]
    save_checkpoint(tmp_path, model, opt, 1, history, "fp")

    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json", "state.safetensors"]
    meta = json.loads((tmp_path / "state.json").read_text())
    assert meta["epoch"] == 1 and meta["fingerprint"] == "fp" and meta["history"] == history
    with safe_open(str(tmp_path / "state.safetensors"), framework="pt") as f:
        keys = set(f.keys())
    assert {f"model.{k}" for k in model.state_dict()} <= keys
    assert any(k.startswith("opt.") for k in keys)  # the optimizer's moments/momentum too

    def no_pickle(*a, **k):
        raise AssertionError("a checkpoint must not be unpickled")

    monkeypatch.setattr(torch, "load", no_pickle)
    monkeypatch.setattr(pickle, "load", no_pickle)
    monkeypatch.setattr(pickle, "loads", no_pickle)
    fresh = _model(init_seed=7)
    fresh_opt = make_optimizer(fresh, cfg)
    assert load_checkpoint(tmp_path, fresh, fresh_opt, "fp") == (2, history)
    _assert_same_weights(fresh, model)
    # the restored optimizer takes the same next step as the original
    for m, o in ((model, opt), (fresh, fresh_opt)):
        m.train()
        x, y = _toy(64, seed=4)
        torch.manual_seed(0)  # same dropout mask for both
        loss = F.cross_entropy(m(torch.from_numpy(x)), torch.from_numpy(y))
        o.zero_grad()
        loss.backward()
        o.step()
    _assert_same_weights(fresh, model)


def test_load_checkpoint_none_cases(tmp_path):
    model = _model()
    opt = make_optimizer(model, CFG)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert load_checkpoint(tmp_path / "missing", model, opt, "fp") is None
    save_checkpoint(tmp_path, _model(4), make_optimizer(_model(4), CFG), 0, [], "fp")
    assert load_checkpoint(tmp_path, model, opt, "other") is None
    for k, v in model.state_dict().items():  # a rejected checkpoint leaves the model alone
        assert torch.equal(v, before[k])
    (tmp_path / "state.json").write_text("{not json")
    assert load_checkpoint(tmp_path, model, opt, "fp") is None


# --------------------------------------------------------------------------- progress


def test_print_progress_plain_lines_when_not_a_tty():
    stream = io.StringIO()
    progress = PrintProgress("teacher@m", stream=stream)
    assert not progress.tty
    for epoch in range(3):
        progress.on_epoch_start(epoch, 3, 4)
        for _ in range(4):
            progress.on_step(torch.tensor(0.5))
        progress.on_epoch_end(epoch, {"epoch": epoch + 1, "train_loss": 0.25, "lr": 1e-3,
                                      "epoch_time_s": 0.1, "val_accuracy": 0.75})
    text = stream.getvalue()
    lines = text.splitlines()
    assert len(lines) == 3
    assert "\r" not in text and "\x1b" not in text  # no bar, no escape codes
    for i, line in enumerate(lines):
        assert line.startswith(f"teacher@m epoch {i + 1}/3:")
        assert "train_loss 0.2500" in line and "val_accuracy 0.7500" in line


def test_print_progress_says_elapsed_and_time_left(monkeypatch):
    """Each epoch's line says how long the stage has run and how long it has left: the mean
    epoch time so far times the epochs to go (a resumed run counts from where it resumed)."""
    from kd.train import callbacks

    clock = iter(range(0, 10_000, 30))  # every call to the clock is 30 s after the last
    monkeypatch.setattr(callbacks.time, "perf_counter", lambda: float(next(clock)))
    stream = io.StringIO()
    progress = PrintProgress("student@small", stream=stream)
    for epoch in range(2, 6):  # resumed after epoch 2 of 6: four epochs run here
        progress.on_epoch_start(epoch, 6, 1)
        progress.on_epoch_end(epoch, {"epoch": epoch + 1, "train_loss": 0.25, "lr": 1e-3,
                                      "epoch_time_s": 30.0})
    lines = stream.getvalue().splitlines()
    # start at 0 s; epoch 3 ends at 30 s, epoch 4 at 60 s, ...: 30 s an epoch
    assert lines[0].startswith("student@small epoch 3/6:")
    assert lines[0].endswith("(30.0s; 30s so far, about 1.5 min left)"), lines[0]
    assert lines[1].endswith("(30.0s; 60s so far, about 60s left)"), lines[1]
    assert lines[3].startswith("student@small epoch 6/6:")
    assert lines[3].endswith("(30.0s; 2.0 min so far, about 0s left)"), lines[3]


def test_fit_prints_one_line_per_epoch():
    stream = io.StringIO()
    cfg = TrainConfig(epochs=3, batch_size=64, lr=0.01)
    _fit(_model(), cfg, callbacks=[PrintProgress("toy", stream=stream)])
    lines = stream.getvalue().splitlines()
    assert [ln.split(":")[0] for ln in lines] == ["toy epoch 1/3", "toy epoch 2/3", "toy epoch 3/3"]
    assert all("so far, about" in ln and ln.endswith(" left)") for ln in lines), lines


def test_code_digest_sees_every_source_edit_and_no_bytecode(tmp_path):
    """A run killed before a code fix starts over instead of resuming epochs that the old code
    trained (the stages' fingerprints use it: tests/test_student.py)."""
    from kd.train import checkpoints

    (tmp_path / "kd").mkdir()
    (tmp_path / "kd" / "loss.py").write_text("T = 2\n")
    (tmp_path / "kd" / "__pycache__").mkdir()
    (tmp_path / "kd" / "__pycache__" / "loss.cpython-311.pyc").write_bytes(b"\0")
    before = checkpoints.tree_digest({"kd": tmp_path / "kd"})
    (tmp_path / "kd" / "__pycache__" / "loss.cpython-311.pyc").write_bytes(b"\1")
    assert checkpoints.tree_digest({"kd": tmp_path / "kd"}) == before  # bytecode is no code
    (tmp_path / "kd" / "loss.py").write_text("T = 4\n")  # the fix
    assert checkpoints.tree_digest({"kd": tmp_path / "kd"}) != before
    assert len(checkpoints.code_digest()) == 64  # the installed kd/ and stages/ were found


def test_device_key_names_the_gpu_model_not_its_index(monkeypatch):
    """Every rank of a run computes one fingerprint (rank 1 on cuda:1 reads rank 0's
    checkpoint); another GPU model, or the CPU, is another run."""
    from kd.train.checkpoints import device_key

    names = {0: "NVIDIA H100", 1: "NVIDIA H100", 2: "NVIDIA A100"}
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d: names[d.index])
    keys = [device_key(torch.device("cuda", i)) for i in range(3)]
    assert keys[0] == keys[1] != keys[2]
    assert device_key(torch.device("cpu")) not in keys
