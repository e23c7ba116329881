"""torch.distributed for the training and export stages: PyTorch's own runtime, no launcher of ours.

    runtime: {nproc: 2}                              # params.yaml: `kd` starts torchrun itself
    torchrun --nproc-per-node 2 -m kd.cli student    # or start torchrun yourself
    torchrun --nnodes 2 --node-rank 0 --rdzv-endpoint host0:29400 --nproc-per-node 8 \
        -m kd.cli export                             # ... and --node-rank 1 on the other node

A stage calls `session(cfg.runtime)` and gets a `Dist`: rank, world size, device and the few
collectives the stages need. Outside torchrun it is a single process (`world == 1`) and every
collective is a no-op, so the stage code has one path. With `runtime.nproc > 1` and no torchrun
around, `kd <stage>` re-runs itself under torchrun (`launch`): torchrun's own `run()` with
`--standalone`, so DVC's command line stays `kd <stage>`.

The backend follows the hardware: nccl (one CUDA device per local rank) when CUDA GPUs are
there, gloo on CPU; the model and batches go where the backend is. A single process, without
torchrun, trains on `runtime.device`: a CUDA GPU when one is visible (auto), else the CPU.
Objects cross ranks as JSON or raw bytes in uint8 tensors, never pickles.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from kd.config import RuntimeConfig
from kd.errors import KDError
from kd.io.atomic import atomic_dir

CPU = torch.device("cpu")
ERROR_DIR = "KD_ERROR_DIR"  # set by `launch`: ranks leave their one-line user errors here


def under_torchrun() -> bool:
    """True in a process that torchrun (or torch.distributed.run) started."""
    return "TORCHELASTIC_RUN_ID" in os.environ or {"RANK", "WORLD_SIZE"} <= set(os.environ)


def choose_backend(wanted: str) -> str:
    if wanted == "auto":
        return "nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"
    if wanted == "nccl" and not torch.cuda.is_available():
        raise KDError("runtime.backend: nccl needs CUDA GPUs and none is visible; use gloo or auto")
    return wanted


def choose_device(wanted: str) -> torch.device:
    """The device of a single process: a CUDA GPU when asked for or (auto) when one is visible."""
    if wanted == "cpu" or (wanted == "auto" and not torch.cuda.is_available()):
        return CPU
    if not torch.cuda.is_available():
        raise KDError("runtime.device: cuda needs a CUDA GPU and none is visible; use cpu or auto")
    # deterministic cuBLAS, for torch.use_deterministic_algorithms(True)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    return torch.device("cuda", torch.cuda.current_device())


def threads_per_process(rt: RuntimeConfig, world_on_node: int) -> int:
    """Torch threads for one process: `runtime.threads`, or (0) the cores split over this
    node's processes."""
    return rt.threads or max(1, (os.cpu_count() or 1) // max(1, world_on_node))


def set_threads(rt: RuntimeConfig) -> int:
    """Apply `runtime.threads` to this process (every `kd` command calls it, so prepare and the
    report's timings run on the threads the params say, not on torch's default); returns it."""
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("WORLD_SIZE", 1)) \
        if under_torchrun() else 1
    n = threads_per_process(rt, local_world)
    torch.set_num_threads(n)
    return n


@dataclass(frozen=True)
class Dist:
    """This process's place in the job. The collectives are no-ops in a single process."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: CPU)

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def broadcast_bytes(self, data: bytes | None) -> bytes:
        """Rank 0's `data` on every rank (others pass None)."""
        if not self.active:
            return data or b""
        size = torch.tensor([len(data or b"")], dtype=torch.int64, device=self.device)
        dist.broadcast(size, 0)
        buf = torch.empty(int(size.item()), dtype=torch.uint8, device=self.device)
        if self.is_main and data:
            buf.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
        dist.broadcast(buf, 0)
        return buf.cpu().numpy().tobytes()

    def fail_together(self, fn: Callable[..., object], *args, **kwargs) -> None:
        """Run a check on every rank (each its own part of it) and, if any rank's raised a
        KDError, raise the lowest such rank's on all of them: no rank walks on into a
        collective that a failed rank never joins, and every rank says the same line. Any
        other exception still reaches the collective first, then is raised."""
        mine, crash = None, None
        try:
            fn(*args, **kwargs)
        except KDError as e:
            mine = [type(e).__name__, str(e)]
        except Exception as e:  # a bug or an I/O failure: peers must not wait for it
            mine, crash = ["", f"{type(e).__name__}: {e}"], e
        failed = [(r, f) for r, f in enumerate(self.gather_json(mine)) if f]
        if crash is not None:
            raise crash
        if failed:
            rank, (kind, message) = failed[0]
            if not kind:
                raise RuntimeError(f"rank {rank} failed: {message}")
            raise next((c for c in _subclasses(KDError) if c.__name__ == kind), KDError)(message)

    def mean_over_ranks(self, value: torch.Tensor) -> torch.Tensor:
        """The mean of a scalar over all ranks (a sync point: every rank must call it)."""
        if not self.active:
            return value
        total = value.detach().to(self.device, torch.float64).reshape(1).clone()
        dist.all_reduce(total)
        return (total / self.world).float().reshape(())

    def gather_json(self, obj) -> list:
        """Every rank's JSON-able `obj`, in rank order, on every rank."""
        if not self.active:
            return [obj]
        data = torch.frombuffer(bytearray(json.dumps(obj).encode()), dtype=torch.uint8)
        size = torch.tensor([len(data)], dtype=torch.int64, device=self.device)
        sizes = [torch.zeros_like(size) for _ in range(self.world)]
        dist.all_gather(sizes, size)
        longest = int(max(s.item() for s in sizes))
        padded = torch.zeros(longest, dtype=torch.uint8, device=self.device)
        padded[: len(data)] = data.to(self.device)
        parts = [torch.zeros_like(padded) for _ in range(self.world)]
        dist.all_gather(parts, padded)
        return [json.loads(p[: int(s.item())].cpu().numpy().tobytes())
                for p, s in zip(parts, sizes, strict=True)]


def _subclasses(cls: type) -> list[type]:
    return [cls, *(d for c in cls.__subclasses__() for d in _subclasses(c))]


SINGLE = Dist()  # one process, no process group: what every stage is without torchrun


@contextlib.contextmanager
def session(rt: RuntimeConfig) -> Iterator[Dist]:
    """The process group for one stage run under torchrun, or a single-process `Dist`."""
    if not under_torchrun():
        choose_backend(rt.backend)  # nccl asked for where there is no GPU: say so, alone too
        set_threads(rt)
        yield Dist(device=choose_device(rt.device))
        return
    _die_with_parent()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    backend = choose_backend(rt.backend)
    device = CPU
    if backend == "nccl":
        if local_rank >= torch.cuda.device_count():
            raise KDError(f"runtime.backend: nccl gives each process a GPU of its own; local "
                          f"rank {local_rank} has none ({torch.cuda.device_count()} visible), "
                          "so lower runtime.nproc (or --nproc-per-node) or use gloo")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        # deterministic cuBLAS, for torch.use_deterministic_algorithms(True)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    set_threads(rt)
    # a rank that dies of a user error must not leave the others waiting for half an hour
    dist.init_process_group(backend, timeout=datetime.timedelta(minutes=10))
    try:
        yield Dist(rank, world, local_rank, device)
    except BaseException:
        # with an error in flight peers may still be in a collective, and tearing an nccl
        # group down under them can hang: the exiting process frees it. A gloo group is torn
        # down here: left to interpreter exit, its worker threads abort the process
        # ("terminate called without an active exception")
        if backend != "nccl":
            dist.destroy_process_group()
        raise
    dist.destroy_process_group()


def _die_with_parent() -> None:
    """torchrun starts each rank in a session of its own, so a SIGKILL of the job (a scheduler,
    a killed `dvc repro`) reaches torchrun but not the ranks, which would go on and write a
    stage's outputs after it was killed. On Linux a rank asks to be killed with its parent."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    parent = os.getppid()
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the request was in place
        os._exit(1)


def report_error(message: str) -> None:
    """A rank's one-line user error: to the launcher's error dir, or to stderr with the rank."""
    where = os.environ.get(ERROR_DIR)
    rank = os.environ.get("RANK", "0")
    if where:
        Path(where, f"rank{int(rank):05d}").write_text(message)
    else:
        # one write: the ranks share stderr, and print() writes the newline apart
        sys.stderr.write(f"[rank {rank}] Error: {message}\n")
        sys.stderr.flush()


def launch(argv: list[str], rt: RuntimeConfig) -> int:
    """Run `kd <argv>` under torchrun with `rt.nproc` processes on this machine; returns 0 when
    every rank succeeded. A user error in any rank is raised here as one KDError; a rank that
    crashed (its traceback is already on stderr) or was killed gives its exit status."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    # torchrun logs its rendezvous and, on failure, every rank's exit; the ranks say why
    logging.getLogger("torch.distributed").setLevel(logging.CRITICAL)
    env = {"OMP_NUM_THREADS": str(threads_per_process(rt, rt.nproc))}
    with tempfile.TemporaryDirectory(prefix="kd-ranks-") as errors, _environ(
            **env, **{ERROR_DIR: errors}):
        args = parse_args(["--standalone", f"--nproc-per-node={rt.nproc}", "--max-restarts=0",
                           "--module", "kd.cli", *argv])
        try:
            run(args)
        except ChildFailedError as e:
            reported = sorted(Path(errors).iterdir())
            if reported:  # the lowest rank's message; the others died of the same cause
                raise KDError(reported[0].read_text()) from None
            rank, failure = min(e.failures.items())
            print(f"torchrun: rank {rank} failed with exit status {failure.exitcode}",
                  file=sys.stderr, flush=True)
            return failure.exitcode if failure.exitcode > 0 else 1
    return 0


@contextlib.contextmanager
def _environ(**values: str) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# ------------------------------------------------------------- what a stage does per rank


def global_batch(batch_size: int, rt: RuntimeConfig, d: Dist) -> int:
    """Rows per optimizer step over all ranks: `batch_size` itself (runtime.batch: global, the
    single-process optimisation), or `batch_size` per rank (per_rank)."""
    return batch_size * d.world if rt.batch == "per_rank" else batch_size


def say(d: Dist, message: str) -> None:
    """Print once per job, not once per rank."""
    if d.is_main:
        print(message, flush=True)


def ranks(d: Dist, batch: int) -> str:
    return f", {d.world} ranks ({d.device.type}), global batch {batch}" if d.active else ""


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
