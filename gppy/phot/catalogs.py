"""Photometric reference catalogues: AB magnitudes of stars in a field, in the band
wanted, for zero points and colour terms.

    choose_catalog(profile_refcat, dec_deg, band) -> "PS1" | "SDSS" | ... | "file"
    reference_mags(ra_deg, dec_deg, radius_deg, band, *, catalog, cache_dir=None,
                   offline=False, file=None, columns=None, mag_range=(12, 20),
                   magerr_max=0.05, ps1_relation="quadratic", ...)
      -> Table: ra, dec (deg), mag, magerr (AB, in `band`), colour (AB, meta
         colour_name, e.g. "g-r"; NaN where a star lacks it), bright to faint;
         meta: catalog, catalog_key, band, system ("AB"), transform, colour_name,
         field, mag_range, magerr_max, cuts, n_field (stars in the field before the
         cuts), and tiles / cache (VizieR) or path (file).
    catalog_stars(key, ra_deg, dec_deg, radius_deg, ...) -> the common table of one
         catalogue: ra, dec, mag_<band>, magerr_<band> (AB) for its bands, good
    read_catalog_file(path, ra_deg, dec_deg, radius_deg, columns=None) -> the same
         from a file of any layout ("file" catalogue)

Catalogues (VizieR through astroquery, each field cached on disk by HEALPix sky tile
with gppy.catalogs.tiles, so a field is queried once; offline: the cache only):

    key        VizieR          bands (AB after the offsets of gppy.phot.transforms)
    PS1        II/349/ps1      g r i z y                   Dec > -30
    SDSS       V/147/sdss12    u g r i z (u -0.04, z +0.02) north, irregular
    APASS      II/336/apass9   B V (Vega) g r i             all sky
    2MASS      II/246/out      J H K (Vega)                 all sky
    SkyMapper  II/379/smssdr4  u v g r i z (PSF)            south (DR4)
    GaiaDR3    I/355/gaiadr3   G BP RP (Vega)               all sky

The quality cuts of each (`good`, or a band's magnitude removed where only that band
is bad) are listed with the catalogue below and in meta["cuts"]. Johnson-Cousins
bands a catalogue lacks are computed (PS1 -> BVRI Tonry et al. 2012; SDSS -> UBVRI
and APASS -> RI Jordi et al. 2006; see gppy.phot.transforms). Medium bands (7DT
m400 ... m875) and anything else come from a catalogue file (synthetic photometry)
with a mag_<band> column.

Files: `catalog="file"` reads ECSV, FITS, CSV or a text table whose magnitudes are
taken as AB as they stand; `columns` maps output names to the file's
({"ra": "RAJ2000", "mag_g": "gmag", "magerr_g": "e_gmag"}), anything not mapped is
found by common names (ra/RAJ2000/..., mag_g, gmag, g_mag, g; magerr_g, e_gmag,
gmagerr, gerr, ...; band letters are case-sensitive: g is not G). A file with a
known catalogue (`catalog="APASS", file=...`: a VizieR cut-out) is read with that
catalogue's column names, systems, cuts and transformations; there `columns` maps
the catalogue's VizieR names to the file's ({"gmag": "g", "Qual": "Q"}).

Every failure raises PhotCatalogError (an InputError) naming the catalogue and the
field: offline without the field in the cache or a file, VizieR failing, an
unreadable file, a band the catalogue cannot give, no stars passing the cuts.
"""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterator, Mapping

import numpy as np
from astropy import units as u
from astropy.table import Table

from gppy.catalogs import tiles
from gppy.catalogs.tables import (DEC_NAMES, RA_NAMES, column_as, degrees, find_column,
                                  float_values, read_table)
from gppy.catalogs.tiles import DEFAULT_TIMEOUT_S, CatalogError, TileColumn, VizierTable
from gppy.phot import transforms

FILE = "file"
FALLBACK_ORDER = ("PS1", "SDSS", "SkyMapper", "APASS", "2MASS", "GaiaDR3")
MEDIUM_BAND = re.compile(r"^m\d{3,4}$")          # 7DT medium bands: m400 ... m875

PS1_MIN_DETECTIONS = 3        # Nd: fewer single-epoch detections are often spurious
PS1_EXTENDED_MAG = 0.05       # iPSF - iKron above this: extended (Farrow et al. 2014)
SKYMAPPER_MAX_FLAGS = 4       # SExtractor flags 1 (neighbours), 2 (blended) tolerated
SKYMAPPER_MIN_CLASS_STAR = 0.9
GAIA_MAX_RUWE = 1.4


class PhotCatalogError(CatalogError):
    """A photometric reference catalogue cannot serve a field; says which and why."""


@contextmanager
def _as_phot_error(hint: str = "") -> Iterator[None]:
    try:
        yield
    except PhotCatalogError:
        raise
    except CatalogError as exc:
        raise PhotCatalogError(f"{exc}{hint}") from None


# ----------------------------------------------------------------------- the catalogues

Raw = Mapping[str, np.ndarray]            # stored column name -> values (absent: not known)
Quality = tuple[np.ndarray, dict[str, np.ndarray], list[str]]   # good, band ok, cuts


@dataclass(frozen=True)
class BandColumns:
    mag: str                  # VizieR columns
    err: str
    to_ab_mag: float = 0.0    # added to the catalogue's magnitude to make it AB


@dataclass(frozen=True)
class PhotCatalog:
    key: str
    title: str
    vizier: str
    subdir: str                                     # cache folder
    ra: str
    dec: str
    bands: dict[str, BandColumns]
    flags: tuple[TileColumn, ...]                   # further columns the cuts need
    quality: Callable[[Raw, int], Quality]
    colour: tuple[str, str]
    dec_range_deg: tuple[float, float]
    colour_by_band: dict[str, tuple[str, str]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.title} (VizieR {self.vizier})"

    def tile_table(self) -> VizierTable:
        cols = [TileColumn(c, _stored(c)) for b in self.bands.values() for c in (b.mag, b.err)]
        limit = next(iter(self.bands.values())).mag    # query limits apply to the first band
        return VizierTable(catalog=self.vizier, name=self.name, subdir=self.subdir, ra=self.ra,
                           dec=self.dec, columns=tuple(cols) + self.flags, limit_column=limit,
                           limit_tag=_stored(limit) + "-")


def _stored(vizier_name: str) -> str:
    return re.sub(r"\W", "_", vizier_name)      # g'mag -> g_mag (FITS-safe)


def _char(text: np.ndarray, k: int) -> np.ndarray:
    return np.array([s[k:k + 1] for s in np.asarray(text, str)], dtype="U1")


def _ps1_quality(raw: Raw, n: int) -> Quality:
    good, cuts = np.ones(n, bool), []
    if "Qual" in raw:
        q = np.asarray(raw["Qual"], np.int64)
        # bits: 1 extended in PS1, 4 good-quality measurement, 64 suspect / 128 poor stack
        good &= ((q & 4) != 0) & ((q & (1 | 64 | 128)) == 0)
        cuts.append("Qual has 4 (good), none of 1 (extended), 64, 128 (suspect, poor)")
    if "Nd" in raw:
        good &= np.asarray(raw["Nd"]) >= PS1_MIN_DETECTIONS
        cuts.append(f"Nd >= {PS1_MIN_DETECTIONS}")
    if "imag" in raw and "iKmag" in raw:
        good &= ~(np.asarray(raw["imag"]) - np.asarray(raw["iKmag"]) > PS1_EXTENDED_MAG)
        cuts.append(f"imag - iKmag <= {PS1_EXTENDED_MAG} (point-like; no Kron mag passes)")
    return good, {}, cuts


def _sdss_quality(raw: Raw, n: int) -> Quality:
    good, cuts = np.ones(n, bool), []
    if "class" in raw:
        good &= np.asarray(raw["class"]) == 6
        cuts.append("class = 6 (star)")
    if "mode" in raw:
        good &= np.asarray(raw["mode"]) == 1
        cuts.append("mode = 1 (primary)")
    if "q_mode" in raw:
        good &= np.char.strip(np.asarray(raw["q_mode"], str)) == "+"
        cuts.append("q_mode = + (clean photometry)")
    return good, {}, cuts


def _apass_quality(raw: Raw, n: int) -> Quality:
    # APASS gives an error of 0 where a star has a single observation: error unknown
    ok = {b: ~(np.asarray(raw[_stored(c.err)]) <= 0) for b, c in APASS_BANDS.items()
          if _stored(c.err) in raw}
    return np.ones(n, bool), ok, ["per band: error > 0 (0: one observation, error unknown)"]


def _tmass_quality(raw: Raw, n: int) -> Quality:
    ok, cuts = {}, []
    for k, band in enumerate("JHK"):
        fine = np.ones(n, bool)
        if "Qflg" in raw:
            fine &= _char(raw["Qflg"], k) == "A"
        if "Cflg" in raw:
            fine &= _char(raw["Cflg"], k) == "0"
        ok[band] = fine
    if "Qflg" in raw:
        cuts.append("per band: Qflg = A")
    if "Cflg" in raw:
        cuts.append("per band: Cflg = 0 (no artefact contamination)")
    return np.ones(n, bool), ok, cuts


def _skymapper_quality(raw: Raw, n: int) -> Quality:
    good, cuts = np.ones(n, bool), []
    if "flags" in raw:
        good &= np.asarray(raw["flags"]) < SKYMAPPER_MAX_FLAGS
        cuts.append(f"flags < {SKYMAPPER_MAX_FLAGS}")
    if "ClassStar" in raw:
        good &= np.asarray(raw["ClassStar"]) >= SKYMAPPER_MIN_CLASS_STAR
        cuts.append(f"ClassStar >= {SKYMAPPER_MIN_CLASS_STAR}")
    return good, {}, cuts


def _gaia_quality(raw: Raw, n: int) -> Quality:
    if "RUWE" not in raw:
        return np.ones(n, bool), {}, []
    return (~(np.asarray(raw["RUWE"]) >= GAIA_MAX_RUWE), {},
            [f"RUWE < {GAIA_MAX_RUWE} (none given passes)"])


def _bands(spec: str, to_ab: Mapping[str, float] | None = None) -> dict[str, BandColumns]:
    """'g=gmag/e_gmag r=...' -> bands."""
    out = {}
    for item in spec.split():
        band, cols = item.split("=")
        mag, err = cols.split("/")
        out[band] = BandColumns(mag, err, (to_ab or {}).get(band, 0.0))
    return out


APASS_BANDS = _bands("B=Bmag/e_Bmag V=Vmag/e_Vmag g=g'mag/e_g'mag r=r'mag/e_r'mag "
                     "i=i'mag/e_i'mag", transforms.VEGA_TO_AB_MAG)
_JOHNSON_FROM_BV = {b: ("B", "V") for b in "BVRI"}

CATALOGS: dict[str, PhotCatalog] = {c.key: c for c in (
    PhotCatalog("PS1", "Pan-STARRS1 DR1", "II/349/ps1", "ps1-dr1", "RAJ2000", "DEJ2000",
                _bands(" ".join(f"{b}={b}mag/e_{b}mag" for b in "grizy")),
                (TileColumn("Qual", "Qual", "i2"), TileColumn("Nd", "Nd", "i2"),
                 TileColumn("iKmag", "iKmag")),
                _ps1_quality, ("g", "r"), (-30.0, 90.0)),
    PhotCatalog("SDSS", "SDSS DR12", "V/147/sdss12", "sdss-dr12", "RA_ICRS", "DE_ICRS",
                _bands(" ".join(f"{b}={b}mag/e_{b}mag" for b in "ugriz"),
                       transforms.SDSS_TO_AB_MAG),
                (TileColumn("class", "class", "i2"), TileColumn("mode", "mode", "i2"),
                 TileColumn("q_mode", "q_mode", "U")),
                _sdss_quality, ("g", "r"), (-20.0, 90.0)),
    PhotCatalog("APASS", "APASS DR9", "II/336/apass9", "apass-dr9", "RAJ2000", "DEJ2000",
                APASS_BANDS, (), _apass_quality, ("g", "r"), (-90.0, 90.0), _JOHNSON_FROM_BV),
    PhotCatalog("2MASS", "2MASS PSC", "II/246/out", "2mass-psc", "RAJ2000", "DEJ2000",
                _bands("J=Jmag/e_Jmag H=Hmag/e_Hmag K=Kmag/e_Kmag", transforms.VEGA_TO_AB_MAG),
                (TileColumn("Qflg", "Qflg", "U"), TileColumn("Cflg", "Cflg", "U")),
                _tmass_quality, ("J", "K"), (-90.0, 90.0)),
    PhotCatalog("SkyMapper", "SkyMapper DR4", "II/379/smssdr4", "skymapper-dr4", "RAICRS",
                "DEICRS", _bands(" ".join(f"{b}={b}PSF/e_{b}PSF" for b in "uvgriz")),
                (TileColumn("flags", "flags", "i4"), TileColumn("ClassStar", "ClassStar")),
                _skymapper_quality, ("g", "r"), (-90.0, 2.0)),
    PhotCatalog("GaiaDR3", "Gaia DR3", "I/355/gaiadr3", "gaia-dr3-phot", "RA_ICRS", "DE_ICRS",
                _bands("G=Gmag/e_Gmag BP=BPmag/e_BPmag RP=RPmag/e_RPmag",
                       transforms.GAIA_VEGA_TO_AB_MAG),
                (TileColumn("RUWE", "RUWE"),), _gaia_quality, ("BP", "RP"), (-90.0, 90.0)),
)}


# ------------------------------------------------------------------------------ choice

def canonical_band(band: str) -> str:
    band = str(band).strip()
    return {"Ks": "K", "bp": "BP", "rp": "RP"}.get(band, band)


def serves(key: str, band: str) -> bool:
    """Whether catalogue `key` has `band` or a transformation to it."""
    band = canonical_band(band)
    return band in CATALOGS[key].bands or band in transforms.transformable_bands(key)


def covers(key: str, dec_deg: float) -> bool:
    lo, hi = CATALOGS[key].dec_range_deg
    return lo <= dec_deg <= hi


def choose_catalog(profile_refcat: str, dec_deg: float, band: str) -> str:
    """The catalogue for a field: the profile's (phot.refcat) where it covers the
    declination and gives the band, else the first of PS1 (Dec > -30), SDSS (u, U),
    SkyMapper (south), APASS (all sky, B V), 2MASS (J H K), Gaia DR3 (G BP RP) that
    does. Medium bands and a profile saying "file" need a catalogue file: "file"."""
    band = canonical_band(band)
    if profile_refcat == FILE or MEDIUM_BAND.match(band):
        return FILE
    if profile_refcat not in CATALOGS:
        raise PhotCatalogError(f"unknown reference catalogue {profile_refcat!r} (known: "
                               f"{', '.join(CATALOGS)}, {FILE})")
    for key in (profile_refcat, *FALLBACK_ORDER):
        if covers(key, dec_deg) and serves(key, band):
            return key
    raise PhotCatalogError(f"no reference catalogue gives band {band!r} at Dec "
                           f"{dec_deg:+.2f} (known bands: "
                           f"{', '.join(sorted({b for k in CATALOGS for b in CATALOGS[k].bands}))}"
                           f", BVRI by transformation); give a catalogue file")


# ---------------------------------------------------------------------------- reading

def _stat(path: str | os.PathLike, what: str) -> tuple[str, int, int]:
    p = Path(path).expanduser()
    try:
        st = p.stat()
    except OSError as exc:
        raise PhotCatalogError(f"{what} {p}: {exc.strerror}") from None
    return str(p.resolve()), st.st_mtime_ns, st.st_size


@lru_cache(maxsize=8)
def _load(path: str, mtime_ns: int, size: int) -> Table:
    try:
        return read_table(path)
    except ValueError as exc:
        raise PhotCatalogError(f"reference catalogue file {path}: {exc}") from None


def _lookup(table: Table, path: str, name: str, columns: Mapping[str, str],
            fallback: tuple[str, ...] = ()) -> str | None:
    """The file column for `name`: as mapped (must exist), else found by name."""
    if name in columns:
        if columns[name] not in table.colnames:
            raise PhotCatalogError(f"reference catalogue file {path}: no column "
                                   f"{columns[name]!r} (mapped from {name!r}; columns: "
                                   f"{', '.join(table.colnames)})")
        return columns[name]
    return find_column(table.colnames, (name,) + fallback)


def _positions(table: Table, path: str, columns: Mapping[str, str],
               ra_name: str, dec_name: str) -> tuple[np.ndarray, np.ndarray]:
    ra_col = _lookup(table, path, ra_name, columns, RA_NAMES)
    dec_col = _lookup(table, path, dec_name, columns, DEC_NAMES)
    if ra_col is None or dec_col is None:
        raise PhotCatalogError(f"reference catalogue file {path}: no RA/Dec columns (map them "
                               f"with columns={{'{ra_name}': ..., '{dec_name}': ...}}; "
                               f"columns: {', '.join(table.colnames)})")
    try:
        return degrees(table[ra_col], True), degrees(table[dec_col], False)
    except (ValueError, TypeError) as exc:
        raise PhotCatalogError(f"reference catalogue file {path}: columns {ra_col}/{dec_col} "
                               f"are not coordinates ({exc})") from None


def _known_from_file(cat: PhotCatalog, path: str | os.PathLike,
                     columns: Mapping[str, str]) -> tuple[np.ndarray, np.ndarray, dict]:
    """Positions and raw columns (stored names) of a file holding catalogue `cat`."""
    known = [cat.ra, cat.dec] + [c.vizier for c in cat.tile_table().columns]
    odd = [k for k in columns if k not in known]
    if odd:
        raise PhotCatalogError(f"{cat.title} file {path}: column mapping keys must be "
                               f"{cat.title}'s VizieR names ({', '.join(known)}); "
                               f"not {', '.join(odd)}")
    name, mtime, size = _stat(path, f"{cat.title} file")
    table = _load(name, mtime, size)
    ra, dec = _positions(table, name, columns, cat.ra, cat.dec)
    raw = {}
    for col in cat.tile_table().columns:
        found = _lookup(table, name, col.vizier, columns)
        if found is not None:   # floats at full precision: nothing to save here
            kind = np.dtype(col.dtype).kind
            raw[col.stored] = column_as(table, found, "f8" if kind == "f" else col.dtype)
    if not any(_stored(b.mag) in raw for b in cat.bands.values()):
        raise PhotCatalogError(f"reference catalogue file {name}: none of the {cat.title} "
                               f"magnitude columns ({', '.join(b.mag for b in cat.bands.values())})"
                               f"; map them with columns={{...}}")
    return ra, dec, raw


def _common(cat: PhotCatalog, ra: np.ndarray, dec: np.ndarray, raw: Raw) -> Table:
    """ra, dec, mag_<band>, magerr_<band> (AB; NaN where the band is bad), good."""
    n = len(ra)
    good, band_ok, cuts = cat.quality(raw, n)
    out = Table({"ra": np.asarray(ra, float) % 360.0, "dec": np.asarray(dec, float)})
    for band, cols in cat.bands.items():
        if _stored(cols.mag) not in raw:
            continue
        mag = np.asarray(raw[_stored(cols.mag)], np.float64) + cols.to_ab_mag
        err = np.asarray(raw.get(_stored(cols.err), np.full(n, np.nan)), np.float64)
        bad = ~band_ok.get(band, np.ones(n, bool))
        out[f"mag_{band}"] = np.where(bad, np.nan, mag)
        out[f"magerr_{band}"] = np.where(bad, np.nan, err)
    out["good"] = good
    out.meta.update({"catalog": cat.name, "catalog_key": cat.key, "cuts": cuts})
    return out


def _in_field(table: Table, ra_deg: float, dec_deg: float, radius_deg: float) -> Table:
    keep = tiles.in_cone(table["ra"], table["dec"], ra_deg, dec_deg, radius_deg)
    out = table[keep]
    out.meta["field"] = {"ra_deg": float(ra_deg), "dec_deg": float(dec_deg),
                         "radius_deg": float(radius_deg)}
    return out


def catalog_stars(key: str, ra_deg: float, dec_deg: float, radius_deg: float, *,
                  cache_dir: str | os.PathLike | None = None, offline: bool = False,
                  file: str | os.PathLike | None = None, columns: Mapping[str, str] | None = None,
                  query_mag_limit: float | None = None, vizier_server: str | None = None,
                  timeout_s: float = DEFAULT_TIMEOUT_S) -> Table:
    """The common table of catalogue `key` in the cone: from `file` (a cut-out of that
    catalogue) if given, else VizieR through the tile cache in `cache_dir`.
    `query_mag_limit` limits VizieR queries (and the cache key) on the catalogue's
    first band (PS1 g, APASS B, ...; its own system); None: all magnitudes."""
    cat = CATALOGS[key]
    if file is not None:
        ra, dec, raw = _known_from_file(cat, file, columns or {})
        table = _common(cat, ra, dec, raw)
        table.meta["path"] = str(file)
        return _in_field(table, ra_deg, dec_deg, radius_deg)
    if cache_dir is None:
        raise ValueError("cache_dir is needed to query VizieR")
    hint = "; give a catalogue file to work offline" if offline else ""
    with _as_phot_error(hint):
        raw, meta = tiles.fetch(cat.tile_table(), ra_deg, dec_deg, radius_deg,
                                cache_dir=cache_dir, offline=offline, mag_limit=query_mag_limit,
                                vizier_server=vizier_server, timeout_s=timeout_s)
    table = _common(cat, raw["ra"], raw["dec"], raw)
    table.meta.update(meta)
    return _in_field(table, ra_deg, dec_deg, radius_deg)


_KNOWN_BANDS = ("u", "v", "g", "r", "i", "z", "y", "U", "B", "V", "R", "I", "J", "H", "K",
                "G", "BP", "RP")
_FILE_COLOURS = (("g", "r"), ("B", "V"), ("BP", "RP"), ("J", "K"))


def _file_band_columns(colnames: list[str], columns: Mapping[str, str]) -> dict[str, tuple]:
    """band -> (magnitude column, error column or None); band letters case-sensitive."""
    present = set(colnames)
    bands = {k[4:] for k in columns if k.startswith("mag_")}
    bands |= {c[4:] for c in colnames if c.startswith("mag_") and MEDIUM_BAND.match(c[4:])}
    found = {}
    for band in [*_KNOWN_BANDS, *sorted(bands - set(_KNOWN_BANDS))]:
        mag = columns.get(f"mag_{band}") or next(
            (c for c in (f"mag_{band}", f"{band}mag", f"{band}_mag", f"{band}'mag", band)
             if c in present), None)
        if mag is None:
            continue
        err = columns.get(f"magerr_{band}") or next(
            (c for c in (f"magerr_{band}", f"e_{mag}", f"{mag}err", f"{mag}_err", f"{mag}Err",
                         f"err_{mag}", f"e_{band}", f"{band}err", f"{band}_err")
             if c in present), None)
        if mag == band and err is None and f"mag_{band}" not in columns:
            continue    # a bare "y" without "yerr" is more likely a pixel coordinate
        found[band] = (mag, err)
    return found


def read_catalog_file(path: str | os.PathLike, ra_deg: float, dec_deg: float,
                      radius_deg: float, columns: Mapping[str, str] | None = None) -> Table:
    """The common table (magnitudes taken as AB) of a catalogue file in the cone."""
    columns = dict(columns or {})
    odd = [k for k in columns if k not in ("ra", "dec") and not k.startswith(("mag_", "magerr_"))]
    if odd:
        raise PhotCatalogError(f"reference catalogue file {path}: column mapping keys must be "
                               f"ra, dec, mag_<band>, magerr_<band>; not {', '.join(odd)}")
    name, mtime, size = _stat(path, "reference catalogue file")
    table = _load(name, mtime, size)
    for wanted in columns.values():
        if wanted not in table.colnames:
            raise PhotCatalogError(f"reference catalogue file {name}: no column {wanted!r} "
                                   f"(columns: {', '.join(table.colnames)})")
    ra, dec = _positions(table, name, columns, "ra", "dec")
    out = Table({"ra": ra % 360.0, "dec": dec})
    used = {}
    for band, (mag, err) in _file_band_columns(table.colnames, columns).items():
        out[f"mag_{band}"] = float_values(table[mag])
        out[f"magerr_{band}"] = float_values(table[err]) if err else np.full(len(out), np.nan)
        used[f"mag_{band}"], used[f"magerr_{band}"] = mag, err
    out["good"] = np.ones(len(out), bool)
    out.meta.update({"catalog": f"file {path}", "catalog_key": FILE, "cuts": [],
                     "path": str(path), "columns": used})
    return _in_field(out, ra_deg, dec_deg, radius_deg)


# ------------------------------------------------------------------------ the magnitudes

def _colour_pair(key: str, band: str, table: Table) -> tuple[str, str] | None:
    if key != FILE:
        cat = CATALOGS[key]
        return cat.colour_by_band.get(band, cat.colour)
    return next((p for p in _FILE_COLOURS
                 if f"mag_{p[0]}" in table.colnames and f"mag_{p[1]}" in table.colnames), None)


def _band_mags(key: str, band: str, table: Table,
               ps1_relation: str) -> tuple[np.ndarray, np.ndarray, str]:
    """AB magnitudes and errors of `band`, and how they were obtained."""
    if f"mag_{band}" in table.colnames:
        mag, err = np.asarray(table[f"mag_{band}"]), np.asarray(table[f"magerr_{band}"])
        if key == FILE:
            return mag, err, f"{band} from column {table.meta['columns'][f'mag_{band}']} (AB)"
        to_ab = CATALOGS[key].bands[band].to_ab_mag
        return mag, err, f"{band} as published" + (f", {to_ab:+.4f} mag to AB" if to_ab else "")
    rel = transforms.relation(key, band, ps1_relation) if key != FILE else None
    if rel is None or any(f"mag_{b}" not in table.colnames for b in rel.inputs):
        have = sorted(c[4:] for c in table.colnames if c.startswith("mag_"))
        raise PhotCatalogError(f"{table.meta['catalog']} has no band {band!r} (it has "
                               f"{', '.join(have) or 'none'}) and no transformation to it")
    # relations take the catalogue's own magnitudes: undo the AB offsets of the inputs
    cat = CATALOGS[key]
    mags = {b: np.asarray(table[f"mag_{b}"]) - cat.bands[b].to_ab_mag for b in rel.inputs}
    errs = {b: np.asarray(table[f"magerr_{b}"]) for b in rel.inputs}
    mag, err = rel.apply(mags, errs)
    return mag, err, rel.describe()


def reference_mags(ra_deg: float, dec_deg: float, radius_deg: float, band: str, *,
                   catalog: str, cache_dir: str | os.PathLike | None = None,
                   offline: bool = False, file: str | os.PathLike | None = None,
                   columns: Mapping[str, str] | None = None,
                   mag_range: tuple[float, float] = (12.0, 20.0), magerr_max: float = 0.05,
                   ps1_relation: str = "quadratic", query_mag_limit: float | None = None,
                   vizier_server: str | None = None,
                   timeout_s: float = DEFAULT_TIMEOUT_S) -> Table:
    """AB reference magnitudes in `band` of the stars within `radius_deg` of (ra_deg,
    dec_deg) (see the module docstring). catalog: a CATALOGS key or "file" (see
    choose_catalog); file, columns: a catalogue file and its column mapping;
    mag_range: (bright, faint) kept; magerr_max: largest error kept (not applied
    when the source has no errors at all); ps1_relation: "quadratic" | "linear"
    (Tonry et al. 2012); the rest as for catalog_stars."""
    if not (radius_deg > 0):
        raise ValueError(f"radius_deg must be positive, got {radius_deg}")
    if not -90.0 <= float(dec_deg) <= 90.0:
        raise ValueError(f"dec_deg must be within [-90, 90], got {dec_deg}")
    ra_deg, dec_deg, band = float(ra_deg) % 360.0, float(dec_deg), canonical_band(band)
    where = tiles.field_text(ra_deg, dec_deg, radius_deg)
    if catalog == FILE:
        if file is None:
            raise PhotCatalogError(f"band {band}: the reference catalogue is a file, and none "
                                   f"was given (for the {where})")
        table = read_catalog_file(file, ra_deg, dec_deg, radius_deg, columns)
    elif catalog in CATALOGS:
        table = catalog_stars(catalog, ra_deg, dec_deg, radius_deg, cache_dir=cache_dir,
                              offline=offline, file=file, columns=columns,
                              query_mag_limit=query_mag_limit, vizier_server=vizier_server,
                              timeout_s=timeout_s)
    else:
        raise PhotCatalogError(f"unknown reference catalogue {catalog!r} (known: "
                               f"{', '.join(CATALOGS)}, {FILE})")
    mag, err, how = _band_mags(catalog, band, table, ps1_relation)
    pair = _colour_pair(catalog, band, table)
    if pair and all(f"mag_{b}" in table.colnames for b in pair):
        colour = np.asarray(table[f"mag_{pair[0]}"]) - np.asarray(table[f"mag_{pair[1]}"])
    else:
        colour, pair = np.full(len(table), np.nan), None
    bright, faint = mag_range
    keep = np.asarray(table["good"], bool) & (mag >= bright) & (mag <= faint)
    with_errors = bool(np.isfinite(err).any())
    if with_errors:
        keep &= err <= magerr_max
    order = np.argsort(mag[keep], kind="stable")
    out = Table({"ra": np.asarray(table["ra"])[keep][order],
                 "dec": np.asarray(table["dec"])[keep][order],
                 "mag": mag[keep][order], "magerr": err[keep][order],
                 "colour": colour[keep][order]})
    out["ra"].unit = out["dec"].unit = u.deg
    for name in ("mag", "magerr", "colour"):
        out[name].unit = u.mag
    out.meta.update({k: v for k, v in table.meta.items() if k != "columns"})
    out.meta.update({"band": band, "system": "AB", "transform": how,
                     "colour_name": f"{pair[0]}-{pair[1]}" if pair else None,
                     "mag_range": (float(bright), float(faint)),
                     "magerr_max": float(magerr_max) if with_errors else None,
                     "n_field": len(table)})
    if len(out) == 0:
        raise PhotCatalogError(
            f"{table.meta['catalog']}: no stars in band {band} within {bright:g}-{faint:g} mag"
            + (f" and errors <= {magerr_max:g}" if with_errors else "")
            + f" passing the cuts in the {where} ({len(table)} in the field)")
    return out
