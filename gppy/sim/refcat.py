"""An offline reference catalogue standing in for Gaia (astrometry) and
PS1/APASS (photometry): every simulated star with vmag_ab < 20.5 in the
simulated fields, with measurement errors.

Columns: id (the truth star id), ra, dec (deg; Gaia-like 10 mas scatter added),
and per profile filter mag_<band> and magerr_<band>. The error model is
σ = hypot(0.005, 1.0857 / SNR) with SNR = 5 at the catalogue's 5-sigma depth
(22.0 for broad bands, 21.0 for u/U, 20.5 for bands narrower than 50 nm);
the listed magnitude is the truth plus one draw of that error, and NaN (with a
NaN error) where the truth is fainter than the depth. The bands are the
instrument's own (no colour terms between catalogue and camera).
"""

from __future__ import annotations

import numpy as np
from astropy.table import Table, vstack

from gppy.fitsio import atomic_open
from gppy.sim.bands import band
from gppy.sim.seeds import stream

FAINT_LIMIT_VMAG = 20.5
POSITION_ERROR_ARCSEC = 0.010
ERROR_FLOOR_MAG = 0.005


def depth_mag(band_name: str) -> float:
    b = band(band_name)
    if b.width_nm < 50:
        return 20.5
    return 21.0 if b.centre_nm < 400 else 22.0


def build(star_tables: list[Table], band_names: list[str], seed: int) -> Table:
    rng = stream(seed, "refcat")
    stars = vstack(star_tables) if star_tables else Table()
    stars = stars[stars["vmag_ab"] < FAINT_LIMIT_VMAG]
    n = len(stars)
    dec = np.asarray(stars["dec"]) + rng.normal(0, POSITION_ERROR_ARCSEC / 3600, n)
    ra = (np.asarray(stars["ra"])
          + rng.normal(0, POSITION_ERROR_ARCSEC / 3600, n) / np.cos(np.radians(dec)))
    out = Table({"id": stars["id"], "ra": ra % 360.0, "dec": dec})
    for name in band_names:
        true = np.asarray(stars[f"mag_{name}"])
        snr = 5.0 * 10 ** (-0.4 * (true - depth_mag(name)))
        err = np.hypot(ERROR_FLOOR_MAG, 1.0857 / snr)
        mag = true + err * rng.normal(0.0, 1.0, n)
        missing = true > depth_mag(name)
        out[f"mag_{name}"] = np.where(missing, np.nan, mag)
        out[f"magerr_{name}"] = np.where(missing, np.nan, err)
    out.meta["comments"] = [
        f"gppy simulated reference catalogue: truth stars with vmag_ab < {FAINT_LIMIT_VMAG}, "
        "measured with errors",
        "magnitudes: natural-system AB of the simulated camera; positions J2000/ICRS degrees"]
    return out


def write(path, table: Table) -> None:
    with atomic_open(path, "w") as fh:
        table.write(fh, format="ascii.ecsv")
