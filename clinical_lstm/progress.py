"""Progress of a long job: a tqdm bar on a terminal, otherwise a log line at most every 10 s with the rate so far
and the time left at that rate — what a nightly job's log needs, and what `score` and `explain` both print."""

from __future__ import annotations

import sys
import time


def progress_line(done: int, total: int, seconds: float, verb: str = "scored") -> str:
    """``scored 2,000/4,000 stays (50 %), 310 stays/s, about 6 s left``: a job log's progress line, with the rate
    so far and the time left at that rate (what tqdm's bar shows on a terminal)."""
    line = f"{verb} {done:,}/{total:,} stays ({100 * done / max(total, 1):.0f} %)"
    if done and seconds > 0:
        rate = done / seconds
        line += f", {rate:,.0f} stays/s" if rate >= 10 else f", {rate:.1f} stays/s"
        if done < total:
            left = (total - done) / rate
            line += f", about {_duration(left)} left"
    return line


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class Progress:
    """A tqdm bar on a terminal; otherwise one log line per :meth:`update`, at most every 10 s, and the last one
    (for job logs). Nothing at all unless ``enabled``."""

    def __init__(self, total: int, enabled: bool, log, verb: str = "scored", desc: str = "score",
                 every: float = 10.0):
        from tqdm.auto import tqdm

        self.tty = enabled and sys.stderr.isatty()
        self.bar = tqdm(total=total, unit="stay", desc=desc, disable=not self.tty, smoothing=0.1)
        self.total, self.done, self.enabled, self.log, self.verb, self.every = total, 0, enabled, log, verb, every
        self.t0 = self.last = time.perf_counter()

    def update(self, n: int) -> None:
        self.done += n
        self.bar.update(n)
        now = time.perf_counter()
        if self.enabled and not self.tty and (now - self.last >= self.every or self.done == self.total):
            self.log(progress_line(self.done, self.total, now - self.t0, self.verb))
            self.last = now

    def close(self):
        self.bar.close()
