"""Work on N processes, safely for a daemon.

Pool workers ignore SIGINT (Ctrl-C on a terminal reaches the whole process
group; the night's process decides what to do), take SIGTERM with its default
action (so `Pool.terminate` works), and die with their parent (Linux
PR_SET_PDEATHSIG), so a killed night never leaves orphans computing behind it.
"""

from __future__ import annotations

import ctypes
import signal
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")
PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Ask the kernel to SIGKILL this process when its parent exits (Linux only)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:  # not glibc Linux: nothing to do
        pass


def _worker_init() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    die_with_parent()


def imap(func: Callable[[T], R], items: Iterable[T], ncores: int) -> Iterator[R]:
    """func over items on `ncores` processes, results in completion order (in this
    process, in order, when one core or one item)."""
    items = list(items)
    if ncores <= 1 or len(items) < 2:
        yield from map(func, items)
        return
    import multiprocess

    with multiprocess.Pool(min(ncores, len(items)), initializer=_worker_init) as pool:
        yield from pool.imap_unordered(func, items)
