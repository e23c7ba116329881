"""Safety: no code path loads a pickle or evaluates text, params are plain data, and `kd ui`
stays on loopback unless told otherwise.

The source scan is static (AST), so it covers code paths no other test happens to run.
"""

from __future__ import annotations

import ast

import pytest
import yaml

from kd.config import load_config
from kd.errors import ConfigError
from tests.conftest import ROOT, assert_user_error

SCANNED = ("kd", "stages", "benchmarks")
PICKLE_MODULES = {"pickle", "_pickle", "cPickle", "cloudpickle", "dill", "shelve", "marshal",
                  "joblib"}
EVALUATORS = {"eval", "exec", "compile", "__import__"}
SAFE_YAML_LOADERS = {"SafeLoader", "CSafeLoader", "BaseLoader", "CBaseLoader"}


def _dotted(node: ast.AST) -> str:
    """'torch.load' for torch.load, 'np.load' for np.load, '' for anything not a plain chain."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return ".".join([node.id, *reversed(parts)])
    return ""


def _kw_true(call: ast.Call, name: str) -> bool:
    return any(k.arg == name and isinstance(k.value, ast.Constant) and k.value.value is True
               for k in call.keywords)


def _safe_loader_classes(tree: ast.Module) -> set[str]:
    """Classes in this module that subclass a safe YAML loader (e.g. config._UniqueKeyLoader)."""
    return {c.name for c in ast.walk(tree) if isinstance(c, ast.ClassDef)
            and any(_dotted(b).split(".")[-1] in SAFE_YAML_LOADERS for b in c.bases)}


def unsafe_calls(source: str, filename: str = "<src>") -> list[str]:
    """Every place in `source` that could load a pickle or run text as code."""
    tree = ast.parse(source, filename)
    safe_loaders = SAFE_YAML_LOADERS | _safe_loader_classes(tree)
    found = []

    def bad(node: ast.AST, what: str) -> None:
        found.append(f"{filename}:{node.lineno}: {what}")

    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [
                node.module or ""]
            for name in names:
                if name.split(".")[0] in PICKLE_MODULES:
                    bad(node, f"imports {name}")
        if not isinstance(node, ast.Call):
            continue
        fn = _dotted(node.func)
        if fn in EVALUATORS:
            bad(node, f"calls {fn}()")
        elif fn.endswith("torch.load") and not _kw_true(node, "weights_only"):
            bad(node, "torch.load without weights_only=True")
        elif fn in ("yaml.unsafe_load", "yaml.full_load", "yaml.unsafe_load_all",
                    "yaml.full_load_all"):
            bad(node, f"calls {fn}")
        elif fn in ("yaml.load", "yaml.load_all"):
            loader = next((k.value for k in node.keywords if k.arg == "Loader"), None)
            if loader is None and len(node.args) > 1:
                loader = node.args[1]
            if loader is None or _dotted(loader).split(".")[-1] not in safe_loaders:
                bad(node, f"{fn} without a safe Loader")
        elif fn.split(".")[-1] == "load" and fn.split(".")[0] in ("np", "numpy") \
                and _kw_true(node, "allow_pickle"):
            bad(node, "np.load(allow_pickle=True)")
        elif fn.split(".")[-1] in ("read_pickle", "to_pickle") or fn == "torch.jit.load":
            bad(node, f"calls {fn}")
    return found


def test_the_scan_finds_what_it_looks_for():
    sample = (
        "import pickle\nfrom dill import loads\nimport torch, yaml, numpy as np, pandas as pd\n"
        "torch.load('m.pt')\ntorch.load('m.pt', weights_only=False)\n"
        "eval('1')\nexec('x = 1')\nyaml.load(t)\nyaml.load(t, Loader=yaml.Loader)\n"
        "yaml.unsafe_load(t)\nnp.load('a.npy', allow_pickle=True)\npd.read_pickle('p')\n"
    )
    assert len(unsafe_calls(sample)) == 11
    fine = ("import torch, yaml, numpy as np\nclass L(yaml.SafeLoader): pass\n"
            "torch.load('m.pt', weights_only=True)\nyaml.load(t, Loader=L)\n"
            "yaml.safe_load(t)\nnp.load('a.npy')\nmodel.eval()\n")
    assert unsafe_calls(fine) == []


def test_no_code_path_loads_a_pickle_or_evaluates_text():
    files = [p for d in SCANNED for p in sorted((ROOT / d).rglob("*.py"))]
    assert len(files) > 20  # the scan really saw the package
    found = [f for p in files for f in unsafe_calls(p.read_text(), str(p.relative_to(ROOT)))]
    assert found == []


# ------------------------------------------------------------------ params are plain data

PAYLOADS = [
    "!!python/object/apply:os.system ['touch {m}']",
    "!!python/object/apply:subprocess.call [[touch, '{m}']]",
    "!!python/object/new:os.system ['touch {m}']",
    "!!python/object/apply:builtins.exec [\"open('{m}', 'w')\"]",
    "!!python/name:os.system",
    "!!python/module:os",
]


@pytest.mark.parametrize("payload", PAYLOADS)
def test_yaml_tags_that_build_objects_are_refused_and_never_run(payload, tmp_path, kd):
    marker = tmp_path / "hacked"
    params = tmp_path / "params.yaml"
    params.write_text(f"data:\n  source: {payload.format(m=marker)}\n")
    with pytest.raises(ConfigError, match="is not allowed"):
        load_config(params)
    assert_user_error(kd("check-params", "--params", params), "params.yaml", "not allowed")
    assert not marker.exists()
    # the same text through PyYAML's unsafe loader would run it: the test can fail
    if payload.startswith("!!python/object/apply:os.system"):
        yaml.unsafe_load(params.read_text())
        assert marker.exists()


@pytest.mark.parametrize("key,value", [
    (("student", "defaults", "arch"), "__import__('os').system('touch {m}')"),
    (("student", "variants", "v", "arch"), "os.system"),
    (("teacher", "defaults", "arch"), "subprocess.call"),
    (("student", "defaults", "knobs", "width"), "__import__('os').system('touch {m}')"),
    (("data", "source"), "exec(\"open('{m}', 'w')\")"),
])
def test_strings_in_params_are_never_evaluated(key, value, tmp_path, kd):
    marker = tmp_path / "hacked"
    params: dict = {}
    node = params
    for part in key[:-1]:
        node = node.setdefault(part, {})
    node[key[-1]] = value.format(m=marker)
    if key[:3] == ("student", "defaults", "knobs"):
        params["student"]["defaults"]["arch"] = "mlp"
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    assert_user_error(kd("check-params", "--params", path), ".".join(key[:2]))
    assert not marker.exists()


# ----------------------------------------------------------------------------------- kd ui

@pytest.fixture
def ui_command(monkeypatch, tmp_path):
    """Run `kd ui ...` in-process with the server start replaced: returns (result, command)."""
    from click.testing import CliRunner

    import kd.serve
    from kd.cli import cli

    seen: list[list[str]] = []
    # the server start (kd.serve.serve, which kd ui imports when it runs): record the command
    monkeypatch.setattr(kd.serve, "serve", lambda cmd, **kw: seen.append(list(cmd)) or (True, 0))
    # and its port check: these hosts are not this machine's (tests/test_tracking.py runs it)
    monkeypatch.setattr(kd.serve, "check_port", lambda host, port: None)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    (tmp_path / "params.yaml").write_text("{}\n")

    def run(*args: str):
        result = CliRunner().invoke(cli, ["ui", *args])
        return result, (seen.pop() if seen else None)

    return run


def _bound(cmd: list[str]) -> str:
    return cmd[cmd.index("--host") + 1]


def test_ui_binds_loopback_by_default(ui_command):
    result, cmd = ui_command()
    assert result.exit_code == 0, result.output
    assert _bound(cmd) == "127.0.0.1" and "warning" not in result.output
    assert "--host TEXT" in ui_command("--help")[0].output
    assert "127.0.0.1" in ui_command("--help")[0].output


@pytest.mark.parametrize("host,warns", [("0.0.0.0", True), ("192.168.1.7", True),
                                        ("myhost.example", True), ("::", True),
                                        ("localhost", False), ("127.0.0.2", False),
                                        ("::1", False)])
def test_ui_binds_where_told_and_warns_off_loopback(ui_command, host, warns):
    result, cmd = ui_command("--host", host, "--port", "5123")
    assert result.exit_code == 0, result.output
    assert _bound(cmd) == host and cmd[cmd.index("--port") + 1] == "5123"
    assert ("warning: binding" in result.output) == warns, result.output


def test_pickle_free_model_files(tmp_path):
    """What the pipeline writes for a model is safetensors + JSON: no pickle opcode header."""
    from kd.models import build_model, save_model

    save_model(tmp_path, build_model("mlp", (4,), 2, {}), {
        "arch": "mlp", "knobs": {}, "input_shape": [4], "n_classes": 2, "class_names": ["a", "b"]})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.json", "model.safetensors"]
    head = (tmp_path / "model.safetensors").read_bytes()[:16]
    assert not head.startswith((b"\x80", b"PK"))  # neither a pickle nor torch's zip format
