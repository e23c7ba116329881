"""Write a tabular data set as the Parquet files `data.source: parquet` reads.

    python examples/make_tabular.py      # -> data/inputs/cancer_{labeled,unlabeled,test}.parquet
    cp examples/tabular.yaml params.yaml && dvc repro

scikit-learn's bundled Wisconsin breast-cancer data (569 rows, 30 scalar feature columns, a
string label): a stratified 20% test file, 30% of the rest as an unlabeled file (labels dropped:
the transfer set the ensemble labels softly), the remaining rows labeled. A stand-in for your own
table: one row per example, one column per feature, one label column, an id column.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from sklearn.datasets import load_breast_cancer
from sklearn.model_selection import train_test_split


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("data/inputs"), help="folder to write into")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    d = load_breast_cancer(as_frame=True)
    frame = d.frame.drop(columns="target")
    frame["diagnosis"] = [str(d.target_names[t]) for t in d.target]
    frame["patient"] = np.arange(len(frame))
    rest, test = train_test_split(frame, test_size=0.2, stratify=frame["diagnosis"],
                                  random_state=args.seed)
    labeled, unlabeled = train_test_split(rest, test_size=0.3, stratify=rest["diagnosis"],
                                          random_state=args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, part in (("labeled", labeled), ("unlabeled", unlabeled.drop(columns="diagnosis")),
                       ("test", test)):
        path = args.out / f"cancer_{name}.parquet"
        pq.write_table(pa.Table.from_pandas(part.sort_values("patient"), preserve_index=False),
                       path)
        print(f"{path}: {len(part)} rows")


if __name__ == "__main__":
    main()
