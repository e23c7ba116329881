"""Checkpoints of the training loop: safetensors + JSON (no pickle), written atomically.

    save_checkpoint(path, model, opt, epoch, history, fp)
    resumed = load_checkpoint(path, model, opt, fp, dist)   # (next epoch, history) or None

A checkpoint is reused only by a run with the same fingerprint: the model and training settings,
the digest of the data the stage reads (the prepared files, or the shards), the world size, the
torch thread count, the device, and the code that trains (`code_digest`), so a run killed before
a code fix, or before a change of split, never resumes epochs trained by the old code or on rows
that are now validation or test rows.
"""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save_file

from kd.io.atomic import atomic_path, write_json
from kd.io.faults import failpoint
from kd.runtime.distributed import SINGLE, Dist

CHECKPOINTS = Path("data/.checkpoints")  # outside every DVC output: `dvc repro` keeps them
_CODE_ROOTS = ("kd", "stages")  # the packages whose code a training run executes


def save_checkpoint(path: Path, model, opt, epoch: int, history: list, fingerprint: str) -> None:
    """Model + optimizer tensors to safetensors, everything else to JSON; atomic."""
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    opt_state = opt.state_dict()
    for idx, state in opt_state["state"].items():
        for name, value in state.items():
            t = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"opt.{idx}.{name}"] = t.detach().cpu().contiguous()
    path.mkdir(parents=True, exist_ok=True)
    # the weights carry their epoch: a kill between the two writes leaves a JSON and weights
    # that disagree, which load_checkpoint then refuses instead of mixing two epochs
    with atomic_path(path / "state.safetensors") as tmp:
        save_file(tensors, str(tmp), metadata={"epoch": str(epoch), "fingerprint": fingerprint})
    failpoint("checkpoint.between")
    write_json(path / "state.json", {"epoch": epoch, "history": history, "fingerprint": fingerprint,
                                     "param_groups": opt_state["param_groups"]})


def _read_checkpoint(path: Path, dist: Dist) -> tuple[bytes, bytes]:
    """The checkpoint's two files as bytes, as rank 0 sees them, on every rank (ranks on other
    machines need not share rank 0's disk). Missing files are empty."""
    parts = []
    for name in ("state.json", "state.safetensors"):
        data = None
        if dist.is_main:
            try:
                data = (path / name).read_bytes()
            except OSError:
                data = b""
        parts.append(dist.broadcast_bytes(data))
    return parts[0], parts[1]


def _safetensors_metadata(data: bytes) -> dict:
    n = int.from_bytes(data[:8], "little")  # the format: u64 header size, then a JSON header
    return json.loads(data[8 : 8 + n]).get("__metadata__", {})


def load_checkpoint(path: Path, model, opt, fingerprint: str,
                    dist: Dist = SINGLE) -> tuple[int, list] | None:
    """Restore (next epoch, history) from a complete checkpoint of the same run, else None:
    a missing, foreign, torn or corrupt checkpoint means starting over, never a crash."""
    meta_bytes, weights = _read_checkpoint(path, dist)
    try:
        meta = json.loads(meta_bytes)
        if meta["fingerprint"] != fingerprint:
            return None  # another config's checkpoint: start over
        if _safetensors_metadata(weights) != {"epoch": str(meta["epoch"]),
                                              "fingerprint": fingerprint}:
            return None  # killed between the two writes
        tensors = load_safetensors(weights)
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        state: dict[int, dict] = {}
        for key, value in tensors.items():
            if key.startswith("opt."):
                _, idx, name = key.split(".", 2)
                state.setdefault(int(idx), {})[name] = value
        opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError,
            UnicodeDecodeError):
        return None
    return meta["epoch"] + 1, meta["history"]


def clear_checkpoint(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def fingerprint(*parts, device: torch.device) -> str:
    """sha256 of JSON-able parts, of the code, the torch thread count and the device: what
    makes a checkpoint reusable by a later run. Threads and device are in it because float sums
    come out in another order on another count or kernel: epochs trained on 2 threads (or a GPU)
    and finished on 1 (or the CPU) would give other bytes than an uninterrupted run on either."""
    key = [code_digest(), torch.get_num_threads(), device_key(device), *parts]
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def device_key(device: torch.device) -> str:
    """The kind of device a run trains on, without its index: every rank of a run must compute
    the same fingerprint (rank 1 on cuda:1 reads rank 0's checkpoint), and two GPUs of one
    model run the same kernels."""
    if device.type == "cuda":
        return f"cuda {torch.cuda.get_device_name(device)}"
    return device.type


def tree_digest(roots: dict[str, Path]) -> str:
    """sha256 over every .py file under each named root: relative paths and bytes."""
    h = hashlib.sha256()
    for name, root in sorted(roots.items()):
        for path in sorted(root.rglob("*.py")):
            h.update(f"{name}/{path.relative_to(root).as_posix()}\0".encode())
            h.update(path.read_bytes())
    return h.hexdigest()


@functools.cache
def code_digest() -> str:
    """The digest of the `kd` and `stages` packages as imported: any edit to the code that
    trains changes it, and with it every checkpoint fingerprint."""
    import importlib.util

    roots = {}
    for name in _CODE_ROOTS:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations:
            roots[name] = Path(next(iter(spec.submodule_search_locations)))
    return tree_digest(roots)
