"""A one-line progress counter, drawn only when the stream is a terminal."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    def __init__(self, label: str, total: int, stream: TextIO = sys.stderr):
        self.label, self.total, self.stream = label, total, stream
        self.done = 0
        self.enabled = stream.isatty() and total > 0
        self.started = time.monotonic()

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self.enabled:
            elapsed = time.monotonic() - self.started
            self.stream.write(f"\r{self.label}: {self.done}/{self.total} ({elapsed:.0f} s)")
            self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()
