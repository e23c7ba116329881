"""kd-pipeline: knowledge distillation from an ensemble teacher as a DVC pipeline.

The importable library behind the `kd` command and the DVC stages in `stages/`:

    from kd.distill.losses import kd_loss, soft_targets
    from kd.targets.reader import ShardReader
    from kd.models import build_model, load_model

docs/architecture.md draws the packages and the rule that keeps their imports one-way.
"""

__version__ = "0.1.0"
