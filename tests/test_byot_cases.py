"""Your own architecture (`arch: package.module:ClassName`, a class in a package of the user's)
and the bad-input catalogue's cases for imported members and custom architectures
(docs/errors.md; tests/catalogue.py runs them).
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

from kd.models import load_model
from tests.catalogue import Case, assert_case
from tests.conftest import cwd, one_variant
from tests.test_byot import NATIVE, linear, onnx_file

# ------------------------------------------------------------- your own architecture


NETS = '''
import torch.nn as nn


class Tiny(nn.Module):
    def __init__(self, input_shape, n_classes, width=8):
        super().__init__()
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        n = 1
        for d in input_shape:
            n *= d
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(n, width), nn.ReLU(),
                                 nn.Linear(width, n_classes))

    def forward(self, x):
        return self.net(x)
'''


def test_a_custom_architecture_trains_saves_and_rebuilds(tmp_path, kd):
    (tmp_path / "mynets").mkdir()
    (tmp_path / "mynets/__init__.py").write_text("")
    (tmp_path / "mynets/nets.py").write_text(textwrap.dedent(NETS))
    own = {"arch": "mynets.nets:Tiny", "knobs": {"width": 4}, "train": {"epochs": 1}}
    params = {"data": {"source": "digits"}, "tracking": {"enabled": False},
              "teacher": {"members": {"own": own}},
              "student": one_variant({**own, "knobs": {"width": 3}})}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with cwd(tmp_path):
        assert kd("prepare").exit_code == 0
        assert kd("check-params").exit_code == 0
        assert kd("teacher", "own").exit_code == 0
        spec = json.loads(Path("data/teachers/own/model.json").read_text())
        assert spec["arch"] == "mynets.nets:Tiny" and spec["knobs"] == {"width": 4}
        model, _ = load_model("data/teachers/own")  # rebuilt from model.json alone
        assert model(torch.zeros(2, 8, 8)).shape == (2, 10)
        for arch, knobs, needles in (
                ("nosuch.nets:Tiny", {}, ("student.defaults.arch", "nosuch", "cannot import")),
                ("mynets.nets:Huge", {}, ("student.defaults.arch", "no nn.Module class 'Huge'")),
                ("mynets.nets:Tiny", {"depth": 2},
                 ("student.defaults.knobs", "unknown knob 'depth'")),
                ("mynets.nets:Tiny", {"width": 0},
                 ("student.variants.s.arch", "rejects", "width must be"))):
            (tmp_path / "params.yaml").write_text(yaml.safe_dump(
                {**params, "student": one_variant({**own, "arch": arch, "knobs": knobs})}))
            result = kd("check-params")  # member lines first, then one error line
            assert result.exit_code == 2 and "Traceback" not in result.output, result.output
            errors = [ln for ln in result.output.splitlines() if ln.startswith("Error")]
            assert len(errors) == 1 and all(n in errors[0] for n in needles), result.output


# ------------------------------------------------- the bad-input catalogue (docs/errors.md)


def _byot_params(d: Path, imports: dict | None = None, **sections) -> None:
    params = {"data": {"source": "digits"}, "teacher": {"members": {"a": NATIVE},
                                                        "imports": imports or {}}, **sections}
    (d / "params.yaml").write_text(yaml.safe_dump(params))


def _onnx_member(n_in: int, shape: tuple, names: list[str] | None = None):
    def setup(d: Path) -> None:
        onnx_file(linear(n_in, 10, 0), d / "m.onnx", torch.zeros(2, *shape), names)
        _byot_params(d, {"x": {"kind": "onnx", "source": "m.onnx"}})
    return setup


_MLFLOW_X = {"x": {"kind": "mlflow", "source": "models:/digits-lr@champion"}}
CASES = [
    Case("params.teacher.imports.source", "params", "an import whose source does not fit its "
         "kind", ("prepare",), lambda d: _byot_params(d, {"x": {"kind": "onnx",
                                                               "source": "m.pt2"}}),
         ("teacher.imports.x.source", "*.onnx", "'m.pt2'")),
    Case("params.teacher.imports.name_taken", "params", "an import named like a member",
         ("prepare",), lambda d: _byot_params(d, {"a": {"kind": "onnx", "source": "m.onnx"}}),
         ("teacher.imports", "'a'", "teacher.members")),
    Case("params.student.arch.module", "params", "an architecture `package.module:Class` whose "
         "module cannot be imported", ("prepare",),
         lambda d: _byot_params(d, student={"variants": {"v": {"arch": "nosuch.nets:Net"}}}),
         ("student.variants.v.arch", "nosuch", "cannot import")),
    Case("artifacts.import.classes", "artifacts", "an imported model whose classes are not the "
         "prepared data's", ("import", "x"),
         _onnx_member(64, (8, 8), [f"c{i}" for i in range(10)]),
         ("teacher.imports", "m.onnx", "'c0'", "not the prepared data's"), base="pipeline"),
    Case("artifacts.import.width", "artifacts", "an imported model that takes another number "
         "of features", ("import", "x"), _onnx_member(32, (32,)),
         ("m.onnx", "takes 32 features", "64"), base="pipeline"),
    Case("cli.import.unreachable", "cli", "an MLflow member whose registry is unreachable",
         ("import", "x"), lambda d: _byot_params(d, _MLFLOW_X, tracking={
             "enabled": False, "uri": "http://127.0.0.1:1", "timeout_s": 2.0}),
         ("http://127.0.0.1:1", "unreachable"), base="pipeline"),
    Case("cli.import.missing_file", "cli", "an import whose file does not exist",
         ("import", "x"), lambda d: _byot_params(d, {"x": {"kind": "onnx",
                                                         "source": "gone.onnx"}}),
         ("gone.onnx", "file not found"), base="pipeline"),
    Case("cli.import.unknown", "cli", "importing a name teacher.imports does not list",
         ("import", "nosuch"), lambda d: _byot_params(d), ("teacher.imports", "'nosuch'")),
    Case("cli.teacher.imported", "cli", "`kd teacher` on an imported member", ("teacher", "x"),
         lambda d: _byot_params(d, _MLFLOW_X), ("teacher.imports.x", "kd import x")),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_case(case, tmp_path):
    assert_case(case, tmp_path)
