"""Inventory of a night: find the raw frames, read each header once, homogenise
it, and group the frames by type, filter, exposure and object.

A file that cannot be read becomes a record with `error` set and type
'unknown'; it never stops the rest of the night.
"""

from __future__ import annotations

import fnmatch
import hashlib
import math
import os
from collections import Counter
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Iterable, Iterator

import bottleneck as bn
import numpy as np
from astropy.table import MaskedColumn, Table

from gppy import parallel
from gppy.fitsio import BadFrame, read_header, read_image
from gppy.obsconfig.headers import FrameRecord, homogenise
from gppy.obsconfig.schema import Profile

HASH_CHUNK_BYTES = 1 << 20


def find_frames(night_dir: str | os.PathLike, profile: Profile) -> list[Path]:
    """Raw frames in a night folder (not its sub-folders) matching the profile's
    globs; hidden and partial files (uploads in progress) are left out."""
    night_dir = Path(night_dir)
    found = []
    for entry in sorted(night_dir.iterdir()):
        name = entry.name
        if name.startswith(".") or name.endswith((".part", ".tmp")) or not entry.is_file():
            continue
        if any(fnmatch.fnmatch(name, g) for g in profile.raw.file_glob):
            found.append(entry)
    return found


def sha256_of(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(HASH_CHUNK_BYTES):
            h.update(chunk)
    return h.hexdigest()


def read_frame(path: str | os.PathLike, profile: Profile) -> FrameRecord:
    """The homogenised record of one raw file; never raises for a bad file."""
    path = Path(path)
    try:
        header, shape = read_header(path)
    except BadFrame as exc:
        return FrameRecord.unreadable(str(path), exc.problem)
    data_problems: list[str] = []

    def pixel_median() -> float:  # read only if a classification rule asks
        try:  # every 4th pixel each way: a robust median at 1/16 the cost
            return float(bn.nanmedian(read_image(path)[::4, ::4]))
        except BadFrame as exc:
            data_problems.append(exc.problem)
            return math.nan

    record = homogenise(header, str(path), profile, shape, pixel_median=pixel_median)
    if data_problems:
        record.error = "; ".join(filter(None, [record.error, *data_problems]))
    return record


@dataclass
class ScannedFrame:
    """A frame's record plus the file facts the ledger keys on."""

    record: FrameRecord
    size_bytes: int
    mtime: float
    sha256: str | None


def scan_frame(path: str | os.PathLike, profile: Profile) -> ScannedFrame:
    """Stat, checksum and homogenise one file (the unit of work of a pool worker)."""
    path = Path(path)
    st = path.stat()
    record = read_frame(path, profile)
    try:
        digest = sha256_of(path)
    except OSError as exc:
        digest = None
        record.error = record.error or f"cannot be read ({exc.strerror})"
    if path.stat().st_size != st.st_size or path.stat().st_mtime != st.st_mtime:
        record.error = "the file changed while it was read (still being written?)"
    return ScannedFrame(record, st.st_size, st.st_mtime, digest)


def scan_frames(paths: Iterable[Path], profile: Profile, ncores: int) -> Iterator[ScannedFrame]:
    """`scan_frame` over many files on `ncores` processes, in completion order."""
    return parallel.imap(lambda p: scan_frame(p, profile), paths, ncores)


def group_key(rec: FrameRecord) -> tuple:
    exptime = None if rec.type in ("bias", "flat") else rec.exptime
    filt = rec.filter if rec.type in ("flat", "science") else None
    obj = rec.object if rec.type == "science" else None
    return (rec.type, filt, exptime, obj)


def group(records: Iterable[FrameRecord]) -> Counter:
    """Frame counts by (type, filter, exposure, object), usable frames only. Biases and
    flats are not split by exposure; only science frames are split by object."""
    return Counter(group_key(r) for r in records if r.error is None)


def records_table(records: list[FrameRecord]) -> Table:
    """The records as a typed table: numbers as masked floats, lists as 'AxB' text."""
    table = Table()
    for f in fields(FrameRecord):
        values = [getattr(r, f.name) for r in records]
        mask = [v is None for v in values]
        if "float" in str(f.type):
            data = np.array([np.nan if v is None else v for v in values], dtype=float)
        else:
            data = np.array(["" if v is None else "x".join(map(str, v)) if isinstance(v, list)
                             else str(v) for v in values], dtype=str)
        table[f.name] = MaskedColumn(data, mask=mask)
    return table
