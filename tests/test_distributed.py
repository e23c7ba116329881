"""Stages under torch.distributed: real torchrun, 2 processes, gloo on CPU, against the same
stages run in one process. The pieces that decide who reads what (shard dealing, row ranges,
batch slices) are checked directly first, without a process group."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from kd.config import AugmentConfig, parse_config
from kd.datasets import Split
from kd.prepared import iter_split, to_table
from kd.runtime.distributed import SINGLE, Dist
from kd.targets.manifest import write_manifest
from kd.targets.reader import ShardReader
from kd.targets.shards import ShardWriter
from kd.targets.shardset import read_table, verify
from kd.train.batches import in_memory_batches
from kd.train.loop import lr_at
from tests.conftest import (
    VARIANT,
    build_pipeline,
    make_repo,
    one_variant,
    run_cmd,
    run_to_failpoint,
)

MLP = {"arch": "mlp", "knobs": {"depth": 1, "width": 32}, "train": {"epochs": 8}}
PARAMS = {
    "data": {"source": "digits"},
    "teacher": {"members": {"a": MLP, "b": {**MLP, "train": {"epochs": 8, "seed": 1}}}},
    "export": {"rows_per_shard": 150, "row_group_size": 50, "batch_size": 100},
    "student": one_variant({"arch": "mlp", "knobs": {"depth": 1, "width": 16},
                "train": {"epochs": 8, "batch_size": 64}, "temperature": 3.0, "alpha": 0.7}),
    "baseline": {"epochs": 3},
    "tracking": {"enabled": False},
}
OFF = {"KD_TRACKING": "0"}


def with_nproc(params: dict, n: int) -> dict:
    return {**params, "runtime": {"nproc": n}}


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def kd(args: list[str], cwd: Path, check: bool = True, **kw):
    return run_cmd([str(Path(sys.executable).parent / "kd"), *args], cwd, env=OFF, check=check,
                   **kw)


# ------------------------------------------------------------- who reads what, no processes


def test_single_process_collectives_are_identities():
    assert not SINGLE.active and SINGLE.is_main
    assert SINGLE.broadcast_bytes(b"abc") == b"abc"
    assert SINGLE.gather_json({"a": 1}) == [{"a": 1}]


def test_row_ranges_read_the_batches_a_whole_stream_has(tmp_path):
    n, rng = 1000, np.random.default_rng(0)
    split = Split(np.arange(n) * 3, rng.normal(size=(n, 4)).astype(np.float32),
                  rng.integers(0, 3, n))
    # small row groups, so ranges start and stop inside and across them
    pq.write_table(to_table(split, np.zeros(n, bool)), tmp_path / "unlabeled.parquet",
                   row_group_size=70)
    whole = list(iter_split(tmp_path, "unlabeled", 64))
    for world in (1, 2, 3, 7):
        # contiguous runs of whole batches, one per rank (ranges that start on a batch boundary)
        cuts = [min(-(-n // 64) * r // world * 64, n) for r in range(world + 1)]
        parts = [b for r in range(world) for b in iter_split(
            tmp_path, "unlabeled", 64, (cuts[r], cuts[r + 1]))]
        assert [len(p.row_id) for p, _ in parts] == [len(p.row_id) for p, _ in whole]
        for (a, _), (b, _) in zip(whole, parts, strict=True):
            np.testing.assert_array_equal(a.row_id, b.row_id)
            np.testing.assert_array_equal(a.x, b.x)


def test_rank_slices_of_a_batch_are_the_single_process_batch():
    x = np.random.default_rng(1).normal(size=(300, 6)).astype(np.float32)
    y = np.arange(300) % 4
    aug = AugmentConfig(shift=2)
    single = list(in_memory_batches(x, y, 64, 0, (6,), aug)(3))
    ranks = [list(in_memory_batches(x, y, 64, 0, (6,), aug, Dist(rank=r, world=3))(3))
             for r in range(3)]
    assert all(len(r) == len(single) for r in ranks)
    for i, whole in enumerate(single):
        parts = [r[i] for r in ranks]
        torch.testing.assert_close(torch.cat([p.x for p in parts]), whole.x, rtol=0, atol=0)
        assert torch.equal(torch.cat([p.y for p in parts]), whole.y)
        # per-row losses: each rank's scaled mean, averaged over ranks as DDP averages
        # gradients, is the mean over the global batch, whatever the slice sizes
        loss = torch.rand(len(whole.y), dtype=torch.float64)
        pieces = torch.tensor_split(loss, 3)
        ddp = sum(p.scale * piece.mean() for p, piece in zip(parts, pieces, strict=True)) / 3
        assert ddp.item() == pytest.approx(loss.mean().item(), rel=1e-12)


def _shard_set(tmp_path: Path, sizes: list[int], row_group: int = 10_000) -> Path:
    rid = 0
    infos = []
    for i, n in enumerate(sizes):
        w = ShardWriter(tmp_path, members=["a"], class_names=["x", "y"], feature_shape=(2,),
                        rows_per_shard=10_000, row_group_size=row_group, prefix=f"part-r{i:03d}")
        w.write(np.arange(rid, rid + n), "unlabeled", None, None, np.zeros((n, 2)),
                {"a": np.zeros((n, 2))})
        infos += w.close()
        rid += n
    write_manifest(tmp_path, infos, members=["a"], class_names=["x", "y"], feature_shape=(2,),
                   logits_dtype="float32", member_fingerprints={"a": "f"}, params={})
    return tmp_path


def _rank_ids(reader: ShardReader, world: int, epoch: int, batch: int = 16, seed: int = 0):
    return [np.concatenate([b["row_id"] for b in reader.iter_rank_batches(
        batch, world=world, rank=r, seed=seed, epoch=epoch, buffer_rows=32)])
        for r in range(world)]


@pytest.mark.parametrize(("sizes", "row_group"), [
    ([40, 40, 40, 10, 30, 25], 10_000), ([185], 10_000), ([185], 17), ([7, 200, 3], 13)])
def test_ranks_take_equal_runs_of_the_rows_in_one_process_steps(tmp_path, sizes, row_group):
    """Every training row goes to exactly one rank each epoch, runs differ by at most a row,
    whatever the shard sizes (one shard for many ranks too), and every rank takes the steps
    one process takes with the global batch: ceil(rows / world / batch)."""
    reader = ShardReader(_shard_set(tmp_path, sizes, row_group))
    n = sum(sizes)
    for world in (1, 2, 3):
        steps = reader.rank_steps(16, world)
        assert steps == math.ceil(math.ceil(n / world) / 16)
        for epoch in range(3):
            runs = reader.rank_ranges(world, seed=0, epoch=epoch)
            sizes_of = [sum(stop - start for _, _, start, stop in run) for run in runs]
            assert sum(sizes_of) == n and max(sizes_of) - min(sizes_of) <= 1
            assert runs == reader.rank_ranges(world, seed=0, epoch=epoch)  # seeded
            ids = _rank_ids(reader, world, epoch)
            assert all(len(i) == 16 * steps for i in ids)  # full batches, the same count
            firsts = [set(i[:sizes_of[r]]) for r, i in enumerate(ids)]  # before any padding
            assert set().union(*firsts) == set(range(n))  # every row, once in all
            assert sum(len(f) for f in firsts) == n  # disjoint
            assert all(set(i) == f for i, f in zip(ids, firsts, strict=True))  # pads repeat


def test_each_epoch_deals_other_rows_to_each_rank(tmp_path):
    reader = ShardReader(_shard_set(tmp_path, [40] * 6))
    deals = {tuple(sorted(_rank_ids(reader, 2, epoch)[0])) for epoch in range(4)}
    assert len(deals) > 1


def test_fewer_training_rows_than_ranks_is_an_artifact_error(tmp_path):
    from kd.errors import ArtifactError

    reader = ShardReader(_shard_set(tmp_path, [2]))
    with pytest.raises(ArtifactError, match="2 training rows for 3 ranks"):
        reader.rank_steps(1, 3)


# ------------------------------------------------------------------ real torchrun, 2 ranks
# (slow: each test starts torchrun, or builds the module's trained pipeline)


@pytest.fixture(scope="module")
def pipe(tmp_path_factory) -> Path:
    """prepare, teachers, export and student in one process: the reference."""
    return build_pipeline(tmp_path_factory.mktemp("dist") / "p", PARAMS,
                          ("prepare", "teacher", "export", "student"))


def copy_inputs(pipe: Path, dst: Path, params: dict, *parts: str) -> Path:
    dst.mkdir()
    for part in parts:
        shutil.copytree(pipe / "data" / part, dst / "data" / part)
    (dst / "params.yaml").write_text(yaml.safe_dump(params))
    return dst


def by_row_id(dir: Path):
    t = read_table(dir).to_pandas().set_index("row_id").sort_index()
    return t


@pytest.mark.slow
def test_export_on_two_ranks_has_the_single_process_rows_and_logits(pipe, tmp_path):
    run = copy_inputs(pipe, tmp_path / "r2", with_nproc(PARAMS, 2), "prepared", "teachers")
    out = kd(["export"], run)  # runtime.nproc 2: the command starts torchrun itself
    assert "on 2 ranks" in out.stdout
    shards = run / "data/soft_targets"
    manifest = json.loads((shards / "manifest.json").read_text())
    assert {s["file"][:9] for s in manifest["shards"]} == {"part-r000", "part-r001"}
    assert manifest["extra"]["ranks"] == 2
    verify(shards)
    one, two = by_row_id(pipe / "data/soft_targets"), by_row_id(shards)
    assert one.index.equals(two.index) and len(one) == manifest["totals"]["rows"]
    for col in one.columns:
        if col.startswith("logits.") or col == "features":  # exactly, not approximately
            np.testing.assert_array_equal(np.stack(one[col].values), np.stack(two[col].values))
        else:
            assert one[col].equals(two[col]), col
    assert not list((run / "data").glob(".tmp-*"))


@pytest.mark.slow
def test_teacher_on_two_ranks_is_the_single_process_teacher(pipe, tmp_path):
    """Every rank trains on its slice of the same global batch, its mean loss scaled by its
    share: DDP's gradient average is then the global batch's, as in one process."""
    run = copy_inputs(pipe, tmp_path / "r2", with_nproc(PARAMS, 2), "prepared")
    kd(["teacher", "a"], run)
    from safetensors.torch import load_file

    one = load_file(pipe / "data/teachers/a/model.safetensors")
    two = load_file(run / "data/teachers/a/model.safetensors")
    for k in one:  # the same up to the order of floating-point sums
        torch.testing.assert_close(two[k], one[k], rtol=1e-4, atol=1e-5)
    m1 = json.loads((pipe / "data/teachers/a/metrics.json").read_text())
    m2 = json.loads((run / "data/teachers/a/metrics.json").read_text())
    assert m2["test_accuracy"] == pytest.approx(m1["test_accuracy"], abs=1 / 360 + 1e-9)


@pytest.mark.slow
def test_student_under_torchrun_matches_one_process(pipe, tmp_path):
    """The documented entry: torchrun started by hand, 2 ranks streaming disjoint shards with
    the single-process effective batch. Written once, by rank 0; deterministic."""
    run = copy_inputs(pipe, tmp_path / "r2", PARAMS, "prepared", "soft_targets")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc-per-node", "2", "-m", "kd.cli", "student", VARIANT]
    out = run_cmd(torchrun, run, env=OFF)
    assert out.stdout.count("student@s: test accuracy") == 1  # one rank reports
    assert "2 ranks (cpu), global batch 64" in out.stdout
    m1 = json.loads((pipe / "data/student/s/metrics.json").read_text())
    m2 = json.loads((run / "data/student/s/metrics.json").read_text())
    history = json.loads((run / "data/student/s/history.json").read_text())
    assert [h["epoch"] for h in history] == list(range(1, 9))
    # every rank takes one process's steps of full batches, padding only the last one, so
    # the learning-rate schedule runs to its end
    reader = ShardReader(run / "data/soft_targets")
    n_train, steps = reader.num_rows(drop_val=True), reader.rank_steps(32, 2)
    assert steps == -(-n_train // 64)
    for h in history:
        assert h["samples"] == 2 * 32 * steps
        assert n_train <= h["samples"] < n_train + 2 * 32
    train = parse_config(PARAMS).student.variant(VARIANT).train
    total = train.epochs * steps  # the last step's rate is the schedule's last, as in 1 process
    assert history[-1]["lr"] == pytest.approx(
        lr_at(total - 1, total, train.warmup_epochs * steps, train))
    assert abs(m2["test_accuracy"] - m1["test_accuracy"]) <= 0.05  # 360 test rows: noisy
    first = sha(run / "data/student/s/model.safetensors")
    run_cmd(torchrun, run, env=OFF)
    assert sha(run / "data/student/s/model.safetensors") == first


@pytest.mark.slow
def test_killed_two_rank_student_resumes_to_the_same_bytes(pipe, tmp_path):
    params = with_nproc({**PARAMS, "student": {"defaults": {**PARAMS["student"]["defaults"],
                                               "train": {"epochs": 6, "batch_size": 64}},
                                               "variants": {VARIANT: {}}}}, 2)
    ref = copy_inputs(pipe, tmp_path / "ref", params, "prepared", "soft_targets")
    kd(["student", VARIANT], ref)
    run = copy_inputs(pipe, tmp_path / "run", params, "prepared", "soft_targets")
    steps = ShardReader(run / "data/soft_targets").rank_steps(32, 2)  # a rank's steps an epoch
    # both ranks die mid fourth epoch (each counts its own steps). Rank 0 saved the third
    # epoch's checkpoint before that epoch's first all-reduce, which rank 1 needs to get there
    point = f"train.batch@{3 * steps + steps // 2}"
    killed = run_to_failpoint([str(Path(sys.executable).parent / "kd"), "student", VARIANT], run, point,
                              env=OFF)
    assert killed.returncode == 1, killed.stderr  # the launcher: a rank died, not a user error
    assert "failed with exit status -9" in killed.stderr
    assert json.loads((run / "data/.checkpoints/student@s/state.json").read_text())["epoch"] == 2
    assert not (run / "data/student/s/model.safetensors").exists()
    out = kd(["student", VARIANT], run)
    assert "resuming from epoch 3 of 6" in out.stderr
    assert sha(run / "data/student/s/model.safetensors") == sha(ref / "data/student/s/model.safetensors")


def test_a_rank_dies_with_its_parent(tmp_path):
    """torchrun puts each rank in a session of its own: a scheduler's SIGKILL of the job reaches
    the launcher, not the ranks, which ask the kernel to kill them with their parent."""
    import os
    import signal
    import subprocess
    import time

    child = ("from kd.runtime.distributed import _die_with_parent\n"
             "import time\n_die_with_parent()\nprint('ready', flush=True)\ntime.sleep(120)\n")
    parent = ("import os, signal, subprocess, sys\n"
              f"p = subprocess.Popen([sys.executable, '-c', {child!r}], stdout=subprocess.PIPE,"
              " stderr=subprocess.DEVNULL, start_new_session=True, text=True)\n"
              "assert p.stdout.readline() == 'ready\\n'\n"
              "print(p.pid, flush=True)\nos.kill(os.getpid(), signal.SIGKILL)\n")
    result = subprocess.run([sys.executable, "-c", parent], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == -signal.SIGKILL, result.stderr
    pid = int(result.stdout)

    def alive() -> bool:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except FileNotFoundError:
            return False
        return "\nState:\tZ" not in status  # a zombie is dead, not yet reaped

    deadline = time.monotonic() + 30  # the kernel's delivery, not a race: wait for the result
    while alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    if alive():
        os.kill(pid, signal.SIGKILL)
        pytest.fail(f"the rank {pid} outlived its parent")


@pytest.mark.slow
def test_user_error_in_the_ranks_is_one_line_from_the_launcher(pipe, tmp_path):
    run = copy_inputs(pipe, tmp_path / "r2", with_nproc(PARAMS, 2), "prepared")
    out = kd(["teacher", "nosuch"], run, check=False)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr + out.stdout
    assert out.stderr.strip().splitlines() == [
        "Error: teacher.members: no member named 'nosuch' (members: a, b)"]


@pytest.mark.slow
def test_corrupt_shard_found_by_rank_0_fails_every_rank_in_one_line(pipe, tmp_path):
    """The ranks share the hashing; the one that finds the bad shard fails every rank, so
    none walks on into training alone."""
    run = copy_inputs(pipe, tmp_path / "r2", with_nproc(PARAMS, 2), "prepared", "soft_targets")
    shard = sorted((run / "data/soft_targets").glob("part-*.parquet"))[1]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    out = kd(["student", VARIANT], run, check=False)
    assert out.returncode == 2 and "Traceback" not in out.stderr + out.stdout
    [line] = out.stderr.strip().splitlines()
    assert line.startswith(f"Error: data/soft_targets/{shard.name}: ") and "sha256" in line, line
    assert not (run / "data/student/s").exists()
    # torchrun started by hand: each rank says it itself, rank 0 with rank 1's finding
    (run / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    out = run_cmd([sys.executable, "-m", "torch.distributed.run", "--standalone",
                   "--nproc-per-node", "2", "-m", "kd.cli", "student", VARIANT], run, env=OFF,
                  check=False)
    said = sorted(x for x in out.stderr.splitlines() if x.startswith("[rank "))
    assert said == [f"[rank {r}] {line}" for r in (0, 1)], out.stderr


@pytest.mark.slow
def test_shards_copy_over_a_larger_set_leaves_only_the_new_one(pipe, tmp_path):
    """A reader of the destination never pairs an old manifest with new shards, and shards the
    new set lacks do not linger (verify would reject them as unlisted)."""
    from kd.errors import ArtifactError
    from kd.targets.shardset import copy

    dst = tmp_path / "team/soft_targets"
    copy(pipe / "data/soft_targets", dst)
    small = copy_inputs(pipe, tmp_path / "small", PARAMS, "soft_targets") / "data/soft_targets"
    manifest = json.loads((small / "manifest.json").read_text())
    keep = manifest["shards"][:2]
    for s in manifest["shards"][2:]:
        (small / s["file"]).unlink()
    manifest["shards"] = keep
    manifest["totals"] = {"rows": sum(s["rows"] for s in keep),
                          "val": sum(s["val"] for s in keep),
                          "splits": {k: sum(s["splits"].get(k, 0) for s in keep)
                                     for k in ("labeled", "unlabeled")}}
    (small / "manifest.json").write_text(json.dumps(manifest))
    verify(small)
    copy(small, dst)
    assert sorted(p.name for p in dst.glob("part-*")) == sorted(s["file"] for s in keep)
    assert verify(dst)["rows"] == manifest["totals"]["rows"]
    # onto itself (another spelling of the path): nothing to do, nothing lost
    assert copy(dst, tmp_path / "team" / ".." / "team" / "soft_targets")["rows"] == \
        manifest["totals"]["rows"]
    verify(dst)
    # a file no manifest listed is someone else's: kept, and the copy is refused
    foreign = dst / "part-00000-spark-c000.snappy.parquet"
    foreign.write_bytes(b"not ours")
    with pytest.raises(ArtifactError, match="not listed"):
        copy(small, dst)
    assert foreign.read_bytes() == b"not ours"


def test_relaunched_command_line_parses_back_to_the_same_arguments():
    import click

    from kd.cli import _same_command

    seen = []

    @click.command()
    @click.option("--shards", default="data/soft_targets")
    @click.option("--fast/--slow", default=True)
    @click.option("--verbose", is_flag=True)
    @click.argument("member")
    def stage(**kwargs):
        seen.append((kwargs, _same_command()))

    stage.main(["--shards", "s3://b/x", "--slow", "--verbose", "--", "-odd"],
               prog_name="student", standalone_mode=False)
    kwargs, argv = seen[0]
    assert argv == ["student", "--shards", "s3://b/x", "--slow", "--verbose", "--", "-odd"]
    stage.main(argv[1:], prog_name="student", standalone_mode=False)
    assert seen[1] == (kwargs, argv)


def test_storage_names_hide_credentials_and_take_endpoints_without_scheme(monkeypatch):
    from kd.io.storage import locate

    monkeypatch.setenv("AWS_ENDPOINT_URL", "127.0.0.1:9000")
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    loc = locate("s3://AKIAKEY:s3cret@bucket/kd/soft_targets?region=us-east-1")
    assert loc.show("manifest.json") == "s3://bucket/kd/soft_targets/manifest.json"
    options = loc.fs.__reduce__()[1][0]  # how pyarrow rebuilds it: its settings
    assert (options["endpoint_override"], options["scheme"]) == ("127.0.0.1:9000", "https")


def test_batch_that_does_not_split_over_the_ranks_is_a_params_error():
    from kd.errors import ConfigError

    bad = with_nproc({**PARAMS, "student": {"defaults": {**PARAMS["student"]["defaults"],
                                            "train": {"epochs": 1, "batch_size": 63}},
                                            "variants": {VARIANT: {}}}}, 2)
    with pytest.raises(ConfigError, match=r"^student.variants.s.train.batch_size: 63 rows do not split"):
        parse_config(bad)
    parse_config({**bad, "runtime": {"nproc": 2, "batch": "per_rank"}})  # each rank takes 63


@pytest.mark.slow
def test_student_reads_shards_from_s3_on_two_ranks(pipe, tmp_path, s3_server, monkeypatch):
    """Multi-node students read one shard set from object storage through pyarrow's
    filesystem layer: copied there with `kd shards copy`, read by URI by every rank."""
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": s3_server}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    uri = "s3://kd-team/runs/1/soft_targets"
    local = copy_inputs(pipe, tmp_path / "local", with_nproc(PARAMS, 2), "prepared",
                        "soft_targets")
    out = kd(["shards", "copy", "data/soft_targets", uri], local)
    assert f"{uri}: ok" in out.stdout
    kd(["shards", "verify", uri], local)
    remote = copy_inputs(pipe, tmp_path / "remote", with_nproc(PARAMS, 2), "prepared")
    kd(["student", VARIANT, "--shards", uri], remote)  # this node has no local shards at all
    kd(["student", VARIANT], local)
    for name in ("model.safetensors", "metrics.json", "history.json"):
        assert sha(remote / "data/student/s" / name) == sha(local / "data/student/s" / name)
    missing = kd(["student", VARIANT, "--shards", "s3://kd-team/nope"], remote, check=False)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    # the launcher's line is the last; a rank's C++ runtime may print at its exit before it
    # (seen once: "terminate called without an active exception", see session())
    assert missing.stderr.strip().splitlines()[-1] == (
        "Error: s3://kd-team/nope: no such directory")
    # this node's prepared test split is not the one the shards on S3 were made beside
    test = remote / "data/prepared/test.parquet"
    table = pq.read_table(test)
    pq.write_table(table.slice(0, table.num_rows - 1), test, write_page_checksum=True)
    other = kd(["student", VARIANT, "--shards", uri], remote, check=False)
    assert other.returncode == 2 and "Traceback" not in other.stderr
    assert (f"Error: {test.relative_to(remote)}: not the test split the shards in "
            f"{uri}/manifest.json were made with") in other.stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_dvc_repro_with_nproc_2_runs_every_stage_under_torchrun(tmp_path):
    repo = make_repo(tmp_path / "repo", with_nproc({**PARAMS, "tracking": {"enabled": False}}, 2))
    out = run_cmd(["dvc", "repro"], repo, env=OFF)
    # teacher@a, teacher@b, student and baseline say so when they start; export when it ends
    assert out.stdout.count(", 2 ranks (cpu)") == 4, out.stdout
    assert "on 2 ranks" in out.stdout
    manifest = json.loads((repo / "data/soft_targets/manifest.json").read_text())
    assert manifest["extra"]["ranks"] == 2
    assert (repo / "data/report/metrics.json").exists()
    assert "up to date" in run_cmd(["dvc", "status"], repo).stdout
    # the process count is a declared param: changing it reruns what it changes, not prepare
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["runtime"]["nproc"] = 1
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    status = run_cmd(["dvc", "status", "--json"], repo).stdout
    changed = set(json.loads(status))
    assert {"teacher@a", "teacher@b", "export", "student@s", "baseline@s"} <= changed
    assert "prepare" not in changed
