"""The `kd` commands around the pipeline: explain a tree's answer, predict with the shipped
student, the MLflow UI, compare experiments, check a params file."""

from __future__ import annotations

from pathlib import Path

import click

from kd.cli.base import cli, with_config
from kd.config import Config


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
    dvc = str(beside) if beside.is_file() else shutil.which("dvc")
    if dvc is None:
        from kd.errors import KDError

        raise KDError("compare: no `dvc` beside this Python or on PATH; install the project "
                      "(pip install -c requirements.lock -e .) or activate its venv")
    sys.exit(subprocess.run([dvc, *args[1:]]).returncode)


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
