"""`python -m kd.cli` (and `torchrun ... -m kd.cli`): the `kd` command."""

from kd.cli import main

main()
