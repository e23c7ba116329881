"""The deploy stage and `kd predict`: ONNX files equal to the student, int8 calibrated on
training rows only, predictions on raw user rows, the MLflow onnx model, and DVC reruns.

Most tests copy the catalogue's small pipeline (digits, tiny MLP student; built once per
process, with data/deploy) and run real stages in the copy."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from onnx import numpy_helper

from kd.config import parse_config
from kd.deploy import build as build_mod
from kd.deploy import quantize as quantize_mod
from kd.deploy.checks import DeployCheckError, accuracy_drop
from kd.deploy.export import FP32, INT8, export_onnx, read_metadata
from kd.deploy.runtime import Predictor, open_session, run
from kd.models import load_model
from kd.prepared import load_meta, read_split
from stages import deploy
from tests.catalogue import PIPELINE_PARAMS, pipeline
from tests.conftest import assert_user_error, cwd, make_repo, run_cmd


@pytest.fixture
def built(tmp_path) -> Path:
    d = tmp_path / "p"
    shutil.copytree(pipeline(), d, ignore=shutil.ignore_patterns(".checkpoints"))
    return d


def _cfg(**deploy_params):
    return parse_config({**PIPELINE_PARAMS, "deploy": {**PIPELINE_PARAMS["deploy"],
                                                       **deploy_params}})


def _student_logits(d: Path, x: np.ndarray) -> np.ndarray:
    model, _ = load_model(d / "data/student/s")
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()  # (N, C)


def test_the_stage_writes_self_contained_files_equal_to_the_student(built):
    out = built / "data/deploy"
    test, _ = read_split(built / "data/prepared", "test")
    meta = read_metadata(out / INT8)
    assert meta["class_names"] == load_meta(built / "data/prepared")["class_names"]
    assert meta["quantization"] == "dynamic" and meta["precision"] == "int8"  # auto: mlp
    logits, probs = run(open_session(out / FP32), test.x)
    ref = _student_logits(built, test.x)
    assert np.abs(logits - ref).max() < 1e-4
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    # a dynamic batch dimension: one row and many rows from the same file
    assert run(open_session(out / INT8), test.x[:1])[0].shape == (1, ref.shape[1])
    assert (out / INT8).stat().st_size < (out / FP32).stat().st_size


@pytest.mark.parametrize("kind", ["dynamic", "static"])
def test_int8_weights_fit_seven_bits_so_avx2_cpus_give_the_same_answers(built, tmp_path, kind):
    # uint8 x int8 products summed in pairs into int16 (AVX2's VPMADDUBSW, no VNNI) saturate
    # unless |weight| <= 64: then the file predicts the same on every x86-64 CPU
    with cwd(built):
        deploy.run(_cfg(quantize=kind), out_dir=tmp_path / kind)
    proto = onnx.load(str(tmp_path / kind / INT8))
    weights = [numpy_helper.to_array(w) for w in proto.graph.initializer
               if w.data_type == onnx.TensorProto.INT8 and w.dims]
    assert weights, "no int8 weight tensor in the int8 file"
    assert max(int(np.abs(w.astype(np.int32)).max()) for w in weights) <= 64, \
        [(int(w.min()), int(w.max())) for w in weights]  # 255 * 64 * 2 = 32640 <= 32767


def test_the_same_student_gives_the_same_bytes(built, tmp_path):
    with cwd(built):
        deploy.run(_cfg(), out_dir=tmp_path / "again")
    for name in (FP32, INT8, "metrics.json"):
        assert (tmp_path / "again" / name).read_bytes() == \
            (built / "data/deploy" / name).read_bytes(), name


def test_the_equivalence_check_catches_a_perturbed_onnx_file(built, monkeypatch):
    real = build_mod.export_onnx

    def perturbed(model, spec, normalization, path):
        real(model, spec, normalization, path)
        proto = onnx.load(str(path))
        w = proto.graph.initializer[0]  # one weight nudged by 0.05: a plausible-looking file
        arr = numpy_helper.to_array(w).copy()
        arr.flat[0] += 0.05
        w.CopyFrom(numpy_helper.from_array(arr, w.name))
        onnx.save(proto, str(path))
        return path

    monkeypatch.setattr(build_mod, "export_onnx", perturbed)
    before = {p.name: p.read_bytes() for p in (built / "data/deploy").iterdir()}
    with cwd(built), pytest.raises(DeployCheckError, match="student.onnx: logits differ"):
        deploy.run(_cfg())
    after = {p.name: p.read_bytes() for p in (built / "data/deploy").iterdir()}
    assert after == before  # nothing written: the earlier good output stands


def test_an_int8_model_that_loses_accuracy_stops_the_stage(built, monkeypatch):
    monkeypatch.setattr(build_mod.checks, "accuracy_drop", _strict_drop)
    with cwd(built), pytest.raises(DeployCheckError, match="max_accuracy_drop"):
        deploy.run(_cfg(quantize="static", max_accuracy_drop=0.01))


def _strict_drop(fp32_right, int8_right, max_drop, path):
    # as if int8 got wrong every validation row fp32 gets right
    return accuracy_drop(fp32_right, np.zeros_like(int8_right), max_drop, path)


def _pairs(rows: int, lost: int, gained: int, both_right: int):
    """fp32/int8 correctness over `rows` paired rows with the given disagreements."""
    fp32 = np.zeros(rows, bool)
    int8 = np.zeros(rows, bool)
    fp32[:lost] = True
    int8[lost:lost + gained] = True
    fp32[lost + gained:lost + gained + both_right] = int8[lost + gained:][:both_right] = True
    return fp32, int8


def test_one_flipped_row_of_36_passes_the_int8_gate_within_noise():
    # digits' 36 validation rows: one flip is 2.8 points, which the rows cannot tell from 0
    gate = accuracy_drop(*_pairs(36, lost=1, gained=0, both_right=13), 0.01, "x.onnx")
    assert (gate["rows"], gate["lost"], gate["gained"]) == (36, 1, 0)
    assert gate["drop"] == pytest.approx(1 / 36)
    assert gate["drop_lower_bound"] < 0 < gate["drop"]
    assert gate["verdict"] == "within noise"
    assert accuracy_drop(*_pairs(36, 0, 0, 14), 0.01, "x.onnx")["verdict"] == "pass"


@pytest.mark.parametrize("lost,gained", [(50, 0), (55, 5), (40, 0)])
def test_a_real_drop_on_1000_rows_fails_the_int8_gate(lost, gained):
    fp32, int8 = _pairs(1000, lost, gained, both_right=900)
    with pytest.raises(DeployCheckError) as err:
        accuracy_drop(fp32, int8, 0.01, "data/deploy/student.int8.onnx")
    msg = str(err.value)
    assert "student.int8.onnx" in msg and "deploy.max_accuracy_drop = 0.01" in msg
    assert f"loses {lost} and gains {gained} of 1000 validation rows" in msg


def test_the_int8_gate_bound_is_exact_clopper_pearson():
    # lower bound of lost/n minus upper bound of gained/n, each one-sided at 2.5%
    from scipy.stats import binomtest
    lost, gained, n = 30, 4, 500
    low = binomtest(lost, n).proportion_ci(0.95, "exact").low
    high = binomtest(gained, n).proportion_ci(0.95, "exact").high
    gate = accuracy_drop(*_pairs(n, lost, gained, 300), 1.0, "x.onnx")
    assert gate["drop_lower_bound"] == pytest.approx(low - high, abs=1e-9)
    assert 0 < gate["drop_lower_bound"] < gate["drop"]


def test_calibration_reads_labeled_training_rows_only(built, monkeypatch):
    opened, fed = [], []
    real_read, real_next = quantize_mod.read_split, quantize_mod.Rows.get_next

    def spy_read(prepared, split):
        opened.append(split)
        return real_read(prepared, split)

    def spy_next(self):
        batch = real_next(self)
        if batch is not None:
            fed.append(next(iter(batch.values())))
        return batch

    monkeypatch.setattr(quantize_mod, "read_split", spy_read)
    monkeypatch.setattr(quantize_mod.Rows, "get_next", spy_next)
    with cwd(built):
        figures = deploy.run(_cfg(quantize="static", calibration_rows=10_000))
    assert opened == ["labeled"]  # the calibration never opens the test split
    labeled, is_val = read_split(built / "data/prepared", "labeled")
    test, _ = read_split(built / "data/prepared", "test")
    rows = {r.tobytes() for r in np.concatenate(fed)}
    train = {r.tobytes() for r in labeled.x[~is_val]}
    assert rows == train  # every training row (10,000 asked, fewer exist), nothing else
    assert not rows & {r.tobytes() for r in labeled.x[is_val]}
    assert not rows & {r.tobytes() for r in test.x}
    assert figures["calibration_rows"] == int((~is_val).sum())


def _raw_digits_test(d: Path, path: Path, x_scale: float = 1.0) -> np.ndarray:
    """The digits test rows as a user has them (raw pixels, the image index as row_id)."""
    from sklearn.datasets import load_digits

    test, _ = read_split(d / "data/prepared", "test")
    raw = load_digits().data[test.row_id].astype(np.float32) * x_scale  # (N, 64)
    feats = pa.FixedSizeListArray.from_arrays(pa.array(raw.reshape(-1)), raw.shape[1])
    pq.write_table(pa.table({"row_id": test.row_id, "features": feats}), path)
    return raw


def test_kd_predict_round_trips_a_parquet_file(built, kd):
    _raw_digits_test(built, built / "rows.parquet")
    with cwd(built):
        result = kd("predict", "--model", f"data/deploy/{FP32}", "rows.parquet", "out.parquet")
    assert result.exit_code == 0, result.output
    out = pq.read_table(built / "out.parquet")
    test, _ = read_split(built / "data/prepared", "test")
    np.testing.assert_array_equal(out.column("row_id").to_numpy(), test.row_id)
    probs = np.stack(out.column("probabilities").to_numpy(zero_copy_only=False))  # (N, C)
    expected = torch.softmax(torch.from_numpy(_student_logits(built, test.x)), 1).numpy()
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    names = read_metadata(built / "data/deploy" / FP32)["class_names"]
    assert out.column("predicted").to_pylist() == [names[i] for i in expected.argmax(1)]


def test_kd_predict_names_a_row_width_that_does_not_fit(built, kd):
    path = built / "narrow.parquet"
    pq.write_table(pa.table({"features": pa.array([[1.0, 2.0], [3.0, 4.0]])}), path)
    with cwd(built):
        result = kd("predict", "--model", f"data/deploy/{INT8}", "narrow.parquet", "o.parquet")
    assert_user_error(result, "narrow.parquet", "2 features", "64")
    assert not (built / "o.parquet").exists()


def test_the_mlflow_onnx_model_predicts_what_the_user_expects(built, tmp_path):
    import mlflow

    from kd.tracking import log_onnx_model, stage_run

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    test, _ = read_split(built / "data/prepared", "test")
    cfg = parse_config({**PIPELINE_PARAMS, "tracking": {"enabled": True, "uri": uri}})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KD_TRACKING", "1")
        with stage_run(cfg, "deploy") as tracking:
            log_onnx_model(tracking, built / "data/deploy" / INT8, "student_onnx_int8",
                           test.x[:3])
    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model(f"runs:/{tracking.run_id}/student_onnx_int8")
    expected = run(open_session(built / "data/deploy" / INT8), test.x)[1]  # (N, C)
    got = model.predict(test.x)  # the signature's path: float32 rows (N, F) -> a dict
    np.testing.assert_allclose(got["probabilities"], expected, atol=1e-6)
    assert got["probabilities"].shape == expected.shape
    # without a tensor signature, MLflow's onnx flavor turns a DataFrame's (N, C) outputs into
    # columns N * C rows long; with ours the DataFrame becomes the (N, F) array first
    import pandas as pd

    frame = model.predict(pd.DataFrame(test.x))
    np.testing.assert_allclose(frame["probabilities"], expected, atol=1e-6)


def test_predictor_normalises_like_prepare(built):
    test, _ = read_split(built / "data/prepared", "test")
    from sklearn.datasets import load_digits

    raw = load_digits().data[test.row_id].astype(np.float32)
    x = Predictor(built / "data/deploy" / FP32).normalise(raw)
    np.testing.assert_array_equal(x, test.x)


def test_export_keeps_the_normalisation_and_a_dynamic_batch(tmp_path):
    from kd.models import build_model

    model = build_model("cnn1d", (12,), 3, {"channels": 4, "depth": 2}).eval()
    spec = {"arch": "cnn1d", "knobs": {}, "input_shape": [12], "n_classes": 3,
            "class_names": ["a", "b", "c"]}
    norm = {"method": "per_feature", "mean": list(range(12)), "std": [2.0] * 12}
    path = export_onnx(model, spec, norm, tmp_path / "m.onnx")
    assert read_metadata(path)["normalization"] == norm
    sess = open_session(path)
    for n in (1, 7):
        assert run(sess, np.zeros((n, 12), np.float32))[0].shape == (n, 3)


# ------------------------------------------------------------------------------ real dvc


def _stages_run(out: str) -> list[str]:
    return [line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")]


@pytest.mark.slow
def test_deploy_reruns_only_when_the_student_or_its_params_change(tmp_path):
    repo = make_repo(tmp_path / "repo", {**PIPELINE_PARAMS, "baseline": {"epochs": 1}})
    first = _stages_run(run_cmd(["dvc", "repro", "deploy"], repo).stdout)
    assert "deploy" in first and "baseline@s" not in first
    assert _stages_run(run_cmd(["dvc", "repro", "deploy"], repo).stdout) == []

    def edit(update):
        params = yaml.safe_load((repo / "params.yaml").read_text())
        update(params)
        (repo / "params.yaml").write_text(yaml.safe_dump(params))
        return _stages_run(run_cmd(["dvc", "repro", "deploy"], repo).stdout)

    # params of a stage the deploy stage does not read: nothing to do
    assert edit(lambda p: p["baseline"].update(epochs=2)) == []
    assert edit(lambda p: p["report"].update(retain_target=0.9)) == ["deploy"]  # the choice
    # its own params: deploy alone
    assert edit(lambda p: p["deploy"].update(quantize="static")) == ["deploy"]
    # another student: the student, then deploy
    assert edit(lambda p: p["student"]["defaults"]["train"].update(seed=1)) == [
        "student@s", "index@student", "deploy"]  # index@student: the digest deploy reads


def test_the_recorded_int8_drop_is_the_files_own_on_validation_rows():
    """metrics.json's int8 figures are measured on the files deploy wrote: the fp32 file's
    validation accuracy minus the int8 file's, each recomputed here with ONNX Runtime."""
    import json

    import onnxruntime as ort

    from kd.deploy.runtime import CHECK_THREADS

    d = pipeline()
    labeled, is_val = read_split(d / "data/prepared", "labeled")
    x, y = labeled.x[is_val].astype(np.float32), labeled.y[is_val]  # (V, F), (V,)
    assert len(y) > 0

    def val_accuracy(name: str) -> float:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = CHECK_THREADS
        sess = ort.InferenceSession(str(d / "data/deploy" / name), opts,
                                    providers=["CPUExecutionProvider"])
        logits = sess.run(None, {sess.get_inputs()[0].name: x})[0]  # (V, C)
        return float((logits.argmax(1) == y).mean())

    m = json.loads((d / "data/deploy/metrics.json").read_text())
    fp32, int8 = val_accuracy(FP32), val_accuracy(INT8)
    assert m["fp32"]["val_accuracy"] == pytest.approx(fp32, abs=1e-12)
    assert m["int8"]["val_accuracy"] == pytest.approx(int8, abs=1e-12)
    assert m["int8"]["val_accuracy_drop"] == pytest.approx(fp32 - int8, abs=1e-12)
