"""The transfer stage's output as the stages after it read it: `data/transfer/` holds
`synthetic.parquet` (the prepared-data schema, split `synthetic`) and `meta.json` (the row
count, how the rows were made, the prepared data they were made from).

    info = transfer_set("data/transfer", "data/prepared", digest)   # None: no synthetic rows
"""

from __future__ import annotations

from pathlib import Path

from kd.errors import ArtifactError
from kd.io.atomic import read_json
from kd.prepared import split_rows

SYNTHETIC = "synthetic"  # the file is <split>.parquet, read like a prepared split


def transfer_set(transfer: str | Path, prepared: str | Path, digest: str) -> dict | None:
    """The transfer stage's meta.json when it holds rows made from this prepared data
    (`digest`: its prepared_sha256, which sees the split), None when there is no transfer set
    (no directory, or `method: none`)."""
    transfer = Path(transfer)
    path = transfer / "meta.json"
    if not path.is_file():
        return None
    info = read_json(path, ArtifactError)
    if not isinstance(info, dict) or not isinstance(info.get("rows"), int):
        raise ArtifactError(f"{path}: not a transfer set's meta.json (no row count)")
    if info["rows"] == 0:
        return None
    if info.get("prepared_sha256") != digest:
        raise ArtifactError(f"{path}: made from other prepared data than {prepared} holds "
                            "(fingerprints differ); rerun `kd transfer`")
    if split_rows(transfer, SYNTHETIC) != info["rows"]:
        raise ArtifactError(f"{transfer / (SYNTHETIC + '.parquet')}: row count differs from "
                            f"{path} ({info['rows']}); rerun `kd transfer`")
    return info


def transfer_about(info: dict | None) -> dict:
    """What a shard manifest records of the transfer set its synthetic rows came from."""
    if not info:
        return {}
    keys = ("method", "rows", "source_rows", "params", "changed_fraction")
    return {"transfer": {k: info[k] for k in keys if k in info}}
