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
@click.argument("row_id", type=int)
@click.option("--model", "model_dir", required=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="A trained soft_tree's directory (data/student/VARIANT, "
                   "data/baseline/VARIANT, ...).")
@click.option("--prepared", default="data/prepared", show_default=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="The prepared data; ROW_ID must be a row of its test split.")
@click.option("--out", default="data/explain", show_default=True,
              type=click.Path(file_okay=False, path_type=Path), help="Where the PNGs go.")
def explain(row_id: int, model_dir: Path, prepared: Path, out: Path) -> None:
    """Draw a soft decision tree and the path test row ROW_ID takes through it."""
    from kd.report.explain import explain as draw

    for path in draw(row_id, model_dir, prepared, out):
        click.echo(path)


@cli.command()
@with_config
def deploy(cfg: Config) -> None:
    """Export the student to ONNX (fp32 and int8), checked against PyTorch; write data/deploy/."""
    from stages import deploy as stage

    stage.run(cfg)


@cli.command()
@click.option("--model", "model", required=True, type=click.Path(path_type=Path),
              help="An ONNX file written by `kd deploy` (data/deploy/student.onnx or "
                   "student.int8.onnx).")
@click.option("--features", "features", multiple=True, default=("features",),
              show_default=True, help="The list column of raw features, or (repeated) the "
                                      "scalar feature columns in order.")
@click.option("--id", "id_column", default=None,
              help="A column to copy to the output beside each prediction [default: row_id "
                   "when the input has it].")
@click.option("--threads", default=0, show_default=True, type=click.IntRange(0),
              help="ONNX Runtime threads; 0: one per core.")
@click.argument("source", type=click.Path(path_type=Path))
@click.argument("dest", type=click.Path(path_type=Path))
def predict(model: Path, features: tuple[str, ...], id_column: str | None, threads: int,
            source: Path, dest: Path) -> None:
    """Predict the classes of the raw rows in the Parquet file SOURCE into DEST (Parquet:
    id, predicted class name, probabilities), with ONNX Runtime and the model file alone."""
    from kd.deploy.predict import predict_file

    spec = features[0] if len(features) == 1 else list(features)
    info = predict_file(model, source, dest, spec, id_column, threads)
    click.echo(f"predict: {info['rows']:,} rows, {info['classes']} classes -> {dest}")


@cli.command()
@with_config
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to bind; the default keeps the UI on this machine. Anything "
                   "else exposes the runs, unauthenticated, to the network.")
@click.option("--port", default=5000, show_default=True, type=click.IntRange(1, 65535),
              help="Port to serve on.")
def ui(cfg: Config, host: str, port: int) -> None:
    """Open the MLflow UI on the pipeline's tracking store (the same one the stages write), on
    the experiment's training runs. Exits non-zero, in one line, when the port is taken or the
    server stops by itself; SIGTERM or Ctrl-C stops the server with it."""
    import os
    import sys

    from kd.serve import check_port, serve
    from kd.tracking import tracking_uri

    uri = tracking_uri(cfg)
    if uri.startswith(("http://", "https://")):
        click.echo(f"tracking goes to the server {uri}: open it in a browser")
        return
    check_port(host, port)  # `mlflow ui` itself logs "Address already in use" and exits 0
    if not _is_loopback(host):  # MLflow's UI has no authentication: say so, then do as told
        click.echo(f"warning: binding {host}, not a loopback address: anyone who can reach "
                   f"this machine on port {port} can read and change the runs", err=True)
    url = _runs_url(cfg, uri, host, port)
    click.echo(f"MLflow UI for {uri}: {url} (Ctrl-C stops it)")
    # one worker and no job runner (seven processes that score GenAI traces): a UI for one
    # person, on a machine that is busy training
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
           "--host", host, "--port", str(port), "--workers", "1"]
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ}
    stopped, status = serve(cmd, env=env)
    if stopped:
        click.echo("MLflow UI stopped")
        return
    check_port(host, port)  # taken in the meantime: say so rather than "it stopped"
    raise click.ClickException(f"the MLflow UI server on {host}:{port} stopped by itself "
                               f"(exit status {status}); its log is above")


def _runs_url(cfg: Config, uri: str, host: str, port: int) -> str:
    """The UI's page of the experiment's training runs (the experiment list before any run)."""
    from mlflow.tracking import MlflowClient

    from kd.tracking import artifact_root, training_experiment, ui_url

    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    shown = f"[{shown}]" if ":" in shown else shown
    exp_id = None
    if not uri.startswith("sqlite:///") or Path(uri.removeprefix("sqlite:///")).is_file():
        client = MlflowClient(tracking_uri=uri)
        exp_id = training_experiment(client, cfg.tracking.experiment, artifact_root(uri),
                                     create=False)
    return ui_url(f"http://{shown}:{port}", exp_id)


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        return False


@cli.command(context_settings={"ignore_unknown_options": True})
@click.option("--print", "print_only", is_flag=True,
              help="Print the dvc command instead of running it.")
@click.argument("dvc_args", nargs=-1, type=click.UNPROCESSED)
def compare(print_only: bool, dvc_args: tuple[str, ...]) -> None:
    """Compare experiments: `dvc exp show` with the report's headline keys (val_acc, test_acc,
    acc_retained, gap_recovered, the chosen variant) and only the params that differ between
    the rows. Other arguments go to `dvc exp show` (--hide-workspace, -A, --sort-by val_acc,
    ...). Every figure of two experiments: `dvc metrics diff A B --targets
    data/report/metrics.json`."""
    import shlex
    import shutil
    import subprocess
    import sys

    from kd.report.headline import exp_show_args

    args = exp_show_args(dvc_args)
    if print_only:
        click.echo(shlex.join(args))
        return
    # dvc beside this Python (a venv that is not activated), else on PATH
    beside = Path(sys.executable).parent / "dvc"
    args[0] = str(beside) if beside.is_file() else shutil.which("dvc") or "dvc"
    sys.exit(subprocess.run(args).returncode)


@cli.group()
def shards() -> None:
    """Inspect and check a soft-target shard directory."""


# a directory or a URI (s3://...): a plain string, which click.Path would mangle
shard_dir = click.argument("directory", default="data/soft_targets")


@shards.command("show")
@shard_dir
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def shards_show(directory: str, as_json: bool) -> None:
    """Summarise DIRECTORY: rows per split, classes, members, size on disk."""
    import json

    from kd.targets.manifest import SPLITS
    from kd.targets.shardset import describe_targets, summary

    info = summary(directory)
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    click.echo(f"{directory}: {info['rows']:,} rows in {info['shards']} shards, "
               f"{info['bytes'] / 1e6:.2f} MB on disk")
    for split in sorted(info["splits"], key=SPLITS.index):  # labeled, unlabeled, synthetic
        click.echo(f"  {split:<10} {info['splits'][split]:>10,} rows")
    click.echo(f"  validation {info['val']:>10,} rows (labeled, held out)")
    click.echo(f"  classes    {info['num_classes']}: {', '.join(info['class_names'])}")
    click.echo(f"  members    {len(info['members'])}: {', '.join(info['members'])}")
    click.echo(f"  features   {tuple(info['feature_shape'])}, logits {info['logits_dtype']}")
    if views := info.get("views"):  # export.views: K views a training row, among the rows
        click.echo(f"  views      {views['count']} a training row, {sum(views['rows'].values()):,}"
                   f" rows (shift {views['shift']}, noise {views['noise']:g}, mixup "
                   f"{views['mixup']:g})")
    for i, line in enumerate(describe_targets(info)):
        click.echo(f"  {'targets' if i == 0 else '':<10} {line}")


@shards.command("verify")
@shard_dir
def shards_verify(directory: str) -> None:
    """Check every shard's checksum and row count against the manifest (exit 2 on the first
    bad shard, naming it)."""
    from kd.targets.shardset import verify

    info = verify(directory)
    click.echo(f"{directory}: ok, {info['shards']} shards, {info['rows']:,} rows "
               "match the manifest")


@shards.command("copy")
@click.argument("source")
@click.argument("destination")
def shards_copy(source: str, destination: str) -> None:
    """Copy the shard set SOURCE to DESTINATION (a directory or a URI such as s3://bucket/kd),
    verified before and after; the manifest goes last, so a half-done copy is never complete."""
    from kd.targets.shardset import copy

    info = copy(source, destination)
    click.echo(f"{destination}: ok, {info['shards']} shards, {info['rows']:,} rows copied "
               f"and verified")


@cli.command("check-params")
@with_config
@click.option("--prepared", default="data/prepared", show_default=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="Prepared data to check the architectures against, when it exists.")
def check_params(cfg: Config, prepared: Path) -> None:
    """Validate the params file, print each teacher member's and student variant's resolved
    settings, and check every architecture against the prepared data's feature shape."""
    from kd.config import data_warnings
    from kd.model_checks import fit_to_data
    from kd.prepared import load_meta

    for name in cfg.teacher.members:
        click.echo(f"teacher.members.{name}: {cfg.teacher.member(name).model_dump()}")
    for name, spec in cfg.teacher.imports.items():
        click.echo(f"teacher.imports.{name}: {spec.model_dump()}")
    for name in cfg.student.variants:
        click.echo(f"student.variants.{name}: {cfg.student.variant(name).model_dump()}")
    meta = None
    if (prepared / "meta.json").is_file():
        meta = load_meta(prepared)
        fit_to_data(cfg, meta)
        if cfg.export.top_k is not None:  # against the prepared classes (parquet data)
            from kd.targets.topk import check_k

            check_k(cfg.export.top_k, meta["n_classes"])
        click.echo(f"models: every architecture takes the prepared features "
                   f"{tuple(meta['feature_shape'])} ({prepared})")
    else:
        click.echo("models: knobs checked; run `kd prepare` to check them against the data")
    for line in data_warnings(cfg, meta):
        click.echo(line, err=True)
    click.echo("params: ok")


def main() -> None:
    cli(prog_name="kd")


if __name__ == "__main__":
    main()
