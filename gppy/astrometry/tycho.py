"""Real bright stars: Tycho-2 read from the astrometry.net index files.

Used by the simulator (its bright stars are these) and by the astrometry's
reference catalogue (`gppy.astrometry.refcat`, source "tycho2").

`index-tycho2-07.littleendian.fits` (Debian package astrometry-data-tycho2-07-
littleendian, in /usr/share/astrometry) holds 1.87 M Tycho-2 stars, thinned to a
uniform sky density by astrometry.net (the brightest stars of each small cell are
kept, so dense Milky Way fields miss some fainter Tycho stars). The coarser index
files (-08 ... -19) hold ever fewer, brighter stars in the same layout:

* extension 'kdtree_data_stars': rows of 3 native (here little-endian) uint32, the
  star's unit vector quantised as xyz = lo + u32 / scale;
* extension 'kdtree_range_stars': 7 little-endian float64: lo[3], hi[3], scale;
* extension 'MAG_VT' (a 'tag-along' table, standard big-endian FITS float32 column):
  Tycho VT magnitude, in the same row order.

Positions are those astrometry.net indexed: Tycho-2 mean positions at their own
epoch (about 1991) without proper motion, so fast-moving stars are a few arcsec
from where they are today. The simulator's sky *is* these positions.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterable

import numpy as np
from astropy.io import fits

from gppy.errors import InputError

INDEX_DIR_ENV = "GPPY_TYCHO_INDEX_DIR"
DEFAULT_INDEX_DIR = Path("/usr/share/astrometry")
INDEX_NAME = "index-tycho2-07.littleendian.fits"
_ANY_INDEX = re.compile(r"^index-tycho2-(\d\d)(\.littleendian)?\.fits$")


class TychoIndexMissing(InputError, FileNotFoundError):
    def __str__(self) -> str:
        return self.args[0]


@dataclass(frozen=True)
class TychoStars:
    index: np.ndarray     # row in the index file (a stable star id)
    ra_deg: np.ndarray
    dec_deg: np.ndarray
    vt_mag: np.ndarray
    path: Path | None = None   # the index file read


def _folders(index_dirs: Iterable[str | os.PathLike] | None) -> list[Path]:
    if index_dirs is not None:
        return [Path(d).expanduser() for d in index_dirs]
    return [Path(os.environ.get(INDEX_DIR_ENV, DEFAULT_INDEX_DIR))]


def index_path(index_dirs: Iterable[str | os.PathLike] | None = None, exact: bool = True) -> Path:
    """The Tycho-2 index file to read.

    `index_dirs` None: the folder $GPPY_TYCHO_INDEX_DIR, else /usr/share/astrometry (what
    the simulator uses); else those folders, searched in order. `exact`: only
    index-tycho2-07 (the richest; the simulator's sky depends on it); otherwise the
    finest-scale index-tycho2-NN file found when -07 is absent.
    """
    folders = _folders(index_dirs)
    for folder in folders:
        if (folder / INDEX_NAME).is_file():
            return folder / INDEX_NAME
    if not exact:
        found = []
        for folder in folders:
            if folder.is_dir():
                for p in folder.iterdir():
                    m = _ANY_INDEX.match(p.name)
                    if m and p.is_file():
                        found.append((int(m.group(1)), str(p), p))
        if found:
            return min(found)[2]
    where = ", ".join(str(f) for f in folders)
    raise TychoIndexMissing(
        f"Tycho-2 index {INDEX_NAME} not found in {where}: the simulator draws its bright stars "
        f"from it and the 'tycho2' reference catalogue reads it. Install it with "
        f"`apt-get install astrometry-data-tycho2-07-littleendian`, or point "
        f"${INDEX_DIR_ENV} (simulator) / [astrometry] index_dirs (pipeline) at a folder "
        f"holding it.")


def _extension_bytes(path: Path) -> dict[str, tuple[int, int]]:
    """Column name -> (byte offset, byte length) of each one-column table's data."""
    out: dict[str, tuple[int, int]] = {}
    with fits.open(path, memmap=True) as hdul:
        for hdu in hdul[1:]:
            name = hdu.header.get("TTYPE1")
            if name:
                out[name] = (hdu.fileinfo()["datLoc"], hdu.header["NAXIS1"] * hdu.header["NAXIS2"])
    return out


@lru_cache(maxsize=2)
def _all_stars(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(unit vectors (n, 3), VT magnitudes) of every star in the index."""
    ext = _extension_bytes(path)
    raw = np.memmap(path, dtype=np.uint8, mode="r")

    def column(name: str, dtype: str) -> np.ndarray:
        if name not in ext:
            raise ValueError(f"{path}: no '{name}' extension; not an astrometry.net star index")
        offset, length = ext[name]
        return np.frombuffer(raw[offset:offset + length], dtype=dtype)

    bounds = column("kdtree_range_stars", "<f8")
    lo, scale = bounds[:3], bounds[6]
    xyz = lo + column("kdtree_data_stars", "<u4").reshape(-1, 3) / scale
    xyz /= np.linalg.norm(xyz, axis=1, keepdims=True)
    vt = column("MAG_VT", ">f4").astype(np.float64)
    if vt.size != xyz.shape[0]:
        raise ValueError(f"{path}: {vt.size} magnitudes for {xyz.shape[0]} stars")
    return xyz, vt


def unit_vector(ra_deg, dec_deg) -> np.ndarray:
    ra, dec = np.radians(ra_deg), np.radians(dec_deg)
    return np.stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)], axis=-1)


def cone(ra_deg: float, dec_deg: float, radius_deg: float,
         index_dirs: Iterable[str | os.PathLike] | None = None, exact: bool = True) -> TychoStars:
    """Tycho-2 stars within `radius_deg` of a position, brightest first (see
    `index_path` for `index_dirs` and `exact`)."""
    path = index_path(index_dirs, exact)
    xyz, vt = _all_stars(path)
    inside = np.nonzero(xyz @ unit_vector(ra_deg, dec_deg) >= np.cos(np.radians(radius_deg)))[0]
    inside = inside[np.argsort(vt[inside], kind="stable")]
    x, y, z = xyz[inside].T
    ra = np.degrees(np.arctan2(y, x)) % 360.0
    dec = np.degrees(np.arcsin(np.clip(z, -1.0, 1.0)))
    return TychoStars(index=inside, ra_deg=ra, dec_deg=dec, vt_mag=vt[inside], path=path)
