"""The `kd` command: one subcommand per DVC stage, plus tools.

    kd prepare --params params.yaml
    kd --help

Every command validates the whole params file before any work. A user mistake (`KDError`)
becomes one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import click

from stages.config import Config, load_config
from stages.errors import KDError


class UserError(click.ClickException):
    exit_code = 2


class Group(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except KDError as e:
            raise UserError(str(e)) from None


params_option = click.option(
    "--params", "params_path", default="params.yaml", show_default=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The params file; the whole file is validated before any work.",
)


def with_config(fn: Callable) -> Callable:
    """Add --params and pass the validated `Config` as the first argument."""

    @params_option
    @functools.wraps(fn)
    def wrapper(params_path: Path, **kwargs):
        return fn(load_config(params_path), **kwargs)

    return wrapper


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="kd-pipeline")
def cli() -> None:
    """kd-pipeline: distil an ensemble teacher into a small student, as a DVC pipeline.

    Run the whole pipeline with `dvc repro`; each stage below is one command.
    """


@cli.command()
@with_config
@click.option("--out", default="data/prepared", show_default=True,
              type=click.Path(file_okay=False, path_type=Path), help="Output directory.")
def prepare(cfg: Config, out: Path) -> None:
    """Build labeled/unlabeled/test Parquet splits and meta.json from `data.source`."""
    from stages import prepare as stage

    stage.run(cfg, out)


@cli.command()
@with_config
@click.argument("member")
def teacher(cfg: Config, member: str) -> None:
    """Train the ensemble member MEMBER (a key of `teacher.members`)."""
    from stages import teacher as stage

    stage.run(cfg, member)


@cli.command("check-params")
@with_config
def check_params(cfg: Config) -> None:
    """Validate the params file and print each teacher member's resolved settings."""
    for name in cfg.teacher.members:
        click.echo(f"teacher.members.{name}: {cfg.teacher.member(name).model_dump()}")
    click.echo("params: ok")


def main() -> None:
    cli(prog_name="kd")


if __name__ == "__main__":
    main()
