"""A pydantic validation error as the one line a user reads: `key.path: what, got <value>`.

    one_line(err, prefix="teacher.members.cnn_0", model=ModelConfig)
    # "teacher.members.cnn_0.train.lr: must be > 0, got 0"
"""

from __future__ import annotations

import difflib
import math
import re
from typing import Any

from pydantic import BaseModel, ValidationError


def _show(value: Any) -> str:
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return str(int(value))  # "must be > 0", not "must be > 0.0"
    return repr(value) if isinstance(value, str) else str(value)


def _unknown_key_hint(loc: tuple, model: type[BaseModel] | None) -> str:
    if model is None:
        return ""
    fields: Any = model
    for part in loc[:-1]:
        ann = fields.model_fields.get(part) if hasattr(fields, "model_fields") else None
        fields = ann.annotation if ann else None
        if not (isinstance(fields, type) and issubclass(fields, BaseModel)):
            return ""
    close = difflib.get_close_matches(str(loc[-1]), list(fields.model_fields), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


_UNION_TAG = re.compile(r"str|int|float|bool|(list|dict|union|function-\w+)\[.*\]")

_MESSAGES = {
    "greater_than": "must be > {gt}",
    "greater_than_equal": "must be >= {ge}",
    "less_than": "must be < {lt}",
    "less_than_equal": "must be <= {le}",
    "int_type": "must be an integer",
    "int_from_float": "must be an integer",
    "float_type": "must be a number",
    "bool_type": "must be true or false",
    "string_type": "must be a string",
    "dict_type": "must be a mapping",
    "list_type": "must be a list",
    "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
    "missing": "required",
    "finite_number": "must be a finite number",
}


def one_line(err: ValidationError, prefix: str = "", model: type[BaseModel] | None = None) -> str:
    """One line for the first error: `key.path: what is wrong, got <value>`."""
    e = err.errors(include_url=False)[0]
    # a union (`str | list[str]`) adds the member type to the path: name the key only
    loc = tuple(p for p in e["loc"] if not _UNION_TAG.fullmatch(str(p)))
    key = ".".join(str(p) for p in ((prefix,) if prefix else ()) + loc)
    kind = e["type"]
    ctx = {k: _show(v) if isinstance(v, float) else v for k, v in (e.get("ctx") or {}).items()}
    if kind == "extra_forbidden":
        return f"{key}: unknown key{_unknown_key_hint(loc, model)}"
    if kind == "value_error":
        msg = str(ctx.get("error", e["msg"]))
        field, sep, rest = msg.partition(": ")
        if sep and field.isidentifier():  # a model validator names the field it blames
            return f"{key + '.' if key else ''}{field}: {rest}"
        return f"{key}: {msg}"
    if kind == "literal_error":
        what = f"must be one of {ctx.get('expected')}"
    else:
        what = _MESSAGES.get(kind, e["msg"][:1].lower() + e["msg"][1:]).format(**ctx)
    if kind == "missing":
        return f"{key}: {what}"
    return f"{key}: {what}, got {_show(e['input'])}"
