"""Reference stars for a field: Gaia DR3 (VizieR, cached on disk by sky tile), a
catalogue file, or Tycho-2 from the installed astrometry.net index files.

    reference_stars(ra_deg, dec_deg, radius_deg, source="auto", cache_dir=...,
                    offline=False, index_dirs=..., mag_limit=None, epoch=None)
      -> Table: ra, dec (deg, ICRS), mag (the catalogue's own band, NaN if none),
         bright to faint (stars without a magnitude last, in catalogue order);
         meta: catalog (a readable name), source (gaia | file | tycho2), band,
         epoch (Julian year of the positions, None if unknown), field
         (ra, dec, radius deg), mag_limit, and per source: tiles, queried (Gaia),
         path / ra_column / dec_column / mag_column (file), index (Tycho-2),
         fallback (why "auto" did not use Gaia).

Sources (`source`):

* "gaia": Gaia DR3, VizieR catalogue I/355/gaiadr3 (RA_ICRS, DE_ICRS at epoch
  2016.0, Gmag, pmRA, pmDE), through the tile cache of gppy.catalogs.tiles (shared
  with the photometric catalogues of gppy.phot.catalogs). The sky is cut into
  HEALPix tiles (nested scheme;
  the order is chosen per call so that a tile's side is about the field radius,
  i.e. ~7-12 tiles a field); each tile is queried once (a cone around the tile,
  rows then kept by tile), with the magnitude limit rounded up to 0.5 mag, and
  saved as `<cache_dir>/gaia-dr3/hpx<order>/<tile>-G<limit|all>.fits`. A request is
  served from any cached tile file that covers it: the same tile with an equal or
  fainter limit, an ancestor tile (coarser order) or all four children (finer
  order), so a neighbouring or differently sized field reuses what is there.
  Offline: the cache only. Positions are propagated from 2016.0 to `epoch` (a Julian
  year, e.g. 2024.2) with the proper motions when `epoch` is given (linear in RA*
  and Dec; stars without a proper motion stay put); otherwise epoch 2016.0.
* a path: a catalogue file (ECSV, FITS or CSV; anything astropy reads). RA and Dec
  columns are found by common names (ra, RA_ICRS, RAJ2000, ... case-insensitive;
  numbers in degrees or with an angle unit, or sexagesimal strings with RA in
  hours); the magnitude column is `mag_column` if given, else the first found of
  mag, G-like (Gmag, phot_g_mean_mag, mag_G), V (Vmag, VTmag, mag_V), R, r, then
  any other *mag* column (the simulator's refcat.ecsv: mag_V for UBVRI cameras,
  mag_g for ugriz ones); none: NaN.
* "tycho2": Tycho-2 stars of the astrometry.net index files in `index_dirs`
  (gppy.astrometry.tycho; VT magnitudes; positions at their ~1991 epoch, no proper
  motion).
* "auto": `catalog_file` if given; else Gaia (the cache, then VizieR unless
  offline); else Tycho-2, with meta["fallback"] saying why Gaia did not serve.

Anything that cannot serve the field raises RefcatError (an InputError) naming the
catalogue, the field and why: offline with tiles missing from the cache, VizieR
unreachable or failing (the HTTP timeout is `timeout_s`, 20 s by default: a refused
connection fails at once), an unreadable file, a missing index, or no stars in
the field. The VizieR server is `vizier_server`, else $GPPY_VIZIER_SERVER, else
astroquery's configured mirror; it may be a host name (https) or a full base URL
such as "http://127.0.0.1:8080" (a local stand-in). A server that failed is not
asked again by this process for RETRY_AFTER_S (5 min; `forget_failures()` resets),
so a night of frames does not wait out the timeout frame after frame.
"""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
from astropy import units as u
from astropy.table import Table

from gppy.astrometry import tycho
from gppy.catalogs import tiles
from gppy.catalogs.tables import (DEC_NAMES, RA_NAMES, degrees, find_column, float_values,
                                  read_table)
from gppy.catalogs.tiles import (DEFAULT_TIMEOUT_S, VIZIER_SERVER_ENV, CatalogError, TileColumn,
                                 VizierTable, forget_failures, tile_order, tiles_for_cone)
from gppy.catalogs.tiles import field_text as _field

DEFAULT_INDEX_DIRS = (tycho.DEFAULT_INDEX_DIR,)   # as gppy.settings' default

GAIA_CATALOG = "I/355/gaiadr3"
GAIA_NAME = f"Gaia DR3 (VizieR {GAIA_CATALOG})"
GAIA_EPOCH = 2016.0
GAIA_CACHE_SUBDIR = "gaia-dr3"
# the tile cache layout of Gaia for astrometry: ra, dec, mag (G), pmra, pmdec
GAIA_TILES = VizierTable(
    catalog=GAIA_CATALOG, name=GAIA_NAME, subdir=GAIA_CACHE_SUBDIR, ra="RA_ICRS", dec="DE_ICRS",
    columns=(TileColumn("Gmag", "mag"), TileColumn("pmRA", "pmra"), TileColumn("pmDE", "pmdec")),
    limit_column="Gmag", limit_tag="G", epoch=GAIA_EPOCH)

__all__ = ["RefcatError", "reference_stars", "from_file", "from_gaia", "from_tycho",
           "forget_failures", "tile_order", "tiles_for_cone", "VIZIER_SERVER_ENV"]


class RefcatError(CatalogError):
    """No reference catalogue can serve a field; the message says which and why."""


@contextmanager
def _as_refcat_error() -> Iterator[None]:
    """The shared catalogue code raises CatalogError; this module's callers expect RefcatError."""
    try:
        yield
    except RefcatError:
        raise
    except CatalogError as exc:
        raise RefcatError(str(exc)) from None


def _result(ra, dec, mag, meta: dict, ra0: float, dec0: float, radius_deg: float,
            mag_limit: float | None) -> Table:
    """The common output: inside the cone, within the limit (NaN kept), sorted."""
    ra, dec, mag = (np.asarray(v, dtype=np.float64) for v in (ra, dec, mag))
    keep = tiles.in_cone(ra, dec, ra0, dec0, radius_deg) & np.isfinite(ra) & np.isfinite(dec)
    if mag_limit is not None:
        keep &= ~(mag > mag_limit)
    ra, dec, mag = ra[keep] % 360.0, dec[keep], mag[keep]
    order = np.argsort(np.where(np.isfinite(mag), mag, np.inf), kind="stable")
    table = Table({"ra": ra[order], "dec": dec[order], "mag": mag[order]})
    table["ra"].unit = table["dec"].unit = u.deg
    table["mag"].unit = u.mag
    table.meta.update(meta)
    table.meta["field"] = {"ra_deg": float(ra0), "dec_deg": float(dec0),
                           "radius_deg": float(radius_deg)}
    table.meta["mag_limit"] = mag_limit
    if len(table) == 0:
        limit = f" brighter than {mag_limit}" if mag_limit is not None else ""
        raise RefcatError(f"{meta['catalog']}: no stars{limit} in the "
                          f"{_field(ra0, dec0, radius_deg)}")
    return table


# --------------------------------------------------------------------------- the file

_MAG_PREFERENCE = ("mag", "gmag", "phot_g_mean_mag", "mag_g", "g_mag", "vmag", "vtmag", "mag_v",
                   "v_mag", "rmag", "mag_r", "r_mag")
_ANY_MAG = re.compile(r"^(mag.*|.*mag)$")
_NOT_MAG = re.compile(r"err|^e_|_e$|sig|flag|unc|sn|snr")


def _mag_column(colnames: Sequence[str]) -> str | None:
    found = find_column(colnames, _MAG_PREFERENCE)
    if found:
        return found
    for c in colnames:
        low = c.lower()
        if _ANY_MAG.match(low) and not _NOT_MAG.search(low):
            return c
    return None


@lru_cache(maxsize=4)
def _read_file(path: str, mtime_ns: int, size: int,
               mag_column: str | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    try:
        table = read_table(path)
    except ValueError as exc:
        raise RefcatError(f"reference catalogue file {path}: {exc}") from None
    ra_col = find_column(table.colnames, RA_NAMES)
    dec_col = find_column(table.colnames, DEC_NAMES)
    if ra_col is None or dec_col is None:
        raise RefcatError(f"reference catalogue file {path}: no RA/Dec columns (looked for "
                          f"{', '.join(RA_NAMES[:4])} / {', '.join(DEC_NAMES[:4])}, any case; "
                          f"columns: {', '.join(table.colnames)})")
    if mag_column is not None:
        mag_col = find_column(table.colnames, [mag_column])
        if mag_col is None:
            raise RefcatError(f"reference catalogue file {path}: no column {mag_column!r} "
                              f"(columns: {', '.join(table.colnames)})")
    else:
        mag_col = _mag_column(table.colnames)
    try:
        ra = degrees(table[ra_col], hours_if_text=True)
        dec = degrees(table[dec_col], hours_if_text=False)
    except (ValueError, TypeError) as exc:
        raise RefcatError(f"reference catalogue file {path}: columns {ra_col}/{dec_col} are not "
                          f"coordinates ({exc})") from None
    mag = np.full(len(table), np.nan) if mag_col is None else float_values(table[mag_col])
    meta = {"ra_column": ra_col, "dec_column": dec_col, "mag_column": mag_col}
    return ra, dec, mag, meta


def from_file(path: str | os.PathLike, ra_deg: float, dec_deg: float, radius_deg: float,
              mag_limit: float | None = None, mag_column: str | None = None) -> Table:
    path = Path(path).expanduser()
    try:
        st = path.stat()
    except OSError as exc:
        raise RefcatError(f"reference catalogue file {path}: {exc.strerror} (for the "
                          f"{_field(ra_deg, dec_deg, radius_deg)})") from None
    ra, dec, mag, meta = _read_file(str(path.resolve()), st.st_mtime_ns, st.st_size, mag_column)
    band = meta["mag_column"]
    return _result(ra, dec, mag, {"catalog": f"file {path}", "source": "file", "band": band,
                                  "epoch": None, "path": str(path), **meta},
                   ra_deg, dec_deg, radius_deg, mag_limit)


# ------------------------------------------------------------------------------ Tycho-2

def from_tycho(ra_deg: float, dec_deg: float, radius_deg: float,
               index_dirs: Iterable[str | os.PathLike] | None = DEFAULT_INDEX_DIRS,
               mag_limit: float | None = None) -> Table:
    dirs = list(index_dirs) if index_dirs is not None else None
    try:
        stars = tycho.cone(ra_deg, dec_deg, radius_deg, index_dirs=dirs, exact=False)
    except tycho.TychoIndexMissing as exc:
        raise RefcatError(f"Tycho-2 cannot serve the {_field(ra_deg, dec_deg, radius_deg)}: "
                          f"{exc}") from None
    except (OSError, ValueError) as exc:
        raise RefcatError(f"Tycho-2 cannot serve the {_field(ra_deg, dec_deg, radius_deg)}: "
                          f"unreadable index ({exc})") from None
    return _result(stars.ra_deg, stars.dec_deg, stars.vt_mag,
                   {"catalog": f"Tycho-2 (astrometry.net index {stars.path.name})",
                    "source": "tycho2", "band": "VT", "epoch": None, "index": str(stars.path)},
                   ra_deg, dec_deg, radius_deg, mag_limit)


# --------------------------------------------------------------------------------- Gaia

def from_gaia(ra_deg: float, dec_deg: float, radius_deg: float, *, cache_dir: str | os.PathLike,
              offline: bool = False, mag_limit: float | None = None, epoch: float | None = None,
              vizier_server: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S,
              order: int | None = None) -> Table:
    """Gaia DR3 stars of the cone (see the module docstring); `order` overrides the
    HEALPix order of the tiles (default `tile_order(radius_deg)`)."""
    with _as_refcat_error():
        cols, tile_meta = tiles.fetch(GAIA_TILES, ra_deg, dec_deg, radius_deg,
                                      cache_dir=cache_dir, offline=offline, mag_limit=mag_limit,
                                      vizier_server=vizier_server, timeout_s=timeout_s,
                                      order=order)
    ra, dec = cols["ra"], cols["dec"]
    if epoch is not None:
        dt = float(epoch) - GAIA_EPOCH
        pmra = np.nan_to_num(cols["pmra"])    # mas/yr, already times cos(dec)
        pmdec = np.nan_to_num(cols["pmdec"])
        dec = dec + pmdec * dt / 3.6e6
        ra = ra + pmra * dt / 3.6e6 / np.cos(np.radians(np.clip(dec, -89.999999, 89.999999)))
        dec = np.clip(dec, -90.0, 90.0)
    meta = {"catalog": GAIA_NAME, "source": "gaia", "band": "G",
            "epoch": GAIA_EPOCH if epoch is None else float(epoch), **tile_meta}
    return _result(ra, dec, cols["mag"], meta, ra_deg, dec_deg, radius_deg, mag_limit)


# ------------------------------------------------------------------------------- public

def reference_stars(ra_deg: float, dec_deg: float, radius_deg: float, *, source: str = "auto",
                    cache_dir: str | os.PathLike,
                    offline: bool = False,
                    index_dirs: Iterable[str | os.PathLike] | None = DEFAULT_INDEX_DIRS,
                    mag_limit: float | None = None, epoch: float | None = None,
                    catalog_file: str | os.PathLike | None = None,
                    mag_column: str | None = None,
                    vizier_server: str | None = None,
                    timeout_s: float = DEFAULT_TIMEOUT_S) -> Table:
    """Reference stars within `radius_deg` of (ra_deg, dec_deg) (ICRS degrees); see the
    module docstring for the sources, the output and the errors.

    source: "auto" | "gaia" | "tycho2" | a catalogue file path (settings.refcat);
    cache_dir: the catalogue cache (DataDir.catalog_cache); offline: never query VizieR;
    index_dirs: astrometry.net index folders (settings.index_dirs); mag_limit: keep stars
    brighter than this (NaN magnitudes are kept); epoch: Julian year to move Gaia
    positions to (None: 2016.0); catalog_file: the file "auto" prefers; mag_column: the
    file's magnitude column; vizier_server, timeout_s: see the module docstring.
    """
    if not (radius_deg > 0):
        raise ValueError(f"radius_deg must be positive, got {radius_deg}")
    ra_deg = float(ra_deg) % 360.0
    dec_deg = float(dec_deg)
    if not -90.0 <= dec_deg <= 90.0:
        raise ValueError(f"dec_deg must be within [-90, 90], got {dec_deg}")
    src = str(source).strip()
    gaia = dict(cache_dir=cache_dir, offline=offline, mag_limit=mag_limit, epoch=epoch,
                vizier_server=vizier_server, timeout_s=timeout_s)
    if src.lower() == "gaia":
        return from_gaia(ra_deg, dec_deg, radius_deg, **gaia)
    if src.lower() == "tycho2":
        return from_tycho(ra_deg, dec_deg, radius_deg, index_dirs, mag_limit)
    if src.lower() != "auto":
        return from_file(src, ra_deg, dec_deg, radius_deg, mag_limit, mag_column)
    if catalog_file is not None:
        return from_file(catalog_file, ra_deg, dec_deg, radius_deg, mag_limit, mag_column)
    try:
        return from_gaia(ra_deg, dec_deg, radius_deg, **gaia)
    except RefcatError as gaia_error:
        try:
            table = from_tycho(ra_deg, dec_deg, radius_deg, index_dirs, mag_limit)
        except RefcatError as tycho_error:
            raise RefcatError(f"no reference catalogue can serve the "
                              f"{_field(ra_deg, dec_deg, radius_deg)}: {gaia_error}; and "
                              f"{tycho_error}") from None
        table.meta["fallback"] = str(gaia_error)
        return table
