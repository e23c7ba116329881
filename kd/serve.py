"""A server run as a child process group, stopped whole: how `kd ui` runs `mlflow ui`.

    check_port("127.0.0.1", 5000)                   # PortError (one line) when it is taken
    stopped, status = serve(["mlflow", "ui", ...])  # returns when the server ends

`mlflow ui` starts uvicorn, which starts its workers; a SIGTERM to the first process alone
leaves the others serving. So the server gets a process group of its own, SIGTERM and SIGINT
(Ctrl-C) sent to this process are passed on to that whole group, and whichever way `serve`
ends (a signal, the server stopping by itself, an exception) no process of the group is left.
`mlflow ui` exits 0 when its port is taken, after a log line: the port is checked before it
starts, and a server that ends without being asked to is reported by the caller as a failure.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence

from kd.errors import KDError


class PortError(KDError):
    """The port a server should listen on is taken or cannot be bound."""


def check_port(host: str, port: int) -> None:
    """Raise PortError unless a server could listen on host:port now."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise PortError(f"--host {host}: not an address of this machine ({e.strerror})") from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        # as uvicorn binds: a connection of an earlier server in TIME_WAIT is no obstacle
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as e:
            if e.errno == 98:  # EADDRINUSE
                raise PortError(f"port {port} on {host} is already in use (another `kd ui` or "
                                f"MLflow server?); stop it or pass --port") from None
            raise PortError(f"cannot listen on {host}:{port} ({e.strerror})") from None


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:  # a process of the group we may not signal: it still lives
        return True


def stop_group(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM the process group of `proc` (it was started with start_new_session), wait up to
    `grace` seconds for it to go, then SIGKILL whatever is left."""
    pgid = proc.pid
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace)
    while _group_alive(pgid) and time.monotonic() < deadline:  # workers outliving the parent
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    proc.wait()


def serve(cmd: Sequence[str], env: dict[str, str] | None = None) -> tuple[bool, int]:
    """Run `cmd` in a process group of its own until it ends or this process gets SIGTERM or
    SIGINT. Returns (stopped by a signal, the server's exit status)."""
    proc = subprocess.Popen(list(cmd), env=env, start_new_session=True)
    signals: list[int] = []

    def on_signal(signum: int, _frame) -> None:
        # only note it and pass it on: waiting here could re-enter Popen.wait
        signals.append(signum)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        status = proc.wait()
    finally:
        stop_group(proc)  # the parent is gone; its workers may not be
        for s, handler in previous.items():
            signal.signal(s, handler)
    return bool(signals), status
