"""The sky of a field: real Tycho-2 stars, synthetic fainter stars, galaxies and
transients, as astropy Tables with natural-system AB magnitudes per band.

Star counts (synthetic stars, V from 12 down to the requested faint limit):

    log10 N(<V) per deg^2 at the galactic pole = 0.48 + 0.35 t - 0.0098 t^2, t = V - 10

(3 per deg^2 at V = 10, 1000 at V = 20: Bahcall-Soneira-like), times a latitude
factor 1 + 12 exp(-|b| / 10 deg) (13x richer in the plane). Tycho-2 stars are used
to VT = 12, where Tycho-2 stops being complete. Temperatures: log10 T normal
around 3.74 (5500 K, 0.06 dex) for synthetic stars, 3.78 (0.09 dex) for Tycho.

Galaxies: the IMSNG target itself as an exponential disk (central surface
brightness 21.0 AB mag/arcsec^2 at 550 nm, D25 = the catalogued major axis, so
the scale length is D25 / 2 / 3.09) plus a de Vaucouleurs bulge with a quarter of
the disk's light; and background galaxies with log10 N(<m) = 2.95 + 0.45 (m - 20)
per deg^2, 65% disks (n = 1), 35% spheroids (n = 4), r_eff shrinking with m.

Transients: with two or more nights, 8 per field appearing in a night after the
first: 3 on galaxies (one in the target), 3 beside moderately bright stars
(1.2-2.5 FWHM away), 2 in empty sky; peak brightness from 4.5 to 0.3 mag above
the frame depth, rising or fading by -0.1..0.3 mag per day.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

import numpy as np
from astropy.coordinates import SkyCoord
from astropy.table import Table

from gppy.obsconfig.headers import parse_angle
from gppy.sim import bands as bandlib
from gppy.astrometry import tycho
from gppy.catalogs.tiles import sep_deg
from gppy.sim.pointing import spherical_offset
from gppy.sim.psf import sersic_extent
from gppy.sim.seeds import stream

TYCHO_FAINT_VT = 12.0
DISK_MU0_AB = 21.0
BULGE_TO_DISK = 0.25


@dataclass(frozen=True)
class Field:
    name: str
    ra_deg: float
    dec_deg: float
    major_arcmin: float
    minor_arcmin: float
    dist_mpc: float


def imsng_fields() -> list[Field]:
    text = resources.files("gppy.sim").joinpath("data/imsng_fields.dat").read_text()
    fields = []
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            name, ra, dec, major, minor, dist = line.split()
            fields.append(Field(name, parse_angle(ra, hours=True), parse_angle(dec, hours=False),
                                float(major), float(minor), float(dist)))
    return fields


def galactic_latitude_deg(ra_deg: float, dec_deg: float) -> float:
    return float(SkyCoord(ra_deg, dec_deg, unit="deg").galactic.b.deg)


def _log_star_counts(v):
    t = np.asarray(v) - 10.0
    return 0.48 + 0.35 * t - 0.0098 * t ** 2


def _invert_log_star_counts(log_n):
    a, b, c = 0.48, 0.35, -0.0098
    return 10.0 + (-b + np.sqrt(b * b - 4 * c * (a - log_n))) / (2 * c)


def latitude_factor(b_deg: float) -> float:
    return 1.0 + 12.0 * np.exp(-abs(b_deg) / 10.0)


def cap_area_deg2(radius_deg: float) -> float:
    return 2 * np.pi * (1 - np.cos(np.radians(radius_deg))) * (180 / np.pi) ** 2


def random_in_cap(rng, ra_deg, dec_deg, radius_deg, n):
    """Points uniform on the sphere within `radius_deg` of a centre."""
    cos_sep = rng.uniform(np.cos(np.radians(radius_deg)), 1.0, n)
    return spherical_offset(ra_deg, dec_deg, rng.uniform(0, 360, n), np.degrees(np.arccos(cos_sep)))


def _with_magnitudes(table: Table, band_names: list[str], kind: str) -> Table:
    mags = bandlib.magnitudes(band_names, table["vmag_ab"], table["temperature_k"], kind)
    for j, name in enumerate(band_names):
        table[f"mag_{name}"] = mags[:, j]
    return table


def stars(field: Field, seed: int, radius_deg: float, faint_mag: float,
          band_names: list[str], kind: str) -> Table:
    """Tycho-2 (VT < 12) plus synthetic stars within `radius_deg`, brightest first."""
    rng = stream(seed, "stars", field.name)
    real = tycho.cone(field.ra_deg, field.dec_deg, radius_deg)
    keep = real.vt_mag < TYCHO_FAINT_VT
    n_real = int(keep.sum())
    density = latitude_factor(galactic_latitude_deg(field.ra_deg, field.dec_deg))
    lo, hi = _log_star_counts([TYCHO_FAINT_VT, faint_mag]) + np.log10(density)
    n_fake = rng.poisson((10 ** hi - 10 ** lo) * cap_area_deg2(radius_deg))
    log_n = np.log10(rng.uniform(10 ** lo, 10 ** hi, n_fake)) - np.log10(density)
    fake_v = _invert_log_star_counts(log_n)
    fake_ra, fake_dec = random_in_cap(rng, field.ra_deg, field.dec_deg, radius_deg, n_fake)
    log_t = np.concatenate([np.clip(rng.normal(3.78, 0.09, n_real), 3.5, 4.4),
                            np.clip(rng.normal(3.74, 0.06, n_fake), 3.45, 4.1)])
    table = Table({
        "ra": np.concatenate([real.ra_deg[keep], fake_ra]),
        "dec": np.concatenate([real.dec_deg[keep], fake_dec]),
        "is_tycho": np.concatenate([np.ones(n_real, bool), np.zeros(n_fake, bool)]),
        "tycho_row": np.concatenate([real.index[keep], np.full(n_fake, -1)]).astype(np.int64),
        "temperature_k": np.round(10 ** log_t),
        "vmag_ab": np.concatenate([real.vt_mag[keep], fake_v]),
    })
    table.sort("vmag_ab")
    table.add_column([f"{field.name}:s{i:06d}" for i in range(len(table))], name="id", index=0)
    table.add_column([field.name] * len(table), name="field", index=1)
    return _with_magnitudes(table, band_names, kind)


def _galaxy_rows(field: Field, seed: int, radius_deg: float, faint_mag: float) -> dict:
    rng = stream(seed, "galaxies", field.name)
    # the IMSNG target: exponential disk + de Vaucouleurs bulge
    scale_len = field.major_arcmin * 60 / 2 / 3.09
    q = max(field.minor_arcmin / field.major_arcmin, 0.15)
    pa = float(rng.uniform(0, 180))
    disk_mag = DISK_MU0_AB - 2.5 * np.log10(2 * np.pi * scale_len ** 2 * q)
    rows = {"ra": [field.ra_deg, field.ra_deg], "dec": [field.dec_deg, field.dec_deg],
            "sersic_n": [1.0, 4.0], "r_eff_arcsec": [1.678 * scale_len, 0.2 * scale_len],
            "axis_ratio": [q, max(q, 0.7)], "pa_deg": [pa, pa],
            "temperature_k": [6500.0, 4500.0],
            "vmag_ab": [disk_mag, disk_mag - 2.5 * np.log10(BULGE_TO_DISK)],
            "component": ["disk", "bulge"], "host": [field.name, field.name]}
    # background galaxies: log10 N(<m) = 2.95 + 0.45 (m - 20) per deg^2, brighter than 14 dropped
    n_per_deg2 = 10 ** (2.95 + 0.45 * (faint_mag - 20.0))
    n = rng.poisson(n_per_deg2 * cap_area_deg2(radius_deg))
    mags = 20.0 + (np.log10(rng.uniform(0, n_per_deg2, n)) - 2.95) / 0.45
    mags = mags[mags > 14.0]
    n = mags.size
    ra, dec = random_in_cap(rng, field.ra_deg, field.dec_deg, radius_deg, n)
    disk = rng.random(n) < 0.65
    rows["ra"] += list(ra)
    rows["dec"] += list(dec)
    rows["sersic_n"] += list(np.where(disk, 1.0, 4.0))
    rows["r_eff_arcsec"] += list(1.5 * 10 ** (-0.15 * (mags - 18.0) + rng.normal(0, 0.15, n)))
    rows["axis_ratio"] += list(np.where(disk, rng.uniform(0.25, 1.0, n), rng.uniform(0.6, 1.0, n)))
    rows["pa_deg"] += list(rng.uniform(0, 180, n))
    rows["temperature_k"] += list(np.where(disk, rng.uniform(5500, 7500, n),
                                           rng.uniform(4000, 5000, n)))
    rows["vmag_ab"] += list(mags)
    rows["component"] += ["single"] * n
    rows["host"] += [""] * n
    return rows


def galaxies(field: Field, seed: int, radius_deg: float, faint_mag: float,
             band_names: list[str], kind: str) -> Table:
    """Sérsic components: the target's disk and bulge first, then background galaxies."""
    table = Table(_galaxy_rows(field, seed, radius_deg, faint_mag))
    table["rendered_fraction"] = sersic_extent(np.asarray(table["sersic_n"]))[1]
    table.add_column([f"{field.name}:g{i:05d}" for i in range(len(table))], name="id", index=0)
    table.add_column([field.name] * len(table), name="field", index=1)
    return _with_magnitudes(table, band_names, kind)


MIN_TRANSIENT_SEP_FWHM = 5.0
PLACEMENT_ATTEMPTS = 20


def _near(rng, ra, dec, sep_arcsec_range):
    pa = rng.uniform(0, 360)
    sep = rng.uniform(*sep_arcsec_range) / 3600.0
    out = spherical_offset(ra, dec, pa, sep)
    return float(out[0]), float(out[1])


def transients(field: Field, seed: int, star_table: Table, galaxy_table: Table,
               inner_radius_deg: float, depth_mag: float, fwhm_arcsec: float,
               n_nights: int, n: int = 8, faint_mag: float = -0.3) -> Table:
    """`n` transients of a field (none unless n_nights >= 2), 3/8 of them on
    galaxies (the first on the field's target galaxy), 3/8 beside stars of 13-17 mag
    (1.2-2.5 FWHM away), the rest anywhere: position, kind, the source they sit on
    or beside, first night (index), peak V (uniform from 4.5 mag brighter than the
    frame depth `depth_mag` to `faint_mag` relative to it) and decline rate."""
    rng = stream(seed, "transients", field.name)
    columns = ("id", "field", "ra", "dec", "kind", "near", "first_night",
               "vmag_peak_ab", "decline_mag_per_day", "temperature_k")
    rows: list[tuple] = []
    if n_nights >= 2:
        centre = SkyCoord(field.ra_deg, field.dec_deg, unit="deg")

        def inner(table, mag_lo, mag_hi):
            sep = centre.separation(SkyCoord(table["ra"], table["dec"], unit="deg")).deg
            mag = table["vmag_ab"]
            ok = (sep < inner_radius_deg) & (mag > mag_lo) & (mag < mag_hi)
            return table[ok]

        hosts = inner(galaxy_table[galaxy_table["component"] == "single"], 14.0, 19.0)
        neighbours = inner(star_table, 13.0, 17.0)
        target = galaxy_table[0]
        placed: list[tuple[str, float, float, str]] = []

        def on_galaxy(i):
            host = target if i == 0 or len(hosts) == 0 else hosts[rng.integers(len(hosts))]
            r_eff = host["r_eff_arcsec"] * rng.uniform(0.3, 1.5)
            return (*_near(rng, host["ra"], host["dec"], (0.2 * r_eff, r_eff)), host["id"])

        def beside_star(_):
            star = neighbours[rng.integers(len(neighbours))]
            return (*_near(rng, star["ra"], star["dec"], (1.2 * fwhm_arcsec, 2.5 * fwhm_arcsec)),
                    star["id"])

        def anywhere(_):
            ra, dec = random_in_cap(rng, field.ra_deg, field.dec_deg, inner_radius_deg, 1)
            return float(ra[0]), float(dec[0]), "-"

        # transients stay MIN_TRANSIENT_SEP_FWHM apart (each measurable on its own): a
        # place taken on a galaxy or beside a star is drawn again, then anywhere
        min_sep_deg = MIN_TRANSIENT_SEP_FWHM * fwhm_arcsec / 3600.0

        def free(ra, dec):
            return not placed or sep_deg(*np.array([p[1:3] for p in placed]).T,
                                         ra, dec).min() >= min_sep_deg

        n_galaxy = n_star = round(3 * n / 8)
        plan = ([("galaxy", on_galaxy)] * n_galaxy
                + [("star", beside_star)] * (n_star if len(neighbours) else 0))
        plan += [("field", anywhere)] * (n - len(plan))
        for i, (kind, draw) in enumerate(plan):
            for attempt in range(2 * PLACEMENT_ATTEMPTS):
                if attempt == PLACEMENT_ATTEMPTS:
                    kind, draw = "field", anywhere
                ra, dec, near = draw(i)
                if free(ra, dec):
                    placed.append((kind, ra, dec, near))
                    break
        for i, (kind, ra, dec, near) in enumerate(placed):
            rows.append((f"{field.name}:t{i:02d}", field.name, ra, dec, kind, near,
                         int(rng.integers(1, n_nights)),
                         float(rng.uniform(depth_mag - 4.5, depth_mag + faint_mag)),
                         float(rng.uniform(-0.1, 0.3)), float(rng.uniform(6000, 15000))))
    dtypes = (str, str, float, float, str, str, int, float, float, float)
    return Table(rows=rows or None, names=columns, dtype=dtypes)


def transient_magnitudes(table: Table, night_index: int, night_step_days: float,
                         band_names: list[str], kind: str) -> np.ndarray:
    """(n, n_bands) magnitudes on a night; NaN before a transient's first night."""
    days = (night_index - np.asarray(table["first_night"])) * night_step_days
    vmag = np.asarray(table["vmag_peak_ab"]) + np.asarray(table["decline_mag_per_day"]) * days
    mags = bandlib.magnitudes(band_names, vmag, np.asarray(table["temperature_k"]), kind)
    mags[days < 0] = np.nan
    return mags
