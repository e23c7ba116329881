"""Sharing with a team through DVC remotes, for real: a folder remote and an S3-compatible
server (moto's standalone server on 127.0.0.1, as DVC's own S3 tests use). A teammate's fresh
clone pulls the teacher, shards, student and report instead of recomputing them."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.conftest import make_repo, one_variant, run_cmd

pytestmark = pytest.mark.slow

TINY = {
    "data": {"source": "digits"},
    "teacher": {"members": {"a": {"arch": "mlp", "knobs": {"depth": 1, "width": 32},
                                  "train": {"epochs": 2}}}},
    "export": {"rows_per_shard": 500, "row_group_size": 250},
    "student": one_variant({"arch": "mlp", "knobs": {"depth": 1, "width": 8},
                "train": {"epochs": 2, "batch_size": 64}}),
    "baseline": {"epochs": 2},
}
OFF = {"KD_TRACKING": "0"}
GIT = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """A repository whose whole pipeline has run and whose results are committed."""
    repo = make_repo(tmp_path_factory.mktemp("sharing") / "repo", TINY)
    run_cmd(["dvc", "repro"], repo, env=OFF)
    run_cmd(["git", "add", "-A"], repo)
    run_cmd([*GIT, "commit", "-qm", "pipeline"], repo)
    return repo


def shard_digests(repo: Path) -> dict[str, str]:
    d = repo / "data/soft_targets"
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir())}


def push_and_pull(repo: Path, clone: Path, remote: str, url: str, settings: dict[str, str],
                  local: dict[str, str]) -> None:
    """The maintainer adds the remote (secrets with --local) and pushes; a teammate clones,
    sets the same secrets locally and pulls."""
    run_cmd(["dvc", "remote", "add", "-f", "-d", remote, url], repo)
    for key, value in settings.items():
        run_cmd(["dvc", "remote", "modify", remote, key, value], repo)
    for key, value in local.items():
        run_cmd(["dvc", "remote", "modify", "--local", remote, key, value], repo)
    run_cmd(["git", "add", ".dvc/config"], repo)
    run_cmd([*GIT, "commit", "-qm", f"remote {remote}"], repo)
    run_cmd(["dvc", "push", "--run-cache"], repo)
    run_cmd(["git", "clone", "-q", str(repo), str(clone)], clone.parent)
    assert (clone / ".dvc/config").read_text().count(url) == 1
    assert not (clone / ".dvc/config.local").exists()  # secrets never travel through git
    for key, value in local.items():
        run_cmd(["dvc", "remote", "modify", "--local", remote, key, value], clone)
    run_cmd(["dvc", "pull"], clone)


def assert_teammate_has_everything(repo: Path, clone: Path) -> None:
    status = run_cmd(["dvc", "status"], clone, env=OFF).stdout
    # nothing changed, deleted or missing: the wall-clock timing.json, which never travels,
    # is no stage's output (it used to read "report: changed outs: deleted: timing.json")
    assert status.strip() == "Data and pipelines are up to date.", status
    repro = run_cmd(["dvc", "repro"], clone, env=OFF).stdout
    assert "Running stage" not in repro, repro  # nothing is recomputed
    assert shard_digests(clone) == shard_digests(repo)
    run_cmd(["kd", "shards", "verify"], clone)
    for f in ("data/teachers/a/model.safetensors", "data/student/s/model.safetensors",
              "data/report/metrics.json"):
        assert (clone / f).read_bytes() == (repo / f).read_bytes(), f


def test_folder_remote_round_trip(repo, tmp_path):
    clone = tmp_path / "teammate"
    push_and_pull(repo, clone, "shared", str(tmp_path / "remote"), {}, {})
    assert_teammate_has_everything(repo, clone)


def test_s3_remote_round_trip(repo, tmp_path, s3_server, monkeypatch):
    for var in ("AWS_PROFILE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(var, raising=False)
    clone = tmp_path / "teammate"
    push_and_pull(repo, clone, "s3store", "s3://kd-team/cache",
                  {"endpointurl": s3_server, "region": "us-east-1"},
                  {"access_key_id": "testing", "secret_access_key": "testing"})
    assert_teammate_has_everything(repo, clone)
    import boto3

    listed = boto3.client("s3", endpoint_url=s3_server, aws_access_key_id="testing",
                          aws_secret_access_key="testing", region_name="us-east-1"
                          ).list_objects_v2(Bucket="kd-team", Prefix="cache/")
    assert listed["KeyCount"] > 10  # the cache really lives on the server
