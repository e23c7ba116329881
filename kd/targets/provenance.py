"""Which prepared data a shard set was made from, and the checks that a test split is it.

    extra = prepared_digests("data/prepared")     # recorded in the manifest by export
    check_same_test_split(manifest, "data/prepared/test.parquet", "data/soft_targets/...")

Test rows only report: a test split from another prepare (another source, split seed or file)
would score a student on rows it may have learned from, so the stages that score on test rows
check it against the digest the shards record.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from kd.errors import ArtifactError
from kd.io.storage import file_sha256
from kd.prepared import prepared_sha256

if TYPE_CHECKING:  # annotations only: the prepared data's reader is not a dependency
    from kd.datasets import Split


def check_test_split(test: Split, manifest: dict, path: Path, manifest_path: str) -> None:
    """The test split must be the shards' data set: same feature width, labels among their
    classes. A test split from another prepare would otherwise fail mid-evaluation, after
    the training, or score the student against the wrong labels."""
    width, n_classes = int(np.prod(manifest["feature_shape"])), len(manifest["class_names"])
    if len(test.y) and test.x.shape[1] != width:
        raise ArtifactError(f"{path}: rows have {test.x.shape[1]} features, the shards in "
                            f"{manifest_path} have {width}")
    if len(test.y) and not 0 <= test.y.min() <= test.y.max() < n_classes:
        raise ArtifactError(f"{path}: labels {test.y.min()}..{test.y.max()} are not classes "
                            f"of {manifest_path} ({n_classes} classes)")


def prepared_digests(prepared: str | os.PathLike) -> dict[str, str]:
    """What a shard set records of the prepared data it was made from: the sha256 of its test
    split, and one over meta.json and all three splits."""
    prepared = Path(prepared)
    return {"prepared_sha256": prepared_sha256(prepared),  # meta.json and every split
            "test_sha256": file_sha256(prepared / "test.parquet")}


def check_same_test_split(manifest: dict, test_path: str | os.PathLike,
                          manifest_path: str) -> None:
    """ArtifactError unless `test_path` is the test split the shards were made beside: a test
    split from another prepare (another source, split seed or file) would score the student on
    rows it may have learned from, or on other data. Manifests from before the digest was
    recorded are not checked."""
    want = (manifest.get("extra") or {}).get("test_sha256") or manifest.get("test_sha256")
    if want is None:
        return
    have = file_sha256(Path(test_path))
    if have != want:
        raise ArtifactError(f"{test_path}: not the test split the shards in {manifest_path} "
                            f"were made with (sha256 {have[:12]}, the shards record "
                            f"{want[:12]}); rerun `dvc repro export` or use the matching "
                            "prepared data")
