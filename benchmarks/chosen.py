"""Which student variant a benchmark measures: the one named, else the one the pipeline chose.

    from chosen import which_variant            # benchmarks/ is on a script's sys.path
    pick = which_variant(cfg, ROOT / "data", args.variant)
    pick["variant"], pick["source"]             # both go into the benchmark's JSON

Named: that variant (a key of `student.variants`, else the script exits with one line). Not
named: the `chosen_variant` the last `kd report` wrote (data/report/metrics.json); without a
report, the one kd/evaluate/choose.py picks from data/student/*/metrics.json and the shards'
validation rows, as `kd deploy` does; without those, the first variant listed. `source` says
which rule gave it.
"""

from __future__ import annotations

import json
from pathlib import Path

from kd.config import Config
from kd.errors import ConfigError, KDError
from kd.evaluate.choose import choose_variant


def which_variant(cfg: Config, data: Path, named: str | None = None) -> dict:
    variants = list(cfg.student.variants)
    if named is not None:
        try:
            cfg.student.variant(named)
        except ConfigError as e:  # a script's argument: one line naming the variants, exit 1
            raise SystemExit(f"--variant: {e}") from None
        return {"variant": named, "source": "named on the command line"}
    report = data / "report" / "metrics.json"
    try:
        chosen = json.loads(report.read_text()).get("chosen_variant")
    except (FileNotFoundError, json.JSONDecodeError, AttributeError):
        chosen = None
    if chosen in variants:
        return {"variant": chosen, "source": f"chosen_variant of {report}"}
    try:
        choice = choose_variant(cfg, data / "student", data / "soft_targets")
    except KDError as e:  # a variant's student, or the shards, missing
        return {"variant": variants[0],
                "source": f"the first of student.variants (no choice to read: {e})"}
    return {"variant": choice["variant"],
            "source": f"kd.evaluate.choose on {data / 'student'}: {choice['reason']}"}
