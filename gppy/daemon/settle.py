"""When is a night folder complete? When its file count, total size and newest
modification time have not changed for `settle_s`.

Pure bookkeeping with an injectable clock; the watcher feeds it snapshots.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable


@dataclass(frozen=True)
class Snapshot:
    n_files: int
    total_bytes: int
    newest_mtime: float


def snapshot(folder: str | os.PathLike) -> Snapshot:
    """Every regular file counts, whatever its name: an upload in progress under a
    temporary name is activity too."""
    n, total, newest = 0, 0, 0.0
    with os.scandir(folder) as entries:
        for entry in entries:
            try:
                if not entry.is_file(follow_symlinks=False):
                    continue
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:  # renamed or removed while we looked
                continue
            n += 1
            total += st.st_size
            newest = max(newest, st.st_mtime)
    return Snapshot(n, total, newest)


class Settler:
    """Tracks night folders until each has been unchanged for `settle_s`."""

    def __init__(self, settle_s: float, clock: Callable[[], float] = time.monotonic):
        self.settle_s = settle_s
        self.clock = clock
        self._last: dict[Path, tuple[Snapshot | None, float]] = {}

    def track(self, night_dir: Path) -> bool:
        """Start (or restart) watching a night; True if it was not tracked yet."""
        new = night_dir not in self._last
        self._last[night_dir] = (None, self.clock())
        return new

    def observe(self, night_dir: Path, snap: Snapshot) -> bool:
        """Record a snapshot; True if it is the night's first since it was tracked."""
        previous, since = self._last.get(night_dir, (None, self.clock()))
        if snap != previous:
            since = self.clock()
        self._last[night_dir] = (snap, since)
        return previous is None

    def settled(self) -> list[Path]:
        now = self.clock()
        return sorted(d for d, (snap, since) in self._last.items()
                      if snap is not None and snap.n_files > 0 and now - since >= self.settle_s)

    def forget(self, night_dir: Path) -> None:
        self._last.pop(night_dir, None)

    @property
    def tracked(self) -> list[Path]:
        return sorted(self._last)
