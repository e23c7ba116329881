"""The report's headline: the few flat keys experiments are compared by, and the `dvc exp show`
that shows them and the params that differ (`kd compare`).

    kd compare                      # the table below; other arguments go to dvc exp show
    kd compare --print              # the dvc command itself, to change

Only data/report/headline.json is a DVC metric (dvc.yaml), so plain `dvc exp show` has these
few metric columns; but it also has one per param of params.yaml and one per dependency (the
hash of every code file and data folder a stage reads: 160-odd with two members). DVC has no
setting for its default columns, so `kd compare` names them: `--only-changed` keeps the params
that differ between the rows, `--drop '.*/'` the dependencies' hashes (their names are paths,
32-character hashes that say only "changed"), and `--keep` the headline keys, changed or not.
Nothing here imports torch: `kd compare` starts in well under a second.
"""

from __future__ import annotations

# the flat keys variants are compared by (`dvc exp show`, the MLflow compare view);
# the first is kd.tracking.COMPARE_BY, the experiment's primary metric
HEADLINE = ("val_acc", "test_acc", "acc_retained", "gap_recovered")
# the report's one DVC metric: HEADLINE and the chosen variant (`variant`), so that `dvc exp
# show` has a handful of metric columns; metrics.json, with every figure, is a plain output
HEADLINE_FILE = "headline.json"
SHOWN = (*HEADLINE, "variant")


def exp_show_args(extra: tuple[str, ...] | list[str] = ()) -> list[str]:
    """`dvc exp show` with the headline keys and only the params that differ, then `extra`."""
    keep = "^(" + "|".join(SHOWN) + ")$"
    return ["dvc", "exp", "show", "--only-changed", "--drop", ".*/", "--keep", keep, *extra]
