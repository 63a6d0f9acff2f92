"""Real bright stars: Tycho-2 read from the astrometry.net index files.

`index-tycho2-07.littleendian.fits` (Debian package astrometry-data-tycho2-07-
littleendian, in /usr/share/astrometry) holds 1.87 M Tycho-2 stars, thinned to a
uniform sky density by astrometry.net (the brightest stars of each small cell are
kept, so dense Milky Way fields miss some fainter Tycho stars). Layout:

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
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from astropy.io import fits

from gppy.errors import InputError

INDEX_DIR_ENV = "GPPY_TYCHO_INDEX_DIR"
DEFAULT_INDEX_DIR = Path("/usr/share/astrometry")
INDEX_NAME = "index-tycho2-07.littleendian.fits"


class TychoIndexMissing(InputError, FileNotFoundError):
    def __str__(self) -> str:
        return self.args[0]


@dataclass(frozen=True)
class TychoStars:
    index: np.ndarray     # row in the index file (a stable star id)
    ra_deg: np.ndarray
    dec_deg: np.ndarray
    vt_mag: np.ndarray


def index_path() -> Path:
    folder = Path(os.environ.get(INDEX_DIR_ENV, DEFAULT_INDEX_DIR))
    path = folder / INDEX_NAME
    if not path.is_file():
        raise TychoIndexMissing(
            f"Tycho-2 index {path} not found: the simulator draws its bright stars from it. "
            f"Install it with `apt-get install astrometry-data-tycho2-07-littleendian`, or "
            f"point ${INDEX_DIR_ENV} at a folder holding {INDEX_NAME}.")
    return path


def _extension_bytes(path: Path) -> dict[str, tuple[int, int]]:
    """Column name -> (byte offset, byte length) of each one-column table's data."""
    out: dict[str, tuple[int, int]] = {}
    with fits.open(path, memmap=True) as hdul:
        for hdu in hdul[1:]:
            name = hdu.header.get("TTYPE1")
            if name:
                out[name] = (hdu.fileinfo()["datLoc"], hdu.header["NAXIS1"] * hdu.header["NAXIS2"])
    return out


@lru_cache(maxsize=1)
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


def cone(ra_deg: float, dec_deg: float, radius_deg: float) -> TychoStars:
    """Tycho-2 stars within `radius_deg` of a position, brightest first."""
    xyz, vt = _all_stars(index_path())
    inside = np.nonzero(xyz @ unit_vector(ra_deg, dec_deg) >= np.cos(np.radians(radius_deg)))[0]
    inside = inside[np.argsort(vt[inside], kind="stable")]
    x, y, z = xyz[inside].T
    ra = np.degrees(np.arctan2(y, x)) % 360.0
    dec = np.degrees(np.arcsin(np.clip(z, -1.0, 1.0)))
    return TychoStars(index=inside, ra_deg=ra, dec_deg=dec, vt_mag=vt[inside])
