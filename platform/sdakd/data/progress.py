"""A one-line progress report for long loops: done/total, rate and ETA."""

from __future__ import annotations

import time
from typing import TextIO


class Progress:
    """Images done, images/s and ETA on one line of `stream` (redrawn on a terminal, every 5 s otherwise)."""

    def __init__(self, total: int, stream: TextIO | None) -> None:
        self.total, self.stream, self.done = total, stream, 0
        self.start = self.last = time.monotonic()
        self.tty = bool(stream) and stream.isatty()

    def advance(self) -> None:
        self.done += 1
        now = time.monotonic()
        if self.stream is None or (not self.tty and now - self.last < 5 and self.done < self.total):
            return
        self.last = now
        rate = self.done / max(now - self.start, 1e-9)
        eta = (self.total - self.done) / rate if rate else 0
        line = f"decoded {self.done}/{self.total} images  {rate:.1f} images/s  ETA {eta:.0f} s"
        end = "\n" if not self.tty or self.done == self.total else ""
        self.stream.write(("\r" if self.tty else "") + line + end)
        self.stream.flush()

