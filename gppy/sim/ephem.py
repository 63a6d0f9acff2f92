"""Low-precision ephemerides, enough to schedule a night: the Sun's position
(Astronomical Almanac formulae, ~0.01 deg), sidereal time, altitudes.

Pure arithmetic on Julian dates, so no IERS tables are downloaded.
"""

from __future__ import annotations

import datetime as dt

import numpy as np

J2000_JD = 2451545.0
UNIX_EPOCH_JD = 2440587.5


def jd_from_datetime(t: dt.datetime) -> float:
    """Julian date of a naive UTC datetime."""
    return UNIX_EPOCH_JD + t.replace(tzinfo=dt.timezone.utc).timestamp() / 86400.0


def datetime_from_jd(jd: float) -> dt.datetime:
    """Naive UTC datetime, rounded to the millisecond."""
    seconds = round((jd - UNIX_EPOCH_JD) * 86400.0, 3)
    return dt.datetime(1970, 1, 1) + dt.timedelta(seconds=seconds)


def sun_radec_deg(jd: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = np.asarray(jd) - J2000_JD
    mean_long = np.radians(280.460 + 0.9856474 * n)
    anomaly = np.radians(357.528 + 0.9856003 * n)
    ecl_long = (mean_long + np.radians(1.915) * np.sin(anomaly)
                + np.radians(0.020) * np.sin(2 * anomaly))
    obliquity = np.radians(23.439 - 4e-7 * n)
    ra = np.degrees(np.arctan2(np.cos(obliquity) * np.sin(ecl_long), np.cos(ecl_long))) % 360.0
    dec = np.degrees(np.arcsin(np.sin(obliquity) * np.sin(ecl_long)))
    return ra, dec


def local_sidereal_deg(jd: np.ndarray, longitude_deg: float) -> np.ndarray:
    gmst = 280.46061837 + 360.98564736629 * (np.asarray(jd) - J2000_JD)
    return (gmst + longitude_deg) % 360.0


def altitude_deg(jd: np.ndarray, ra_deg: np.ndarray | float, dec_deg: np.ndarray | float,
                 latitude_deg: float, longitude_deg: float) -> np.ndarray:
    hour_angle = np.radians(local_sidereal_deg(jd, longitude_deg) - ra_deg)
    lat, dec = np.radians(latitude_deg), np.radians(dec_deg)
    s = np.sin(lat) * np.sin(dec) + np.cos(lat) * np.cos(dec) * np.cos(hour_angle)
    return np.degrees(np.arcsin(np.clip(s, -1.0, 1.0)))


def sun_altitude_deg(jd: np.ndarray, latitude_deg: float, longitude_deg: float) -> np.ndarray:
    ra, dec = sun_radec_deg(jd)
    return altitude_deg(jd, ra, dec, latitude_deg, longitude_deg)


def sun_azimuth_deg(jd: float, latitude_deg: float, longitude_deg: float) -> float:
    """Azimuth of the Sun, from north through east."""
    ra, dec = sun_radec_deg(jd)
    hour_angle = np.radians(local_sidereal_deg(jd, longitude_deg) - ra)
    lat, dec = np.radians(latitude_deg), np.radians(dec)
    az = np.arctan2(-np.cos(dec) * np.sin(hour_angle),
                    np.sin(dec) * np.cos(lat) - np.cos(dec) * np.sin(lat) * np.cos(hour_angle))
    return float(np.degrees(az) % 360.0)


def local_noon_jd(night: dt.date, longitude_deg: float) -> float:
    """Julian date of local mean noon on the night's date (the night starts then,
    matching `gppy.obsconfig.headers.night_of`)."""
    noon_utc = dt.datetime(night.year, night.month, night.day, 12) - dt.timedelta(
        hours=longitude_deg / 15.0)
    return jd_from_datetime(noon_utc)


def evening_crossing_jd(night: dt.date, latitude_deg: float, longitude_deg: float,
                        sun_altitude: float) -> float:
    """When the Sun first sinks below `sun_altitude` after local noon (to ~1 s)."""
    start = local_noon_jd(night, longitude_deg)
    grid = start + np.arange(0, 1.0, 1.0 / 1440.0)
    alt = sun_altitude_deg(grid, latitude_deg, longitude_deg)
    below = np.nonzero(alt < sun_altitude)[0]
    if below.size == 0 or below[0] == 0:
        raise ValueError(f"the Sun does not set below {sun_altitude} deg on {night} "
                         f"at latitude {latitude_deg}")
    i = below[0]
    frac = (alt[i - 1] - sun_altitude) / (alt[i - 1] - alt[i])
    return float(grid[i - 1] + frac * (grid[i] - grid[i - 1]))
