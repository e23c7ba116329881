"""The documentation cannot drift from the code: the param reference lists exactly the keys the
schema accepts, and every `kd` / `dvc` command and params key written in README.md and docs/
exists.

    pytest tests/test_docs.py          # fast: no site build (CI builds it: `mkdocs build --strict`)
"""

from __future__ import annotations

import importlib.util
import re
import shlex
from functools import cache
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
PLACEHOLDERS = {"teacher.members": "<member>", "teacher.imports": "<name>",
                "student.variants": "<variant>"}


@cache
def hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "docs" / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------ the schema, walked apart


@cache
def schema_keys() -> frozenset[str]:
    """Every key the params file accepts, from pydantic's JSON schema (not from the model
    classes the generator walks): a member's and a variant's keys are those of the settings
    they are validated as once merged with the defaults."""
    from kd.config import Config, ModelConfig, StudentConfig

    keys: set[str] = set()

    def walk(schema: dict, node: dict, prefix: str) -> None:
        node = resolve(schema, node)
        for name, sub in node.get("properties", {}).items():
            key = f"{prefix}.{name}" if prefix else name
            keys.add(key)
            inner = resolve(schema, sub)
            if "properties" in inner:
                walk(schema, inner, key)
            extra = inner.get("additionalProperties")
            if isinstance(extra, dict) and "properties" in resolve(schema, extra):
                walk(schema, extra, f"{key}.{PLACEHOLDERS[key]}")

    def resolve(schema: dict, node: dict) -> dict:
        for alt in node.get("anyOf", []):  # `X | None`: the X
            if alt.get("type") != "null":
                node = alt
        if "$ref" in node:
            return resolve(schema, schema["$defs"][node["$ref"].split("/")[-1]])
        return node

    walk(Config.model_json_schema(), Config.model_json_schema(), "")
    for prefix, model in (("teacher.defaults", ModelConfig),
                          ("teacher.members.<member>", ModelConfig),
                          ("student.defaults", StudentConfig),
                          ("student.variants.<variant>", StudentConfig)):
        schema = model.model_json_schema(by_alias=True)
        walk(schema, schema, prefix)
    return frozenset(keys)


@cache
def knob_names() -> frozenset[str]:
    import inspect

    from kd.models.registry import ARCHITECTURES

    return frozenset(p for cls in ARCHITECTURES.values()
                     for p in list(inspect.signature(cls.__init__).parameters)[3:])


def canonical(key: str) -> str | None:
    """`student.variants.small.train.epochs` -> `student.variants.<variant>.train.epochs`;
    None for a knob of a registered architecture (knobs are checked against the models)."""
    for mapping, placeholder in PLACEHOLDERS.items():
        if key.startswith(mapping + "."):
            rest = key[len(mapping) + 1:].split(".", 1)
            key = f"{mapping}.{placeholder}" + (f".{rest[1]}" if len(rest) > 1 else "")
    parts = key.split(".")
    if "knobs" in parts[:-1]:
        return None if parts[parts.index("knobs") + 1] in knob_names() else key
    return key


def key_is_known(key: str) -> bool:
    key = canonical(key)
    named = {f"{m}.{p}" for m, p in PLACEHOLDERS.items()}  # a member, import or variant itself
    return key is None or key in schema_keys() or key in named


# ------------------------------------------------------------------------- the param page


def reference_keys(markdown: str) -> set[str]:
    return set(re.findall(r"^\| `([^`]+)` \|", markdown, re.M))


def test_the_param_reference_lists_every_key_the_schema_accepts():
    page = hooks().render((ROOT / "docs/reference/params.md").read_text())
    table = page.split("## Architectures and their knobs")[0]
    assert reference_keys(table) == set(schema_keys())


def test_every_params_key_has_a_description_and_its_documented_default_validates():
    from kd.config import parse_config

    rows = hooks().param_rows()
    assert [r["key"] for r in rows if not r["description"]] == []
    # each leaf key, written into a params file with the default the page shows, is accepted
    for row in rows:
        default = row["default"].strip("`")
        if row["type"] in ("mapping",) or default in ("null", "required", "(section)"):
            continue
        key = row["key"].replace("<member>", "cnn_0").replace("<variant>", "main")
        if "<name>" in key:
            continue
        raw: dict = {}
        node = raw
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(default)
        parse_config(raw)


def test_a_key_the_schema_lacks_is_missing_from_the_page(monkeypatch):
    """The comparison can fail: a field the generator does not see is reported."""
    from kd.config import DeployConfig

    fields = dict(DeployConfig.model_fields)
    fields.pop("atol")
    monkeypatch.setattr(DeployConfig, "model_fields", fields)
    page = hooks().params_markdown()
    assert "deploy.atol" in schema_keys() - reference_keys(page)


def test_every_generated_block_renders():
    for page in PAGES:
        text = page.read_text()
        rendered = hooks().render(text)
        assert "<!-- kd:" not in rendered, page
    assert "| `kd check-params` |" in hooks().cli_markdown() or \
        "[`kd check-params`]" in hooks().cli_markdown()
    assert "**small** (chosen)" in hooks().frontier_markdown()
    with pytest.raises(ValueError, match="unknown docs marker"):
        hooks().render("<!-- kd:nothing -->")


# ---------------------------------------------------------- benchmark tables from results JSON

BENCH_TABLES = {  # page: the markers whose tables are rendered from benchmarks/results/*.json
    "hinton.md": ["<!-- kd:hinton -->"], "views.md": ["<!-- kd:views -->"],
    "many-classes.md": ["<!-- kd:topk bytes -->", "<!-- kd:topk students -->",
                        "<!-- kd:topk scale -->"],
    "students.md": ["<!-- kd:frontier -->"]}


def results(name: str) -> dict:
    import json

    return json.loads((ROOT / f"benchmarks/results/{name}.json").read_text())


def results_copy(tmp_path: Path, edit: dict[str, callable]) -> Path:
    """benchmarks/results/ copied to tmp_path, each named file's JSON passed through its edit."""
    import json
    import shutil

    for f in (ROOT / "benchmarks/results").glob("*.json"):
        shutil.copy(f, tmp_path / f.name)
    for name, fn in edit.items():
        path = tmp_path / f"{name}.json"
        data = json.loads(path.read_text())
        fn(data)
        path.write_text(json.dumps(data))
    return tmp_path


def test_the_pages_ask_for_their_benchmark_tables():
    for page, markers in BENCH_TABLES.items():
        text = (ROOT / "docs" / page).read_text()
        assert all(m in text.splitlines() for m in markers), page


def test_each_benchmark_table_shows_the_figures_of_its_results_file():
    h = hooks()
    hinton, ev = results("hinton"), results("hinton_member_eval_400k")["member_sized"]["eval"]
    page = h.hinton_markdown()
    assert f"**{100 * ev['gain_kept']['mean']:.0f}% [" in page  # the share kept, fresh rows
    assert f"{100 * ev['mean_member']:.1f}%" in page
    assert f"| {100 * hinton['paper']['member_sized_gain_kept']:.0f}% |" in page
    o = hinton["omit"]["8_default"]
    assert f"{100 * o['test_accuracy_omitted_corrected']['mean']:.1f}% [" in page
    assert f"**+{100 * hinton['fraction']['soft_minus_hard']['diff']:.1f} points" in page

    views = results("views-default")["arms"]
    page = h.views_markdown()
    for arm in views["arms"].values():
        t = arm["test_accuracy"]
        assert f"| {100 * t['mean']:.2f} ± {100 * t['std']:.2f} |" in page
    assert page.count("(control)") == 1

    wired = results("topk_wired")
    page = h.topk_markdown("bytes")
    assert f"| {wired['codecs']['top8_float16']['parquet_bytes_per_row']:.1f} |" in page
    assert "top8_float32" not in page and "top-8 float32" not in page  # float16 and dense only
    page = h.topk_markdown("students")
    for s in wired["students"].values():
        assert f"| {s['test_acc_mean']:.4f} |" in page and f"| {s['val_nll_mean']:.3f} |" in page
    scale = results("topk_scale")["sizes"]
    page = h.topk_markdown("scale")
    for size in scale.values():
        assert f"| {size['export_rows_per_s']:,.0f} |" in page
    with pytest.raises(ValueError, match="no table 'nothing'"):
        h.topk_markdown("nothing")


@pytest.mark.parametrize(("render", "name", "edit", "shown"), [
    (lambda h, r: h.hinton_markdown(r), "hinton_member_eval_400k",
     lambda d: d["member_sized"]["eval"]["gain_kept"].update(mean=0.6789), "**68% ["),
    (lambda h, r: h.hinton_markdown(r), "hinton",
     lambda d: d["omit"]["3"]["bias"].update(per_seed=[0.5, 0.3, 2.0]), "(bias +0.3 to +2.0)"),
    (lambda h, r: h.views_markdown(r), "views-default",
     lambda d: d["arms"]["arms"]["mixup_row"]["test_accuracy"].update(mean=0.91234),
     "| 91.23 ± 0.21 |"),
    (lambda h, r: h.topk_markdown("bytes", r), "topk_wired",
     lambda d: d["codecs"]["top8_float16"].update(parquet_bytes_per_row=4321.09), "| 4,321.1 |"),
    (lambda h, r: h.topk_markdown("students", r), "topk_wired",
     lambda d: d["students"]["top8-ghost"].update(val_nll_mean=9.8765), "| 9.877 |"),
    (lambda h, r: h.topk_markdown("scale", r), "topk_scale",
     lambda d: d["sizes"]["2000000"].update(ratio_same_run=0.5), "| 0.500 |"),
], ids=["hinton-share", "hinton-bias", "views", "topk-bytes", "topk-students", "topk-scale"])
def test_a_changed_results_file_changes_its_table(tmp_path, render, name, edit, shown):
    before = render(hooks(), None)
    after = render(hooks(), results_copy(tmp_path, {name: edit}))
    assert shown in after and shown not in before


@pytest.mark.parametrize(("marker", "name", "edit", "key"), [
    ("hinton", "hinton", lambda d: d["omit"].pop("8_default"), "omit.8_default"),
    ("hinton", "hinton_member_eval", lambda d: d["member_sized"].pop("eval"),
     "member_sized.eval"),
    ("views", "views-default", lambda d: d["arms"]["arms"]["mixup_row"].pop("val_accuracy"),
     "arms.arms.mixup_row.val_accuracy"),
    ("topk students", "topk_wired", lambda d: d["students"]["dense"].pop("val_nll_mean"),
     "students.dense.val_nll_mean"),
    ("topk scale", "topk_scale", lambda d: d["sizes"]["200000"].pop("export_maxrss_mb"),
     "sizes.200000.export_maxrss_mb"),
    ("frontier", "frontier", lambda d: d.pop("ensemble"), "ensemble"),
], ids=["hinton", "hinton-fresh-rows", "views", "topk-students", "topk-scale", "frontier"])
def test_a_missing_results_key_stops_the_build_with_one_line(tmp_path, monkeypatch, marker, name,
                                                             edit, key):
    import re
    from types import SimpleNamespace

    monkeypatch.setattr(hooks(), "RESULTS", results_copy(tmp_path, {name: edit}))
    page = SimpleNamespace(file=SimpleNamespace(src_uri="p.md"))
    with pytest.raises(ValueError) as e:
        hooks().on_page_markdown(f"text\n<!-- kd:{marker} -->\n", page, None, None)
    assert str(e.value) == (f"docs/p.md: <!-- kd:{marker} -->: {name}.json: no key {key} "
                            "(the docs' table reads it)"), str(e.value)
    assert re.fullmatch(r"[^\n]+", str(e.value))


# ----------------------------------------------------------------- commands in code blocks


def code_blocks(page: Path) -> list[tuple[str, str]]:
    return re.findall(r"^```(\w*)\n(.*?)^```", page.read_text(), re.S | re.M)


def shell_lines(page: Path) -> list[tuple[str, bool]]:
    """The lines of a page's shell code blocks (whole command lines: True), and its inline code
    spans that start with `kd ` or `dvc ` (False: they may name a command without its
    arguments, `[...]` marks what is optional)."""
    text = page.read_text()
    lines = [(ln, True) for lang, body in code_blocks(page) if lang in ("", "bash", "sh", "console")
             for ln in body.replace("\\\n", " ").splitlines()]
    prose = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    spans = re.findall(r"(?<!`)`((?:kd|dvc) [^`<]+)`(?!`)", prose.replace("\n", " "))
    return lines + [(re.sub(r"[\[\]]", "", s), False) for s in spans]


def commands(page: Path) -> list[tuple[list[str], bool]]:
    """The `kd ...` and `dvc ...` command lines written in a page, as (argv, whole line)."""
    out = []
    for line, whole in shell_lines(page):
        try:
            words = shlex.split(re.sub(r"^\$ ", "", line.strip()), comments=True)
        except ValueError:
            continue
        cmd: list[str] = []  # one shell line may chain several commands
        for w in [*words, "&&"]:
            if w in ("&&", "||", ";", "|"):
                if cmd and cmd[0] in ("kd", "dvc"):
                    out.append((cmd, whole))
                elif "-m" in cmd and cmd[cmd.index("-m") + 1:][:1] == ["kd.cli"]:
                    out.append((["kd", *cmd[cmd.index("-m") + 2:]], whole))  # torchrun -m kd.cli
                cmd = []
            elif cmd or not re.fullmatch(r"[A-Z_]+=\S*", w):  # not an env assignment
                cmd.append(w)
    return out


def kd_problem(argv: list[str], whole: bool = True) -> str | None:
    """What click says of a `kd` command line; `whole=False`: only that the commands and the
    options it names exist (arguments may be left out or written as placeholders)."""
    import click

    from kd.cli import cli

    cmd: click.Command = cli
    args, path = argv[1:], ["kd"]
    try:
        while isinstance(cmd, click.Group):
            if not args or args[0].startswith("-"):
                if whole and args[:1] not in (["--help"], ["-h"], ["--version"]):
                    return f"{' '.join(path)}: no command"
                return None
            name, sub, args = cmd.resolve_command(click.Context(cmd), args)
            cmd, path = sub, [*path, name]
        if whole:
            cmd.make_context(" ".join(path), list(args), resilient_parsing=False)
        else:
            known = {o for p in cmd.params for o in [*p.opts, *p.secondary_opts]} | {"--help"}
            if bad := [a for a in args if a.startswith("-") and a.split("=")[0] not in known]:
                return f"{' '.join(argv)}: no option {bad[0]}"
    except click.ClickException as e:
        return f"{' '.join(argv)}: {e.format_message()}"
    return None


def dvc_problem(argv: list[str]) -> str | None:
    """What dvc's own argument parser says of the command line (it runs nothing)."""
    import logging

    from dvc.cli import parse_args

    log = logging.getLogger("dvc")
    log.disabled = True  # the parser logs its complaint before raising
    try:
        parse_args(argv[1:])
    except (SystemExit, Exception) as e:  # DvcParserError, or argparse's exit
        return f"{' '.join(argv)}: dvc refuses it ({type(e).__name__})"
    finally:
        log.disabled = False
    return None


def set_params(argv: list[str]) -> list[str]:
    """The keys of a `dvc exp run -S key=value` (also `--set-param`, Hydra's `+`/`++`/`~`)."""
    keys = []
    for flag, value in zip(argv, argv[1:], strict=False):
        if flag in ("-S", "--set-param"):
            key = value.split("=", 1)[0].lstrip("+~")
            if "." in key:  # not a placeholder such as `-S key=value`
                keys.append(key)
    return keys


def documented_commands() -> list[tuple[str, list[str], bool]]:
    return [(page.relative_to(ROOT).as_posix(), argv, whole) for page in PAGES
            for argv, whole in commands(page)]


def test_the_pages_hold_kd_and_dvc_commands():
    found = documented_commands()
    assert sum(argv[0] == "kd" and whole for _, argv, whole in found) >= 8
    assert sum(argv[0] == "dvc" and whole for _, argv, whole in found) > 20
    assert sum(not whole for _, _, whole in found) > 20  # inline spans


def test_every_documented_command_names_real_commands_options_and_params(capsys):
    problems = []
    for page, argv, whole in documented_commands():
        problem = kd_problem(argv, whole) if argv[0] == "kd" else dvc_problem(argv)
        if problem:
            problems.append(f"{page}: {problem}")
        problems += [f"{page}: {' '.join(argv)}: no params key {k!r}"
                     for k in set_params(argv) if not key_is_known(k)]
    capsys.readouterr()  # argparse's usage lines
    assert problems == []


def test_every_params_key_in_a_yaml_block_exists():
    from kd.config import Config

    sections = set(Config.model_fields)
    problems = []

    def walk(node: dict, prefix: str, page: str) -> None:
        for k, v in node.items():
            if k == "..." or k is None:
                continue
            key = f"{prefix}.{k}" if prefix else str(k)
            if not key_is_known(key):
                problems.append(f"{page}: {key}")
            elif isinstance(v, dict) and canonical(key) is not None:
                walk(v, key, page)

    for page in PAGES:
        for lang, body in code_blocks(page):
            if lang != "yaml":
                continue
            try:
                data = yaml.safe_load(body)
            except yaml.YAMLError:
                continue
            if isinstance(data, dict) and data and set(data) <= sections:
                walk(data, "", page.relative_to(ROOT).as_posix())
    assert problems == []


def test_the_checks_catch_a_renamed_key_or_option():
    """What a stale example looks like to the checks above."""
    assert not key_is_known("student.defaults.temprature")
    assert not key_is_known("student.variants.small.train.epoch")
    assert key_is_known("student.variants.small.train.epochs")
    assert key_is_known("student.defaults.knobs.channels")
    assert not key_is_known("student.defaults.knobs.chanels")
    assert kd_problem(["kd", "studnet", "medium"])
    assert kd_problem(["kd", "predict", "--modle", "m.onnx", "a", "b"])
    assert kd_problem(["kd", "shards", "show", "d"]) is None
    assert dvc_problem(["dvc", "exp", "shwo"])
    assert dvc_problem(["dvc", "exp", "run", "--no-such-option"])
    assert dvc_problem(["dvc", "exp", "run", "-S", "student.defaults.temperature=8"]) is None
    assert set_params(["dvc", "exp", "run", "-S", "'++a.b=1'".strip("'")]) == ["a.b"]


# -------------------------------------------------------------------------------- README


def test_the_readme_is_short_and_its_commands_are_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    ci = (ROOT / ".ci/run").read_text()
    test_cmd = next(ln for ln in readme.splitlines() if ln.endswith('-e ".[dev]" && pytest'))
    assert test_cmd in ci
    run_cmd = next(ln for ln in readme.splitlines() if ln.endswith("-e . && dvc repro"))
    assert run_cmd.replace("-e . && dvc repro", "") in test_cmd  # the same install step
    for link in re.findall(r"\]\((docs/[^)#]+)", readme):
        assert (ROOT / link).exists(), link


def test_the_readme_headline_matches_the_frontier_results():
    """The README's three-seed columns are benchmarks/results/frontier.json's figures."""
    import json

    res = json.loads((ROOT / "benchmarks/results/frontier.json").read_text())
    readme = (ROOT / "README.md").read_text()
    for name in ("medium", "small"):
        v = res["variants"][name]
        for arm, key in (("student", "test_accuracy"), ("student", "val_accuracy"),
                         ("baseline", "test_accuracy")):
            s = v[arm][key]
            figure = f"{100 * s['mean']:.2f}% ± {100 * s['std']:.2f}"
            assert figure in readme, (name, arm, key, figure)


def test_every_params_key_named_in_the_text_exists():
    """Inline code such as `student.defaults.temperature` or `'++student.variants.small.alpha=2'`
    names a key of the schema (or a knob, or a name you choose). The prefixes that metrics keys
    (`student.accuracy`), file names (`report.md`) and error ids share are left out."""
    prefixes = ("data", "teacher.defaults", "teacher.members", "teacher.imports", "transfer",
                "export", "student.defaults", "student.variants", "runtime", "deploy",
                "tracking", "baseline.augment", "baseline.epochs", "report.retain_target")
    span = re.compile(rf"^'?\+*((?:{'|'.join(map(re.escape, prefixes))})(?:\.[\w<>-]+)*)"
                      r"(?:=[^`]*)?'?$")
    not_keys = {"export.manifest"}  # a failpoint (docs/development.md)
    problems = []
    for page in PAGES:
        if page.name == "errors.md":  # case ids, not keys
            continue
        prose = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)
        for code in re.findall(r"(?<!`)`([^`\n]+)`(?!`)", prose):
            m = span.match(code.strip())
            if m and m.group(1) not in not_keys and not key_is_known(m.group(1)):
                problems.append(f"{page.relative_to(ROOT)}: {code}")
    assert problems == []


@pytest.mark.slow
def test_the_site_builds_strict(tmp_path):
    """What .ci/run also does: a broken link, a page missing from the nav's files or a generated
    block that fails stops the build (~5 s)."""
    import os
    import subprocess
    import sys

    pytest.importorskip("mkdocs")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                           str(tmp_path / "site")], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    params = (tmp_path / "site/reference/params/index.html").read_text()
    assert "student.variants.&lt;variant&gt;.temperature" in params
