"""The export's loop: the members forward over the interleaved splits and each training row's
stored views, written into one ShardWriter.

    rows, forward_s, fidelity = export_rows(models, sources, cfg.export, writer, views, shape, dist)

Rows, ids, views and logits are exactly a single process's whatever the rank count (each rank
takes a contiguous range of whole batches: kd/prepared.py interleave). With `export.top_k`, rank 0
keeps the first SAMPLE rows' dense logits and measures the stored targets against them.
"""

from __future__ import annotations

import time

import numpy as np

from kd.augment import ViewSource
from kd.config import ExportConfig
from kd.prepared import interleave, split_rows
from kd.progress import Progress
from kd.runtime.distributed import Dist
from kd.targets.shards import LOGITS_DTYPES, ShardWriter
from kd.targets.topk import fidelity
from kd.teachers.members import member_outputs

SAMPLE = 2_048  # rows of dense logits a top-k export measures its targets against


def export_rows(models: dict, sources: list, ex: ExportConfig, writer: ShardWriter,
                views: ViewSource | None, shape: tuple,
                dist: Dist) -> tuple[int, float, dict | None]:
    """Every row of `sources` (and its views) through the members into `writer`: (rows written,
    seconds in the members' forward, the top-k fidelity on rank 0's first rows or None)."""
    rows, forward_s, sample = 0, 0.0, []
    # the splits mixed in proportion in every batch; rank 0 shows its share
    total = -(-sum(split_rows(d, s) for d, s in sources) // dist.world)
    bar = Progress(total if dist.is_main else 0, "export", unit="rows")
    for split, part, is_val in interleave(sources, ex.batch_size, dist.rank, dist.world):
        f0 = time.perf_counter()
        logits, vectors = member_outputs(models, part.x, shape, dist.device, ex.hidden)
        forward_s += time.perf_counter() - f0
        if ex.top_k and dist.is_main and sum(len(b[0]) for b in sample) < SAMPLE:
            sample.append([logits[m] for m in models])
        writer.write(part.row_id, split, part.y, is_val, part.x, logits, vectors)
        if views:  # the rows' views, each with the members' logits on its input
            v, y, x = views.views_of(part.row_id[~is_val], part.y[~is_val])
            f0 = time.perf_counter()
            logits, vectors = member_outputs(models, x, shape, dist.device, ex.hidden,
                                             ex.batch_size)
            forward_s += time.perf_counter() - f0
            writer.write(v["row_id"], split, y, None, None, logits, vectors, views=v)
            rows += len(y)  # the bar counts the rows; `rows` every row written
        rows += len(part.row_id)
        bar.update(len(part.row_id))
    bar.close()
    return rows, forward_s, _fidelity(sample, ex)


def _fidelity(sample: list, ex: ExportConfig) -> dict | None:
    """kd.targets.topk.fidelity on the first SAMPLE rows rank 0 exported (None: dense)."""
    if not ex.top_k or not sample:
        return None
    z = np.stack([np.concatenate([np.asarray(b[i]) for b in sample])[:SAMPLE]
                  for i in range(len(sample[0]))])  # (M, N, C)
    return fidelity(z, ex.top_k, LOGITS_DTYPES[ex.logits_dtype][0])
