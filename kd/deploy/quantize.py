"""int8 quantization of an exported student with ONNX Runtime's quantization tools.

    rows = calibration_rows("data/prepared", n=1000, seed=0)    # labeled training rows only
    quantize("data/deploy/student.onnx", "data/deploy/student.int8.onnx", "static", rows)

Two kinds (ONNX Runtime's "quantize_dynamic" / "quantize_static"):

- dynamic: weights int8 once, activations quantized on the fly at every call. Cheap, no
  calibration; fast for MatMul/Gemm, but a convolution becomes ConvInteger, which ONNX Runtime
  runs far slower than its fp32 Conv on CPU (benchmarks/deploy.py).
- static: weights and activations int8, activation ranges calibrated once on training rows;
  convolutions become QLinearConv. ONNX Runtime's own guidance for CNNs.

`auto` (the default) takes the kind measured best for the student's family (DEFAULT_KIND,
figures in benchmarks/results/deploy.json and docs/deploying.md).

Calibration reads labeled *training* rows only: the labeled split without its validation rows
(`is_val`), never the test split. Validation rows then judge the int8 model's accuracy drop
without having shaped its ranges.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)

from kd.deploy.export import load, save, set_metadata
from kd.errors import DataError
from kd.prepared import read_split

KINDS = ("dynamic", "static")
# measured on the default data (benchmarks/deploy.py, 1 thread, batch 1): dynamic int8 made
# the cnn1d student 2.5x slower than fp32 ONNX (ConvInteger), static kept its latency
# (0.98x) at 0.34x the file; for an MLP dynamic is as fast, loses nothing, needs no calibration
DEFAULT_KIND = {"mlp": "dynamic", "cnn1d": "static", "cnn2d": "static"}
FALLBACK_KIND = "static"  # an architecture not measured yet: ONNX Runtime's advice for CNNs
# dynamic: the weight-carrying ops. static: those and what lies between them, so that a
# whole conv stack stays uint8 (QLinearConv -> MaxPool -> QLinearConv ...) instead of
# dequantizing around every ReLU (measured: 1.2x slower at batch 1 that way); the softmax head
# stays fp32 (the probabilities output)
DYNAMIC_OPS = ["Conv", "MatMul", "Gemm"]
STATIC_OPS = ["Conv", "MatMul", "Gemm", "Relu", "MaxPool", "Flatten", "Reshape", "Unsqueeze"]


def resolve_kind(kind: str, arch: str) -> str:
    """`auto` -> the measured default of the architecture's family; else `kind` itself."""
    return DEFAULT_KIND.get(arch, FALLBACK_KIND) if kind == "auto" else kind


def calibration_rows(prepared: str | os.PathLike, n: int, seed: int) -> np.ndarray:
    """Up to `n` labeled training rows (N, F), drawn with `seed`: never a validation row (is_val)
    and never a test row (the test split is not opened)."""
    split, is_val = read_split(prepared, "labeled")
    train = np.flatnonzero(~is_val)
    if len(train) == 0:
        raise DataError(f"{Path(prepared) / 'labeled.parquet'}: no labeled training rows to "
                        "calibrate the int8 model on (every labeled row is a validation row)")
    pick = np.sort(np.random.default_rng(seed).permutation(train)[:n])
    return split.x[pick]  # (n, F)


class Rows(CalibrationDataReader):
    """Feeds `x` (N, F) to the calibrator in batches; `seen` counts the rows it handed out."""

    def __init__(self, x: np.ndarray, input_name: str, batch: int = 256):
        self.x, self.name, self.batch = np.ascontiguousarray(x, np.float32), input_name, batch
        self.pos = self.seen = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.pos >= len(self.x):
            return None
        chunk = self.x[self.pos:self.pos + self.batch]  # (b, F)
        self.pos += len(chunk)
        self.seen += len(chunk)
        return {self.name: chunk}

    def rewind(self) -> None:
        self.pos = 0


def quantize(fp32: str | os.PathLike, out: str | os.PathLike, kind: str,
             calibration: np.ndarray | None = None, per_channel: bool = False) -> Path:
    """Write the int8 model of the fp32 file `fp32` to `out`, keeping its metadata_props and
    adding `kd.precision` = int8 and `kd.quantization` = `kind`."""
    assert kind in KINDS, kind
    fp32, out = Path(fp32), Path(out)
    source = load(fp32)
    with tempfile.TemporaryDirectory(prefix="kd-quantize-") as tmp, quiet():
        raw = Path(tmp) / "int8.onnx"
        # reduce_range: 7-bit weights. A uint8 activation times an int8 weight runs on AVX2
        # CPUs without VNNI as VPMADDUBSW, whose int16 sum of two products saturates with
        # full-range weights (255 * 127 * 2 > 32767): the same file then gives other answers
        # there than on a VNNI CPU. With weights in [-64, 63] no pair sum saturates, and the
        # integer arithmetic, so every prediction, is the same on every x86-64 CPU.
        if kind == "dynamic":
            quantize_dynamic(fp32, raw, op_types_to_quantize=DYNAMIC_OPS,
                             per_channel=per_channel, reduce_range=True,
                             weight_type=QuantType.QInt8)
        else:
            assert calibration is not None and len(calibration), "static needs calibration rows"
            reader = Rows(calibration, source.graph.input[0].name)
            # QOperator (QLinearConv, QGemm, MaxPool on uint8) rather than QDQ: the same
            # kernels once ONNX Runtime has fused the QDQ pairs, in a smaller file
            quantize_static(fp32, raw, reader, quant_format=QuantFormat.QOperator,
                            op_types_to_quantize=STATIC_OPS, per_channel=per_channel,
                            reduce_range=True, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax)
        proto = onnx.load(str(raw))
    props = {p.key: p.value for p in source.metadata_props}
    set_metadata(proto, props | {"kd.precision": "int8", "kd.quantization": kind})
    proto.producer_name, proto.doc_string = "kd-pipeline", ""
    save(proto, out)
    return out


@contextlib.contextmanager
def quiet():
    """ONNX Runtime's quantizer advises shape-inference pre-processing through the root logger
    on every call; the exported graphs already carry their shapes."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)
