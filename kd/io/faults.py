"""Failpoints: SIGKILL this process at a named point, to test what a crash there leaves behind.

    KD_FAILPOINT=train.batch@5 dvc repro teacher@cnn_0     # killed after its 5th training step
    KD_FAILPOINT=atomic.rename:metrics.json kd baseline    # killed just before metrics.json appears

`failpoint("train.batch")` in the code kills the process (SIGKILL: no `finally`, no atexit, no
flushing, exactly like the OOM killer or a pulled plug) on the n-th time execution reaches a
point whose name matches `KD_FAILPOINT=<name>[@<n>]` (n defaults to 1). A point may carry a
detail, usually a file name: `failpoint("atomic.rename", path.name)` matches both
`atomic.rename` (any file) and `atomic.rename:metrics.json` (that file only). Hits are counted
per process, and only hits that match count, so `train.batch@40` is the 40th step of this
process whatever else ran before it.

Unset (the normal case), a failpoint is one global lookup and a comparison: nothing to pay in
the training loop. The spec is read once, on the first call, so a test arms it for a subprocess
(`dvc repro` passes its environment to each stage's command) and never for its own process.
Just before the kill, one line `failpoint <name> hit (<n>): SIGKILL` goes to stderr, so a test
can tell a failpoint kill from any other death.

Points (grep `failpoint(` for the full list):
    train.start, train.batch, train.epoch     the training loop (kd/train/loop.py)
    checkpoint.between                        after a checkpoint's weights, before its JSON
    atomic.rename:<file>                      a file fully written, before its rename
    atomic.dir:<dir>                          a directory fully written, before its swap
    atomic.swap:<dir>                         the old directory moved aside, the new not yet in
    shard.done:<shard>                        a soft-target shard renamed into place
    export.manifest                           every shard written, before the manifest
    report.write                              the report measured, before anything is written
"""

from __future__ import annotations

import os
import re
import signal
import sys

from kd.errors import ConfigError

ENV = "KD_FAILPOINT"
_SPEC = re.compile(r"(?P<name>[\w.-]+(?::[^@]+)?)(?:@(?P<n>[1-9]\d*))?")

_armed: tuple[str, int] | None = None  # (name, n) once parsed
_parsed = False
_hits = 0


def _parse(value: str) -> tuple[str, int]:
    m = _SPEC.fullmatch(value.strip())
    if m is None:
        raise ConfigError(f"{ENV}: expected <name>[:<detail>][@<n>] with n >= 1, got {value!r}")
    return m["name"], int(m["n"] or 1)


def failpoint(name: str, detail: str | None = None) -> None:
    """SIGKILL this process if `KD_FAILPOINT` names this point and this is its n-th hit."""
    global _armed, _parsed, _hits
    if not _parsed:
        _parsed = True
        value = os.environ.get(ENV)
        _armed = _parse(value) if value else None
    if _armed is None:
        return
    want, n = _armed
    if want != name and (detail is None or want != f"{name}:{detail}"):
        return
    _hits += 1
    if _hits == n:
        print(f"failpoint {want} hit ({n}): SIGKILL", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

