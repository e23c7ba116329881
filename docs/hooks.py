"""The documentation's generated parts, written from the code at build time so they cannot drift.

    mkdocs build --strict        # mkdocs.yml names this file under `hooks:`

A page asks for a generated block with a marker on a line of its own:

    <!-- kd:params -->            every params key: type, default, range, description (pydantic)
    <!-- kd:params data -->       the keys of one section only
    <!-- kd:knobs -->             every registered architecture's knobs (constructor signatures)
    <!-- kd:cli -->               every `kd` command, argument and option (click)
    <!-- kd:frontier -->          the student variants over seeds (benchmarks/results/frontier.json)

The functions are plain (markdown in, markdown out), so tests/test_docs.py checks them without
building the site.
"""

from __future__ import annotations

import functools
import inspect
import json
import operator
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # mkdocs runs from the repository root, but say so
    sys.path.insert(0, str(ROOT))

MARKER = re.compile(r"^<!-- kd:(\w+)(?: ([\w.]+))? -->$", re.M)

# ---------------------------------------------------------------------------------- params

# Mappings whose values are validated as a model once the file is whole: a member's or a
# variant's settings are the section's defaults with its own on top (kd/config/student.py, kd/config/sections.py).
# Their keys are written `<member>`, `<variant>`, `<name>` in the reference.
PLACEHOLDER = {("teacher", "members"): "<member>", ("teacher", "imports"): "<name>",
               ("student", "variants"): "<variant>"}


def _merged_models() -> dict[tuple[str, ...], type]:
    from kd.config import ModelConfig, StudentConfig

    return {("teacher", "defaults"): ModelConfig, ("teacher", "members", "<member>"): ModelConfig,
            ("student", "defaults"): StudentConfig,
            ("student", "variants", "<variant>"): StudentConfig}


def _is_model(tp: Any) -> bool:
    from pydantic import BaseModel

    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) < len(typing.get_args(tp)):
            return (args[0] if len(args) == 1 else functools.reduce(operator.or_, args)), True
    return tp, False


def _type_name(tp: Any) -> str:
    tp, optional = _strip_optional(tp)
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        name = _type_name(typing.get_args(tp)[0])
    elif origin is Literal:
        name = "one of " + ", ".join(f"`{a}`" for a in typing.get_args(tp))
    elif origin in (list, tuple):
        name = f"list of {_type_name(typing.get_args(tp)[0])}"
    elif origin is dict:
        name = "mapping"
    elif origin in (typing.Union, types.UnionType):
        name = " or ".join(_type_name(a) for a in typing.get_args(tp))
    elif _is_model(tp):
        name = "mapping"
    elif tp is typing.Any:
        name = "any"
    else:
        name = {int: "integer", float: "number", bool: "true/false", str: "string"}.get(
            tp, getattr(tp, "__name__", str(tp)))
    return f"{name} or null" if optional else name


def _range(metadata: list, tp: Any) -> str:
    """The bounds pydantic checks, as written in kd/config (`Field(gt=0, le=10)`)."""
    parts = []
    items = list(metadata)
    tp, _ = _strip_optional(tp)
    if typing.get_origin(tp) is typing.Annotated:
        for m in typing.get_args(tp)[1:]:
            items += list(getattr(m, "metadata", [])) or [m]
    for m in items:
        for attr, sym in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
            v = getattr(m, attr, None)
            if v is not None:
                parts.append(f"{sym} {v:g}" if isinstance(v, float) else f"{sym} {v}")
        if getattr(m, "min_length", None) is not None:
            parts.append(f"at least {m.min_length} item" + ("s" if m.min_length > 1 else ""))
    return ", ".join(parts)


def _default(field: Any) -> str:
    from pydantic_core import PydanticUndefined

    if field.default is PydanticUndefined and field.default_factory is None:
        return "required"
    value = field.get_default(call_default_factory=True)
    if _is_model(type(value)):
        return "(section)"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if value is None:
        return "null"
    return f"`{json.dumps(value)}`" if isinstance(value, dict | list) else f"`{value}`"


def param_rows(model: type | None = None, prefix: tuple[str, ...] = ()) -> list[dict]:
    """Every key of `model` (default: the whole params file), depth first, one dict a key:
    `key` (dotted, with <member>/<variant>/<name> for names you choose), `type`, `default`,
    `range`, `description`."""
    from kd.config import Config

    model = model or Config
    rows = []
    for name, field in model.model_fields.items():
        key = field.alias or name
        path = (*prefix, key)
        tp, _ = _strip_optional(field.annotation)
        rows.append({"key": ".".join(path), "type": _type_name(field.annotation),
                     "default": _default(field), "range": _range(field.metadata, field.annotation),
                     "description": (field.description or "").strip()})
        if _is_model(tp):
            rows += param_rows(tp, path)
        elif path in PLACEHOLDER:
            item = (*path, PLACEHOLDER[path])
            value_tp = _strip_optional(typing.get_args(tp)[1])[0]
            inner = _merged_models().get(item) or (value_tp if _is_model(value_tp) else None)
            if inner is not None:
                rows += param_rows(inner, item)
        if path in _merged_models():
            rows += param_rows(_merged_models()[path], path)
    return rows


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def params_markdown(section: str | None = None) -> str:
    rows = param_rows()
    if section:
        rows = [r for r in rows if r["key"].split(".")[0] == section]
        if not rows:
            raise ValueError(f"kd:params: no params section {section!r}")
    out = ["| key | type | default | range | description |", "| --- | --- | --- | --- | --- |"]
    for r in rows:
        out.append(f"| `{r['key']}` | {_cell(r['type'])} | {_cell(r['default'])} | "
                   f"{_cell(r['range'])} | {_cell(r['description'])} |")
    return "\n".join(out)


def knobs_markdown() -> str:
    from kd.models.registry import ARCHITECTURES

    out = ["| arch | knob | default |", "| --- | --- | --- |"]
    for arch, cls in sorted(ARCHITECTURES.items()):
        params = list(inspect.signature(cls.__init__).parameters.values())[3:]  # self, shape, C
        for p in params:
            if p.kind is p.KEYWORD_ONLY or p.kind is p.POSITIONAL_OR_KEYWORD:
                default = json.dumps(p.default) if isinstance(p.default, bool | None) else \
                    repr(p.default).strip("'")
                out.append(f"| `{arch}` | `{p.name}` | `{default}` |")
    return "\n".join(out)


# ------------------------------------------------------------------------------------- cli


def cli_commands() -> list[tuple[str, Any]]:
    """Every `kd` command as (`kd a b`, click command), groups included, in help order."""
    import click

    from kd.cli import cli

    out = []

    def walk(cmd: click.Command, path: str) -> None:
        out.append((path, cmd))
        if isinstance(cmd, click.Group):
            for name in cmd.list_commands(click.Context(cmd)):
                walk(cmd.commands[name], f"{path} {name}")

    walk(cli, "kd")
    return out


def cli_markdown() -> str:
    import click

    commands = [(path, cmd) for path, cmd in cli_commands() if path != "kd"]
    out = ["| command | what it does |", "| --- | --- |"]
    out += [f"| [`{path}`](#{path.replace(' ', '-')}) | {_cell(cmd.get_short_help_str(200))} |"
            for path, cmd in commands]
    out.append("")
    for path, cmd in commands:
        ctx = click.Context(cmd, info_name=path)
        out += [f"### `{path}`", "", "```", cmd.get_usage(ctx).strip(), "```", "",
                inspect.cleandoc(cmd.help or "").replace("\n\n", "\n\n"), ""]
        rows = []
        for p in cmd.params:
            if isinstance(p, click.Argument):
                what = f"`{p.human_readable_name}`"
                helptext = "argument" + ("" if p.required else f", default `{p.default}`")
            else:
                if p.hidden:
                    continue
                what = ", ".join(f"`{o}`" for o in [*p.opts, *p.secondary_opts])
                record = p.get_help_record(ctx)
                helptext = record[1] if record else ""
            rows.append(f"| {what} | {_cell(helptext)} |")
        if rows:
            out += ["| argument / option | meaning |", "| --- | --- |", *rows, ""]
    return "\n".join(out).rstrip()


# -------------------------------------------------------------------------------- benchmarks


def _pct(stat: dict) -> str:
    return f"{100 * stat['mean']:.2f} ± {100 * stat['std']:.2f}"


def frontier_markdown(path: Path | None = None) -> str:
    """benchmarks/frontier.py's table: every variant of params.yaml over seeds, smallest first,
    controls last, the chosen one in bold."""
    from kd.config import load_config

    res = json.loads((path or ROOT / "benchmarks/results/frontier.json").read_text())
    cfg = load_config(ROOT / "params.yaml")
    chosen = res["chosen"]["variant"]

    def control(name: str) -> bool:
        return name in cfg.student.variants and cfg.student.variant(name).is_control

    names = sorted(res["variants"], key=lambda n: (control(n), res["variants"][n]["params"]))
    out = ["| variant | params | fewer | val accuracy | test accuracy | baseline test | "
           "student - baseline (wins) | test kept |", "|---|---|---|---|---|---|---|---|"]
    for n in names:
        v = res["variants"][n]
        d = v["student_minus_baseline"]
        name = f"**{n}** (chosen)" if n == chosen else n + (" (control)" if control(n) else "")
        test = _pct(v["student"]["test_accuracy"])
        kept = f"{v['test_retained']:.3f}"
        if n == chosen:
            test, kept = f"**{test}**", f"**{kept}**"
        out.append(f"| {name} | {v['params']:,} | {v['fewer']:.0f}x | "
                   f"{_pct(v['student']['val_accuracy'])} | {test} | "
                   f"{_pct(v['baseline']['test_accuracy'])} | "
                   f"{100 * d['mean']:+.2f} ± {100 * d['std']:.2f} "
                   f"({d['wins']}/{len(d['per_seed'])}) | {kept} |")
    seeds = ", ".join(map(str, res["seeds"]))
    e = res["ensemble"]
    out += ["", f"(mean ± sd over seeds {seeds}; the ensemble: {e['params']:,} parameters, "
            f"{100 * e['test_accuracy']:.2f}% test, {100 * e['val_accuracy']:.2f}% validation; "
            f"\"kept\": mean test accuracy over the ensemble's. Chosen: {res['chosen']['reason']}. "
            "Rendered from `benchmarks/results/frontier.json` when the site is built.)"]
    return "\n".join(out)


# which page discusses each results file (by the file's stem up to its first '-')
RESULTS_PAGES = {
    "byot": "own-teacher.md", "deploy": "deploying.md",
    "distributed": "distributed.md", "exp_queue": "students.md", "export": "distributed.md",
    "frontier": "students.md", "hinton": "hinton.md", "int8_bits": "deploying.md",
    "munge": "munge.md", "soft_tree": "soft-tree.md",
    "teacher": "munge.md", "threads": "configuring.md",
    "topk": "many-classes.md", "transformer": "transformers.md", "views": "views.md",
}


def results_markdown() -> str:
    """Every file in benchmarks/results/, the script that wrote it and the page on its figures."""
    out = ["| results file | written by | figures discussed in |", "| --- | --- | --- |"]
    for f in sorted((ROOT / "benchmarks/results").glob("*.json")):
        stem = f.stem.split("-")[0]
        script = f"`benchmarks/{stem}.py`" if (ROOT / f"benchmarks/{stem}.py").exists() else ""
        page = RESULTS_PAGES.get(stem)
        where = f"[{page.removesuffix('.md')}]({page})" if page else "not yet on a page"
        out.append(f"| `{f.relative_to(ROOT)}` | {script} | {where} |")
    return "\n".join(out)


# ------------------------------------------------------------------------------------ hook

GENERATORS = {"params": params_markdown, "knobs": knobs_markdown, "cli": cli_markdown,
              "frontier": frontier_markdown, "results": results_markdown}


def render(markdown: str) -> str:
    """The page with every marker replaced by its generated block."""

    def one(m: re.Match) -> str:
        name, arg = m.group(1), m.group(2)
        if name not in GENERATORS:
            raise ValueError(f"unknown docs marker kd:{name}")
        return GENERATORS[name](arg) if arg else GENERATORS[name]()

    return MARKER.sub(one, markdown)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    return render(markdown)
