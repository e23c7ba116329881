"""Bring your own teacher: imported members (a real MLflow SQLite store and registry with a
logged scikit-learn model, an ONNX file exported from torch, a .pt2 file) in one ensemble with a
native member: export, the report, one-line refusals, and DVC (a moved alias, push and pull).

The world (digits prepared, the models made) is built once per module; each test that breaks
something writes its own params or files.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import yaml
from sklearn.linear_model import LogisticRegression

from kd.config import parse_config
from kd.models import load_model
from kd.prepared import load_meta, read_split
from kd.targets.reader import ShardReader
from kd.teachers.members import load_member, member_params
from stages import export, imports, prepare, source, teacher
from tests.conftest import VARIANT, assert_user_error, cwd, free_port, one_variant

NATIVE = {"arch": "mlp", "knobs": {"depth": 1, "width": 8}, "train": {"epochs": 1}}


def onnx_file(net: torch.nn.Module, path: Path, example: torch.Tensor,
              class_names: list[str] | None = None) -> Path:
    """`net` as ONNX with a dynamic batch axis (and class names in its metadata, if given)."""
    import onnx

    torch.onnx.export(net, (example,), str(path), dynamo=False, input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": {0: "b"}, "y": {0: "b"}})
    if class_names is not None:
        proto = onnx.load(str(path))
        onnx.helper.set_model_props(proto, {"class_names": json.dumps(class_names)})
        onnx.save(proto, str(path))
    return path


def linear(n_in: int, n_out: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(n_in, n_out)).eval()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("byot")
    store = f"sqlite:///{root / 'mlflow.db'}"
    net = linear(64, 10, 0)
    example = torch.zeros(2, 8, 8)  # (B, 8, 8): digits as prepared
    onnx_file(net, root / "net.onnx", example)
    program = torch.export.export(net, (example,),
                                  dynamic_shapes={"input": {0: torch.export.Dim("batch")}})
    torch.export.save(program, str(root / "net.pt2"))
    imports_ = {"onx": {"kind": "onnx", "source": "net.onnx", "inputs": "prepared"},
                "pt": {"kind": "torch_export", "source": "net.pt2", "inputs": "prepared"},
                "lr": {"kind": "mlflow", "source": "models:/digits-lr@champion"}}
    params = {"data": {"source": "digits"}, "tracking": {"enabled": False, "uri": store},
              "teacher": {"members": {"a": NATIVE}, "imports": imports_}}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    cfg = parse_config(params)
    with cwd(root):
        prepare.run(cfg, Path("data/prepared"))
        meta = load_meta("data/prepared")
        labeled, is_val = read_split("data/prepared", "labeled")
        # the user's model, trained elsewhere on the raw pixel values (inputs: raw)
        raw = labeled.x.astype(np.float64) * meta["normalization"]["std"][0] + \
            meta["normalization"]["mean"][0]
        clfs = [LogisticRegression(max_iter=2000, C=c).fit(raw[~is_val], labeled.y[~is_val])
                for c in (1.0, 0.01)]
        mlflow.set_tracking_uri(store)
        for clf in clfs:  # versions 1 and 2 of one registered model
            with mlflow.start_run():
                mlflow.sklearn.log_model(clf, name="model", pyfunc_predict_fn="predict_proba",
                                         input_example=raw[:2].astype(np.float32),
                                         registered_model_name="digits-lr",
                                         pip_requirements=["scikit-learn"])  # no inference run
        mlflow.MlflowClient().set_registered_model_alias("digits-lr", "champion", "1")
        teacher.run(cfg, "a")
        for name in imports_:
            source.run(cfg, name)
            imports.run(cfg, name)
        export.run(cfg)
    return {"root": root, "cfg": cfg, "net": net, "clfs": clfs, "store": store, "meta": meta,
            "params": params}


def shard_logits(root: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    batches = list(ShardReader(root / "data/soft_targets", columns=["row_id", "features",
                                                                      "logits"])
                   .iter_batches(100_000, shuffle=False))
    b = batches[0]
    manifest = json.loads((root / "data/soft_targets/manifest.json").read_text())
    return b["features"], b["logits"], manifest["members"]  # (N, F), (M, N, C)


def test_members_of_every_kind_are_exported_alike(world):
    x, logits, members = shard_logits(world["root"])
    assert members == ["a", "onx", "pt", "lr"]  # trained here first, then the imports
    want = world["net"](torch.from_numpy(x).view(len(x), 8, 8)).detach().numpy()  # (N, C)
    np.testing.assert_allclose(logits[1], want, atol=1e-5)  # the ONNX file: torch's logits
    np.testing.assert_allclose(logits[2], want, atol=1e-5)  # the .pt2 file: the same
    meta = world["meta"]
    raw = x.astype(np.float64) * meta["normalization"]["std"][0] + meta["normalization"]["mean"][0]
    probs = world["clfs"][0].predict_proba(raw)  # version 1: the alias's
    np.testing.assert_allclose(logits[3], np.log(np.clip(probs, 1e-12, None)), atol=1e-4)
    native, _ = load_model(world["root"] / "data/teachers/a")
    np.testing.assert_allclose(logits[0], native(torch.from_numpy(x)).detach().numpy(),
                               atol=1e-5)


def test_model_json_records_kind_source_version_and_digest(world):
    root = world["root"]
    lr = json.loads((root / "data/teachers/lr/model.json").read_text())
    assert (lr["kind"], lr["source"], lr["version"]) == ("mlflow", "models:/digits-lr@champion",
                                                         "1")
    assert lr["resolved_uri"] == "models:/digits-lr/1" and len(lr["digest"]) == 64
    assert (root / "data/teachers/lr/files/MLmodel").is_file()
    onx = json.loads((root / "data/teachers/onx/model.json").read_text())
    assert onx["version"].startswith("sha256:") and onx["params"] == 64 * 10 + 10
    metrics = json.loads((root / "data/teachers/lr/metrics.json").read_text())
    assert metrics["test_accuracy"] > 0.9  # a real classifier, run on the raw features
    with cwd(root):
        assert member_params(load_member(Path("data/teachers/lr"), world["meta"])) is None
        assert member_params(load_member(Path("data/teachers/pt"), world["meta"])) == 650


def test_a_version_uri_and_a_moved_alias_resolve_to_their_versions(world):
    cfg = parse_config({**world["params"], "teacher": {"members": {"a": NATIVE}, "imports": {
        "v2": {"kind": "mlflow", "source": "models:/digits-lr/2"}}}})
    with cwd(world["root"]):
        assert source.run(cfg, "v2")["version"] == "2"
        client = mlflow.MlflowClient(world["store"])
        client.set_registered_model_alias("digits-lr", "champion", "2")
        try:
            assert source.run(world["cfg"], "lr")["version"] == "2"
            written = json.loads(Path("data/sources/lr.json").read_text())
            assert written["uri"] == "models:/digits-lr/2"
        finally:
            client.set_registered_model_alias("digits-lr", "champion", "1")
            source.run(world["cfg"], "lr")


def test_an_edited_file_gives_another_digest_and_fails_loading(world, tmp_path):
    import shutil

    member = tmp_path / "onx"
    shutil.copytree(world["root"] / "data/teachers/onx", member)
    (member / "files/model.onnx").write_bytes(b"x" + (member / "files/model.onnx").read_bytes())
    with pytest.raises(Exception, match="do not match the digest"):
        load_member(member, world["meta"])


# ------------------------------------------------------------------- one line, exit 2


def _import_case(world, tmp_path, kd, spec: dict, files: dict | None = None):
    """`kd import x` in a copy of the world with teacher.imports.x = spec."""
    import shutil

    root = tmp_path / "w"
    shutil.copytree(world["root"] / "data/prepared", root / "data/prepared")
    for name, write in (files or {}).items():
        write(root / name)
    params = {**world["params"], "teacher": {"members": {"a": NATIVE}, "imports": {"x": spec}}}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    with cwd(root):
        return kd("import", "x")


def test_classes_in_another_order_are_mapped_by_name(world, tmp_path, kd):
    names = [str(c) for c in reversed(range(10))]
    net = world["net"]
    result = _import_case(world, tmp_path, kd,
                          {"kind": "onnx", "source": "rev.onnx", "inputs": "prepared"},
                          {"rev.onnx": lambda p: onnx_file(net, p, torch.zeros(2, 8, 8), names)})
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "w/data/teachers/x/model.json").read_text())
    assert record["columns"] == list(reversed(range(10)))
    model = load_member(tmp_path / "w/data/teachers/x", world["meta"])
    x = torch.randn(3, 8, 8)
    torch.testing.assert_close(model(x), net(x).flip(1), atol=1e-5, rtol=0)


@pytest.mark.parametrize("spec, files, needles", [
    ({"kind": "onnx", "source": "m.onnx", "classes": [f"c{i}" for i in range(10)]},
     {"m.onnx": lambda p: onnx_file(linear(64, 10, 1), p, torch.zeros(2, 8, 8))},
     ("classes", "'c0'", "not the prepared data's")),
    ({"kind": "onnx", "source": "m.onnx"},
     {"m.onnx": lambda p: onnx_file(linear(64, 9, 1), p, torch.zeros(2, 8, 8))},
     ("9 outputs", "10 classes")),
    ({"kind": "onnx", "source": "m.onnx"},
     {"m.onnx": lambda p: onnx_file(linear(32, 10, 1), p, torch.zeros(2, 32))},
     ("takes 32 features", "64")),
    ({"kind": "onnx", "source": "m.onnx", "outputs": "probs"},
     {"m.onnx": lambda p: onnx_file(linear(64, 10, 1), p, torch.zeros(2, 8, 8))},
     ("not probabilities", "outputs: logits")),
    ({"kind": "torch_export", "source": "m.pt2"},
     {"m.pt2": lambda p: torch.export.save(torch.export.export(linear(64, 10, 1),
                                                               (torch.zeros(2, 8, 8),)), str(p))},
     ("batches of exactly 2 rows", "dynamic_shapes")),
    ({"kind": "mlflow", "source": "models:/no-such-model/1"}, None,
     ("models:/no-such-model/1", "not found in the MLflow store")),
    ({"kind": "onnx", "source": "missing.onnx"}, None, ("missing.onnx", "file not found")),
], ids=["other_class_names", "other_class_count", "wrong_width", "logits_as_probs",
        "static_batch_pt2", "unknown_model", "missing_file"])
def test_a_member_that_does_not_fit_is_refused_in_one_line(world, tmp_path, kd, spec, files,
                                                          needles):
    result = _import_case(world, tmp_path, kd, spec, files)
    assert_user_error(result, *needles)
    assert not (tmp_path / "w/data/teachers/x").exists()  # nothing half-imported


def test_an_unreachable_registry_is_one_line(world, tmp_path, kd):
    spec = {"kind": "mlflow", "source": "models:/digits-lr/1"}
    params = {**world["params"], "tracking": {"enabled": False,
                                              "uri": f"http://127.0.0.1:{free_port()}",
                                              "timeout_s": 2.0},
              "teacher": {"members": {"a": NATIVE}, "imports": {"x": spec}}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with cwd(tmp_path):
        assert_user_error(kd("source", "x"), "unreachable")



def test_the_report_scores_every_member_alike(world, tmp_path):
    """student, baseline, deploy and report over the mixed ensemble: each member's row, n/a
    where a model has no parameter count (scikit-learn)."""
    import shutil

    from stages import baseline, baseline_specs, deploy, report, student

    root = tmp_path / "w"
    shutil.copytree(world["root"], root, ignore=shutil.ignore_patterns("mlflow.db", "mlruns"))
    params = {**world["params"],
              "student": one_variant({"arch": "mlp", "knobs": {"depth": 1, "width": 8},
                                      "train": {"epochs": 1}}),
              "baseline": {"epochs": 1}, "deploy": {"max_accuracy_drop": 0.5}}
    cfg = parse_config(params)
    with cwd(root):
        student.run(cfg, VARIANT)
        baseline_specs.run(cfg)
        baseline.run(cfg, VARIANT)
        deploy.run(cfg)
        metrics = report.run(cfg)
    members = metrics["members"]
    assert list(members) == ["a", "onx", "pt", "lr"]
    assert members["lr"]["params"] is None and members["onx"]["params"] == 650
    assert members["lr"]["accuracy"] > 0.9
    md = (root / "data/report/report.md").read_text()
    assert any(line.startswith("| lr |") and "| n/a |" in line for line in md.splitlines())

# ------------------------------------------------------------------ DVC: versions, sharing


@pytest.mark.slow
def test_dvc_reimports_a_moved_alias_and_shares_the_import_without_the_registry(world,
                                                                                   tmp_path):
    """A real repository: import@lr reruns when the alias moves and only then; `dvc push` to a
    folder remote, and a teammate's clone pulls the member and runs it with the registry out
    of reach (source@lr keeps the pulled answer with a warning, import@lr stays as pulled)."""
    from tests.conftest import make_repo, run_cmd

    git_id = ["-c", "user.email=t@t", "-c", "user.name=t"]

    store = world["store"]
    client = mlflow.MlflowClient(store)
    repo = make_repo(tmp_path / "repo", {
        "data": {"source": "digits"}, "tracking": {"enabled": False, "uri": store},
        "teacher": {"members": {}, "imports": {"lr": {"kind": "mlflow",
                                                      "source": "models:/digits-lr@champion"}}},
        "student": {"arch": "mlp", "knobs": {"depth": 1, "width": 8}}})
    record = repo / "data/teachers/lr/model.json"
    run_cmd(["dvc", "repro", "import@lr"], repo)
    assert json.loads(record.read_text())["version"] == "1"
    again = run_cmd(["dvc", "repro", "import@lr"], repo).stdout
    assert "Running stage 'source@lr'" in again and "Running stage 'import@lr'" not in again
    client.set_registered_model_alias("digits-lr", "champion", "2")
    try:
        moved = run_cmd(["dvc", "repro", "import@lr"], repo).stdout
    finally:
        client.set_registered_model_alias("digits-lr", "champion", "1")
    assert "Running stage 'import@lr'" in moved
    assert json.loads(record.read_text())["version"] == "2"

    run_cmd(["dvc", "remote", "add", "-d", "shared", str(tmp_path / "remote")], repo)
    run_cmd(["git", "add", "-A"], repo)
    run_cmd(["git", *git_id, "commit", "-qm", "import lr"], repo)
    run_cmd(["dvc", "push"], repo)
    clone = tmp_path / "clone"
    run_cmd(["git", "clone", "-q", str(repo), str(clone)], tmp_path)
    run_cmd(["dvc", "pull", "--with-deps", "import@lr"], clone)
    assert (clone / "data/teachers/lr/model.json").read_bytes() == record.read_bytes()
    away = {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}"}  # no registry here
    out = run_cmd(["dvc", "repro", "import@lr"], clone, env=away)
    assert "keeping the version resolved before (2)" in out.stderr + out.stdout
    assert "Running stage 'import@lr'" not in out.stdout
    assert run_cmd(["dvc", "status", "import@lr"], clone).stdout.count("changed") == 0
    meta = load_meta(clone / "data/prepared")
    x = torch.from_numpy(read_split(clone / "data/prepared", "test")[0].x).view(-1, 8, 8)
    want = load_member(repo / "data/teachers/lr", meta)(x)
    torch.testing.assert_close(load_member(clone / "data/teachers/lr", meta)(x), want)
