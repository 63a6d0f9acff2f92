"""VizieR catalogues cached on disk by sky tile, shared by the astrometric (Gaia) and
photometric (PS1, SDSS, APASS, 2MASS, SkyMapper, Gaia) reference catalogues.

    fetch(table, ra_deg, dec_deg, radius_deg, *, cache_dir, offline=False,
          mag_limit=None, vizier_server=None, timeout_s=20, order=None)
      -> (columns, meta): the rows of every tile overlapping the cone (not yet cut to
         the cone), as {"ra": deg, "dec": deg, <stored name>: array, ...}; meta holds
         tiles {order, tiles, queried} and cache (the catalogue's cache folder).

A catalogue is described by a `VizierTable`: its VizieR id, the columns to fetch and
the names they are stored under. The sky is cut into HEALPix tiles (nested scheme;
the order is chosen per call so that a tile's side is about the field radius, i.e.
~7-12 tiles a field); each tile is queried once (a cone around the tile, rows then
kept by tile), optionally with a magnitude limit on the table's `limit_column`
rounded up to 0.5 mag, and saved as
`<cache_dir>/<subdir>/hpx<order>/<tile>-<limit_tag><limit|all>.fits`. A request is
served from any cached tile file that covers it: the same tile with an equal or
fainter limit, an ancestor tile (coarser order) or all four children (finer order),
so a neighbouring or differently sized field reuses what is there. Offline: the
cache only.

Failures raise CatalogError (an InputError) naming the catalogue, the field and why.
The VizieR server is `vizier_server`, else $GPPY_VIZIER_SERVER, else astroquery's
configured mirror; it may be a host name (https) or a full base URL such as
"http://127.0.0.1:8080" (a local stand-in). A server that failed is not asked again
by this process for RETRY_AFTER_S (5 min; `forget_failures()` resets), so a night of
frames does not wait out the timeout frame after frame.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy import units as u
from astropy.io import fits
from astropy.table import Table

from gppy.catalogs.tables import column_as
from gppy.errors import InputError
from gppy.fitsio import write_atomic

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


class CatalogError(InputError):
    """A reference catalogue cannot serve a field; the message says which and why."""


def field_text(ra_deg: float, dec_deg: float, radius_deg: float) -> str:
    return f"field RA {ra_deg:.4f} Dec {dec_deg:+.4f} radius {radius_deg:.3f} deg"


@dataclass(frozen=True)
class TileColumn:
    vizier: str            # the VizieR column name, e.g. "e_gmag", "g'mag"
    stored: str            # the name in the tile files and in fetch()'s output
    dtype: str = "f4"      # numpy kind: floats (missing: NaN), ints (missing: 0), "U" (missing: "")


@dataclass(frozen=True)
class VizierTable:
    catalog: str                        # VizieR table id, e.g. "II/349/ps1"
    name: str                           # for messages, e.g. "Pan-STARRS1 DR1 (VizieR II/349/ps1)"
    subdir: str                         # cache folder under cache_dir
    ra: str                             # VizieR RA / Dec columns (degrees), stored as ra, dec
    dec: str
    columns: tuple[TileColumn, ...]
    limit_column: str | None = None     # VizieR column a mag_limit applies to
    limit_tag: str = "m"                # file-name tag before the limit ("G" for Gaia Gmag)
    epoch: float | None = None          # Julian year of the positions, if fixed


# ---------------------------------------------------------------------------- geometry

def _unit(ra_deg, dec_deg) -> np.ndarray:
    ra, dec = np.radians(ra_deg), np.radians(dec_deg)
    return np.stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)], axis=-1)


def in_cone(ra, dec, ra0: float, dec0: float, radius_deg: float) -> np.ndarray:
    ra, dec = np.asarray(ra, float), np.asarray(dec, float)
    if ra.size == 0:
        return np.zeros(0, bool)
    return _unit(ra, dec) @ _unit(ra0, dec0) >= math.cos(math.radians(radius_deg))


def sep_deg(ra, dec, ra0, dec0) -> np.ndarray:
    dot = np.clip(_unit(ra, dec) @ _unit(ra0, dec0), -1.0, 1.0)
    return np.degrees(np.arccos(dot))


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
    dist = sep_deg(lon.to_value(u.deg), lat.to_value(u.deg), ra_deg, dec_deg)
    near = dist.min(axis=1) <= radius_deg + res / step
    centre_tile = int(hp.lonlat_to_healpix(ra_deg * u.deg, dec_deg * u.deg))
    return np.sort(tiles[near | (tiles == centre_tile)]).astype(np.int64)


def tile_circle(order: int, ipix: int) -> tuple[float, float, float]:
    """Centre (ra, dec) and the radius (deg) of the circle around one tile."""
    hp = _healpix(order)
    lon, lat = hp.healpix_to_lonlat(ipix)
    ra0, dec0 = float(lon.to_value(u.deg)), float(lat.to_value(u.deg))
    blon, blat = hp.boundaries_lonlat([ipix], step=8)
    r = float(sep_deg(blon.to_value(u.deg)[0], blat.to_value(u.deg)[0], ra0, dec0).max())
    return ra0, dec0, r


def _in_tile(order: int, ipix: int, ra, dec) -> np.ndarray:
    ra, dec = np.asarray(ra, float), np.asarray(dec, float)
    if ra.size == 0:
        return np.zeros(0, bool)
    return _healpix(order).lonlat_to_healpix(ra * u.deg, dec * u.deg) == ipix


# ------------------------------------------------------------------------------ cache

def limit_key(mag_limit: float | None) -> float | None:
    if mag_limit is None:
        return None
    return math.ceil(mag_limit / MAG_STEP - 1e-9) * MAG_STEP


def _tile_path(table: VizierTable, cache: Path, order: int, ipix: int, key: float | None) -> Path:
    tag = "all" if key is None else f"{key:.1f}"
    return cache / f"hpx{order}" / f"{ipix}-{table.limit_tag}{tag}.fits"


def _file_limit(table: VizierTable, path: Path) -> float | None:
    """The limit a tile file was queried with: inf for "all", None if not a tile name."""
    rest = path.stem.split("-", 1)[-1]
    if not rest.startswith(table.limit_tag):
        return None
    tag = rest[len(table.limit_tag):]
    if tag == "all":
        return math.inf
    try:
        return float(tag)
    except ValueError:
        return None


def _cached_file(table: VizierTable, cache: Path, order: int, ipix: int,
                 key: float | None) -> Path | None:
    folder = cache / f"hpx{order}"
    if not folder.is_dir():
        return None
    wanted = math.inf if key is None else key - 1e-9
    limits = {p: _file_limit(table, p) for p in folder.glob(f"{ipix}-{table.limit_tag}*.fits")}
    good = [p for p, lim in limits.items() if lim is not None and lim >= wanted]
    # the tightest limit that serves: the smallest file to read
    return min(good, key=lambda p: limits[p]) if good else None


def _cover(table: VizierTable, cache: Path, order: int, ipix: int, key: float | None,
           ancestors: bool = True) -> list[tuple[Path, int]] | None:
    """Cached files (path, order of the file) holding all of tile (order, ipix)."""
    own = _cached_file(table, cache, order, ipix, key)
    if own:
        return [(own, order)]
    if ancestors:
        for up in range(1, order - MIN_ORDER + 1):
            parent = _cached_file(table, cache, order - up, ipix >> (2 * up), key)
            if parent:
                return [(parent, order - up)]
    if order < MAX_ORDER:
        parts = []
        for child in range(4 * ipix, 4 * ipix + 4):
            got = _cover(table, cache, order + 1, child, key, ancestors=False)
            if got is None:
                return None
            parts += got
        return parts
    return None


def _stored_names(table: VizierTable) -> list[str]:
    return ["ra", "dec"] + [c.stored for c in table.columns]


def _read_tile(table: VizierTable, path: Path) -> dict[str, np.ndarray]:
    try:
        with fits.open(path, memmap=False) as hdul:
            data = Table(hdul[1].data)
    except Exception as exc:  # a damaged cache file: say which
        raise CatalogError(f"{table.name}: cache file {path} is unreadable ({exc}); delete it "
                           f"to query the tile again") from None
    missing = [n for n in _stored_names(table) if n not in data.colnames]
    if missing:   # written by a version that fetched fewer columns
        raise CatalogError(f"{table.name}: cache file {path} lacks the columns "
                           f"{', '.join(missing)}; delete it to query the tile again")
    return {n: np.asarray(data[n]) for n in _stored_names(table)}


def _write_tile(table: VizierTable, path: Path, rows: dict[str, np.ndarray], order: int,
                ipix: int, key: float | None, server: str) -> None:
    hdu = fits.BinTableHDU(Table(rows), name="TILE")
    h = hdu.header
    h["CATALOG"] = (table.catalog, "VizieR catalogue")
    h["HPXORDER"] = (order, "HEALPix order (nested)")
    h["HPXTILE"] = (ipix, "HEALPix tile")
    h["MAGLIM"] = ("all" if key is None else key, f"{table.limit_column} limit of the query")
    if table.epoch is not None:
        h["EPOCH"] = (table.epoch, "Julian year of ra, dec")
    h["SERVER"] = (server, "VizieR server queried")
    h["QUERIED"] = (time.strftime("%Y-%m-%dT%H:%M:%S"), "local time of the query")
    write_atomic(path, fits.HDUList([fits.PrimaryHDU(), hdu]))


# ----------------------------------------------------------------------------- VizieR

def vizier_url_base(server: str) -> str:
    if server.startswith(("http://", "https://")):
        return server.rstrip("/")
    return "https://" + server


def _vizier_client(table: VizierTable, server: str | None, timeout_s: float,
                   key: float | None):
    from astroquery.vizier import VizierClass

    class _Vizier(VizierClass):
        """VizieR with a server that may be a full base URL (a local stand-in)."""

        def _server_to_url(self, return_type="votable"):
            if self.VIZIER_SERVER.startswith(("http://", "https://")):
                return self.VIZIER_SERVER.rstrip("/") + "/viz-bin/" + return_type
            return super()._server_to_url(return_type)

    filters = {} if key is None else {table.limit_column: f"<{key:.2f}"}
    kwargs = {} if server is None else {"vizier_server": server}
    return _Vizier(columns=[table.ra, table.dec] + [c.vizier for c in table.columns],
                   column_filters=filters, catalog=table.catalog, row_limit=-1,
                   timeout=timeout_s, **kwargs)


def _query_tile(table: VizierTable, client, order: int, ipix: int,
                where: str) -> dict[str, np.ndarray]:
    """The rows of one tile from VizieR (CatalogError on any failure)."""
    import requests
    from astropy.coordinates import SkyCoord

    ra0, dec0, r = tile_circle(order, ipix)
    server = vizier_url_base(client.VIZIER_SERVER)
    fail = f"{table.name} cannot serve the {where}: VizieR at {server}"
    failed = _failed_servers.get(server)
    if failed and time.monotonic() - failed[0] < RETRY_AFTER_S:
        ago = time.monotonic() - failed[0]
        raise CatalogError(f"{fail} failed {ago:.0f} s ago ({failed[1]}); not asked again for "
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
        raise CatalogError(f"{fail} {problem}")
    result = tables[0] if len(tables) else Table()
    rows = {"ra": column_as(result, table.ra, "f8"), "dec": column_as(result, table.dec, "f8")}
    for c in table.columns:
        rows[c.stored] = column_as(result, c.vizier, c.dtype)
    keep = np.isfinite(rows["ra"]) & np.isfinite(rows["dec"])
    keep[keep] = _in_tile(order, ipix, rows["ra"][keep], rows["dec"][keep])
    return {name: values[keep] for name, values in rows.items()}


# ------------------------------------------------------------------------------ fetch

def fetch(table: VizierTable, ra_deg: float, dec_deg: float, radius_deg: float, *,
          cache_dir: str | os.PathLike, offline: bool = False, mag_limit: float | None = None,
          vizier_server: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S,
          order: int | None = None) -> tuple[dict[str, np.ndarray], dict]:
    """The cached (or queried, then cached) rows of the tiles over the cone; see the
    module docstring. `order` overrides the HEALPix order (default tile_order(radius))."""
    where = field_text(ra_deg, dec_deg, radius_deg)
    cache = Path(cache_dir).expanduser() / table.subdir
    order = tile_order(radius_deg) if order is None else int(order)
    key = limit_key(mag_limit)
    if key is not None and table.limit_column is None:
        raise ValueError(f"{table.name} has no magnitude column to limit queries by")
    tiles = tiles_for_cone(ra_deg, dec_deg, radius_deg, order)
    covers = {int(t): _cover(table, cache, order, int(t), key) for t in tiles}
    missing = [t for t, c in covers.items() if c is None]
    queried: list[int] = []
    if missing:
        limit = "all magnitudes" if key is None else f"{table.limit_column} < {key:.1f}"
        if offline:
            raise CatalogError(
                f"{table.name} cannot serve the {where}: offline, and {len(missing)} of "
                f"{len(tiles)} sky tiles (HEALPix order {order}, {limit}) are not in the cache "
                f"{cache}")
        server = vizier_server or os.environ.get(VIZIER_SERVER_ENV) or None
        client = _vizier_client(table, server, timeout_s, key)
        for t in missing:
            rows = _query_tile(table, client, order, t, where)
            path = _tile_path(table, cache, order, t, key)
            try:
                _write_tile(table, path, rows, order, t, key, vizier_url_base(client.VIZIER_SERVER))
            except OSError as exc:
                raise CatalogError(f"{table.name}: cannot write the cache {path} "
                                   f"({exc.strerror})") from None
            covers[t] = [(path, order)]
            queried.append(t)
    parts = []
    for t, cover in covers.items():
        for path, file_order in cover:
            rows = _read_tile(table, path)
            if file_order < order:   # an ancestor: keep this tile's part
                inside = _in_tile(order, t, rows["ra"], rows["dec"])
                rows = {name: values[inside] for name, values in rows.items()}
            parts.append(rows)
    columns = {}
    for c in [TileColumn("", "ra", "f8"), TileColumn("", "dec", "f8"), *table.columns]:
        values = [np.asarray(p[c.stored]) for p in parts]
        if np.dtype(c.dtype).kind == "U":
            values = [v.astype(str) for v in values]
        else:
            values = [v.astype(c.dtype if np.dtype(c.dtype).kind != "f" else np.float64)
                      for v in values]
        columns[c.stored] = np.concatenate(values) if values else np.zeros(0, c.dtype)
    meta = {"tiles": {"order": order, "tiles": [int(t) for t in tiles], "queried": queried},
            "cache": str(cache)}
    return columns, meta
