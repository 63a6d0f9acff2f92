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
  2016.0, Gmag, pmRA, pmDE). The sky is cut into HEALPix tiles (nested scheme;
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

import math
import os
import re
import time
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from astropy import units as u
from astropy.io import fits
from astropy.table import Table

from gppy.astrometry import tycho
from gppy.errors import InputError
from gppy.fitsio import write_atomic

DEFAULT_INDEX_DIRS = (tycho.DEFAULT_INDEX_DIR,)   # as gppy.settings' default

GAIA_CATALOG = "I/355/gaiadr3"
GAIA_NAME = f"Gaia DR3 (VizieR {GAIA_CATALOG})"
GAIA_EPOCH = 2016.0
GAIA_CACHE_SUBDIR = "gaia-dr3"
VIZIER_SERVER_ENV = "GPPY_VIZIER_SERVER"
DEFAULT_TIMEOUT_S = 20.0
MIN_ORDER, MAX_ORDER = 3, 10       # HEALPix orders used for tiles (7.3 deg ... 3.4')
MAG_STEP = 0.5                     # cache keys round magnitude limits up to this
QUERY_MARGIN_DEG = 0.05            # tile queries reach this beyond the tile (proper motions)
RETRY_AFTER_S = 300.0              # a VizieR server that failed is not asked again for this long

_failed_servers: dict[str, tuple[float, str]] = {}   # server URL -> (monotonic time, message)


def forget_failures() -> None:
    """Forget which VizieR servers failed (they are otherwise skipped for RETRY_AFTER_S)."""
    _failed_servers.clear()


class RefcatError(InputError):
    """No reference catalogue can serve a field; the message says which and why."""


def _field(ra_deg: float, dec_deg: float, radius_deg: float) -> str:
    return f"field RA {ra_deg:.4f} Dec {dec_deg:+.4f} radius {radius_deg:.3f} deg"


# ---------------------------------------------------------------------------- geometry

def _unit(ra_deg, dec_deg) -> np.ndarray:
    ra, dec = np.radians(ra_deg), np.radians(dec_deg)
    return np.stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)], axis=-1)


def _in_cone(ra, dec, ra0: float, dec0: float, radius_deg: float) -> np.ndarray:
    ra, dec = np.asarray(ra, float), np.asarray(dec, float)
    if ra.size == 0:
        return np.zeros(0, bool)
    return _unit(ra, dec) @ _unit(ra0, dec0) >= math.cos(math.radians(radius_deg))


def _sep_deg(ra, dec, ra0, dec0) -> np.ndarray:
    dot = np.clip(_unit(ra, dec) @ _unit(ra0, dec0), -1.0, 1.0)
    return np.degrees(np.arccos(dot))


def _result(ra, dec, mag, meta: dict, ra0: float, dec0: float, radius_deg: float,
            mag_limit: float | None) -> Table:
    """The common output: inside the cone, within the limit (NaN kept), sorted."""
    ra, dec, mag = (np.asarray(v, dtype=np.float64) for v in (ra, dec, mag))
    keep = _in_cone(ra, dec, ra0, dec0, radius_deg) & np.isfinite(ra) & np.isfinite(dec)
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

_RA_NAMES = ("ra", "ra_icrs", "raj2000", "_raj2000", "ra_j2000", "ra_deg", "radeg", "ra2000",
             "alpha_j2000", "ra_icrs_deg")
_DEC_NAMES = ("dec", "de_icrs", "dej2000", "_dej2000", "dec_j2000", "dec_deg", "decdeg",
              "dec2000", "delta_j2000", "de", "dec_icrs", "decl", "dej2000_deg")
_MAG_PREFERENCE = ("mag", "gmag", "phot_g_mean_mag", "mag_g", "g_mag", "vmag", "vtmag", "mag_v",
                   "v_mag", "rmag", "mag_r", "r_mag")
_ANY_MAG = re.compile(r"^(mag.*|.*mag)$")
_NOT_MAG = re.compile(r"err|^e_|_e$|sig|flag|unc|sn|snr")


def _find(colnames: Sequence[str], wanted: Iterable[str]) -> str | None:
    lower = {c.lower(): c for c in reversed(colnames)}   # the first of equal names wins
    for name in wanted:
        if name in lower:
            return lower[name]
    return None


def _mag_column(colnames: Sequence[str]) -> str | None:
    found = _find(colnames, _MAG_PREFERENCE)
    if found:
        return found
    for c in colnames:
        low = c.lower()
        if _ANY_MAG.match(low) and not _NOT_MAG.search(low):
            return c
    return None


def _degrees(column, hours_if_text: bool) -> np.ndarray:
    if column.dtype.kind in "USO":
        from astropy.coordinates import Angle
        text = [str(v).strip() for v in column]
        unit = u.hourangle if hours_if_text and any((":" in t or " " in t) for t in text) else u.deg
        return Angle(text, unit=unit).to_value(u.deg)
    values = column.filled(np.nan) if hasattr(column, "filled") else column
    values = np.asarray(values, dtype=np.float64)
    unit = getattr(column, "unit", None)
    if unit is not None and unit != u.deg:
        try:
            values = (values * u.Unit(unit)).to_value(u.deg)
        except (u.UnitConversionError, ValueError, TypeError):
            pass   # unknown or non-angle units: assume degrees
    return values


@lru_cache(maxsize=4)
def _read_file(path: str, mtime_ns: int, size: int,
               mag_column: str | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    name = path.lower()
    if name.endswith(".ecsv"):
        fmt = "ascii.ecsv"
    elif name.endswith((".fits", ".fit", ".fts", ".fits.gz", ".fit.gz")):
        fmt = "fits"
    elif name.endswith((".csv", ".csv.gz")):
        fmt = "ascii.csv"
    else:
        fmt = None
    try:
        table = Table.read(path, format=fmt) if fmt else Table.read(path)
    except Exception as exc:  # astropy raises many kinds for unreadable tables
        raise RefcatError(f"reference catalogue file {path}: cannot be read as a table "
                          f"({type(exc).__name__}: {exc})") from None
    ra_col = _find(table.colnames, _RA_NAMES)
    dec_col = _find(table.colnames, _DEC_NAMES)
    if ra_col is None or dec_col is None:
        raise RefcatError(f"reference catalogue file {path}: no RA/Dec columns (looked for "
                          f"{', '.join(_RA_NAMES[:4])} / {', '.join(_DEC_NAMES[:4])}, any case; "
                          f"columns: {', '.join(table.colnames)})")
    if mag_column is not None:
        mag_col = _find(table.colnames, [mag_column.lower()])
        if mag_col is None:
            raise RefcatError(f"reference catalogue file {path}: no column {mag_column!r} "
                              f"(columns: {', '.join(table.colnames)})")
    else:
        mag_col = _mag_column(table.colnames)
    try:
        ra = _degrees(table[ra_col], hours_if_text=True)
        dec = _degrees(table[dec_col], hours_if_text=False)
    except (ValueError, TypeError) as exc:
        raise RefcatError(f"reference catalogue file {path}: columns {ra_col}/{dec_col} are not "
                          f"coordinates ({exc})") from None
    if mag_col is None:
        mag = np.full(len(table), np.nan)
    else:
        col = table[mag_col]
        mag = np.asarray(col.filled(np.nan) if hasattr(col, "filled") else col, dtype=np.float64)
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


# --------------------------------------------------------------------------- Gaia tiles

def _healpix(order: int):
    from astropy_healpix import HEALPix
    return HEALPix(nside=2 ** order, order="nested")


def tile_order(radius_deg: float) -> int:
    """The HEALPix order whose tiles are about `radius_deg` on a side."""
    side_order0 = 58.63   # deg: sqrt(4 pi sr / 12)
    k = round(math.log2(side_order0 / max(radius_deg, 1e-3)))
    return int(min(max(k, MIN_ORDER), MAX_ORDER))


def tiles_for_cone(ra_deg: float, dec_deg: float, radius_deg: float, order: int) -> np.ndarray:
    """Nested HEALPix tiles of `order` that overlap the cone (conservatively)."""
    hp = _healpix(order)
    res = hp.pixel_resolution.to_value(u.deg)
    # astropy_healpix's cone search can miss edge tiles: ask wider, then prune
    tiles = np.unique(hp.cone_search_lonlat(ra_deg * u.deg, dec_deg * u.deg,
                                            min(radius_deg + 0.6 * res, 180.0) * u.deg))
    step = 16
    lon, lat = hp.boundaries_lonlat(tiles, step=step)
    dist = _sep_deg(lon.to_value(u.deg), lat.to_value(u.deg), ra_deg, dec_deg)
    near = dist.min(axis=1) <= radius_deg + res / step
    centre_tile = int(hp.lonlat_to_healpix(ra_deg * u.deg, dec_deg * u.deg))
    return np.sort(tiles[near | (tiles == centre_tile)]).astype(np.int64)


def _tile_circle(order: int, ipix: int) -> tuple[float, float, float]:
    hp = _healpix(order)
    lon, lat = hp.healpix_to_lonlat(ipix)
    ra0, dec0 = float(lon.to_value(u.deg)), float(lat.to_value(u.deg))
    blon, blat = hp.boundaries_lonlat([ipix], step=8)
    r = float(_sep_deg(blon.to_value(u.deg)[0], blat.to_value(u.deg)[0], ra0, dec0).max())
    return ra0, dec0, r


def _limit_key(mag_limit: float | None) -> float | None:
    if mag_limit is None:
        return None
    return math.ceil(mag_limit / MAG_STEP - 1e-9) * MAG_STEP


def _tile_path(cache: Path, order: int, ipix: int, key: float | None) -> Path:
    tag = "all" if key is None else f"{key:.1f}"
    return cache / f"hpx{order}" / f"{ipix}-G{tag}.fits"


def _serves(path: Path, key: float | None) -> bool:
    tag = path.stem.rsplit("-G", 1)[-1]
    if tag == "all":
        return True
    try:
        return key is not None and float(tag) >= key - 1e-9
    except ValueError:
        return False


def _cached_file(cache: Path, order: int, ipix: int, key: float | None) -> Path | None:
    folder = cache / f"hpx{order}"
    if not folder.is_dir():
        return None
    good = [p for p in folder.glob(f"{ipix}-G*.fits") if _serves(p, key)]
    def limit(p: Path) -> float:   # the tightest limit that serves: the smallest file to read
        tag = p.stem.rsplit("-G", 1)[-1]
        return math.inf if tag == "all" else float(tag)

    return min(good, key=limit) if good else None


def _cover(cache: Path, order: int, ipix: int, key: float | None,
           ancestors: bool = True) -> list[tuple[Path, int]] | None:
    """Cached files (path, order of the file) holding all of tile (order, ipix)."""
    own = _cached_file(cache, order, ipix, key)
    if own:
        return [(own, order)]
    if ancestors:
        for up in range(1, order - MIN_ORDER + 1):
            parent = _cached_file(cache, order - up, ipix >> (2 * up), key)
            if parent:
                return [(parent, order - up)]
    if order < MAX_ORDER:
        parts = []
        for child in range(4 * ipix, 4 * ipix + 4):
            got = _cover(cache, order + 1, child, key, ancestors=False)
            if got is None:
                return None
            parts += got
        return parts
    return None


def _read_tile(path: Path) -> Table:
    try:
        with fits.open(path, memmap=False) as hdul:
            return Table(hdul[1].data)
    except Exception as exc:  # a damaged cache file: say which
        raise RefcatError(f"{GAIA_NAME}: cache file {path} is unreadable ({exc}); delete it "
                          f"to query the tile again") from None


def _vizier_url_base(server: str) -> str:
    if server.startswith(("http://", "https://")):
        return server.rstrip("/")
    return "https://" + server


def _vizier_client(server: str | None, timeout_s: float, mag_key: float | None):
    from astroquery.vizier import VizierClass

    class _Vizier(VizierClass):
        """VizieR with a server that may be a full base URL (a local stand-in)."""

        def _server_to_url(self, return_type="votable"):
            if self.VIZIER_SERVER.startswith(("http://", "https://")):
                return self.VIZIER_SERVER.rstrip("/") + "/viz-bin/" + return_type
            return super()._server_to_url(return_type)

    filters = {} if mag_key is None else {"Gmag": f"<{mag_key:.2f}"}
    kwargs = {} if server is None else {"vizier_server": server}
    return _Vizier(columns=["RA_ICRS", "DE_ICRS", "Gmag", "pmRA", "pmDE"],
                   column_filters=filters, catalog=GAIA_CATALOG, row_limit=-1,
                   timeout=timeout_s, **kwargs)


def _column(table, names: Sequence[str]) -> np.ndarray:
    name = _find(table.colnames, [n.lower() for n in names])
    if name is None:
        return np.full(len(table), np.nan)
    col = table[name]
    return np.asarray(col.filled(np.nan) if hasattr(col, "filled") else col, dtype=np.float64)


def _query_tile(client, order: int, ipix: int, where: str) -> Table:
    """Gaia rows of one tile from VizieR (RefcatError on any failure)."""
    import requests
    from astropy.coordinates import SkyCoord

    ra0, dec0, r = _tile_circle(order, ipix)
    server = _vizier_url_base(client.VIZIER_SERVER)
    fail = f"{GAIA_NAME} cannot serve the {where}: VizieR at {server}"
    failed = _failed_servers.get(server)
    if failed and time.monotonic() - failed[0] < RETRY_AFTER_S:
        ago = time.monotonic() - failed[0]
        raise RefcatError(f"{fail} failed {ago:.0f} s ago ({failed[1]}); not asked again for "
                          f"{RETRY_AFTER_S:.0f} s")
    problem = None
    try:
        response = client.query_region_async(SkyCoord(ra0, dec0, unit="deg", frame="icrs"),
                                             radius=(r + QUERY_MARGIN_DEG) * u.deg,
                                             frame="icrs", cache=False)
        response.raise_for_status()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")    # VOTable unit and schema chatter
            tables = client._parse_result(response)
        if tables is None:
            problem = "gave an unusable answer (not a VOTable)"
    except requests.exceptions.Timeout:
        problem = f"did not answer within {client.TIMEOUT:g} s"
    except requests.exceptions.ConnectionError as exc:
        reason = exc.args[0] if exc.args else exc
        problem = f"is unreachable ({getattr(reason, 'reason', reason)})"
    except requests.exceptions.HTTPError as exc:
        problem = f"answered {exc}"
    except Exception as exc:  # parse errors and the like
        problem = f"gave an unusable answer ({type(exc).__name__}: {exc})"
    if problem:
        _failed_servers[server] = (time.monotonic(), problem)
        raise RefcatError(f"{fail} {problem}")
    if len(tables) == 0:
        rows = Table({"ra": np.zeros(0), "dec": np.zeros(0), "mag": np.zeros(0, np.float32),
                      "pmra": np.zeros(0, np.float32), "pmdec": np.zeros(0, np.float32)})
    else:
        t = tables[0]
        rows = Table({"ra": _column(t, ["RA_ICRS"]), "dec": _column(t, ["DE_ICRS"]),
                      "mag": _column(t, ["Gmag"]).astype(np.float32),
                      "pmra": _column(t, ["pmRA"]).astype(np.float32),
                      "pmdec": _column(t, ["pmDE"]).astype(np.float32)})
    hp = _healpix(order)
    ok = np.isfinite(rows["ra"]) & np.isfinite(rows["dec"])
    rows = rows[ok]
    if len(rows):
        mine = hp.lonlat_to_healpix(np.asarray(rows["ra"]) * u.deg,
                                    np.asarray(rows["dec"]) * u.deg) == ipix
        rows = rows[mine]
    return rows


def _write_tile(path: Path, rows: Table, order: int, ipix: int, key: float | None,
                server: str) -> None:
    hdu = fits.BinTableHDU(rows, name="GAIA")
    h = hdu.header
    h["CATALOG"] = (GAIA_CATALOG, "VizieR catalogue")
    h["HPXORDER"] = (order, "HEALPix order (nested)")
    h["HPXTILE"] = (ipix, "HEALPix tile")
    h["MAGLIM"] = ("all" if key is None else key, "Gmag limit of the query")
    h["EPOCH"] = (GAIA_EPOCH, "Julian year of ra, dec")
    h["SERVER"] = (server, "VizieR server queried")
    h["QUERIED"] = (time.strftime("%Y-%m-%dT%H:%M:%S"), "local time of the query")
    write_atomic(path, fits.HDUList([fits.PrimaryHDU(), hdu]))


def from_gaia(ra_deg: float, dec_deg: float, radius_deg: float, *, cache_dir: str | os.PathLike,
              offline: bool = False, mag_limit: float | None = None, epoch: float | None = None,
              vizier_server: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S,
              order: int | None = None) -> Table:
    """Gaia DR3 stars of the cone (see the module docstring); `order` overrides the
    HEALPix order of the tiles (default `tile_order(radius_deg)`)."""
    where = _field(ra_deg, dec_deg, radius_deg)
    cache = Path(cache_dir).expanduser() / GAIA_CACHE_SUBDIR
    order = tile_order(radius_deg) if order is None else int(order)
    key = _limit_key(mag_limit)
    tiles = tiles_for_cone(ra_deg, dec_deg, radius_deg, order)
    covers = {int(t): _cover(cache, order, int(t), key) for t in tiles}
    missing = [t for t, c in covers.items() if c is None]
    queried: list[int] = []
    if missing:
        limit = "all magnitudes" if key is None else f"G < {key:.1f}"
        if offline:
            raise RefcatError(
                f"{GAIA_NAME} cannot serve the {where}: offline, and {len(missing)} of "
                f"{len(tiles)} sky tiles (HEALPix order {order}, {limit}) are not in the cache "
                f"{cache}")
        server = vizier_server or os.environ.get(VIZIER_SERVER_ENV) or None
        client = _vizier_client(server, timeout_s, key)
        for t in missing:
            rows = _query_tile(client, order, t, where)
            path = _tile_path(cache, order, t, key)
            try:
                _write_tile(path, rows, order, t, key, _vizier_url_base(client.VIZIER_SERVER))
            except OSError as exc:
                raise RefcatError(f"{GAIA_NAME}: cannot write the cache {path} "
                                  f"({exc.strerror})") from None
            covers[t] = [(path, order)]
            queried.append(t)
    parts = []
    hp = _healpix(order)
    for t, cover in covers.items():
        for path, file_order in cover:
            rows = _read_tile(path)
            if file_order < order and len(rows):   # an ancestor: keep this tile's part
                inside = hp.lonlat_to_healpix(np.asarray(rows["ra"], float) * u.deg,
                                              np.asarray(rows["dec"], float) * u.deg) == t
                rows = rows[inside]
            parts.append(rows)
    cols = {name: np.concatenate([np.asarray(p[name], dtype=np.float64) for p in parts])
            if parts else np.zeros(0) for name in ("ra", "dec", "mag", "pmra", "pmdec")}
    ra, dec = cols["ra"], cols["dec"]
    if epoch is not None:
        dt = float(epoch) - GAIA_EPOCH
        pmra = np.nan_to_num(cols["pmra"])    # mas/yr, already times cos(dec)
        pmdec = np.nan_to_num(cols["pmdec"])
        dec = dec + pmdec * dt / 3.6e6
        ra = ra + pmra * dt / 3.6e6 / np.cos(np.radians(np.clip(dec, -89.999999, 89.999999)))
        dec = np.clip(dec, -90.0, 90.0)
    meta = {"catalog": GAIA_NAME, "source": "gaia", "band": "G",
            "epoch": GAIA_EPOCH if epoch is None else float(epoch),
            "tiles": {"order": order, "tiles": [int(t) for t in tiles], "queried": queried},
            "cache": str(cache)}
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
