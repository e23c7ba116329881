"""How far a long stage has got, and words for counts.

    with Progress(total_rows, "export", unit="rows") as p:
        for batch in batches:
            ...
            p.update(len(batch))
    plural(1, "student variant")   # "1 student variant"

On a terminal, a tqdm bar with a total and an ETA. Elsewhere (a CI log, `dvc repro > log`) a bar
redraws itself with carriage returns that a file keeps as one unreadable line, so a few plain
lines instead: at each quarter of the work, once the stage has run `quiet_s` seconds (a stage
that takes two seconds says nothing).
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from tqdm import tqdm


def plural(n: int, noun: str) -> str:
    """"1 student variant", "2 student variants" (nouns that take an -s)."""
    return f"{n:,} {noun}" if n == 1 else f"{n:,} {noun}s"


def duration(s: float) -> str:
    """"42s" under a minute and a half, "3.5 min" beyond."""
    return f"{s:.0f}s" if s < 90 else f"{s / 60:.1f} min"


class Progress:
    """A total, what is done so far and the time left, on `stream` (stdout by default)."""

    def __init__(self, total: int, what: str, *, unit: str = "rows", stream: TextIO | None = None,
                 quiet_s: float = 10.0, lines: int = 4):
        self.stream = stream or sys.stdout
        self.total, self.what, self.unit = max(int(total), 0), what, unit
        self.quiet_s, self.lines = quiet_s, lines
        self.done, self.mark, self.t0 = 0, 1, time.perf_counter()
        tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.bar = tqdm(total=self.total, desc=what, unit=unit, file=self.stream, leave=False,
                        dynamic_ncols=True) if tty and self.total else None

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            return
        if not self.total:
            return
        passed = False
        while self.mark < self.lines and self.done * self.lines >= self.total * self.mark:
            self.mark, passed = self.mark + 1, True
        elapsed = time.perf_counter() - self.t0
        if passed and elapsed >= self.quiet_s and self.done < self.total:
            left = elapsed * (self.total - self.done) / self.done
            print(f"{self.what}: {self.done:,} of {self.total:,} {self.unit} "
                  f"({100 * self.done / self.total:.0f}%), {duration(elapsed)} so far, about "
                  f"{duration(left)} left", file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
