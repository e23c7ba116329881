"""The DVC pipeline, run with real `dvc` commands in a temporary repository."""

from __future__ import annotations

import pytest

from tests.conftest import run_cmd

pytestmark = pytest.mark.slow

SMALL = {"data": {"source": "digits"}}


def test_repro_prepare_then_up_to_date(dvc_repo):
    repo = dvc_repo(SMALL)
    run_cmd(["dvc", "repro", "prepare"], repo, env={"KD_TRACKING": "0"})
    for name in ("labeled.parquet", "unlabeled.parquet", "test.parquet", "meta.json"):
        assert (repo / "data/prepared" / name).is_file()
    again = run_cmd(["dvc", "repro", "prepare"], repo, env={"KD_TRACKING": "0"})
    assert "didn't change, skipping" in again.stdout or "up to date" in again.stdout
    status = run_cmd(["dvc", "status", "prepare"], repo)
    assert "up to date" in status.stdout.lower()
