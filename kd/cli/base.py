"""The `kd` group and what every command shares: --params and the validated Config, the
one-line user error, and the torch.distributed session a stage runs in."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import click

from kd.config import Config, load_config
from kd.errors import KDError


class UserError(click.ClickException):
    exit_code = 2


class Group(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except KDError as e:
            from kd.runtime.distributed import under_torchrun

            if under_torchrun():  # one line from the launcher, not one per rank
                from kd.runtime.distributed import report_error

                report_error(str(e))
                raise SystemExit(UserError.exit_code) from None
            raise UserError(str(e)) from None


params_option = click.option(
    "--params", "params_path", default="params.yaml", show_default=True,
    type=click.Path(path_type=Path),  # load_config names a directory in one line
    help="The params file; the whole file is validated before any work.",
)


def with_config(fn: Callable) -> Callable:
    """Add --params and pass the validated `Config` as the first argument."""

    @params_option
    @functools.wraps(fn)
    def wrapper(params_path: Path, **kwargs):
        cfg = load_config(params_path)
        from kd.model_checks import check_models
        from kd.runtime.distributed import set_threads

        check_models(cfg)  # here, not in kd.config: a stage that builds no model needs no models

        set_threads(cfg.runtime)  # every command, also those without a training session
        return fn(cfg, **kwargs)

    return wrapper


def _same_command() -> list[str]:
    """This command's arguments, as `kd` would take them again (for the torchrun it starts):
    options first, flags as given, then `--` and the positional arguments (a path may start
    with a dash)."""
    ctx = click.get_current_context()
    options, positional = [ctx.info_name], []
    for p in ctx.command.params:
        value = ctx.params.get(p.name)
        if isinstance(p, click.Argument):
            positional += [str(v) for v in (value if p.nargs != 1 else [value])]
        elif value is None:
            continue
        elif p.is_flag and p.secondary_opts:  # --x/--no-x
            options.append(p.opts[0] if value else p.secondary_opts[0])
        elif p.is_flag:
            options += [p.opts[0]] if value != p.default else []
        else:
            for v in value if p.multiple else [value]:
                options += [p.opts[0], str(v)]
    return options + (["--", *positional] if positional else [])


def distributed(fn: Callable) -> Callable:
    """Run the stage in a torch.distributed session: under torchrun when the user started one,
    else under a torchrun that this command starts when `runtime.nproc > 1`, else alone.
    The stage gets the session as `dist`."""

    @functools.wraps(fn)
    def wrapper(cfg: Config, **kwargs):
        from kd.runtime import distributed as d

        if cfg.runtime.nproc > 1 and not d.under_torchrun():
            raise SystemExit(d.launch(_same_command(), cfg.runtime))
        with d.session(cfg.runtime) as dist:
            return fn(cfg, dist=dist, **kwargs)

    return wrapper


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="kd-pipeline")
def cli() -> None:
    """kd-pipeline: distil an ensemble teacher into a small student, as a DVC pipeline.

    Run the whole pipeline with `dvc repro`; each stage below is one command.
    """
