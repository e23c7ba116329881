"""The report's text: one set of tables, rendered as Markdown and as self-contained HTML.

The HTML embeds its figures as base64 PNG and loads nothing from the network, so it can be
mailed, attached to a ticket or opened from an artifact store as it is.

Both renderings hold deterministic figures only (accuracy, size, calibration, agreement): they
are cached DVC outputs, and two runs on the same inputs must give the same bytes. Latency,
throughput and the speedup are wall-clock measurements of one machine; they live in
`timing.json` (uncached) and the report points there instead of freezing one run's noise into a
file whose hash other runs are compared against.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

FIGURES = [("frontier.png", "Compression frontier: test accuracy against parameters, every "
                           "variant (95% intervals)"),
           ("training_curves.png", "Training curves"),
           ("accuracy_vs_params.png", "Accuracy against parameters"),
           ("reliability.png", "Reliability diagram"),
           ("entropy.png", "Soft-target entropy"),
           ("confusion_teacher.png", "Confusion: teacher"),
           ("confusion_student.png", "Confusion: student"),
           ("confusion_baseline.png", "Confusion: baseline")]


INFERENCE_NOTE = {
    "max_leaf": "the single leaf with the largest path probability decides (the paper's "
                "explainable mode: every prediction is one path of filters a person can follow)",
    "mixture": "the leaves' distributions mixed by their path probabilities (more accurate "
               "at times, but no single path explains a prediction)",
}


def _figure_list(ctx: dict) -> list[tuple[str, str]]:
    return FIGURES + (ctx["tree"]["figures"] if ctx.get("tree") else [])


def pct(v: float | None) -> str:
    """A fraction as a percentage, two decimals; "-" when there is none."""
    return "-" if v is None else f"{100 * v:.2f}%"


def _row(name: str, m: dict) -> list[str]:
    return [name, pct(m.get("val_accuracy")), pct(m["accuracy"]), str(m["errors"]),
            f"{m['nll']:.4f}", f"{m['ece']:.4f}",
            f"{m['params']:,}" if m["params"] is not None else "n/a",  # unknown: an import
            f"{m['bytes'] / 1024:.1f}",
            pct(m["agreement"]) if "agreement" in m else "-",
            f"{m['kl_from_teacher']:.4f}" if "kl_from_teacher" in m else "-"]


HEADER = ["model", "val accuracy", "test accuracy", "test errors", "NLL", "ECE", "params",
          "weights KiB", "agrees with teacher", "KL(teacher ‖ model)"]


def _points(v: float) -> str:
    return f"{100 * v:+.2f}"


def _p(v: float) -> str:
    return f"{v:.3f}" if v >= 0.001 else "< 0.001"


def interval(lo: float, hi: float, scale: float = 100, fmt: str = "{:+.2f}") -> str:
    """An interval's ends, in points by default: "[-0.40, +1.20]"."""
    return f"[{fmt.format(scale * lo)}, {fmt.format(scale * hi)}]"


def compare_rows(compare: dict) -> list[list[str]]:
    """One row per stated comparison: difference in points, paired 95% interval, McNemar p."""
    rows = []
    for key, c in compare.items():
        a, b = key.split("_vs_")
        verdict = "inside the noise" if c["ci_low"] <= 0 <= c["ci_high"] else \
            (f"{a} better" if c["diff"] > 0 else f"{b} better")
        rows.append([f"{a} - {b}", _points(c["diff"]), interval(c["ci_low"], c["ci_high"]),
                     _p(c["p_value"]), f"{c['a_only']} / {c['b_only']}", verdict])
    return rows


COMPARE_HEADER = ["comparison", "difference (points)", "95% interval (paired bootstrap)",
                  "McNemar p (exact)", "rows only a / only b right", "reading"]
TIMING_NOTE = ("Latency at batch size 1, throughput and the speedup are wall-clock figures of the "
               "machine that ran the report: they are in `timing.json` beside this report (not "
               "cached by DVC; `dvc metrics show data/report/timing.json` lists them as "
               "`compression.speedup`, `student.latency_ms_median`, "
               "`student_int8.latency_ms_median`, ...; the ONNX "
               "rows under ONNX Runtime on the same threads as PyTorch eager's).")


def _onnx_rows(m: dict) -> list[tuple[str, str]]:
    """(metrics key, row label) of the deployed files the report scored (ONNX Runtime)."""
    rows = [("student_onnx", "student, ONNX fp32")]
    if "student_int8" in m:
        rows.append(("student_int8", f"student, ONNX int8 ({m['student_int8']['quantization']})"))
    return [(k, label) for k, label in rows if k in m]


def _deployed(m: dict, gate: dict | None = None) -> list[str]:
    """The headline's deployable figures: the int8 ONNX file a user ships, and what the
    deploy stage's int8 gate judged (kd/deploy/checks.py)."""
    if "student_int8" not in m:
        return []
    q, d = m["student_int8"], m["compression"]["deployed"]
    out = [f"Deployed as int8 ONNX ({q['quantization']} quantization), the student is a file "
           f"of **{q['bytes'] / 1024:.1f} KiB**, **{d['size_ratio']:.1f}x smaller** than the "
           f"teacher's weights, at {pct(q['accuracy'])} test accuracy "
           f"({kept_phrase(q['accuracy'], m['teacher']['accuracy'])}) under ONNX Runtime."]
    if gate:
        out.append(f"The int8 gate ({gate['verdict']}): on {gate['rows']} validation rows the "
                   f"int8 file got {gate['lost']} wrong that fp32 got right and {gate['gained']} "
                   f"right that fp32 got wrong, a drop of {_points(gate['drop'])} points whose "
                   f"one-sided {gate['confidence']:.0%} lower bound, "
                   f"{_points(gate['drop_lower_bound'])}, is within "
                   f"`deploy.max_accuracy_drop` = {gate['max_drop']:g}.")
    return out


def kept_phrase(student: float, teacher: float) -> str:
    """"98.50% of the teacher's" or "above teacher (+1.20 points)"."""
    k = kept(student, teacher)
    return k if student > teacher else f"{k} of the teacher's"


def _val_rows(m: dict) -> str:
    rows = m.get("validation_rows")
    return f" ({rows:,} rows)" if rows else ""


def transfer_sentence(t: dict) -> str:
    """Which transfer set the student learned from, and how big it was."""
    made = "no synthetic rows"
    if t["synthetic"]:
        p = t["params"]
        how = (f"MUNGE, p = {p['p']:g}, s = {p['s']:g}, seed {p['seed']}" if t["method"] == "munge"
               and p else t["method"])
        made = f"**{t['synthetic']:,} synthetic rows** ({how}, made from the labeled rows)"
    total = t["labeled"] + t["unlabeled"] + t["synthetic"]
    return (f"The student learned from {total:,} rows: {t['labeled']:,} labeled "
            f"({t['validation']:,} more held out for validation), {t['unlabeled']:,} real "
            f"unlabeled and {made}.")


def kept(student: float | None, teacher: float | None) -> str:
    """The student's accuracy as a share of the teacher's; above the teacher a share over 100%
    would read as nonsense ("keeps 118%"), so it says so in points instead."""
    if student is None or not teacher:
        return "-"
    if student > teacher:
        return f"above teacher ({_points(student - teacher)} points)"
    return pct(student / teacher)


def _kept_sentence(m: dict, c: dict) -> str:
    s, t = m["student"]["accuracy"], m["teacher"]["accuracy"]
    sizes = (f"with **{c['params_ratio']:.1f}x fewer parameters** and **{c['size_ratio']:.1f}x "
             f"smaller weights**.")
    if s > t:
        return (f"The student is **above the teacher** on the test rows (**{_points(s - t)} "
                f"points**: {pct(s)} against {pct(t)}) {sizes}")
    retained = pct(c["accuracy_retained"])
    if c.get("accuracy_retained_ci"):
        lo, hi = c["accuracy_retained_ci"]
        retained += f" (95% interval {pct(lo)} to {pct(hi)})"
    return (f"The student keeps **{retained}** of the teacher's test accuracy ({pct(s)} against "
            f"{pct(t)}) {sizes}")


def _gap_sentence(m: dict, c: dict, tb: dict | None, test_rows: int) -> str:
    """What share of the teacher's lead over the baseline distillation recovered: a share only
    when there is a lead clear of the noise and the student stays at or below the teacher."""
    s, t, b = (m[k]["accuracy"] for k in ("student", "teacher", "baseline"))
    base = f"the baseline (the same architecture on labels alone, {pct(b)})"
    if not (c.get("gap_meaningful", c["gap_recovered"] is not None)
            and c["gap_recovered"] is not None):
        lead = t - b if tb is None else tb["diff"]
        if lead <= 0:
            return (f"No gap-recovered figure: the teacher ({pct(t)}) is not above the "
                    f"baseline ({pct(b)}, the same architecture on labels alone; "
                    f"{_points(lead)} points), so a share of its lead is undefined.")
        return ("No gap-recovered figure: the teacher's lead over the baseline "
                f"({_points(lead)} points) is not clear of the noise of {test_rows:,} test rows "
                "(its 95% interval includes 0), so a share of it would not be meaningful.")
    if s > t:
        return (f"Distillation closed the whole gap between {base} and the teacher and went "
                f"past the teacher: student - baseline {_points(s - b)} points against teacher - "
                f"baseline {_points(t - b)} (a share of the gap over 100% means nothing, so none "
                "is given).")
    gap = f"Distillation recovered **{pct(c['gap_recovered'])}**"
    if c.get("gap_recovered_ci"):
        gap += f" (95% interval {pct(c['gap_recovered_ci'][0])} to " \
               f"{pct(c['gap_recovered_ci'][1])})"
    return gap + f" of the gap between {base} and the teacher."


def tables(ctx: dict) -> tuple[list[str], list[tuple[str, list[str], list[list[str]]]]]:
    """Headline sentences and (title, header, rows) tables, shared by both renderings."""
    m, c = ctx["metrics"], ctx["metrics"]["compression"]
    n = len(ctx["members"])
    cmp = m.get("compare", {})
    sb, tb = cmp.get("student_vs_baseline"), cmp.get("teacher_vs_baseline")
    gap = _gap_sentence(m, c, tb, ctx["test_rows"])
    vs = ""
    if sb:
        vs = (f"Student against baseline: **{_points(sb['diff'])} points**, 95% interval "
              f"{interval(sb['ci_low'], sb['ci_high'])}, McNemar p "
              f"{'' if sb['p_value'] < 0.001 else '= '}{_p(sb['p_value'])}.")
    headline = [
        _kept_sentence(m, c),
        *_deployed(m, ctx.get("deploy_gate")),
        gap, *([vs] if vs else []),
        "Test rows only report; anything chosen (settings, a variant) is chosen on the "
        f"validation rows{_val_rows(m)}, whose accuracy the tables show beside the test's.",
        f"Student temperature T = {m['student_temperature']:g}, alpha = {m['student_alpha']:g}; "
        f"test split of {ctx['test_rows']:,} rows.",
        *([transfer_sentence(ctx["transfer"])] if "transfer" in ctx else []),
        *([f"Soft targets stored as {'; '.join(ctx['targets'])}."] if ctx.get("targets")
          else []),
        *([f"**Warning: test inputs also occur in the training data** "
           f"({', '.join(f'{n:,} {k}' for k, n in ctx['test_overlap'].items())} rows equal a "
           "test row; `data.allow_test_overlap: true`): the test figures overstate what the "
           "models do on new inputs."] if ctx.get("test_overlap") else []),
        TIMING_NOTE,
    ]
    if ctx.get("tree"):
        t = ctx["tree"]
        headline.append(f"The student is a soft decision tree of depth {t['depth']}; its "
                        f"inference mode is **{t['inference']}**: "
                        f"{INFERENCE_NOTE[t['inference']]}. The tree pictures below show "
                        f"every filter and leaf, and test row {t['row_id']}'s path.")
    main = [_row(f"teacher (ensemble of {n})", m["teacher"]), _row("student", m["student"])]
    main += [_row(label, m[key]) for key, label in _onnx_rows(m)]
    main.append(_row("baseline", m["baseline"]))
    member_rows = [_row(name, m["members"][name]) for name in ctx["members"]]
    var = ctx.get("variants")
    variant_tables = []
    if var:
        c = var["choice"]
        headline.insert(0, f"Chosen student variant: **{var['chosen']}**, {c['reason']}; the "
                           "tables below call it \"student\". Every variant, with its baseline, "
                           "is in the frontier table (the figure against batch-1 latency is "
                           "`frontier_latency.png`, beside `timing.json`).")
        variant_tables.append(("Student variants: the compression frontier", *var["frontier"]))
        if var["controls"][1]:  # (header, rows): rows only where variants share a network
            variant_tables.append(("Controls: where the gain comes from (same network, "
                                   "another recipe; controls are never shipped)", *var["controls"]))
        if var.get("omit", (None, []))[1]:
            variant_tables.append(("Omitted classes: the student never saw them; a bias for "
                                   "them chosen on validation rows", *var["omit"]))
    # what the stages warned about as they ran, above everything else: a headline read
    # without them would mislead
    headline[:0] = [f"**Warning:** {w}" for w in ctx.get("warnings", [])]
    names = ("teacher", "student", "baseline")
    per_class = [[cls] + [pct(ctx["evals"][k]["per_class_accuracy"][i]) for k in names]
                 for i, cls in enumerate(ctx["class_names"])]
    comparisons = [("Comparisons on the test split (paired: the same rows)", COMPARE_HEADER,
                    compare_rows(cmp))] if cmp else []
    return headline, [
        ("Models", HEADER, main),
        *comparisons,
        *variant_tables,
        ("Ensemble members", HEADER, member_rows),
        ("Per-class accuracy", ["class", *names], per_class),
    ]


def render_markdown(ctx: dict) -> str:
    headline, tabs = tables(ctx)
    out = ["# Compression report", "", *[f"- {h}" for h in headline], ""]
    for title, header, rows in tabs:
        out += [f"## {title}", "", "| " + " | ".join(header) + " |",
                "|" + "---|" * len(header)]
        out += ["| " + " | ".join(r) + " |" for r in rows]
        out.append("")
    out += ["## Figures", ""]
    out += [f"![{title}](plots/{name})" for name, title in _figure_list(ctx)]
    return "\n".join(out) + "\n"


def _bold(text: str) -> str:
    parts = html.escape(text).split("**")
    return "".join(f"<strong>{p}</strong>" if i % 2 else p for i, p in enumerate(parts))


def render_html(ctx: dict, plots_dir: Path) -> str:
    headline, tabs = tables(ctx)
    body = ["<h1>Compression report</h1>", "<ul>"]
    body += [f"<li>{_bold(h)}</li>" for h in headline]
    body.append("</ul>")
    for title, header, rows in tabs:
        body.append(f"<h2>{html.escape(title)}</h2><table>")
        body.append("<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>")
        for r in rows:
            body.append("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in r) + "</tr>")
        body.append("</table>")
    body.append("<h2>Figures</h2>")
    for name, title in _figure_list(ctx):
        path = plots_dir / name
        if path.exists():
            data = base64.b64encode(path.read_bytes()).decode()
            body.append(f"<figure><img alt=\"{html.escape(title)}\" "
                        f"src=\"data:image/png;base64,{data}\"><figcaption>"
                        f"{html.escape(title)}</figcaption></figure>")
    style = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;"
             "color:#222}table{border-collapse:collapse;margin:1em 0;font-size:14px}"
             "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
             "td:first-child,th:first-child{text-align:left}img{max-width:100%}"
             "figure{margin:1em 0}")
    return ("<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>kd-pipeline compression "
            f"report</title><style>{style}</style></head><body>{''.join(body)}</body></html>\n")
