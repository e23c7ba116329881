"""The documentation's generated parts, written from the code at build time so they cannot drift.

    mkdocs build --strict        # mkdocs.yml names this file under `hooks:`

A page asks for a generated block with a marker on a line of its own:

    <!-- kd:params -->            every params key: type, default, range, description (pydantic)
    <!-- kd:params data -->       the keys of one section only
    <!-- kd:knobs -->             every registered architecture's knobs (constructor signatures)
    <!-- kd:cli -->               every `kd` command, argument and option (click)
    <!-- kd:frontier -->          the student variants over seeds (benchmarks/results/frontier.json)
    <!-- kd:hinton -->            the paper beside ours (hinton.json, hinton_member_eval*.json,
                                  hinton_members_*.json)
    <!-- kd:views -->             the default recipe's views arms (views-default.json)
    <!-- kd:topk bytes -->        top-k's bytes a row and its fidelity (topk_wired.json)
    <!-- kd:topk students -->     the students from dense and top-k targets (topk_wired.json)
    <!-- kd:topk scale -->        export at 200k and 2M rows (topk_scale.json)
    <!-- kd:results -->           every results file, its script and its page

A results file that lacks a key the table reads fails the build with one line naming the file
and the key.

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
# variant's settings are the section's defaults with its own on top (kd/config/student.py,
# kd/config/sections.py).
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

RESULTS = ROOT / "benchmarks/results"


class Results(dict):
    """A results file's JSON (or a part of it): a key it lacks is one line that names the file
    and the key's path, not a bare KeyError from deep inside a table."""

    def __init__(self, data: dict, file: str, path: tuple = ()):
        super().__init__(data)
        self.file, self.path = file, path

    def __getitem__(self, key: Any) -> Any:
        where = ".".join(map(str, (*self.path, key)))
        if key not in self:
            raise ValueError(f"{self.file}: no key {where} (the docs' table reads it)")
        value = super().__getitem__(key)
        return Results(value, self.file, (*self.path, key)) if isinstance(value, dict) else value


def load_results(name: str, results: Path | None = None) -> Results:
    """benchmarks/results/<name>.json (or <results>/<name>.json)."""
    path = (results or RESULTS) / f"{name}.json"
    if not path.exists():
        raise ValueError(f"{path}: no such results file (the docs' table reads it)")
    return Results(json.loads(path.read_text()), path.name)


def _pct(stat: dict) -> str:
    return f"{100 * stat['mean']:.2f} ± {100 * stat['std']:.2f}"


def _signed(x: float, digits: int) -> str:
    """+1.23 / -1.23, and 0.00 with no sign."""
    text = f"{x:+.{digits}f}"
    return text[1:] if float(text) == 0 else text


def frontier_markdown(path: Path | None = None) -> str:
    """benchmarks/frontier.py's table: every variant of params.yaml over seeds, smallest first,
    controls last, the chosen one in bold."""
    from kd.config import load_config

    path = path or RESULTS / "frontier.json"
    res = load_results(path.stem, path.parent)
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


def _rendered_from(*names: str) -> str:
    first, *rest = names
    files = ", ".join([f"`benchmarks/results/{first}.json`", *(f"`{n}.json`" for n in rest)])
    return f"\n(Rendered from {files} when the site is built.)"


def _seeds(seeds: list) -> str:
    """0 1 2, or 0-19 for a run of more than three."""
    run = list(range(seeds[0], seeds[0] + len(seeds)))
    if len(seeds) > 3 and list(seeds) == run:
        return f"{seeds[0]}-{seeds[-1]}"
    return " ".join(map(str, seeds))


def hinton_markdown(results: Path | None = None) -> str:
    """benchmarks/hinton.py's side-by-side table: the paper's figures beside ours (hinton.json;
    the member-sized share on fresh rows from hinton_member_eval_400k.json and
    hinton_member_eval.json; other member setups from hinton_members_shift0.json and
    hinton_members_width32.json). The paper's figures that the JSON does not hold (Table 1's
    levels, the omitted-3 bias, the 109 errors) are the paper's and fixed."""
    res = load_results("hinton", results)
    big_run, first_run = (load_results(n, results)
                          for n in ("hinton_member_eval_400k", "hinton_member_eval"))
    big, first = big_run["member_sized"], first_run["member_sized"]
    others = {n: load_results(f"hinton_members_{n}", results)["member_sized"]["gain_kept"]
              for n in ("shift0", "width32")}
    paper, ms = res["paper"], res["member_sized"]
    seeds = _seeds(res["seeds"])

    def pct(x: float, digits: int = 1) -> str:
        return f"{100 * x:.{digits}f}%"

    def share(g: dict) -> str:
        return f"{pct(g['mean'], 0)} [{pct(g['ci_low'], 0)}, {pct(g['ci_high'], 0)}]"

    def gain(g: dict, digits: int) -> str:
        lo, hi = g["ensemble_gain_ci_points"]
        return (f"{_signed(g['ensemble_gain_points'], digits)} [{_signed(lo, digits)}, "
                f"{_signed(hi, digits)}]")

    ev, ev1 = big["eval"], first["eval"]
    st = ev["student"]
    member_row = (
        f"on {ev['rows']:,} fresh rows from the generator (students of seeds "
        f"{_seeds(big_run['seeds'])}): "
        f"mean member {pct(ev['mean_member'])}, ensemble of {ms['setup']['count']} "
        f"{pct(ev['ensemble'])} (gain {gain(ev['gain_kept'], 2).replace(' [', ' points [', 1)}), "
        f"distilled {pct(st['mean'])} ({100 * st['min']:.1f}-{100 * st['max']:.1f} by seed). "
        f"On the 1,000 test rows: {pct(ms['members']['mean'])}, "
        f"{pct(ms['ensemble']['test_accuracy'])} (gain {gain(ms['gain_kept'], 1)}), "
        f"{pct(ms['variants']['member_sized']['test_accuracy']['mean'])} (seeds {seeds})")
    per_seed = ev["gain_kept"]["per_seed"]
    share_row = (
        f"**{share(ev['gain_kept'])}** on {ev['rows']:,} fresh rows, {len(big_run['seeds'])} seeds "
        f"(per seed {100 * min(per_seed):.0f}-{100 * max(per_seed):.0f}%); "
        f"{share(ev1['gain_kept'])} on another {ev1['rows']:,}. On the 1,000 test rows: "
        f"{share(ms['gain_kept'])} (seeds {seeds}), {share(first['gain_kept'])} (seeds "
        f"{_seeds(first_run['seeds'])}). Other member setups "
        f"(test rows, {len(res['seeds'])} seeds): {share(others['shift0'])} (no shift "
        f"augmentation), {share(others['width32'])} (width 32)")

    def omit(cls: str) -> tuple[str, str]:
        """The member-sized and the default student's before -> after [interval] (bias); the
        better after in bold."""
        runs = [res["omit"][cls], res["omit"][f"{cls}_default"]]
        best = max(range(2), key=lambda i: runs[i]["test_accuracy_omitted_corrected"]["mean"])
        out = []
        for i, o in enumerate(runs):
            after = pct(o["test_accuracy_omitted_corrected"]["mean"])
            lo, hi = o["corrected_ci"]
            bias = o["bias"]["per_seed"]
            said = ("bias 0 on every seed" if not any(bias) else
                    f"bias {_signed(min(bias), 1)} to {_signed(max(bias), 1)}")
            out.append(f"{pct(o['test_accuracy_omitted']['mean'])} -> "
                       f"{f'**{after}**' if i == best else after} [{pct(lo)}, {pct(hi)}] "
                       f"({said})")
        return out[0], out[1]

    o3, o3d = omit("3")
    o8, o8d = omit("8")

    def whole(cls: str) -> str:
        return pct(res["omit"][cls]["test_accuracy_corrected"]["mean"])

    fr = res["fraction"]["soft_minus_hard"]
    soft, hard = (res["variants"][f"fraction_{a}"]["test_accuracy"]["mean"]
                  for a in ("soft", "hard"))
    val = " / ".join(_signed(100 * v, 1) for v in res["fraction"]["val_soft_minus_hard"])
    rules = list(res["combine"])
    combine = "; ".join(
        f"`{r}` {_signed(100 * res['combine'][r]['vs_mean_probs']['diff'], 2)} "
        f"[{_signed(100 * res['combine'][r]['vs_mean_probs']['ci_low'], 2)}, "
        f"{_signed(100 * res['combine'][r]['vs_mean_probs']['ci_high'], 2)}]" for r in rules)
    combine_val = ", ".join(
        _signed(100 * sum(v := res["combine"][r]["val_minus_mean_probs"]) / len(v), 2)
        for r in rules)
    p_soft, p_hard = paper["fraction_soft"], paper["fraction_hard"]
    rows = [
        ("**Ensemble, single model, member-sized distilled model** (paper: speech, Table 1; "
         f"ours: {ms['setup']['count']} MLP members of {ms['setup']['knobs']['depth']} x "
         f"{ms['setup']['width']} units)",
         "single 58.9%, ensemble of 10 61.1%, distilled 60.8%", member_row),
        ("share of the ensemble's gain the member-sized student keeps",
         pct(paper["member_sized_gain_kept"], 0), share_row),
        ("**Omitted 3**: the 3s' test rows right, before -> after the bias chosen on validation "
         "rows", f"{pct(paper['omit_corrected'])} after (bias +3.5)",
         f"member-sized student: {o3}; default student: {o3d}"),
        ("**Omitted 8**: the same (paper: 7s and 8s alone in the transfer set, error 47.3% -> "
         "13.2%)", "-", f"member-sized student: {o8}; default student: {o8d}"),
        ("all test rows right after the bias", "98.9% (109 errors of 10,000)",
         f"member-sized: {whole('3')} (omit 3), {whole('8')} (omit 8); default: "
         f"{whole('3_default')} (omit 3), {whole('8_default')} (omit 8)"),
        ("**3% of the labeled rows**: soft targets vs the true labels (paper: speech, Table 5)",
         f"{pct(p_soft)} vs {pct(p_hard)} ({_signed(100 * (p_soft - p_hard), 1)})",
         f"{pct(soft)} vs {pct(hard)}: **{_signed(100 * fr['diff'], 1)} points "
         f"[{_signed(100 * fr['ci_low'], 1)}, {_signed(100 * fr['ci_high'], 1)}]** "
         f"(validation {val} per seed)"),
        ("**Combine rules** (the paper averages probabilities), each minus `mean_probs`, paired",
         "-", f"{combine}. On validation (mean over seeds): {combine_val} points"),
    ]
    out = [f"| experiment | paper | ours (MNIST-1D, seeds {seeds}) |", "|---|---|---|"]
    out += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    out.append(_rendered_from("hinton", "hinton_member_eval_400k", "hinton_member_eval",
                              "hinton_members_shift0", "hinton_members_width32"))
    return "\n".join(out)


VIEWS_ARMS = {"no_views": "no views (`views: none`)",
              "shift_unmixed": "shift views, `view_labels: unmixed`",
              "mixup_row": "mixup views, `view_labels: row`",
              "mixup_mixed": "mixup views, `view_labels: mixed`"}


def views_markdown(results: Path | None = None) -> str:
    """benchmarks/views_default.py's arms on the default recipe (views-default.json): each arm's
    test accuracy over seeds and its paired difference to the control (the arm the others are
    paired against)."""
    res = load_results("views-default", results)["arms"]

    def minus(x: float) -> str:
        return _signed(100 * x, 2).replace("-", "−")

    out = ["| arm | test accuracy (mean ± std) | per seed | validation | "
           "paired test difference to no views, 95% t interval |",
           "| --- | --- | --- | --- | --- |"]
    for name in res["arms"]:
        arm = res["arms"][name]
        # `<arm>-<control>.test`: the control is the arm with no such key
        paired = [k for k in res["paired"] if k.split("-", 1)[0] == name and k.endswith(".test")]
        if paired:
            t = res["paired"][paired[0]]
            lo, hi = t["ci95"]
            diff = f"{minus(t['mean'])} ({minus(lo)} .. {minus(hi)})"
        else:
            diff = "(control)"
        per_seed = " / ".join(f"{100 * a:.1f}" for a in arm["test_accuracy"]["per_seed"])
        out.append(f"| {VIEWS_ARMS.get(name, f'`{name}`')} | {_pct(arm['test_accuracy'])} | "
                   f"{per_seed} | {100 * arm['val_accuracy']['mean']:.2f} | {diff} |")
    return "\n".join([*out, _rendered_from("views-default")])


TOPK_STUDENTS = {"dense": "dense float32", "top8-uniform": "top-8, uniform tail (codec)",
                 "top8-shards": "top-8 float16 through the shards",
                 "top8-ghost": "top-8, ghost tail"}


def _codec_name(name: str) -> str:
    """top8_float16 -> top-8 float16."""
    return re.sub(r"^top(\d+)", r"top-\1", name).replace("_", " ")


def topk_markdown(table: str, results: Path | None = None) -> str:
    """`bytes`: the bytes a row of dense and top-k float16 targets, and the export's fidelity
    (topk_wired.json); `students`: the students trained from each (topk_wired.json);
    `scale`: export throughput and memory at 200k and 2M rows (topk_scale.json)."""
    if table == "scale":
        return _topk_scale(load_results("topk_scale", results))
    res = load_results("topk_wired", results)
    if table == "bytes":
        codecs = res["codecs"]
        out = [f"| targets | raw bytes a row ({res['members']} members) | share of dense float16 "
               "| Parquet zstd bytes a row |", "| --- | --- | --- | --- |"]
        for name in codecs:
            if name == "dense_float32" or name.endswith("_float16"):
                c = codecs[name]
                out.append(f"| {_codec_name(name)} | {c['bytes_per_row_raw']:,} | "
                           f"{c['raw_share_of_dense_float16']:.2f} | "
                           f"{c['parquet_bytes_per_row']:,.1f} |")
        fid = res["export_fidelity_top8_float16"]
        kl = ", ".join(f"{fid['kl'][t]:.3f} at T = {t}" for t in ("1", "2", "4", "8"))
        out += ["", f"KL(dense || stored) of the ensemble target on validation rows, "
                f"top-{fid['k']} float16, uniform tail", f"(the export's own measure): {kl};",
                f"top-1 agreement {fid['top1_agreement']:.4f}.", _rendered_from("topk_wired")]
        return "\n".join(out)
    if table == "students":
        students = res["students"]
        names = [n for n in TOPK_STUDENTS if n in students] + \
            [n for n in students if n not in TOPK_STUDENTS]

        def ci(lo_hi: list) -> str:
            return f"[{_signed(lo_hi[0], 4)}, {_signed(lo_hi[1], 4)}]"

        out = [f"| student ({len(res['seeds'])} seeds) | test accuracy | minus dense, paired 95% "
               "interval | test ECE | ECE minus dense | val NLL |",
               "| --- | --- | --- | --- | --- | --- |"]
        for n in names:
            s = students[n]
            dense = n == "dense"
            acc_ci = "" if dense else ci(s["test_acc_minus_dense_ci95"])
            ece_ci = "" if dense else ci(s["test_ece_minus_dense_ci95"])
            cells = [TOPK_STUDENTS.get(n, f"`{n}`"), f"{s['test_acc_mean']:.4f}", acc_ci,
                     f"{s['test_ece_mean']:.4f}", ece_ci, f"{s['val_nll_mean']:.3f}"]
            out.append(" ".join(["|", *(f"{c} |" if c else "|" for c in cells)]))
        return "\n".join([*out, _rendered_from("topk_wired")])
    raise ValueError(f"kd:topk: no table {table!r} (bytes, students, scale)")


def _topk_scale(res: Results) -> str:
    out = ["| rows | export rows/s | bare forward rows/s (apart) | export / forward | "
           "export's own forward share | export peak RSS |",
           "| --- | --- | --- | --- | --- | --- |"]
    for rows in sorted(res["sizes"], key=int):
        s = res["sizes"][rows]
        n = len(s["export_runs"])
        runs = f"{n} alternated runs, medians" if n > 1 else "1 run"
        # an export faster than the members' bare forward pass means the machine's load moved
        ratio = f"{s['ratio']:.2f}" + (" (load moved)" if s["ratio"] > 1 else "")
        out.append(f"| {int(rows):,} ({runs}) | {s['export_rows_per_s']:,.0f} | "
                   f"{s['forward_rows_per_s']:,.0f} | {ratio} | {s['ratio_same_run']:.3f} | "
                   f"{s['export_maxrss_mb']:.0f} MB |")
    return "\n".join([*out, _rendered_from("topk_scale")])


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
              "frontier": frontier_markdown, "hinton": hinton_markdown, "views": views_markdown,
              "topk": topk_markdown, "results": results_markdown}


def render(markdown: str) -> str:
    """The page with every marker replaced by its generated block."""

    def one(m: re.Match) -> str:
        name, arg = m.group(1), m.group(2)
        if name not in GENERATORS:
            raise ValueError(f"unknown docs marker kd:{name}")
        try:
            return GENERATORS[name](arg) if arg else GENERATORS[name]()
        except ValueError as e:
            raise ValueError(f"{m.group(0)}: {e}") from e

    return MARKER.sub(one, markdown)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    try:
        return render(markdown)
    except ValueError as e:  # the build stops with one line: page, marker, file, key
        raise ValueError(f"docs/{page.file.src_uri}: {e}") from e
