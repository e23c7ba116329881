"""The bad-input catalogue (docs/errors.md) for params, user data and commands.

Each case makes one mistake, runs the real `kd` command and expects exit 2, one line naming the
key/file/column/row, no traceback, nothing written, and exactly the line docs/errors.md shows
for its id. Artifact cases live in tests/test_corrupt.py; `python -m tests.catalogue` rewrites
the page from both. These are the project's only lists of bad params and bad data.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from tests.catalogue import Case, all_cases, assert_case, read_doc
from tests.conftest import one_variant
from tests.test_prepare import parquet_params, user_files

EARLIER = '{"earlier": "output"}'  # a previous good run's output, which must survive


def _with_earlier_output(d: Path) -> None:
    (d / "data/prepared").mkdir(parents=True)
    (d / "data/prepared/meta.json").write_text(EARLIER)


# ----------------------------------------------------------------------------- params


def params_case(case_id: str, mistake: str, params: dict | str, names: tuple[str, ...],
                argv: tuple[str, ...] = ("prepare",)) -> Case:
    text = params if isinstance(params, str) else yaml.safe_dump(params)

    def setup(d: Path) -> None:
        (d / "params.yaml").write_text(text)
        _with_earlier_output(d)

    return Case(f"params.{case_id}", "params", mistake, argv, setup, names)


PARQUET = {"source": "parquet", "inputs": ".", "labeled": "l", "test": "t", "label": "y", "features": "f"}
P = params_case
TFM = {"arch": "transformer"}
PARAMS_CASES = [
    P("student.temperature.range", "a temperature that is not positive",
      {"student": {"defaults": {"temperature": -1}}}, ("student.defaults.temperature", "-1")),
    P("student.temperature.typo", "a misspelt key (a close match is suggested)",
      {"student": {"variants": {"v": {"temprature": 4}}}},
      ("student.variants.v.temprature", "temperature")),
    P("student.flat", "a student section written before variants (the key moved)",
      {"student": {"temperature": 4.0}}, ("student.temperature", "student.defaults.temperature")),
    P("section.unknown", "a section that does not exist", {"studnt": {}}, ("studnt",)),
    P("student.alpha.range", "alpha outside [0, 1]",
      {"student": {"variants": {"v": {"alpha": 1.5}}}}, ("student.variants.v.alpha", "1.5")),
    P("student.combine.choice", "a value not among the choices",
      {"student": {"defaults": {"combine": "max"}}}, ("student.defaults.combine", "'max'")),
    P("student.targets.choice", "a variant's targets that are neither soft nor hard",
      {"student": {"variants": {"v": {"targets": "argmax"}}}},
      ("student.variants.v.targets", "'argmax'")),
    P("student.rows.choice", "a variant's rows that are neither all nor labeled",
      {"student": {"variants": {"v": {"rows": "unlabeled"}}}},
      ("student.variants.v.rows", "'unlabeled'")),
    P("student.control.contradiction", "`control: false` on a variant whose recipe makes it a "
      "control", {"student": {"variants": {"v": {"targets": "hard", "control": False}}}},
      ("student.variants.v.control", "targets 'hard'")),
    P("student.control.omit", "`control: false` on a variant that omits classes",
      {"student": {"variants": {"v": {"omit": [3], "control": False}}}},
      ("student.variants.v.control", "omit [3]")),
    P("student.omit.twice", "a class omitted twice", {"student": {"variants": {"v": {
        "omit": [3, 3]}}}}, ("student.variants.v.omit", "[3, 3]")),
    P("student.omit.negative", "a negative class index to omit", {"student": {"variants": {
        "v": {"omit": [-1]}}}}, ("student.variants.v.omit", "-1")),
    P("student.fraction.zero", "a fraction of the labeled rows that keeps none",
      {"student": {"variants": {"v": {"fraction": 0.0}}}}, ("student.variants.v.fraction",)),
    P("student.combine.typo", "a combine rule that does not exist",
      {"student": {"variants": {"v": {"combine": "kl_members"}}}},
      ("student.variants.v.combine", "'kl_members'")),
    P("student.variants.none", "no student variant at all", {"student": {"variants": {}}},
      ("student.variants", "at least one")),
    P("student.variants.name", "a variant name DVC cannot use in a stage name",
      {"student": {"variants": {"a b": {}}}}, ("student.variants", "'a b'")),
    P("student.train.augment", "augmentation for the student (its soft targets belong to the "
      "unaugmented rows)", {"student": {"variants": {"v": {"train": {"augment": {"shift": 2}}}}}},
      ("student.variants.v.train", "shift=2")),
    P("student.train.batch_size.bool", "a boolean where an integer belongs",
      {"student": {"defaults": {"train": {"batch_size": True}}}},
      ("student.defaults.train.batch_size", "True")),
    P("student.arch.unknown", "an architecture that is not registered",
      {"student": {"variants": {"v": {"arch": "rnn"}}}},
      ("student.variants.v.arch", "'rnn'")),
    P("student.knobs.unknown", "a knob the architecture does not have",
      {"student": {"variants": {"v": {"arch": "mlp", "knobs": {"channels": 3}}}}},
      ("student.variants.v.knobs", "'channels'")),
    P("student.knobs.value", "a knob value out of range",
      {"student": {"variants": {"v": {"knobs": {"dropout": 1.5}}}}},
      ("student.variants.v.knobs", "dropout=1.5")),
    P("student.knobs.soft_tree_inference", "a soft decision tree's inference mode that does "
      "not exist", {"student": {"variants": {"v": {"arch": "soft_tree",
                                                    "knobs": {"inference": "argmax"}}}}},
      ("student.variants.v.knobs", "inference='argmax'")),
    P("student.train.weight_decay.inf", "an infinite number",
      "student:\n  defaults:\n    train:\n      weight_decay: .inf\n",
      ("student.defaults.train.weight_decay", "inf")),
    P("data.source.choice", "an unknown data source", {"data": {"source": "cifar"}},
      ("data.source", "'cifar'")),
    P("data.unlabeled_size.string", "a number written as a string",
      {"data": {"unlabeled_size": "10"}}, ("data.unlabeled_size", "'10'")),
    P("data.unlabeled_size.float", "a fraction where a count belongs",
      {"data": {"unlabeled_size": 2.5}}, ("data.unlabeled_size", "2.5")),
    P("data.unlabeled_size.negative", "a negative count", {"data": {"unlabeled_size": -5}},
      ("data.unlabeled_size", "-5")),
    P("data.val_fraction.range", "more than half the labeled rows for validation",
      {"data": {"val_fraction": 0.9}}, ("data.val_fraction", "0.9")),
    P("data.unlabeled_seed.42", "mnist1d's transfer set drawn with the labeled split's seed",
      {"data": {"unlabeled_seed": 42}}, ("data.unlabeled_seed", "42")),
    P("data.labeled.not_parquet", "a parquet-only key with another source",
      {"data": {"labeled": "x.parquet"}}, ("data.labeled", "'mnist1d'")),
    P("data.labeled.required", "source parquet without its labeled file",
      {"data": {"source": "parquet", "test": "t.parquet"}}, ("data.labeled",)),
    P("data.labeled.outside_inputs", "a data file outside data.inputs (DVC would not see it change)",
      {"data": {**PARQUET, "inputs": "data/inputs", "labeled": "elsewhere/l.parquet"}},
      ("data.labeled", "'elsewhere/l.parquet'", "data.inputs")),
    P("data.classes.twice", "a class listed twice in data.classes",
      {"data": {**PARQUET, "classes": ["a", "b", "a"]}}, ("data.classes", "'a'")),
    P("data.features.type", "features that are neither a column name nor a list of names",
      {"data": {**PARQUET, "features": 3}}, ("data.features", "3")),
    P("data.shape.zero", "a zero in the feature shape", {"data": {**PARQUET, "shape": [8, 0]}},
      ("data.shape.1", "0")),
    P("data.fractions.sum", "digits fractions that leave no labeled rows",
      {"data": {"source": "digits", "test_fraction": 0.5, "unlabeled_fraction": 0.5}},
      ("data.unlabeled_fraction", "0.5 + 0.5")),
    P("data.normalize.choice", "an unknown normalisation", {"data": {"normalize": "minmax"}},
      ("data.normalize", "'minmax'")),
    P("teacher.members.empty", "an ensemble without members", {"teacher": {"members": {}}},
      ("teacher.members",)),
    P("teacher.members.name", "a member name with a space", {"teacher": {"members": {"a b": {}}}},
      ("teacher.members", "'a b'")),
    P("teacher.members.lr", "a member's learning rate of 0",
      {"teacher": {"members": {"a": {"train": {"lr": 0}}}}}, ("teacher.members.a.train.lr",)),
    P("teacher.members.typo", "a misspelt key inside a member",
      {"teacher": {"members": {"a": {"train": {"epoch": 3}}}}},
      ("teacher.members.a.train.epoch", "epochs")),
    P("teacher.members.kernel", "an even kernel for a member",
      {"teacher": {"members": {"m": {"knobs": {"kernel": 4}}}}},
      ("teacher.members.m.knobs", "kernel=4")),
    P("teacher.members.shift", "a negative augmentation shift",
      {"teacher": {"members": {"a": {"train": {"augment": {"shift": -1}}}}}},
      ("teacher.members.a.train.augment.shift", "-1")),
    P("teacher.defaults.epochs", "zero epochs for every member",
      {"teacher": {"defaults": {"train": {"epochs": 0}}}}, ("teacher.defaults.train.epochs",)),
    P("teacher.defaults.arch", "an unknown architecture for every member",
      {"teacher": {"defaults": {"arch": "vit"}}}, ("teacher.defaults.arch", "'vit'")),
    P("teacher.defaults.optimizer", "an unknown optimizer",
      {"teacher": {"defaults": {"train": {"optimizer": "adam"}}}},
      ("teacher.defaults.train.optimizer", "'adam'")),
    P("teacher.defaults.warmup", "a warm-up as long as training",
      {"teacher": {"defaults": {"train": {"epochs": 5, "warmup_epochs": 5}}}},
      ("teacher.defaults.train.warmup_epochs", "5")),
    P("baseline.epochs.warmup", "the student's warm-up longer than the baseline's epochs",
      {"student": {"defaults": {"train": {"epochs": 50, "warmup_epochs": 40}}},
       "baseline": {"epochs": 10}},
      ("student.variants.main.train.warmup_epochs", "baseline.epochs")),
    P("transfer.method.choice", "an unknown transfer method",
      {"transfer": {"method": "smote"}}, ("transfer.method", "'smote'")),
    P("transfer.p.range", "a MUNGE swap probability above 1", {"transfer": {"p": 1.5}},
      ("transfer.p", "1.5")),
    P("transfer.munge.token_ids", "MUNGE over token ids (it draws real values, not ids)",
      {"data": {**PARQUET, "vocab_size": 50, "normalize": "none"},
       "transfer": {"method": "munge"}}, ("transfer.method", "data.vocab_size"),
      argv=("check-params",)),
    P("transfer.s.zero", "a MUNGE spread divisor of 0", {"transfer": {"s": 0}},
      ("transfer.s", "0")),
    P("transfer.rows.zero", "no synthetic rows asked for", {"transfer": {"rows": 0}},
      ("transfer.rows", "0")),
    P("export.rows_per_shard.zero", "zero rows per shard", {"export": {"rows_per_shard": 0}},
      ("export.rows_per_shard",)),
    P("export.row_group_size.range", "row groups larger than a shard",
      {"export": {"rows_per_shard": 100, "row_group_size": 1000}},
      ("export.row_group_size", "1000")),
    P("export.logits_dtype.choice", "an unsupported logits dtype",
      {"export": {"logits_dtype": "float64"}}, ("export.logits_dtype", "'float64'")),
    P("export.views.no_augmentation", "stored views without an augmentation (each would be "
      "the row itself)", {"export": {"views": 2}}, ("export.views", "export.augment")),
    P("export.views.range", "more stored views a row than the limit",
      {"export": {"views": 65, "augment": {"shift": 1}}}, ("export.views", "65")),
    P("export.mixup.negative", "a negative mixup Beta parameter",
      {"export": {"views": 2, "mixup": -0.2}}, ("export.mixup", "-0.2")),
    P("export.partners.choice", "an unknown mixup partner pool",
      {"export": {"views": 2, "mixup": 0.2, "partners": "test"}}, ("export.partners", "'test'")),
    P("export.top_k.zero", "top-k soft targets keeping no class",
      {"export": {"top_k": 0}}, ("export.top_k", "0")),
    P("export.top_k.two_classes", "top-k soft targets for a data set with 2 classes",
      {"data": {**PARQUET, "classes": ["no", "yes"]}, "export": {"top_k": 1}},
      ("export.top_k", "2 classes")),
    P("export.top_k.all_classes", "top-k keeping every class (dense logits are exact and "
      "smaller)", {"export": {"top_k": 10}}, ("export.top_k", "k=10", "10")),
    P("export.top_k.mean_logits", "top-k soft targets with combine `mean_logits`, which needs "
      "every member's full logits",
      {"export": {"top_k": 3}, "student": {"defaults": {"combine": "mean_logits"}}},
      ("combine", "mean_logits", "export.top_k")),
    P("student.omit.mixup_views", "a variant omitting a class that would read mixup views "
      "(their partners may be rows of that class)",
      {"export": {"views": 2, "mixup": 0.4}, "student": {"variants": {"no3": {"omit": [3]}}}},
      ("student.variants.no3.omit", "export.mixup", "views: none")),
    P("student.views.choice", "an unknown way to read the stored views",
      {"student": {"defaults": {"views": "every"}}}, ("student", "views", "'every'")),
    P("student.views.control", "`views: none` (the control) marked `control: false`",
      {"student": {"defaults": {"views": "none", "control": False}}},
      ("control", "views 'none'")),
    P("tracking.enabled.type", "'yes' for a boolean", {"tracking": {"enabled": "yes"}},
      ("tracking.enabled", "'yes'")),
    P("runtime.nproc.range", "no processes", {"runtime": {"nproc": 0}}, ("runtime.nproc", "0")),
    P("deploy.quantize.choice", "an int8 kind ONNX Runtime does not have",
      {"deploy": {"quantize": "int4"}}, ("deploy.quantize", "'int4'")),
    P("deploy.max_accuracy_drop.range", "an accuracy drop in percent instead of a fraction",
      {"deploy": {"max_accuracy_drop": 5}}, ("deploy.max_accuracy_drop", "5")),
    P("runtime.backend.choice", "a backend torch.distributed has no use for here",
      {"runtime": {"backend": "mpi"}}, ("runtime.backend", "'mpi'")),
    P("runtime.batch.split", "a global batch that does not split over the processes",
      {"runtime": {"nproc": 3}, "student": {"defaults": {"train": {"batch_size": 256}}}},
      ("student.variants.main.train.batch_size", "256", "3")),
    P("student.init.misfit", "layer-skip init from a member of another width",
      {"teacher": {"members": {"t": TFM}}, "student": {"variants": {"v": {
          **TFM, "knobs": {"width": 32}, "init": {"from": "t", "layers": [0, 1]}}}}},
      ("student.variants.v.init", "'t'", "knob width")),
    P("student.init.layer", "layer-skip init listing a layer the member does not have",
      {"teacher": {"members": {"t": TFM}}, "student": {"variants": {"v": {
          **TFM, "knobs": {"layers": 2}, "init": {"from": "t", "layers": [0, 4]}}}}},
      ("student.variants.v.init", "layer 4")),
    P("student.init.from", "layer-skip init from a member that does not exist",
      {"student": {"variants": {"v": {**TFM, "init": {"from": "bert", "layers": [0, 1, 2, 3]}}}}},
      ("student.variants.v.init.from", "'bert'")),
    P("student.beta.no_hidden", "the cosine term without a member's hidden vectors exported",
      {"student": {"variants": {"v": {**TFM, "beta": 1.0}}}},
      ("student.variants.v.beta", "export.hidden")),
    P("export.hidden.arch", "hidden vectors asked of a member that has none (a cnn1d)",
      {"export": {"hidden": ["cnn_0"]}}, ("export.hidden.0", "'cnn_0'", "'cnn1d'")),
    P("data.vocab_size.normalize", "token ids that would be normalised",
      {"data": {**PARQUET, "vocab_size": 100}}, ("data.normalize", "data.vocab_size")),
    P("data.chars.vocab_size", "the chars source without its number of classes",
      {"data": {"source": "chars", "normalize": "none"}}, ("data.vocab_size", "'chars'")),
    P("data.chars.too_many_classes", "more character classes than the training files have",
      {"data": {"source": "chars", "normalize": "none", "vocab_size": 5000}},
      ("data.vocab_size", "5000", "distinct characters")),
    P("yaml.syntax", "a YAML syntax error", "data: [unclosed", ("params.yaml", "line 1")),
    P("yaml.duplicate", "a key written twice",
      "data:\n  source: mnist1d\n  source: digits\n", ("params.yaml", "source", "line 3")),
    P("yaml.not_mapping", "a list instead of sections", "- 1\n- 2\n", ("params",)),
    P("yaml.python_tag", "a YAML tag that would run code (never constructed)",
      "data: !!python/object/apply:os.system ['touch hacked']\n", ("params.yaml",)),
    P("file.missing", "a params file that does not exist", "{}\n", ("nope.yaml",),
      argv=("prepare", "--params", "nope.yaml")),
    P("file.directory", "a directory given as the params file", "{}\n", ("data",),
      argv=("prepare", "--params", "data")),
]


# ------------------------------------------------------------------------------- data

def _rewrite(path: Path, column: int, name: str, values) -> None:
    t = pq.read_table(path)
    pq.write_table(t.set_column(column, name, pa.array(values)), path)


def _nan(d: Path, p: dict) -> dict:
    for path in p.values():  # two features everywhere, a NaN in labeled row 5
        n = pq.read_table(path).num_rows
        _rewrite(path, 0, "pixels", [[0.0, 1.0]] * n)
    rows = [[0.0, 1.0]] * 30
    rows[5] = [float("nan"), 1.0]
    _rewrite(p["lab"], 0, "pixels", rows)
    return {}


def _cell(path: Path, column: int, name: str, row: int, value) -> None:
    values = pq.read_table(path).column(column).to_pylist()
    values[row] = value(values[row])
    _rewrite(path, column, name, values)


def _ids(d: Path, p: dict, kind: str) -> dict:
    for path in p.values():
        n = pq.read_table(path).num_rows
        ids = {"duplicate": np.arange(n), "float": np.arange(n) + 0.5,
               "null": pa.array([None, *range(1, n)], pa.int64())}[kind]
        pq.write_table(pq.read_table(path).append_column("key", pa.array(ids)), path)
    return {"id": "key"}


def _copy_test_row_into_unlabeled(paths: dict) -> None:
    test, unl = pq.read_table(paths["test"]), pq.read_table(paths["unl"])
    row = test.select(["pixels"]).slice(3, 1)
    pq.write_table(pa.concat_tables([unl, row]), paths["unl"])


Breaker = Callable[[Path, dict], dict | None]
DATA = [
    # (id, mistake, names, breaker(dir, paths) -> params overrides)
    ("file.missing", "the labeled file does not exist", ("lab.parquet",),
     lambda d, p: p["lab"].unlink()),
    ("file.not_parquet", "a CSV file where Parquet belongs", ("lab.parquet",),
     lambda d, p: p["lab"].write_text("row_id,label\n1,2\n")),
    ("column.missing", "the features column is absent", ("lab.parquet", "'pixels'"),
     lambda d, p: pq.write_table(pq.read_table(p["lab"]).drop(["pixels"]), p["lab"])),
    ("features.ragged", "rows with different numbers of features",
     ("lab.parquet", "'pixels'", "row 3"), lambda d, p: _cell(p["lab"], 0, "pixels", 3,
                                                              lambda v: v[:5])),
    ("features.non_numeric", "text features", ("lab.parquet", "'pixels'"),
     lambda d, p: _rewrite(p["lab"], 0, "pixels", [["a"]] * 30)),
    ("features.missing", "a missing feature value", ("lab.parquet", "'pixels'", "row 4"),
     lambda d, p: _cell(p["lab"], 0, "pixels", 4, lambda v: None)),
    ("features.nan", "a NaN feature", ("lab.parquet", "row 5"), _nan),
    ("features.inf", "an infinite feature in the test file", ("test.parquet", "row 2"),
     lambda d, p: _cell(p["test"], 0, "pixels", 2, lambda v: [float("inf"), *v[1:]])),
    ("features.width", "files whose feature widths differ", ("unl.parquet", "4", "6"),
     lambda d, p: _rewrite(p["unl"], 0, "pixels", [[0.0] * 4] * 20)),
    ("shape.mismatch", "a shape that does not hold the features", ("data.shape", "[4, 4]"),
     lambda d, p: {"shape": [4, 4]}),
    ("label.missing", "a labeled row without a label", ("lab.parquet", "'animal'", "row 2"),
     lambda d, p: _cell(p["lab"], 1, "animal", 2, lambda v: None)),
    ("label.float", "labels that are numbers with fractions", ("lab.parquet", "'animal'"),
     lambda d, p: _rewrite(p["lab"], 1, "animal", np.linspace(0, 1, 30))),
    ("label.unknown_in_test", "a test label the labeled split never has",
     ("test.parquet", "'animal'", "'fox'", "row 1"),
     lambda d, p: _cell(p["test"], 1, "animal", 1, lambda v: "fox")),
    # the labeled file's labels are strings "0"/"1", the test file's the integers 0/1: they print
    # alike, so the line says which types differ
    ("label.type_mismatch", "a test label column of another type than the labeled one's",
     ("test.parquet", "'animal'", "(int)", "str"),
     lambda d, p: (_rewrite(p["lab"], 1, "animal", [str(i % 2) for i in range(30)]),
                   _rewrite(p["test"], 1, "animal",
                            [i % 2 for i in range(pq.read_table(p["test"]).num_rows)]))),
    ("label.one_class", "a single class", ("lab.parquet", "'animal'"),
     lambda d, p: _rewrite(p["lab"], 1, "animal", ["cat"] * 30)),
    ("split.empty_labeled", "an empty labeled file", ("lab.parquet",),
     lambda d, p: pq.write_table(pq.read_table(p["lab"]).slice(0, 0), p["lab"])),
    ("split.empty_test", "an empty test file", ("test.parquet",),
     lambda d, p: pq.write_table(pq.read_table(p["test"]).slice(0, 0), p["test"])),
    ("features.label", "the label column listed as a feature", ("data.features", "'animal'",
                                                                  "label"),
     lambda d, p: {"features": ["pixels", "animal"]}),
    ("features.twice", "a feature column listed twice", ("data.features", "'pixels'", "twice"),
     lambda d, p: {"features": ["pixels", "pixels"]}),
    ("features.glob_none", "a feature pattern that matches no column", ("lab.parquet", "'px_*'"),
     lambda d, p: {"features": "px_*"}),
    ("label.not_in_classes", "a label that data.classes does not list",
     ("lab.parquet", "'animal'", "'eel'", "data.classes"),
     lambda d, p: {"classes": ["cat", "dog"]}),
    ("test.overlap", "test rows that also occur in the unlabeled file (distilling on test "
     "inputs)", ("test.parquet", "unl.parquet", "data.allow_test_overlap"),
     lambda d, p: _copy_test_row_into_unlabeled(p)),
    ("id.duplicate", "the same id in two files", ("data.id", "0"),
     lambda d, p: _ids(d, p, "duplicate")),
    ("id.float", "ids that are not integers", ("lab.parquet", "'key'"),
     lambda d, p: _ids(d, p, "float")),
    ("id.null", "a missing id", ("lab.parquet", "'key'", "row 0"),
     lambda d, p: _ids(d, p, "null")),
    ("features.token_id", "a token id outside data.vocab_size",
     ("lab.parquet", "row 7", "position 2", "[0, 8)"), lambda d, p: _token_ids(p)),
]


def _token_ids(p: dict) -> dict:
    for name, path in p.items():  # rows of 6 token ids in [0, 8); labeled row 7 holds a 9
        n = pq.read_table(path).num_rows
        ids = (np.arange(n * 6).reshape(n, 6) % 8).tolist()
        if name == "lab":
            ids[7][2] = 9
        _rewrite(path, 0, "pixels", ids)
    return {"vocab_size": 8, "normalize": "none"}


def data_case(case_id: str, mistake: str, names: tuple[str, ...], breaker: Breaker) -> Case:
    def setup(d: Path) -> None:
        paths = user_files(d)
        overrides = breaker(d, paths)  # a dict of params overrides, or anything else: none
        overrides = overrides if isinstance(overrides, dict) else {}
        (d / "params.yaml").write_text(yaml.safe_dump(parquet_params(d, **overrides)))
        _with_earlier_output(d)

    return Case(f"data.{case_id}", "data", mistake, ("prepare",), setup, names)


def _arch_misfit(d: Path) -> None:
    user_files(d)  # rows of 6 features, no shape
    params = parquet_params(d) | {"student": one_variant({"arch": "cnn2d", "knobs": {}})}
    (d / "params.yaml").write_text(yaml.safe_dump(params))
    _with_earlier_output(d)


def _one_training_row(d: Path) -> None:
    """Prepared data with two labeled rows, one of them held out for validation: one source."""
    from kd.datasets import Split
    from kd.io.atomic import write_json
    from kd.prepared import to_table

    prepared = d / "data/prepared"
    prepared.mkdir(parents=True)
    for name, n in (("labeled", 2), ("unlabeled", 0), ("test", 2)):
        split = Split(np.arange(n) + (10 if name == "test" else 0),
                      np.zeros((n, 3), np.float32), np.arange(n) if name != "unlabeled"
                      else np.zeros(0, np.int64))
        pq.write_table(to_table(split, np.arange(n) == 0 if name == "labeled"
                                else np.zeros(n, bool)), prepared / f"{name}.parquet")
    write_json(prepared / "meta.json", {"feature_shape": [3], "n_features": 3,
                                        "n_classes": 2, "class_names": ["a", "b"],
                                        "fingerprint": "fp"})
    _params(d, {"transfer": {"method": "munge", "rows": 10}})


DATA_CASES = [data_case(*row) for row in DATA] + [
    Case("data.arch.misfit", "data", "an architecture that cannot take the prepared features "
         "(cnn2d on flat rows)", ("prepare",), _arch_misfit,
         ("student.variants.s.arch", "cnn2d", "data.shape", "[6]")),
    Case("data.transfer.one_training_row", "data", "MUNGE over fewer than 2 labeled training "
         "rows (validation rows are never a source)", ("transfer",), _one_training_row,
         ("data/prepared/labeled.parquet", "found 1")),
]


# --------------------------------------------------------------------------- commands

def _params(d: Path, params: dict | None = None) -> None:
    (d / "params.yaml").write_text(yaml.safe_dump(params or {}))


def _tree_student(d: Path) -> None:
    """The pipeline's student replaced by an (untrained) soft tree on its data."""
    import torch

    from kd.models import build_model, save_model
    from kd.prepared import load_meta

    meta = load_meta(d / "data/prepared")
    torch.manual_seed(0)
    tree = build_model("soft_tree", tuple(meta["feature_shape"]), meta["n_classes"],
                       {"depth": 2})
    save_model(d / "data/student/s", tree, {"arch": "soft_tree", "knobs": {"depth": 2},
                                          "input_shape": meta["feature_shape"],
                                          "n_classes": meta["n_classes"],
                                          "class_names": meta["class_names"]})


def _edit_variant(extra: dict) -> Callable[[Path], None]:
    """The small pipeline's params with variant `s` given `extra` keys."""

    def setup(d: Path) -> None:
        p = yaml.safe_load((d / "params.yaml").read_text())
        p["student"]["variants"]["s"] = {**(p["student"]["variants"]["s"] or {}), **extra}
        (d / "params.yaml").write_text(yaml.safe_dump(p))

    return setup


BUSY_PORT = 47613  # fixed, so the documented line is too; taken here if nothing else has it
_HELD: list[socket.socket] = []


def _hold_port(d: Path) -> None:
    """Listen on BUSY_PORT for the rest of the session, as another server would."""
    _params(d)
    while _HELD:
        _HELD.pop().close()
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", BUSY_PORT))
        s.listen()
        _HELD.append(s)
    except OSError:  # another process has it: just as busy
        s.close()


CLI_CASES = [
    Case("cli.explain.not_a_tree", "cli", "`kd explain` on a student that is not a soft_tree",
         ("explain", "0", "--model", "data/student/s"), lambda d: None, ("data/student/s/model.json", "mlp", "soft_tree"),
         base="pipeline"),
    Case("cli.explain.unknown_row", "cli", "`kd explain` with a row id that is not a test row",
         ("explain", "999999", "--model", "data/student/s"), _tree_student, ("data/prepared/test.parquet", "999999"),
         base="pipeline"),
    Case("cli.teacher.unknown_member", "cli", "training a member params.yaml does not list",
         ("teacher", "nosuch"), _params, ("teacher.members", "'nosuch'")),
    Case("cli.export.before_prepare", "cli", "a stage run before the one it reads from",
         ("export",), _params, ("data/prepared/meta.json", "dvc repro prepare")),
    Case("cli.student.before_export", "cli", "the student run before the export",
         ("student", "main"), _params,
         ("data/soft_targets", "no such directory", "dvc repro export")),
    Case("cli.student.unknown_variant", "cli", "training a student variant params.yaml does not "
         "list", ("student", "nosuch"), _params, ("student.variants", "'nosuch'")),
    Case("cli.student.omit_unknown_class", "cli", "omitting a class the shards do not have",
         ("student", "s"), _edit_variant({"omit": ["seven"]}),
         ("student.variants.s.omit", "'seven'"), base="pipeline"),
    Case("cli.student.omit_every_class", "cli", "omitting every class",
         ("student", "s"), _edit_variant({"omit": list(range(10))}),
         ("student.variants.s.omit", "every class"), base="pipeline"),
    Case("cli.baseline.unknown_variant", "cli", "training the baseline of a variant params.yaml "
         "does not list", ("baseline", "nosuch"), _params, ("student.variants", "'nosuch'")),
    Case("cli.shards.no_manifest", "cli", "`kd shards verify` on a directory without shards",
         ("shards", "verify", "notshards"), lambda d: (_params(d), (d / "notshards").mkdir()),
         ("notshards/manifest.json", "not a shard set")),
    Case("cli.shards.missing_path", "cli", "`kd shards verify` on a path that does not exist",
         ("shards", "verify", "nowhere"), _params, ("nowhere", "no such directory")),
    Case("cli.ui.port_in_use", "cli", "`kd ui` on a port another server listens on",
         ("ui", "--port", str(BUSY_PORT)), _hold_port, (f"port {BUSY_PORT}", "in use")),
    Case("cli.runtime.nccl_without_cuda", "cli", "`runtime.backend: nccl` on a machine without "
         "CUDA GPUs", ("export",), lambda d: _params(d, {"runtime": {"backend": "nccl"}}),
         ("runtime.backend", "nccl"), env={"CUDA_VISIBLE_DEVICES": ""}),
    Case("cli.tracking.unreachable", "cli", "tracking to a server that is down",
         ("prepare",), lambda d: _params(d, {"data": {"source": "digits"}}),
         ("http://127.0.0.1:1", "KD_TRACKING=0"),
         env={"KD_TRACKING": "1", "MLFLOW_TRACKING_URI": "http://127.0.0.1:1"}),
]

def _rows(table: dict) -> Callable[[Path], None]:
    """A user's Parquet file `rows.parquet` in the pipeline copy."""
    return lambda d: pq.write_table(pa.table(table), d / "rows.parquet")


PREDICT = ("predict", "--model", "data/deploy/student.int8.onnx", "rows.parquet", "out.parquet")
CLI_CASES += [
    Case("cli.predict.width", "cli", "`kd predict` on rows of another width than the model's",
         PREDICT, _rows({"features": pa.array([[0.0] * 5])}),
         ("rows.parquet", "5 features", "takes 64"), base="pipeline"),
    Case("cli.predict.column", "cli", "`kd predict` on a file without the features column",
         PREDICT, _rows({"pixels": pa.array([[0.0] * 64])}), ("rows.parquet", "'features'"),
         base="pipeline"),
    Case("cli.predict.not_onnx", "cli", "`kd predict --model` on a file that is not ONNX",
         ("predict", "--model", "data/student/s/model.safetensors", "rows.parquet", "o.parquet"),
         _rows({"features": pa.array([[0.0] * 64])}), ("data/student/s/model.safetensors",),
         base="pipeline"),
]

CASES = [*PARAMS_CASES, *DATA_CASES, *CLI_CASES]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_case(case, tmp_path):
    assert_case(case, tmp_path)


def test_every_case_is_documented_and_every_row_has_a_case():
    ids, documented = {c.id for c in all_cases()}, read_doc()
    assert sorted(ids - set(documented)) == [], "cases without a row in docs/errors.md"
    assert sorted(set(documented) - ids) == [], "rows in docs/errors.md without a case"


def test_at_least_thirty_params_and_data_cases():
    assert len(PARAMS_CASES) + len(DATA_CASES) >= 30
