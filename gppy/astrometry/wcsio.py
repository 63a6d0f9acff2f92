"""World coordinates in FITS headers: read an existing celestial WCS, remove every
trace of an old solution (standard, SIP, PV and PinPoint's private TR terms)
before writing a new one, and the quality keywords that go with it."""

from __future__ import annotations

import re
import warnings

from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning

_WCS_KEYS = re.compile(
    r"^(WCSAXES|CTYPE\d|CRVAL\d|CRPIX\d|CDELT\d|CROTA\d|CUNIT\d|CD\d_\d|PC\d_\d|PV\d_\d+|"
    r"LONPOLE|LATPOLE|RADESYS|RADECSYS|WCSNAME|A_ORDER|B_ORDER|AP_ORDER|BP_ORDER|"
    r"A_\d+_\d+|B_\d+_\d+|AP_\d+_\d+|BP_\d+_\d+|A_DMAX|B_DMAX|TR\d_\d+|PLTSOLVD|IMAGEW|IMAGEH)$")
QUALITY_KEYS = {
    "ASTRMETH": "how the WCS was found",
    "ASTRCAT": "reference catalogue",
    "ASTRNSTR": "stars matched to the catalogue",
    "ASTRRMS": "[arcsec] RMS of the matched stars",
    "ASTRMSEP": "[arcsec] median separation of the matched stars",
    "ASTRSIP": "SIP order fitted",
    "ASTRDIST": "distortion fitted to: frame, or night (shared)",
}


def celestial_wcs(header: fits.Header) -> WCS | None:
    """The header's celestial WCS, or None when it has none (or an unusable one)."""
    if not any(k in header for k in ("CTYPE1", "CD1_1", "PC1_1")):
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)
            wcs = WCS(header, naxis=2, relax=True)
    except Exception:  # astropy raises several kinds for malformed WCS cards
        return None
    if not wcs.has_celestial or not wcs.wcs.ctype[0].startswith("RA"):
        return None
    return wcs


def strip_wcs(header: fits.Header) -> None:
    """Remove every WCS card (and the old quality keywords), in place."""
    for key in [k for k in header.keys() if _WCS_KEYS.match(k) or k in QUALITY_KEYS]:
        del header[key]


def write_quality(header: fits.Header, quality: dict[str, object]) -> None:
    """Set the quality keywords (ASTRMETH ... ASTRDIST)."""
    for key in QUALITY_KEYS:
        header.remove(key, ignore_missing=True)
    for key, value in quality.items():
        if value is not None:
            header[key] = (value, QUALITY_KEYS[key])


def write_solution(header: fits.Header, wcs: WCS, quality: dict[str, object]) -> None:
    """Record a solution: a WCS kept from the header (ASTRMETH 'existing') is left
    exactly as it was; a new one replaces every old WCS card."""
    if quality.get("ASTRMETH") != "existing":
        strip_wcs(header)
        header.update(wcs.to_header(relax=True))
    write_quality(header, quality)
