"""Stage `index@<folder>`: the digests of the files that later stages read from a folder of
per-member or per-variant outputs.

    kd index teachers                 # or: dvc repro index@teachers (also student, baseline)

`data/teachers`, `data/student` and `data/baseline` each gather a foreach stage's outputs, one
subfolder per member or variant, and DVC hashes a folder dependency whole: the `.gitignore` that
DVC writes beside each output, and the outputs of a member or variant that params.yaml no longer
names (an example tried and switched back from leaves `data/teachers/t/` behind). A stage that
depended on such a folder saw it changed and retrained to the same bytes, the run cache missing
too. This stage writes `data/index/<folder>.json`: for each member (`teachers`) or variant
(`student`, `baseline`) params.yaml names now, the sha256 of every file in its subfolder (hidden
files and the wall-clock `timing.json` left out, as .dvcignore leaves them out). Export, the
students, deploy and the report depend on these files instead of the folders: what other
members, variants or DVC's own files add there reruns only this stage, a second, whose output
comes out the same bytes. No MLflow run, like `source@`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from kd.config import Config
from kd.errors import ArtifactError, ConfigError
from kd.io.atomic import write_json

FOLDERS = ("teachers", "student", "baseline")
NOT_DATA = {"timing.json"}  # wall-clock figures, in no output's hash (.dvcignore)


def names(cfg: Config, folder: str) -> list[str]:
    """The subfolders that params.yaml names now."""
    if folder not in FOLDERS:
        raise ConfigError(f"kd index: no folder {folder!r} (folders: {', '.join(FOLDERS)})")
    return cfg.teacher.names() if folder == "teachers" else list(cfg.student.variants)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def digests(root: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under `root` that is data."""
    if not root.is_dir():
        raise ArtifactError(f"{root}: not found: run its stage first (dvc repro does)")
    return {p.relative_to(root).as_posix(): sha256(p) for p in sorted(root.rglob("*"))
            if p.is_file() and p.name not in NOT_DATA
            and not any(part.startswith(".") for part in p.relative_to(root).parts)}


def run(cfg: Config, folder: str, data: Path = Path("data"),
        out_dir: Path = Path("data/index")) -> dict[str, dict[str, str]]:
    index = {name: digests(data / folder / name) for name in names(cfg, folder)}
    write_json(out_dir / f"{folder}.json", index)
    print(f"index@{folder}: {len(index)} {folder} -> {out_dir / folder}.json")
    return index
