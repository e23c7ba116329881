"""The scripts in benchmarks/ keep up with the library, without running them (they take minutes).

No test runs a benchmark, so a change to the params layout or a stage's signature broke several
of them silently (the student variants: `student.train` became `student.defaults.train`, and
`student.run(cfg)` became `student.run(cfg, variant)`). Here, in a few seconds: every script
imports and its docstring shows a command it accepts; the params each one builds, built by its
own function, validate and carry the override where the stage will read it; every `cfg.<section>.<key>` a script reads exists on kd.config's
Config; every name a script imports from kd or stages exists, and every call to one binds to
its signature (`student.run(cfg)` without the variant fails here). That no script shadows a
standard-library module (benchmarks/queue.py once did) is tests/test_architecture.py's check.
"""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import inspect
import os
import re
import sys
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from kd.config import Config, deep_merge, parse_config
from tests.conftest import ROOT

BENCH = ROOT / "benchmarks"
SCRIPTS = sorted(p.stem for p in BENCH.glob("*.py"))
BASE = yaml.safe_load((ROOT / "params.yaml").read_text())
CONFIG_NAMES = {"cfg", "cfg0", "c", "config"}  # what the scripts call a parsed Config


@contextlib.contextmanager
def _restored_process_state():
    # the scripts set KD_TRACKING and sys.path at import: keep that out of the other tests
    env, path = dict(os.environ), list(sys.path)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(env)
        sys.path[:] = path


def load(name: str):
    """benchmarks/<name>.py as a module, as `python benchmarks/<name>.py` sees its folder."""
    with _restored_process_state():
        sys.path.insert(0, str(BENCH))  # scripts import their sibling helpers (chosen.py)
        spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", BENCH / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module


def _usage(doc: str, name: str) -> list[str]:
    """The docstring's command lines that run benchmarks/<name>.py (continuations joined)."""
    joined = re.sub(r"\\\n\s*", " ", doc)
    return [ln for ln in joined.splitlines() if f"python benchmarks/{name}.py" in ln]


def _options(source: str) -> set[str]:
    """Every `--option` the script's argument parser defines."""
    return {a.value for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Call)
            and getattr(n.func, "attr", "") == "add_argument"
            for a in n.args if isinstance(a, ast.Constant) and str(a.value).startswith("--")}


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_script_imports_and_its_docstring_shows_a_command_it_accepts(name):
    """A script's docstring is its manual: it shows how to run it, and every option it shows
    is one the script's parser defines (a renamed option would leave the manual wrong). A
    helper that the scripts import shows its import instead."""
    doc = inspect.getdoc(load(name)) or ""
    assert doc.strip(), f"benchmarks/{name}.py: no docstring"
    source = (BENCH / f"{name}.py").read_text()
    if "__main__" not in source:
        assert f"from {name} import" in doc, f"benchmarks/{name}.py: no usage shown"
        return
    commands = _usage(doc, name)
    assert commands, f"benchmarks/{name}.py: the docstring shows no `python benchmarks/{name}.py`"
    shown = set(re.findall(r"(?<![\w-])--[a-z][\w-]*", " ".join(commands)))
    assert shown <= _options(source), f"benchmarks/{name}.py: unknown {shown - _options(source)}"


# ---------------------------------------------------------------- the params each one builds


def _variant(cfg: Config, name: str):
    return cfg.student.variant(name)


def _byot(m, tmp: Path) -> list[Config]:
    example = parse_config(m.digits_params(tmp))
    variant = next(iter(example.student.variants))
    seeded = parse_config(m.digits_params(tmp, variant, 7))
    assert _variant(seeded, variant).train.seed == 7
    return [parse_config(m.throughput_params()), example, seeded]


def _distributed(m, tmp: Path) -> list[Config]:
    out = [parse_config(m.stage_params(BASE, v, n, 1, quick=True))
           for v in BASE["student"]["variants"] for n in (1, 2)]
    for cfg, v in zip(out[::2], BASE["student"]["variants"], strict=True):
        assert _variant(cfg, v).train.epochs == 3  # the variant's own epochs, if any, too
    assert out[1].runtime.nproc == 2
    return out


def _frontier(m, tmp: Path) -> list[Config]:
    names = list(BASE["student"]["variants"])
    cfg = parse_config(m.seed_params(BASE, names, 5))
    assert {_variant(cfg, v).train.seed for v in names} == {5}
    return [cfg]


def _gpu(m, tmp: Path) -> list[Config]:
    out = []
    for v in BASE["student"]["variants"]:
        cfg = parse_config(m.short_params(BASE, v, 3, 2, 500))
        assert _variant(cfg, v).train.epochs == 2
        assert [cfg.teacher.member(n).train.epochs for n in cfg.teacher.members] == [3]
        out.append(cfg)
    return out


def _batchnorm(m, tmp: Path) -> list[Config]:
    cfg = parse_config(m.member_params(BASE, 1, False, epochs=2))
    member = cfg.teacher.member("m")
    assert (member.knobs["batchnorm"], member.train.seed, member.train.epochs) == (False, 1, 2)
    return [cfg]


def _munge(m, tmp: Path) -> list[Config]:  # benchmarks/munge.py's own builder
    from types import SimpleNamespace

    return [parse_config(m.params(kind, {"source": "digits"}, 0,
                                  SimpleNamespace(members=2, student=student)))
            for kind in ("digits", "tabular") for student in ("cnn2d", "mlp16")]


def _soft_tree(m, tmp: Path) -> list[Config]:  # the digits pipeline's module-level params
    return [parse_config(m.DIGITS)]


def _hinton(m, tmp: Path) -> list[Config]:  # the paper's experiments as variants
    out = []
    for quick in (True, False):
        p = m.params(quick)
        p["student"]["variants"] = m.experiments([3, 8], 0.03, 40, 20.0, 40)
        cfg = parse_config(p)
        assert cfg.student.variant("omit_3").omit == [3]
        assert cfg.student.variant("omit_8").temperature == 20.0
        assert cfg.student.variant("fraction_hard").is_control
        assert not cfg.student.variant("combine_random_member").is_control
        assert cfg.student.variant("omit_3").train.epochs == 40
        varied = parse_config(deep_merge(m.member_params(quick),
                                         {"student": {"variants": {"member_sized": {}}}}))  # the member-sized student's pipeline
        assert len(varied.teacher.members) == m.VARIED["count"]
        assert varied.student.variant("member_sized").arch == varied.teacher.member("m0").arch
        out += [cfg, varied]
    return out


def _views(m, tmp: Path) -> list[Config]:  # benchmarks/views.py's own builder, both targets
    from types import SimpleNamespace

    out = []
    for target in ("mnist1d", "digits"):
        args = SimpleNamespace(target=target, members=2, teacher_epochs=3, student_epochs=4,
                               unlabeled=500, views=3, shift=2, noise=0.0, mixup=0.4)
        cfg = parse_config(m.raw_params(args, 1))
        assert (cfg.export.views, cfg.export.mixup, cfg.export.seed) == (3, 0.4, 1)
        assert cfg.student.variant(m.VARIANT).train.epochs == 4
        out.append(cfg)
    return out


def _views_default(m, tmp: Path) -> list[Config]:  # every arm, and the online arm's params
    from types import SimpleNamespace

    args = SimpleNamespace(members=5, teacher_epochs=0, unlabeled=40_000, views=4, shift=6)
    out = []
    for arm, (_, variant) in m.ARMS.items():
        cfg = parse_config(m.raw_params(args, 2, None, **variant))
        st = cfg.student.variant(m.VARIANT)
        assert (st.train.seed, st.train.epochs, st.knobs["channels"]) == (2, 60, 8), arm
        assert (st.views, cfg.export.views, len(cfg.teacher.members)) == (
            variant["views"], 4, 5)
        assert cfg.data.unlabeled_size == 40_000 and cfg.teacher.defaults["train"]["epochs"] == 80
        out.append(cfg)
    return out


def _topk_scale(m, tmp: Path) -> list[Config]:  # top-k and the dense export beside it
    out = [parse_config(m.params(200_000)), parse_config(m.params(200_000, None))]
    assert (out[0].export.top_k, out[1].export.top_k) == (8, None)
    return out


BUILDERS = {"byot": _byot, "hinton": _hinton, "distributed": _distributed, "frontier": _frontier,
            "gpu": _gpu, "batchnorm": _batchnorm, "munge": _munge, "soft_tree": _soft_tree,
            "views": _views, "views_default": _views_default, "topk_scale": _topk_scale}
# scripts that build no params of their own: why
AS_IS = {"chosen": "a helper: which variant a script measures",
         "deploy": "params.yaml as it is", "export": "params.yaml as it is",
         "student": "params.yaml as it is", "teacher": "params.yaml (or --params) as it is",
         "exp_queue": "dvc exp run -S on the repository's params.yaml",
         "threads": "TrainConfig only, no params", "transformer": "TrainConfig only, no params",
         "topk": "DataConfig only, no params",
         "int8_bits": "the deployed fp32 file and the prepared data as they are",
         "exp_show_width": "tests/test_report.py's TINY on the project's params.yaml"}


def test_every_script_is_covered():
    assert sorted([*BUILDERS, *AS_IS]) == SCRIPTS


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_the_params_a_script_builds_validate(name, tmp_path):
    configs = BUILDERS[name](load(name), tmp_path)
    assert configs and all(isinstance(c, Config) for c in configs)


# ------------------------------------------------------------- what the scripts call and read


def _config_chains(tree: ast.AST):
    """(line, ['student', 'variant']) for every `cfg.student.variant`-like attribute chain."""
    inner = {id(n.value) for n in ast.walk(tree)
             if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Attribute)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and id(node) not in inner:
            parts, x = [], node
            while isinstance(x, ast.Attribute):
                parts.append(x.attr)
                x = x.value
            if isinstance(x, ast.Name) and x.id in CONFIG_NAMES:
                yield node.lineno, x.id, parts[::-1]


def _missing(chain: list[str]) -> str | None:
    """The first part of `chain` that Config does not have; None when it resolves (or leaves
    the typed sections: a dict of knobs, a method's result)."""
    cls: object = Config
    for i, name in enumerate(chain):
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)):
            return None
        if name in cls.model_fields:
            cls = cls.model_fields[name].annotation
        elif hasattr(cls, name):
            return None
        else:
            return ".".join(chain[: i + 1])
    return None


def _project_imports(tree: ast.AST) -> dict[str, tuple[str, object]]:
    """local name -> (where, object) for every `from kd... / stages... import name [as local]`
    (a stage module, a function, a class); a name the module lacks is (where, None)."""
    out = {}
    for n in ast.walk(tree):
        if isinstance(n, ast.ImportFrom) and (n.module or "").split(".")[0] in ("kd", "stages"):
            module = importlib.import_module(n.module)
            for a in n.names:
                obj = getattr(module, a.name, None)
                if obj is None:  # a submodule not imported by its package yet
                    with contextlib.suppress(ImportError):
                        obj = importlib.import_module(f"{n.module}.{a.name}")
                out[a.asname or a.name] = (f"{n.module}.{a.name}", obj)
    return out


def _binds(fn, call: ast.Call) -> str | None:
    """Why `call`'s arguments do not fit `fn`'s signature; None when they do (or cannot be
    counted: *args, **kwargs, a signature inspect cannot read)."""
    if any(isinstance(a, ast.Starred) for a in call.args) or any(k.arg is None
                                                                 for k in call.keywords):
        return None
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    try:
        sig.bind(*[None] * len(call.args), **{k.arg: None for k in call.keywords})
    except TypeError as e:
        return str(e)
    return None


def problems(source: str, filename: str = "<src>") -> list[str]:
    tree = ast.parse(source, filename)
    out = [f"{filename}:{line}: {root}.{'.'.join(chain)}: Config has no {bad}"
           for line, root, chain in _config_chains(tree) if (bad := _missing(chain))]
    imported = _project_imports(tree)
    out += [f"{filename}: imports {where}, which does not exist"
            for where, obj in imported.values() if obj is None]

    def module(node: ast.AST):  # the imported module `node` names (`export` in export.run)
        if isinstance(node, ast.Name) and inspect.ismodule(imported.get(node.id, ("", 0))[1]):
            return imported[node.id]
        return None

    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and (m := module(node.value)):
            if not hasattr(m[1], node.attr):
                out.append(f"{filename}:{node.lineno}: {m[0]}.{node.attr} does not exist")
        if not isinstance(node, ast.Call):
            continue
        f, what, fn = node.func, "", None
        if isinstance(f, ast.Name) and f.id in imported:
            what, fn = imported[f.id]
        elif isinstance(f, ast.Attribute) and (m := module(f.value)):
            what, fn = f"{m[0]}.{f.attr}", getattr(m[1], f.attr, None)
        if callable(fn) and (why := _binds(fn, node)):
            out.append(f"{filename}:{node.lineno}: {what}(...): {why}")
    return out


@pytest.mark.parametrize("name", SCRIPTS)
def test_scripts_read_what_exists_and_call_what_they_import_as_it_is(name):
    path = BENCH / f"{name}.py"
    assert problems(path.read_text(), str(path.relative_to(ROOT))) == []


@pytest.mark.parametrize("source, expected", [
    ("cfg.student.combine", "Config has no student.combine"),
    ("c.student.train.batch_size", "Config has no student.train"),
    ("cfg.baseline_train()", "Config has no baseline_train"),
    ("from stages import student\nstudent.run(cfg)", "missing a required argument: 'variant'"),
    ("from stages import baseline as b\nb.run(cfg, 'v', x=1)", "unexpected keyword argument 'x'"),
    ("from stages import export\nexport.member_logits(m, x, s)", "stages.export.member_logits does not exist"),
    ("from kd.train.student import distill_job\ndistill_job(cfg, shards, prepared)", "missing a required argument: 'prepared'"),
    ("from kd.config import baseline_train", "imports kd.config.baseline_train, which does not exist"),
])
def test_a_stale_read_or_call_is_caught(source, expected):
    found = problems(source)
    assert len(found) == 1 and expected in found[0]


def test_resolving_reads_pass():
    assert problems("cfg.student.variant('v').train\ncfg0.teacher.members\nc.model_copy()\n"
                    "from stages import student\nstudent.run(cfg, 'v', shards=s)\n"
                    "from stages.export import run as export\nexport(cfg, dist=d)\n"
                    "from kd.train.student import distill_job\ndistill_job(cfg, v, s, p)") == []


def test_a_script_measures_the_named_the_chosen_or_the_first_variant(tmp_path):
    which = load("chosen").which_variant
    cfg = parse_config(BASE)
    first = next(iter(cfg.student.variants))
    assert which(cfg, tmp_path, "tiny")["variant"] == "tiny"
    with pytest.raises(SystemExit, match="^--variant: student.variants: no variant named 'x'"):
        which(cfg, tmp_path, "x")
    got = which(cfg, tmp_path)  # no report, no students: nothing was chosen
    assert got["variant"] == first and "first of student.variants" in got["source"]
    (tmp_path / "report").mkdir()
    (tmp_path / "report/metrics.json").write_text('{"chosen_variant": "tiny"}')
    assert which(cfg, tmp_path) == {"variant": "tiny",
                                    "source": f"chosen_variant of {tmp_path}/report/metrics.json"}
    (tmp_path / "report/metrics.json").write_text('{"chosen_variant": "gone"}')  # stale report
    assert which(cfg, tmp_path)["variant"] == first


def test_hinton_eval_rows_are_a_fresh_draw_prepared_as_the_transfer_set_is(tmp_path):
    """benchmarks/hinton.py --eval-rows: the rows prepare would write for a transfer set drawn at
    that seed (so: the pipeline's distribution and normalisation), a class in ten each, refused
    at the pipeline's own seeds or when a row equals a prepared one."""
    import numpy as np

    from kd.prepared import read_split
    from stages.prepare import run as prepare_run

    m = load("hinton")
    out = tmp_path / "prepared"
    prepare_run(parse_config({"data": {"unlabeled_size": 50, "unlabeled_seed": m.EVAL_SEED},
                              "tracking": {"enabled": False}}), out)
    with pytest.raises(SystemExit, match=f"--eval-seed {m.EVAL_SEED}: 50 of its rows"):
        m.eval_rows(50, m.EVAL_SEED, 1, out)  # exactly the prepared transfer rows
    x, y = m.eval_rows(50, 7, m.EVAL_SEED, out)
    assert x.shape == (50, 40) and x.dtype == np.float32
    assert np.bincount(y).tolist() == [5] * 10
    assert not np.allclose(x, read_split(out, "unlabeled")[0].x)  # another draw
    for bad, msg in ((42, "--eval-seed: 42"), (m.EVAL_SEED, "transfer set 2015")):
        with pytest.raises(SystemExit, match=msg):
            m.eval_rows(50, bad, m.EVAL_SEED, out)
    with pytest.raises(SystemExit, match="--eval-rows: 55"):
        m.eval_rows(55, 7, 1, out)
