"""kd-pipeline: knowledge distillation from an ensemble teacher as a DVC pipeline.

Each DVC stage is a `kd` subcommand (see `stages/cli.py`); shared code lives in the
modules beside this file.
"""

__version__ = "0.1.0"
