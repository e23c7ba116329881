"""params.yaml -> a validated `Config`: the safe YAML reader and its one-line errors.

    cfg = load_config("params.yaml")   # or parse_config(mapping)

The YAML is read with a safe loader that also rejects duplicate keys: no tags, no code.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from kd.config.messages import one_line
from kd.config.params import Config
from kd.config.student import StudentConfig
from kd.errors import ConfigError


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader (no tags that build objects) that also rejects duplicate keys."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                line = key_node.start_mark.line + 1
                raise ConfigError(f"{key}: duplicate key (line {line})")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)




def parse_config(raw: Any) -> Config:
    """Validate an already-parsed params mapping."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"params: must be a mapping of sections, got {type(raw).__name__}")
    student = raw.get("student")
    if isinstance(student, dict) and (flat := sorted(set(student) & set(StudentConfig.model_fields)
                                                     - {"defaults", "variants"})):
        # one variant's keys straight under `student`, without `defaults` or `variants`: say
        # where they belong, not "unknown key"
        raise ConfigError(f"student.{flat[0]}: the student section holds `defaults` and "
                          f"`variants` (docs/students.md): move it to "
                          f"student.defaults.{flat[0]}")
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(one_line(e, model=Config)) from None


def load_config(path: str | Path = "params.yaml") -> Config:
    """Read and validate params.yaml; every problem is a one-line `ConfigError`."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: params file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: cannot read params file (it is a directory)") from None
    except PermissionError:
        raise ConfigError(f"{path}: cannot read params file (permission denied)") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: cannot read params file (not UTF-8 text)") from None
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or "invalid YAML"
        tag = re.search(r"tag:yaml\.org,2002:(python/\S+?)'?$", problem)
        if tag:  # the safe loader never builds Python objects: say so rather than "invalid"
            problem = f"tag '!!{tag[1]}' is not allowed, params are plain data"
        raise ConfigError(f"{path}: invalid YAML{where}: {problem}") from None
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(f"{path}: must be a mapping of sections, got {type(raw).__name__}")
    return parse_config(raw)
