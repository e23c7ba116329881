"""ONNX Runtime inference for an exported student, on a fixed number of threads.

    sess = open_session("data/deploy/student.int8.onnx", threads=1)
    logits, probs = run(sess, x)                  # x: (N, F) normalised rows, as prepared
    Predictor("data/deploy/student.int8.onnx").predict(raw)   # raw rows: normalised here
    speeds({"student_onnx": onnx_forward(path, threads=1)}, x)  # kd.evaluate.metrics

Nothing here imports torch's model code: a deployed file runs with onnxruntime and numpy.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort

from kd.deploy.export import INPUT, LOGITS, PROBS, load, read_metadata
from kd.errors import ArtifactError, DataError

CHECK_THREADS = 1  # scoring and checks: one ONNX Runtime thread gives the same figures anywhere


def open_session(path: str | os.PathLike, threads: int = 1) -> ort.InferenceSession:
    """A CPU session on exactly `threads` intra-op threads (0: ONNX Runtime's choice, one per
    core) and one inter-op thread, so that figures are comparable with torch's threads."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # errors only: no "initializer appears in graph inputs" chatter
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # ONNX Runtime raises its own Fail/InvalidGraph/NoSuchFile types
        load(path)  # a missing or unreadable file gets the plainer message
        raise ArtifactError(f"{path}: ONNX Runtime cannot load it "
                            f"({str(e).splitlines()[0][:200]})") from None


def run(sess: ort.InferenceSession, x: np.ndarray, batch: int = 4096
        ) -> tuple[np.ndarray, np.ndarray]:
    """(logits, probabilities), each (N, C), of `x` (N, F) in batches of `batch` rows."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    outs = [sess.run([LOGITS, PROBS], {INPUT: x[i:i + batch]}) for i in range(0, len(x), batch)]
    if not outs:
        n = sess.get_outputs()[0].shape[1]
        return np.zeros((0, n), np.float32), np.zeros((0, n), np.float32)
    return (np.concatenate([o[0] for o in outs]),  # (N, C)
            np.concatenate([o[1] for o in outs]))  # (N, C)


def onnx_forward(path: str | os.PathLike, threads: int) -> Callable[[np.ndarray], object]:
    """A callable that runs the file at `path` under ONNX Runtime on `threads` threads, for
    kd.evaluate.metrics.speeds to time beside PyTorch eager (rows of any shape: flattened)."""
    sess = open_session(path, threads)

    def forward(batch: np.ndarray) -> object:
        return sess.run([LOGITS], {INPUT: batch.reshape(len(batch), -1)})

    return forward


class Predictor:
    """An exported student on a user's raw rows: applies the normalisation stored in the
    file's metadata, then runs ONNX Runtime. Needs the .onnx file and nothing else."""

    def __init__(self, path: str | os.PathLike, threads: int = 0):
        self.path = Path(path)
        self.meta = read_metadata(self.path)
        self.session = open_session(self.path, threads)
        self.class_names: list[str] = self.meta["class_names"]
        self.n_features = int(np.prod(self.meta["input_shape"]))
        norm = self.meta["normalization"]
        self.mean = np.asarray(norm["mean"], np.float64)  # (1,) global, (F,) per feature
        self.std = np.asarray(norm["std"], np.float64)

    def normalise(self, raw: np.ndarray, where: str = "input") -> np.ndarray:
        """(N, F) raw rows -> (N, F) rows as the student was trained on them."""
        if raw.ndim != 2 or raw.shape[1] != self.n_features:
            width = raw.shape[1] if raw.ndim == 2 else raw.shape[1:]
            raise DataError(f"{where}: rows have {width} features, the model {self.path} "
                            f"takes {self.n_features}")
        # the same arithmetic as `kd prepare`: float64 statistics, then float32
        return ((raw - self.mean) / self.std).astype(np.float32)  # (N, F)

    def predict(self, raw: np.ndarray, where: str = "input") -> np.ndarray:
        """Class probabilities (N, C) of raw rows (N, F)."""
        return run(self.session, self.normalise(raw, where))[1]
