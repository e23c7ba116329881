"""Corrupt or mismatched artifacts: every stage that reads one fails with one line naming it.

Each case copies a small built pipeline (tests/catalogue.py), damages one artifact the way a
disk, an interrupted copy or a stale file would, and runs the reading stage through the real
`kd` command: exit 2, one line naming the file, no traceback, and nothing written (the copy's
bytes are compared before and after). The lines are the "artifacts" rows of docs/errors.md.

    readers: export (teachers, prepared), student (shards, test split), report (teachers,
    student, baseline, shards, prepared), kd shards verify (shards)
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from kd.errors import ArtifactError
from kd.models import load_model, model_fingerprint
from kd.targets.reader import ShardReader
from kd.targets.shardset import verify
from tests.catalogue import PIPELINE_PARAMS, Case, assert_case

Damage = Callable[[Path], None]
SHARD = "data/soft_targets/part-00001.parquet"
MANIFEST = "data/soft_targets/manifest.json"


def truncate(rel: str) -> Damage:
    def damage(d: Path) -> None:
        p = d / rel
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])

    return damage


def flip(rel: str, offset: int) -> Damage:
    """XOR one byte; a negative offset counts from the end (inside safetensors' data)."""
    def damage(d: Path) -> None:
        data = bytearray((d / rel).read_bytes())
        data[offset if offset >= 0 else len(data) + offset] ^= 0xFF
        (d / rel).write_bytes(bytes(data))

    return damage


def delete(rel: str) -> Damage:
    return lambda d: (d / rel).unlink()


def edit_json(rel: str, edit: Callable[[dict], None]) -> Damage:
    def damage(d: Path) -> None:
        obj = json.loads((d / rel).read_text())
        edit(obj)
        (d / rel).write_text(json.dumps(obj))

    return damage


def write(rel: str, text: str) -> Damage:
    return lambda d: (d / rel).write_text(text)


def wrong_shapes(model_dir: str) -> Damage:
    """Weights whose first layer has another shape; model.json's checksum re-stamped so that
    the shape check, not the checksum, is what catches it."""
    def damage(d: Path) -> None:
        path = d / model_dir / "model.safetensors"
        tensors = load_file(path)
        w = tensors["net.1.weight"]
        tensors["net.1.weight"] = torch.zeros(w.shape[0] + 1, w.shape[1])
        save_file(tensors, path)
        edit_json(f"{model_dir}/model.json",
                  lambda s: s.update(weights_sha256=model_fingerprint(d / model_dir)))(d)

    return damage


def other_test_split(width: int = 64, label: int = 0) -> Damage:
    """A well-formed prepared test split of 3 rows, from some other data set."""
    def damage(d: Path) -> None:
        import numpy as np
        import pyarrow.parquet as pq

        from kd.datasets import Split
        from kd.prepared import to_table

        split = Split(np.arange(3), np.zeros((3, width), np.float32), np.array([0, 1, label]))
        pq.write_table(to_table(split, np.zeros(3, bool)), d / "data/prepared/test.parquet")

    return damage


def another_prepares_test_split(d: Path) -> None:
    """The same data set's test split with its last row gone, rewritten whole and well formed,
    as another prepare (another split seed, a file edited since) gives: same width, same
    classes, checksums fine. Only the digest in the shards' manifest tells it apart."""
    import pyarrow.parquet as pq

    path = d / "data/prepared/test.parquet"
    table = pq.read_table(path)
    pq.write_table(table.slice(0, table.num_rows - 1), path, write_page_checksum=True)


TRANSFER_META = "data/transfer/meta.json"


def with_transfer(damage: Damage) -> Damage:
    """Make a real MUNGE transfer set in the pipeline copy (the catalogue's pipeline has none),
    then damage it."""
    def both(d: Path) -> None:
        from kd.config import parse_config
        from stages import transfer

        cfg = parse_config({**PIPELINE_PARAMS, "transfer": {"method": "munge", "rows": 50}})
        transfer.run(cfg, d / "data/transfer", d / "data/prepared")
        damage(d)

    return both


def params(edit: Callable[[dict], None]) -> Damage:
    def damage(d: Path) -> None:
        p = yaml.safe_load((d / "params.yaml").read_text())
        edit(p)
        (d / "params.yaml").write_text(yaml.safe_dump(p))

    return damage


def _other_classes(s: dict) -> None:
    s["class_names"] = [f"c{i}" for i in range(len(s["class_names"]))]


def _add_member(p: dict) -> None:
    p["teacher"]["members"]["c"] = p["teacher"]["members"]["a"]


def model_damage(model_dir: str) -> list[tuple[str, str, Damage, str]]:
    """(id, mistake, damage, file named) for one model directory."""
    w, j = f"{model_dir}/model.safetensors", f"{model_dir}/model.json"
    return [
        ("weights_truncated", "safetensors file cut in half", truncate(w), w),
        ("weights_flipped", "one byte flipped in the weights", flip(w, -10), w),
        ("weights_deleted", "safetensors file deleted", delete(w), w),
        ("weights_shapes", "safetensors holding tensors of the wrong shape", wrong_shapes(model_dir),
         w),
        ("json_deleted", "model.json deleted", delete(j), j),
        ("json_invalid", "model.json cut short", write(j, '{"arch": "mlp",'), j),
        ("json_arch", "model.json naming an unknown architecture",
         edit_json(j, lambda s: s.update(arch="resnet")), j),
        ("json_missing_key", "model.json without `knobs`", edit_json(j, lambda s: s.pop("knobs")),
         j),
        ("json_shapes", "model.json whose knobs build other shapes than the weights",
         edit_json(j, lambda s: s["knobs"].update(width=9)), w),
        ("json_classes", "model.json naming other classes than the prepared data",
         edit_json(j, _other_classes), j),
    ]


def shard_damage(with_params: bool) -> list[tuple[str, str, Damage, str]]:
    rows = [
        ("shard_truncated", "a shard cut in half", truncate(SHARD), SHARD),
        ("shard_flipped", "one byte flipped in a shard", flip(SHARD, 2000), SHARD),
        ("shard_deleted", "a shard deleted", delete(SHARD), SHARD),
        ("shard_unlisted", "a shard the manifest does not list",
         write("data/soft_targets/part-00007.parquet", "x"), "part-00007.parquet"),
        ("manifest_rows", "manifest row count edited",
         edit_json(MANIFEST, lambda m: m["shards"][1].update(rows=1)), SHARD),
        ("manifest_sha256", "manifest checksum edited",
         edit_json(MANIFEST, lambda m: m["shards"][1].update(sha256="0" * 64)), SHARD),
        ("manifest_classes", "manifest class names that its shards do not hold",
         edit_json(MANIFEST, _other_classes), "part-00000.parquet"),
        ("manifest_path", "manifest listing a file outside the shard directory",
         edit_json(MANIFEST, lambda m: m["shards"][1].update(file="../prepared/test.parquet")),
         MANIFEST),
        ("manifest_deleted", "manifest deleted", delete(MANIFEST), MANIFEST),
        ("manifest_invalid", "manifest cut short", write(MANIFEST, '{"shards": ['), MANIFEST),
    ]
    if with_params:
        rows.append(("manifest_members", "shards from another ensemble than teacher.members",
                     params(_add_member), MANIFEST))
    return rows


def _onnx_from_another_student(d: Path) -> None:
    import onnx

    path = d / "data/deploy/student.onnx"
    proto = onnx.load(str(path))
    for prop in proto.metadata_props:
        if prop.key == "kd.student_sha256":
            prop.value = "0" * 64
    onnx.save(proto, str(path))


def cases() -> list[Case]:
    readers = {  # stage -> (argv, [(artifact, damage rows)])
        "export": (("export",), [("teacher", model_damage("data/teachers/b"))]),
        "student": (("student", "s"), [("shards", shard_damage(True))]),
        "report": (("report",), [("teacher", model_damage("data/teachers/a")),
                                 ("student", model_damage("data/student/s")),
                                 ("baseline", model_damage("data/baseline/s")[:5]),
                                 ("shards", shard_damage(True))]),
        "verify": (("shards", "verify"), [("shards", shard_damage(False))]),
        "deploy": (("deploy",), [("student", model_damage("data/student/s")[:3])]),
    }
    out = []
    for stage, (argv, artifacts) in readers.items():
        for artifact, rows in artifacts:
            for what, mistake, damage, named in rows:
                out.append(Case(f"{stage}.{artifact}.{what}", "artifacts", mistake, argv, damage,
                                (named,), base="pipeline"))
    # the prepared data, read by every later stage
    out += [
        Case("export.prepared.meta_invalid", "artifacts", "prepared meta.json cut short",
             ("export",), write("data/prepared/meta.json", "{"), ("data/prepared/meta.json",),
             base="pipeline"),
        Case("export.prepared.labeled_truncated", "artifacts", "prepared labeled split cut "
             "in half", ("export",), truncate("data/prepared/labeled.parquet"),
             ("data/prepared/labeled.parquet",), base="pipeline"),
        Case("export.prepared.labeled_flipped", "artifacts", "one byte flipped in the prepared "
             "labeled split's data", ("export",), flip("data/prepared/labeled.parquet", 1000),
             ("data/prepared/labeled.parquet",), base="pipeline"),
        Case("student.prepared.test_flipped", "artifacts", "one byte flipped in the prepared "
             "test split's data", ("student", "s"), flip("data/prepared/test.parquet", 3000),
             ("data/prepared/test.parquet",), base="pipeline"),
        Case("report.prepared.test_flipped", "artifacts", "one byte flipped in the prepared "
             "test split's data", ("report",), flip("data/prepared/test.parquet", 3000),
             ("data/prepared/test.parquet",), base="pipeline"),
        Case("student.prepared.test_other_width", "artifacts", "a test split from a data set "
             "with other features than the shards'", ("student", "s"), other_test_split(width=5),
             ("data/prepared/test.parquet",), base="pipeline"),
        Case("student.prepared.test_other_labels", "artifacts", "a test split with more classes "
             "than the shards'", ("student", "s"), other_test_split(label=12),
             ("data/prepared/test.parquet",), base="pipeline"),
        Case("student.prepared.test_from_another_prepare", "artifacts", "a well-formed test "
             "split that is not the one the shards were made beside", ("student", "s"),
             another_prepares_test_split,
             ("data/prepared/test.parquet", "data/soft_targets/manifest.json"), base="pipeline"),
        Case("report.prepared.test_from_another_prepare", "artifacts", "a well-formed test "
             "split that is not the one the shards were made beside", ("report",),
             another_prepares_test_split,
             ("data/prepared/test.parquet", "data/soft_targets/manifest.json"), base="pipeline"),
        Case("student.prepared.test_truncated", "artifacts", "prepared test split cut in half",
             ("student", "s"), truncate("data/prepared/test.parquet"),
             ("data/prepared/test.parquet",), base="pipeline"),
        Case("report.deploy.other_student", "artifacts", "an ONNX file exported from another "
             "student than the chosen one", ("report",), _onnx_from_another_student,
             ("data/deploy/student.onnx", "rerun `kd deploy`"), base="pipeline"),
        Case("report.deploy.not_onnx", "artifacts", "the int8 ONNX file cut in half",
             ("report",), truncate("data/deploy/student.int8.onnx"),
             ("data/deploy/student.int8.onnx",), base="pipeline"),
        Case("report.prepared.test_truncated", "artifacts", "prepared test split cut in half",
             ("report",), truncate("data/prepared/test.parquet"),
             ("data/prepared/test.parquet",), base="pipeline"),
        Case("transfer.prepared.labeled_truncated", "artifacts", "prepared labeled split cut "
             "in half, read by the transfer stage", ("transfer",),
             truncate("data/prepared/labeled.parquet"), ("data/prepared/labeled.parquet",),
             base="pipeline"),
        Case("export.transfer.meta_invalid", "artifacts", "the transfer set's meta.json cut "
             "short", ("export",), with_transfer(write(TRANSFER_META, "{")), (TRANSFER_META,),
             base="pipeline"),
        Case("export.transfer.stale", "artifacts", "a transfer set made from other prepared "
             "data", ("export",), with_transfer(edit_json(
                 TRANSFER_META, lambda m: m.update(prepared_sha256="0" * 64))),
             (TRANSFER_META, "kd transfer"), base="pipeline"),
        Case("export.transfer.rows_truncated", "artifacts", "the synthetic rows cut in half",
             ("export",), with_transfer(truncate("data/transfer/synthetic.parquet")),
             ("data/transfer/synthetic.parquet",), base="pipeline"),
    ]
    return out


CASES = cases()
assert PIPELINE_PARAMS["teacher"]["members"].keys() == {"a", "b"}  # the damage above names them


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_corrupt_artifact(case, tmp_path):
    assert_case(case, tmp_path)


# A flipped byte anywhere, not only where the catalogue's cases flip it: every artifact a stage
# reads either has a checksum (weights: model.json's sha256; shards: the manifest; prepared
# splits: Parquet page CRCs) or is JSON, where a flipped byte is no longer UTF-8.
SWEPT = [
    ("export", "data/prepared/labeled.parquet"), ("export", "data/teachers/a/model.safetensors"),
    ("export", "data/teachers/a/model.json"), ("student", "data/prepared/test.parquet"),
    ("student", SHARD), ("student", MANIFEST), ("report", "data/baseline/s/model.safetensors"),
    ("report", "data/prepared/test.parquet"), ("verify", SHARD),
]
POSITIONS = 8


@pytest.mark.parametrize("stage,rel", SWEPT, ids=[f"{s}:{r}" for s, r in SWEPT])
def test_a_flipped_byte_anywhere_is_caught(stage, rel, tmp_path):
    from tests.catalogue import check, pipeline, run_case

    size = (pipeline() / rel).stat().st_size
    argv = {"verify": ("shards", "verify"), "student": ("student", "s")}.get(stage, (stage,))
    for i in range(POSITIONS):
        offset = (2 * i + 1) * size // (2 * POSITIONS)  # spread over the whole file
        case = Case(f"sweep.{i}", "artifacts", "", argv, flip(rel, offset), (rel,),
                    base="pipeline")
        check(case, run_case(case, tmp_path / str(i)))


# Any edit of the JSON artifacts (a key deleted, a value of another type) is either harmless or
# an ArtifactError naming the file, never a KeyError or TypeError from deep inside a stage.
JUNK = [None, "x", -1, 0, 1.5, True, [], {}, ["a"], {"k": 1}]


def _paths(obj, prefix=()):
    yield prefix
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) \
        else ()
    for k, v in items:
        yield from _paths(v, (*prefix, k))


@st.composite
def json_edit(draw, obj):
    """A copy of `obj` with one node deleted or replaced by junk; (edited, path)."""
    obj = json.loads(json.dumps(obj))
    path = draw(st.sampled_from([p for p in _paths(obj) if p]))
    parent = obj
    for k in path[:-1]:
        parent = parent[k]
    if isinstance(parent, dict) and draw(st.booleans()):
        del parent[path[-1]]
    else:
        parent[path[-1]] = draw(st.sampled_from(JUNK))
    return obj, path


def _edit_and_read(tmp_path_factory, rel: str, read, data) -> None:
    from tests.catalogue import pipeline

    d = tmp_path_factory.mktemp("edit")
    src = pipeline() / Path(rel).parent
    shutil.copytree(src, d / "x")
    target = d / "x" / Path(rel).name
    edited, path = data.draw(json_edit(json.loads(target.read_text())))
    target.write_text(json.dumps(edited))
    try:
        read(d / "x")
    except ArtifactError as e:
        assert "\n" not in str(e) and str(d / "x") in str(e), (path, str(e))


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_manifest_edit_is_harmless_or_an_artifact_error(tmp_path_factory, data):
    def read(d: Path) -> None:
        verify(d)
        for _ in ShardReader(d).iter_batches(700, shuffle=True, drop_val=True):
            pass

    _edit_and_read(tmp_path_factory, MANIFEST, read, data)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_model_json_edit_is_harmless_or_an_artifact_error(tmp_path_factory, data):
    _edit_and_read(tmp_path_factory, "data/teachers/a/model.json", load_model, data)


def test_the_installed_kd_command_prints_the_same_one_line(tmp_path):
    """The cases run `kd` in-process; the console script in a subprocess behaves the same:
    the documented line on stderr, nothing on stdout, exit status 2."""
    from tests.catalogue import read_doc, run_case
    from tests.conftest import run_cmd

    case = next(c for c in CASES if c.id == "student.shards.shard_flipped")
    run_case(case, tmp_path / "p")  # leaves the damaged copy behind
    result = run_cmd(["kd", *case.argv], tmp_path / "p", env={"KD_TRACKING": "0"}, check=False)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip() == read_doc()[case.id]
