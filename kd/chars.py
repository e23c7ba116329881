"""Next-character prediction over the Python standard library's own source text: a built-in
source with 100+ classes and tens of millions of rows, real text no one here wrote, shipped
with every Python (no download).

    data: {source: chars, vocab_size: 100, normalize: none, context: 32}

A row is the `context` characters before a position, as token ids (the features), and the
character at that position (the label). The classes are the `vocab_size - 1` most frequent
characters of the training files plus "other" (every rarer character), and the input ids use
the same vocabulary. Whole files are held out as the test split, chosen by a hash of the
file's path (stable when a Python build adds or drops files), so no test window shares a
character with a training window; windows never cross a file boundary. A test window whose
characters equal a sampled training window exactly (indentation, licence headers) is dropped
from the test split: test inputs are never training inputs (DESIGN "Test rows never train
anything"), and meta.json counts them. The corpus differs between Python builds: its digest
(every file's path and bytes) is in meta.json's `source_info` and in the fingerprint.

kd/datasets.py turns the `Windows` into a `Source`; this module knows nothing of it.
"""

from __future__ import annotations

import hashlib
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kd.errors import DataError

UNICODE = 0x110000  # code points: the size of the character -> id lookup table


def stdlib_root() -> Path:
    """The running Python's standard library folder (its .py sources)."""
    return Path(sysconfig.get_paths()["stdlib"])


@dataclass
class Windows:
    ids: dict[str, np.ndarray]  # split -> (N, context) token ids
    labels: dict[str, np.ndarray]  # split -> (N,) class ids (-1 for unlabeled)
    row_ids: dict[str, np.ndarray]  # split -> (N,) the label's position in the corpus
    class_names: list[str]
    info: dict  # for meta.json: corpus, digest, files, characters, dropped test windows


def _files(root: Path) -> list[Path]:
    """Every .py file under `root` but installed packages, in path order (the corpus order)."""
    return sorted(p for p in root.rglob("*.py")
                  if p.is_file() and "site-packages" not in p.relative_to(root).parts)


def is_test_file(rel: str, fraction: float) -> bool:
    """A file is held out when the hash of its path falls below `fraction`: the same files on
    any machine whatever else the corpus holds."""
    return int(hashlib.sha256(rel.encode()).hexdigest()[:12], 16) / 16**12 < fraction


def _class_name(ch: str) -> str:
    if ch == " ":
        return "space"
    return ch if ch.isprintable() else repr(ch)[1:-1]  # "\n" -> "\\n", "\x0c" -> "\\x0c"


def _read(root: Path, test_fraction: float):
    """(code points, file starts, file ends, is-test per file, digest, counts)."""
    files = _files(root)
    if not files:
        raise DataError(f"{root}: no .py files (the corpus of data.source 'chars')")
    digest = hashlib.sha256()
    chunks, is_test, skipped = [], [], 0
    for p in files:
        raw, rel = p.read_bytes(), p.relative_to(root).as_posix()
        digest.update(rel.encode() + b"\0" + hashlib.sha256(raw).digest())
        try:  # a few test files are deliberately not UTF-8: left out, and counted
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            skipped += 1
            continue
        chunks.append(np.frombuffer(text.encode("utf-32-le"), np.uint32))
        is_test.append(is_test_file(rel, test_fraction))
    lengths = np.array([len(c) for c in chunks], np.int64)
    ends = np.cumsum(lengths)
    return (np.concatenate(chunks), ends - lengths, ends, np.array(is_test), digest.hexdigest(),
            {"files": len(files), "skipped_not_utf8": skipped})


def _sample(rng: np.random.Generator, starts: np.ndarray, ends: np.ndarray, context: int,
            n: int, key: str, where: str) -> np.ndarray:
    """`n` distinct positions p (sorted, in random draw order) with a whole window
    [p - context, p) inside one of the files [starts, ends)."""
    valid = np.maximum(ends - starts - context, 0)  # (files,) windows per file
    total = int(valid.sum())
    if n > total:
        raise DataError(f"data.{key}: {n} rows asked, the {where} files hold {total} windows "
                        f"of data.context={context} characters")
    pick = rng.choice(total, size=n, replace=False)  # (n,) in draw order
    cum = np.cumsum(valid)
    f = np.searchsorted(cum, pick, side="right")  # the file each pick falls in
    return starts[f] + context + (pick - (cum[f] - valid[f]))


def load(vocab_size: int, context: int, labeled: int, unlabeled: int, test: int,
         test_fraction: float, seed: int, root: Path | None = None) -> Windows:
    """The windows of each split; see the module docstring."""
    root = stdlib_root() if root is None else root
    cp, starts, ends, is_test, digest, counts = _read(root, test_fraction)
    train_mask = np.zeros(len(cp), bool)
    for s, e in zip(starts[~is_test], ends[~is_test], strict=True):
        train_mask[s:e] = True
    freq = np.bincount(cp[train_mask], minlength=UNICODE)  # counted on training files alone
    order = np.argsort(-freq, kind="stable")  # most frequent first, ties by code point
    distinct = int((freq > 0).sum())
    if vocab_size - 1 > distinct:
        raise DataError(f"data.vocab_size: {vocab_size} asks for {vocab_size - 1} characters "
                        f"plus 'other', the training files have {distinct} distinct characters")
    kept = order[: vocab_size - 1]
    table = np.full(UNICODE, vocab_size - 1, np.int32)  # every rarer character is "other"
    table[kept] = np.arange(vocab_size - 1)
    ids = table[cp]  # (chars,) the whole corpus as class ids
    del cp, train_mask

    rng = np.random.default_rng(seed)
    train = _sample(rng, starts[~is_test], ends[~is_test], context, labeled + unlabeled,
                    "labeled_rows + data.unlabeled_rows", "training")
    offsets = np.arange(-context, 0)  # (context,)
    out_ids, out_y, out_rows = {}, {}, {}
    for split, pos in (("labeled", np.sort(train[:labeled])),
                       ("unlabeled", np.sort(train[labeled:]))):
        out_ids[split] = ids[pos[:, None] + offsets]  # (N, context)
        out_y[split] = ids[pos] if split == "labeled" else np.full(len(pos), -1)
        out_rows[split] = pos
    # test rows: draw from the held-out files in random order, drop exact copies of a
    # training window, keep the first `test` of the rest
    n_test = int(np.maximum(ends[is_test] - starts[is_test] - context, 0).sum())
    cand = _sample(rng, starts[is_test], ends[is_test], context, min(n_test, 2 * test + 1000),
                   "test_rows", "held-out test")
    windows = ids[cand[:, None] + offsets].astype(np.int32)  # (M, context)
    seen = {w.tobytes() for split in ("labeled", "unlabeled")
            for w in out_ids[split].astype(np.int32)}
    fresh = np.array([w.tobytes() not in seen for w in windows], bool)
    if int(fresh.sum()) < test:
        raise DataError(f"data.test_rows: {test} rows asked, the held-out test files give "
                        f"{int(fresh.sum())} windows that no training window repeats")
    keep = np.sort(cand[fresh][:test])
    dropped = int((~fresh[: np.flatnonzero(fresh)[test - 1] + 1]).sum()) if test else 0
    out_ids["test"], out_y["test"], out_rows["test"] = ids[keep[:, None] + offsets], ids[keep], keep

    names = [_class_name(chr(c)) for c in kept] + ["other"]
    info = {
        "corpus": str(root),
        "python": sys.version.split()[0],
        "corpus_sha256": digest,
        **counts,
        "test_files": int(is_test.sum()),
        "train_files": int((~is_test).sum()),
        "characters": int(len(ids)),
        "other_share_train": round(float(freq[order[vocab_size - 1:]].sum() / freq.sum()), 6),
        "test_windows_dropped_as_training_copies": dropped,
    }
    return Windows(out_ids, out_y, out_rows, names, info)
