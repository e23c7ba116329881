"""`kd shards`: inspect, verify and copy a soft-target shard directory (local or s3://)."""

from __future__ import annotations

import click

from kd.cli.base import cli


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
