"""Where the telescope points and where the sky really lands on the detector.

The raw header carries the *commanded* pointing (field centre plus dither). The
true WCS, written only to the truth, is a TAN projection centred on the optical
axis (CRPIX, near the sub-array centre) at the commanded position plus a pointing
error, with a small rotation, a small plate-scale error and a SIP distortion:
a radial cubic term (pincushion/barrel, 0.5-2 px at the full detector's corner)
plus a weak quadratic tilt term. North is up and East left (CD1_1 < 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

SIP_ORDER = 3


def spherical_offset(ra_deg, dec_deg, pa_deg, sep_deg) -> tuple[np.ndarray, np.ndarray]:
    """The point `sep_deg` away from (ra, dec) at position angle `pa_deg` (east of north)."""
    ra0, dec0 = np.radians(ra_deg), np.radians(dec_deg)
    pa, sep = np.radians(pa_deg), np.radians(sep_deg)
    dec = np.arcsin(np.sin(dec0) * np.cos(sep) + np.cos(dec0) * np.sin(sep) * np.cos(pa))
    ra = ra0 + np.arctan2(np.sin(pa) * np.sin(sep) * np.cos(dec0),
                          np.cos(sep) - np.sin(dec0) * np.sin(dec))
    return np.degrees(ra) % 360.0, np.degrees(dec)


def offset_arcsec(ra_deg: float, dec_deg: float, east_arcsec: float,
                  north_arcsec: float) -> tuple[float, float]:
    pa = np.degrees(np.arctan2(east_arcsec, north_arcsec))
    ra, dec = spherical_offset(ra_deg, dec_deg, pa, np.hypot(east_arcsec, north_arcsec) / 3600.0)
    return float(ra), float(dec)


@dataclass(frozen=True)
class Optics:
    """The instrument's fixed geometry (one per simulated camera)."""

    rotation_deg: float        # position angle of the detector +y axis, east of north
    scale_factor: float        # true / nominal pixel scale
    radial_k: float            # SIP radial term: dx = k u r^2 (px^-2)
    tilt: tuple[float, ...]    # SIP A_2_0, A_1_1, A_0_2, B_2_0, B_1_1, B_0_2 (px^-1)
    axis_offset_px: tuple[float, float]  # optical axis minus sub-array centre

    @classmethod
    def draw(cls, rng: np.random.Generator, detector_px: list[int]) -> "Optics":
        half_diagonal = 0.5 * float(np.hypot(*detector_px))
        corner_shift_px = rng.uniform(0.5, 2.0) * rng.choice([-1.0, 1.0])
        return cls(rotation_deg=float(rng.normal(0.0, 0.4)),
                   scale_factor=float(1.0 + rng.normal(0.0, 0.002)),
                   radial_k=float(corner_shift_px / half_diagonal ** 3),
                   tilt=tuple(float(v) for v in rng.normal(0.0, 0.05 / half_diagonal ** 2, 6)),
                   axis_offset_px=tuple(float(v) for v in rng.normal(0.0, 10.0, 2)))


def true_wcs_cards(optics: Optics, pixscale_arcsec: float, shape: tuple[int, int],
                   ra_deg: float, dec_deg: float, extra_rotation_deg: float = 0.0) -> dict:
    """FITS cards of the true TAN-SIP WCS with the optical axis at (ra, dec)."""
    ny, nx = shape
    crpix1 = (nx + 1) / 2.0 + optics.axis_offset_px[0]
    crpix2 = (ny + 1) / 2.0 + optics.axis_offset_px[1]
    scale = pixscale_arcsec * optics.scale_factor / 3600.0
    theta = np.radians(optics.rotation_deg + extra_rotation_deg)
    cd = scale * np.array([[-np.cos(theta), np.sin(theta)],
                           [np.sin(theta), np.cos(theta)]])
    cards = {"WCSAXES": 2, "CTYPE1": "RA---TAN-SIP", "CTYPE2": "DEC--TAN-SIP",
             "CUNIT1": "deg", "CUNIT2": "deg", "RADESYS": "ICRS", "EQUINOX": 2000.0,
             "CRVAL1": float(ra_deg), "CRVAL2": float(dec_deg),
             "CRPIX1": float(crpix1), "CRPIX2": float(crpix2),
             "CD1_1": float(cd[0, 0]), "CD1_2": float(cd[0, 1]),
             "CD2_1": float(cd[1, 0]), "CD2_2": float(cd[1, 1]),
             "A_ORDER": SIP_ORDER, "B_ORDER": SIP_ORDER}
    k = optics.radial_k
    a20, a11, a02, b20, b11, b02 = optics.tilt
    # dx = k u (u^2 + v^2), dy = k v (u^2 + v^2), plus the quadratic tilt
    sip = {"A_2_0": a20, "A_1_1": a11, "A_0_2": a02, "A_3_0": k, "A_1_2": k,
           "B_2_0": b20, "B_1_1": b11, "B_0_2": b02, "B_0_3": k, "B_2_1": k}
    cards.update({key: float(value) for key, value in sip.items()})
    return cards


def wcs_from_cards(cards: dict) -> WCS:
    header = fits.Header()
    for key, value in cards.items():
        header[key] = value
    return WCS(header, relax=True)
