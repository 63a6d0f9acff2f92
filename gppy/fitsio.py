"""FITS input/output at the edges: checked reads, atomic writes.

Raw frames are only ever opened read-only. A file that is empty, not FITS,
truncated (for example still being uploaded) or without image data raises
`BadFrame`, whose message names the file and the problem.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

import numpy as np
from astropy.io import fits


class BadFrame(Exception):
    """A file that cannot be used as a frame; str() names the file and the problem."""

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


def _uncompressed_size(path: Path) -> int:
    if path.suffix.lower() == ".gz":
        with open(path, "rb") as fh:  # the gzip trailer holds the size modulo 2**32
            fh.seek(-4, os.SEEK_END)
            return int.from_bytes(fh.read(4), "little")
    return path.stat().st_size


def _data_nbytes(header: fits.Header) -> int:
    naxis = header.get("NAXIS", 0)
    if naxis == 0:
        return 0
    n = 1
    for i in range(1, naxis + 1):
        n *= header.get(f"NAXIS{i}", 0)
    return abs(header.get("BITPIX", 8)) // 8 * header.get("GCOUNT", 1) * (header.get("PCOUNT", 0) + n)


def image_hdu_index(hdul: fits.HDUList) -> int:
    for i, hdu in enumerate(hdul):
        if hdu.is_image and hdu.header.get("NAXIS", 0) >= 2:
            return i
    return -1


def read_header(path: str | os.PathLike) -> tuple[fits.Header, tuple[int, int]]:
    """The header of the first 2-D image HDU and its shape (ny, nx), after checking
    that the whole file is present."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise BadFrame(path, f"cannot be read ({exc.strerror})") from None
    if size == 0:
        raise BadFrame(path, "empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # truncation is checked below, not warned about
            with fits.open(path, memmap=False, lazy_load_hdus=False) as hdul:
                index = image_hdu_index(hdul)
                if index < 0:
                    raise BadFrame(path, "no 2-D image in any HDU")
                hdr = hdul[index].header.copy()
                last = len(hdul) - 1
                expected = hdul.fileinfo(last)["datLoc"] + _data_nbytes(hdul[last].header)
    except BadFrame:
        raise
    except (OSError, ValueError, EOFError) as exc:
        raise BadFrame(path, f"not a readable FITS file ({exc})") from None
    actual = _uncompressed_size(path)
    if actual < expected:
        raise BadFrame(path, f"truncated: {actual} bytes of data where the header needs "
                             f"{expected} (incomplete upload or damaged file)")
    return hdr, (int(hdr["NAXIS2"]), int(hdr["NAXIS1"]))


def read_image(path: str | os.PathLike, dtype=np.float32) -> np.ndarray:
    """The pixel data of the first 2-D image HDU, scaled (BZERO/BSCALE) to `dtype`."""
    read_header(path)  # the same checks as the inventory
    with fits.open(path, memmap=False) as hdul:
        return np.asarray(hdul[image_hdu_index(hdul)].data, dtype=dtype)


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside `path`; on success it is synced and renamed
    into place, so a reader never sees a half-written product."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomic(path: str | os.PathLike, hdul: fits.HDUList | fits.PrimaryHDU) -> Path:
    """Write a FITS file atomically (see `atomic_open`)."""
    if isinstance(hdul, fits.PrimaryHDU):
        hdul = fits.HDUList([hdul])
    with atomic_open(path, "wb") as fh:
        hdul.writeto(fh, output_verify="exception")
    return Path(path)
