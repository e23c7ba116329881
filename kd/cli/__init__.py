"""The `kd` command: one subcommand per DVC stage, plus tools.

    kd prepare --params params.yaml
    kd --help

Every command validates the whole params file before any work. A user mistake (`KDError`)
becomes one line on stderr and exit status 2, never a traceback.

    base.py     the group, --params and the validated Config, the one-line error, torchrun
    stages.py   one command per DVC stage
    tools.py    explain, predict, ui, compare, check-params
    shards.py   kd shards show / verify / copy
"""

from __future__ import annotations

from kd.cli import shards, stages, tools  # noqa: F401  (each adds its commands to `cli`)
from kd.cli.base import _same_command, cli

__all__ = ["_same_command", "cli", "main"]


def main() -> None:
    cli(prog_name="kd")
