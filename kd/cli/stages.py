"""One `kd` command per DVC stage: each validates the params, then runs stages/<name>.py."""

from __future__ import annotations

import functools
from pathlib import Path

import click

from kd.cli.base import cli, distributed, with_config
from kd.config import Config


@cli.command()
@with_config
@click.option("--out", default="data/prepared", show_default=True,
              type=click.Path(file_okay=False, path_type=Path), help="Output directory.")
def prepare(cfg: Config, out: Path) -> None:
    """Build labeled/unlabeled/test Parquet splits and meta.json from `data.source`."""
    from kd.model_checks import fit_to_data
    from stages import prepare as stage

    stage.run(cfg, out, check=functools.partial(fit_to_data, cfg))


@cli.command()
@with_config
@click.option("--out", default="data/transfer", show_default=True,
              type=click.Path(file_okay=False, path_type=Path), help="Output directory.")
def transfer(cfg: Config, out: Path) -> None:
    """Generate synthetic transfer rows (`transfer.method: munge`) for the ensemble to label."""
    from stages import transfer as stage

    stage.run(cfg, out)


@cli.command()
@with_config
@distributed
@click.argument("member")
def teacher(cfg: Config, member: str, dist) -> None:
    """Train the ensemble member MEMBER (a key of `teacher.members`)."""
    from stages import teacher as stage

    stage.run(cfg, member, dist=dist)


@cli.command()
@with_config
@click.argument("name")
def source(cfg: Config, name: str) -> None:
    """Resolve the imported member NAME's source to the version it names now (an MLflow alias
    followed, a file's sha256) -> data/sources/NAME.json."""
    from stages import source as stage

    stage.run(cfg, name)


@cli.command("import")
@with_config
@click.argument("name")
def import_(cfg: Config, name: str) -> None:
    """Import NAME (a key of `teacher.imports`: an MLflow model, ONNX or torch.export file)
    into data/teachers/NAME/, checked against the prepared data."""
    from stages import imports as stage

    stage.run(cfg, name)


@cli.command()
@with_config
@distributed
def export(cfg: Config, dist) -> None:
    """Write every member's logits on the labeled, unlabeled and synthetic rows as shards."""
    from stages import export as stage

    stage.run(cfg, dist=dist)


@cli.command()
@with_config
@distributed
@click.option("--shards", "shards", default="data/soft_targets", show_default=True,
              help="The soft-target shard set: a directory, or a URI such as "
                   "s3://bucket/prefix that every node can read (docs/distributed.md).")
@click.argument("variant")
def student(cfg: Config, variant: str, shards: str, dist) -> None:
    """Distil the ensemble into student VARIANT (a key of `student.variants`), streaming the
    soft-target shards, into data/student/VARIANT/."""
    from stages import student as stage

    stage.run(cfg, variant, shards=shards, dist=dist)


@cli.command()
@with_config
@distributed
@click.argument("variant")
def baseline(cfg: Config, variant: str, dist) -> None:
    """Train student VARIANT's architecture on the labels alone (what distillation must beat),
    into data/baseline/VARIANT/."""
    from stages import baseline as stage

    cfg.student.variant(variant)  # an unknown name is one line
    stage.run(cfg, variant, dist=dist)


@cli.command()
@with_config
@click.argument("folder", type=click.Choice(["teachers", "student", "baseline"]))
def index(cfg: Config, folder: str) -> None:
    """Write data/index/FOLDER.json: the sha256 of each file of every member or variant that
    params.yaml names in data/FOLDER/ (what export, the students, deploy and the report depend
    on, instead of the folder and whatever else lies there)."""
    from stages import index as stage

    stage.run(cfg, folder)


@cli.command("baseline-specs")
@with_config
def baseline_specs(cfg: Config) -> None:
    """Write every variant's baseline spec (arch, knobs, train, the baseline section) to
    data/baseline_specs/VARIANT.json, the file `kd baseline VARIANT` trains."""
    from stages import baseline_specs as stage

    stage.run(cfg)


@cli.command()
@with_config
def report(cfg: Config) -> None:
    """Evaluate teacher, members, student and baseline; write data/report/."""
    from stages import report as stage

    stage.run(cfg)


@cli.command()
@with_config
def deploy(cfg: Config) -> None:
    """Export the student to ONNX (fp32 and int8), checked against PyTorch; write data/deploy/."""
    from stages import deploy as stage

    stage.run(cfg)
