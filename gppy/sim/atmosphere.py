"""The atmosphere: extinction, night-sky and twilight brightness, airmass.

All surface brightnesses are AB mag/arcsec^2 at the band's centre wavelength
(the sky spectrum is treated as flat across a band).
"""

from __future__ import annotations

import numpy as np

from gppy.sim.bands import band

# Dark, moonless zenith sky at a good site (ESO/SDSS values converted to AB), by wavelength.
_DARK_SKY_NM = np.array([350, 445, 477, 551, 623, 658, 763, 806, 913, 1000], dtype=float)
_DARK_SKY_AB = np.array([22.4, 22.4, 21.9, 21.5, 21.0, 20.9, 20.3, 20.0, 18.9, 18.5])


def airmass(altitude_deg: float) -> float:
    """Kasten & Young (1989) airmass, finite at the horizon."""
    zenith = 90.0 - altitude_deg
    return 1.0 / (np.cos(np.radians(zenith)) + 0.50572 * (96.07995 - zenith) ** -1.6364)


def extinction_mag_per_airmass(band_name: str, height_m: float) -> float:
    """Rayleigh (scale height 8 km) plus aerosol (scale height 2.5 km) extinction
    at the band centre: about 0.11 mag in V on a 2.8 km mountain, 0.2 at sea level."""
    lam_um = band(band_name).centre_nm / 1000.0
    rayleigh = 0.0095 * lam_um ** -4.05 * np.exp(-height_m / 8000.0)
    aerosol = 0.05 * lam_um ** -1.3 * np.exp(-height_m / 2500.0)
    return float(rayleigh + aerosol)


def dark_sky_mag(band_name: str, site_offset_mag: float = 0.0) -> float:
    """Zenith night-sky surface brightness; `site_offset_mag` (>0 brighter) covers
    light pollution and a low site."""
    centre = band(band_name).centre_nm
    return float(np.interp(centre, _DARK_SKY_NM, _DARK_SKY_AB)) - site_offset_mag


def twilight_sky_mag(band_name: str, sun_altitude_deg: float) -> float:
    """Zenith twilight brightness: 11 mag/arcsec^2 at 550 nm with the Sun 2 deg below
    the horizon, fading by 1 mag per degree of depression; bluer than the night
    sky (f_nu proportional to 1/lambda)."""
    depression = max(-sun_altitude_deg, 0.0)
    centre = band(band_name).centre_nm
    return 11.0 + 1.0 * (depression - 2.0) + 2.5 * np.log10(centre / 550.0)


def sky_mag(band_name: str, sun_altitude_deg: float, airmass_: float, extinction: float,
            site_offset_mag: float) -> float:
    """Sky brightness along a line of sight: night sky brightening with airmass as
    X 10^(-0.4 k (X-1)) (van Rhijn-like), plus the twilight sky."""
    night = 10 ** (-0.4 * dark_sky_mag(band_name, site_offset_mag))
    night *= airmass_ * 10 ** (-0.4 * extinction * (airmass_ - 1.0))
    twilight = 10 ** (-0.4 * twilight_sky_mag(band_name, sun_altitude_deg))
    return float(-2.5 * np.log10(night + twilight))
