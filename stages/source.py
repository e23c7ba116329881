"""Stage `source@<name>`: which version an imported member's source names now.

    kd source hgb                     # or: dvc repro source@hgb (always runs)

Writes `data/sources/<name>.json`: the kind, the source, and the version it resolves to (an
MLflow model version, an alias followed; a run id; a local file's sha256). DVC runs this stage
on every `dvc repro` (`always_changed`), and `import@<name>` depends on its output, so an alias
moved to another version, or an ONNX / .pt2 file replaced, reruns the import; an unchanged
answer writes the same bytes and reruns nothing.

When the source cannot be reached (a teammate without access to the registry or the file,
working from `dvc pull`) and an earlier answer for the same source exists, that answer is kept
with a warning: the pulled import stays valid. With no earlier answer, one line and exit 2.
No MLflow run: a lookup on every `dvc repro` would bury the runs that did work.
"""

from __future__ import annotations

import sys
from pathlib import Path

from kd.config import Config
from kd.errors import KDError
from kd.io.atomic import write_json
from kd.teachers.sources import earlier_answer, import_spec, resolve
from kd.tracking import tracking_uri


def run(cfg: Config, name: str, out_dir: Path = Path("data/sources")) -> dict:
    spec = import_spec(cfg, name)
    path = out_dir / f"{name}.json"
    try:
        resolved = resolve(spec, tracking_uri(cfg), cfg.tracking.timeout_s)
    except KDError as e:
        old = earlier_answer(path, spec)
        if old is None:
            raise
        print(f"warning: {e}; keeping the version resolved before ({old['version']})",
              file=sys.stderr)
        return old
    write_json(path, resolved)
    print(f"source@{name}: {spec.source} -> version {resolved['version']}")
    return resolved
