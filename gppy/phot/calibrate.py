"""Zero points of one frame: measure it (`gppy.phot.measure`), fetch the reference
stars of its band, fit a zero point per aperture, and write the results.

    photometer(path, profile, band=..., refstars=...) -> PhotResult
    write_catalog(result, path)          the FITS catalogue (atomically)
    write_header_keys(header, result)    ZP, ZPERR, UL5, UL3 ... into an image header

Any FITS image with a celestial WCS is served. A pipeline Calib file (image in
electrons, MASK and ERR extensions) is used as it is; another image is taken in
its own units times the gain (header GAIN, else the profile's, else the
caller's), with MASK from non-finite pixels and ERR estimated from the
background noise and the sources' Poisson noise.

Zero points are in AB magnitudes for 1 count per second in the frame's own
units (electrons for a Calib file): mag = -2.5 log10(counts / EXPTIME) + ZP.
Each aperture has its own (it calibrates that aperture's magnitudes); the
headline is the growth-curve optimum aperture's ("opt"). ZP - APCOR of an
aperture is the zero point of a point source's total flux. Limits (UL5, UL3) are
point-source magnitudes in that aperture: 5 and 3 times the noise measured in
random empty apertures, so they hold on stacks with correlated noise.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import sep
from astropy.io import fits
from astropy.table import Table

from gppy.astrometry.wcsio import celestial_wcs
from gppy.errors import InputError
from gppy.fitsio import image_hdu_index, write_atomic
from gppy.obsconfig.schema import Phot
from gppy.phot.measure import FrameCatalog, measure
from gppy.phot.zeropoint import calibration_stars, crossmatch, fit_zeropoint

HEADLINE_APERTURE = "opt"
MATCH_RADIUS_FWHM = 1.0       # a reference star and a detection pair within this (min 1")
BAD = np.uint16(1)            # MASK of an image without one: non-finite pixels

# (ra_deg, dec_deg, radius_deg, band) -> reference Table: ra, dec, mag, magerr, colour
RefStars = Callable[[float, float, float, str], Table]


@dataclass
class ApertureZP:
    name: str
    diameter_arcsec: float | None       # None for Kron
    zp: float | None
    zperr: float | None
    nstars: int
    apcor: float                        # mag to add for a point source's total magnitude
    ul5: float | None
    ul3: float | None
    colour_term: float | None = None
    colour_term_err: float | None = None

    def as_dict(self) -> dict:
        return {k: _plain(v) for k, v in self.__dict__.items()}


@dataclass
class PhotResult:
    file: str
    filter: str
    catalog: FrameCatalog
    refcat: str | None                  # reference catalogue's name
    colour_name: str | None
    gain: float                         # e- per count of the frame's own units
    zps: list[ApertureZP] = field(default_factory=list)
    stars: Table | None = None          # the detections matched to the reference (all)

    def headline(self) -> ApertureZP:
        return next(z for z in self.zps if z.name == HEADLINE_APERTURE)

    def summary(self) -> dict:
        """One JSON line / ledger row: the headline aperture's numbers and every
        aperture's zero point."""
        h, c = self.headline(), self.catalog
        return {"file": self.file, "filter": self.filter, "aperture": h.name,
                "zp": _plain(h.zp), "zperr": _plain(h.zperr), "nstars": h.nstars,
                "ul5": _plain(h.ul5), "ul3": _plain(h.ul3),
                "seeing_arcsec": _plain(c.seeing_arcsec), "ellipticity": _plain(c.ellipticity),
                "sky_e": _plain(c.sky_e), "skysig_e": _plain(c.sky_sigma_e),
                "nsources": len(c.table), "refcat": self.refcat,
                "zp_by_aperture": [z.as_dict() for z in self.zps], "error": None}


def _plain(v):
    if isinstance(v, (np.floating, float)):
        return None if not math.isfinite(float(v)) else round(float(v), 5)
    if isinstance(v, np.integer):
        return int(v)
    return v


def read_image(path: str | os.PathLike, gain_e_per_unit: float | None
               ) -> tuple[fits.Header, np.ndarray, np.ndarray, np.ndarray, float]:
    """(header, image e-, MASK, ERR e-, gain) of a FITS file (see the module docstring)."""
    with fits.open(path, memmap=False) as hdul:
        index = image_hdu_index(hdul)
        header = hdul[index].header.copy()
        image = np.asarray(hdul[index].data, np.float32)
        names = [h.name for h in hdul]
        mask = np.asarray(hdul["MASK"].data) if "MASK" in names else None
        err = np.asarray(hdul["ERR"].data, np.float32) if "ERR" in names else None
    if header.get("BUNIT", "").lower().startswith("electron") or err is not None:
        gain = 1.0   # a Calib file is in electrons
    else:
        gain = header.get("GAIN") if isinstance(header.get("GAIN"), (int, float)) else None
        gain = gain or gain_e_per_unit
        if not gain or gain <= 0:
            raise InputError(f"{path}: no gain (no GAIN keyword, profile or --gain) to turn "
                             f"its counts into electrons")
    image = image * np.float32(gain)
    finite = np.isfinite(image)
    if mask is None:
        mask = np.where(finite, 0, BAD).astype(np.uint16)
    if err is None:
        err = _estimated_err(image, finite)
    return header, image, mask, err, float(gain)


def _estimated_err(image_e: np.ndarray, finite: np.ndarray) -> np.ndarray:
    """1-sigma e-: the background's noise (whatever made it: sky, read noise,
    resampling) plus the Poisson noise of what stands above the background."""
    data = np.where(finite, image_e, 0).astype(np.float32)
    back = sep.Background(data, mask=~finite, bw=64, bh=64, fw=3, fh=3)
    above = np.clip(data - back.back(), 0, None)
    return np.sqrt(back.rms() ** 2 + above).astype(np.float32)


def photometer(path: str | os.PathLike, params: Phot, band: str, refstars: RefStars, *,
               pixscale_arcsec: float | None = None, gain_e_per_unit: float | None = None,
               colour_term: bool = False, seed: int = 0) -> PhotResult:
    """Measure `path` and fit its zero points in `band` against `refstars`."""
    header, image, mask, err, gain = read_image(path, gain_e_per_unit)
    wcs = celestial_wcs(header)
    if wcs is None:
        raise InputError(f"{path}: no celestial WCS (solve it first: gppy astrometry)")
    exptime = header.get("EXPTIME")
    if not isinstance(exptime, (int, float)) or exptime <= 0:
        raise InputError(f"{path}: no usable EXPTIME ({exptime!r})")
    scale = float(np.sqrt(abs(np.linalg.det(wcs.pixel_scale_matrix)))) * 3600.0
    fc = measure(image, mask, err, wcs, pixscale_arcsec or scale, params, float(exptime),
                 seed=seed)
    ny, nx = fc.shape
    ra0, dec0 = wcs.all_pix2world([[(nx - 1) / 2, (ny - 1) / 2]], 0)[0]
    radius = 0.5 * math.hypot(nx, ny) * fc.pixscale_arcsec / 3600.0
    ref = refstars(float(ra0), float(dec0), radius, band)
    t = fc.table
    radius_arcsec = max(1.0, MATCH_RADIUS_FWHM * fc.seeing_arcsec)
    i, j, _ = crossmatch(t["ra"], t["dec"], ref["ra"], ref["dec"], radius_arcsec)
    result = PhotResult(str(path), band, fc, ref.meta.get("catalog"), ref.meta.get("colour_name"),
                        gain)
    stars = t[i]
    stars["mag_ref"], stars["magerr_ref"] = ref["mag"][j], ref["magerr"][j]
    stars["colour_ref"] = ref["colour"][j]
    result.stars = stars
    zp_shift = -2.5 * math.log10(gain)   # from e-/s to the frame's own counts/s
    for ap in fc.apertures:
        result.zps.append(_aperture_zp(ap, stars, params, fc.shape, colour_term, zp_shift))
    return result


def _aperture_zp(ap, stars: Table, params: Phot, shape, colour_term: bool,
                 zp_shift: float) -> ApertureZP:
    key = ap.key
    magerr_ref = np.where(np.isfinite(stars["magerr_ref"]), stars["magerr_ref"], 0.0)
    use = calibration_stars(stars["flags"], stars["mag_ref"], magerr_ref, stars[f"magerr_{key}"],
                            stars["x"], stars["y"], shape, refmag_bright=params.refmag_bright,
                            refmag_faint=params.refmag_faint, refmagerr_max=params.refmagerr_max,
                            inmagerr_max=params.inmagerr_max, flag_cut=params.flag_cut,
                            central_fraction=params.central_fraction)
    colour = np.asarray(stars["colour_ref"], float)[use] if colour_term else None
    if colour is not None and not np.isfinite(colour).all():
        use &= np.isfinite(np.asarray(stars["colour_ref"], float))
        colour = np.asarray(stars["colour_ref"], float)[use]
    fit = fit_zeropoint(np.asarray(stars[f"mag_{key}"], float)[use], np.asarray(
        stars[f"magerr_{key}"], float)[use], np.asarray(stars["mag_ref"], float)[use],
        magerr_ref[use], colour)
    diameter = None if not math.isfinite(ap.diameter_arcsec) else ap.diameter_arcsec
    if fit is None:
        return ApertureZP(key, diameter, None, None, int(use.sum()), ap.apcorr_mag, None, None)
    zp = fit.zp_mag + zp_shift
    return ApertureZP(key, diameter, zp, fit.zp_err_mag, fit.n_used, ap.apcorr_mag,
                      ap.ul5_mag + fit.zp_mag if math.isfinite(ap.ul5_mag) else None,
                      ap.ul3_mag + fit.zp_mag if math.isfinite(ap.ul3_mag) else None,
                      fit.colour_term, fit.colour_term_err)


# ------------------------------------------------------------------------- outputs

def header_keys(result: PhotResult) -> list[tuple[str, object, str]]:
    """(keyword, value, comment) for an image header: the headline aperture's ZP,
    ZPERR, UL5, UL3, then per aperture n = 1, 2, ...: APNAMEn, APDIAMn, ZP_n,
    ZPERR_n, UL5_n, UL3_n, APCORn; and SEEING, ELLIP, SKYVAL, SKYSIG, NZPSTAR, PHOTCAT."""
    h, c = result.headline(), result.catalog
    keys = [("ZP", h.zp, f"[mag] AB zero point, aperture {h.name}, counts/s"),
            ("ZPERR", h.zperr, "[mag] zero-point error"),
            ("UL5", h.ul5, "[mag] 5-sigma point-source limit"),
            ("UL3", h.ul3, "[mag] 3-sigma point-source limit"),
            ("NZPSTAR", h.nstars, "stars in the zero-point fit"),
            ("ZPAPER", h.name, "aperture of ZP, ZPERR, UL5, UL3"),
            ("PHOTCAT", result.refcat, "reference catalogue"),
            ("PHOTBAND", result.filter, "band of the reference magnitudes (AB)"),
            ("SEEING", c.seeing_arcsec, "[arcsec] FWHM of the PSF (Moffat fit)"),
            ("ELLIP", c.ellipticity, "PSF ellipticity"),
            ("SKYVAL", c.sky_e / result.gain, "sky level (image units)"),
            ("SKYSIG", c.sky_sigma_e / result.gain, "sky noise per pixel (image units)")]
    for n, z in enumerate(result.zps, start=1):
        keys += [(f"APNAME{n}", z.name, "aperture name"),
                 (f"APDIAM{n}", z.diameter_arcsec, "[arcsec] aperture diameter (none: Kron)"),
                 (f"ZP_{n}", z.zp, f"[mag] zero point, aperture {z.name}"),
                 (f"ZPERR_{n}", z.zperr, "[mag] its error"),
                 (f"UL5_{n}", z.ul5, "[mag] 5-sigma limit in this aperture"),
                 (f"UL3_{n}", z.ul3, "[mag] 3-sigma limit in this aperture"),
                 (f"APCOR{n}", z.apcor, "[mag] add for a point source's total mag")]
    return keys


def write_header_keys(header: fits.Header, result: PhotResult) -> None:
    for key, value, comment in header_keys(result):
        value = _plain(value)
        if value is None:
            header.remove(key, ignore_missing=True)
        else:   # a long value (a catalogue file's path) goes without its comment
            width = max(20, len(str(value)) + 2)   # a value takes at least 20 columns
            header[key] = (value, comment if width + len(comment) <= 67 else "")


def write_catalog(result: PhotResult, path: str | os.PathLike) -> None:
    """The FITS catalogue: every detection with instrumental and calibrated
    magnitudes per aperture (magcal_<k> = mag_<k> + ZP of k, its error with the
    ZP's), RA/Dec, flags, FWHM; the frame's keywords in the header."""
    table = result.catalog.table.copy()
    for z in result.zps:
        zp_e = None if z.zp is None else z.zp + 2.5 * math.log10(result.gain)  # e-/s again
        if zp_e is None:
            table[f"magcal_{z.name}"] = np.full(len(table), np.nan)
            table[f"magcalerr_{z.name}"] = np.full(len(table), np.nan)
        else:
            table[f"magcal_{z.name}"] = table[f"mag_{z.name}"] + zp_e
            table[f"magcalerr_{z.name}"] = np.hypot(table[f"magerr_{z.name}"], z.zperr)
    for column in table.itercols():   # FITS has no unit "electron"
        if column.unit is not None and str(column.unit) == "electron":
            column.unit = None
    hdu = fits.BinTableHDU(table, name="CATALOG")
    hdu.header["FLUXUNIT"] = ("electron", "unit of flux_* and fluxerr_*, and peak_e")
    write_header_keys(hdu.header, result)
    hdu.header["IMAGE"] = Path(result.file).name   # the image measured
    write_atomic(Path(path), fits.HDUList([fits.PrimaryHDU(), hdu]))


def total_zero_point(header: fits.Header, gain: float = 1.0) -> float | None:
    """The AB zero point of a point source's total flux in e-/s: ZP_n - APCORn of the
    aperture ZPAPER (else ZP itself, e.g. a stack's, whose ZPAPER is 'total'), plus
    2.5 log10(gain) for an image measured in its own counts."""
    zp = header.get("ZP")
    if not isinstance(zp, (int, float)):
        return None
    name = header.get("ZPAPER", HEADLINE_APERTURE)
    for key in header:
        if key.startswith("APNAME") and header[key] == name:
            z, apcor = header.get(f"ZP_{key[6:]}"), header.get(f"APCOR{key[6:]}")
            if isinstance(z, (int, float)) and isinstance(apcor, (int, float)):
                zp = z - apcor
            break
    return float(zp) + (2.5 * math.log10(gain) if gain and gain != 1 else 0.0)


def catalog_path(image: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> Path:
    """Where an image's catalogue goes: NAME.fits -> NAME.cat.fits (beside it, or in out_dir)."""
    image = Path(image)
    stem = image.name[:-3] if image.name.endswith(".gz") else image.name
    stem = stem.rsplit(".", 1)[0]
    return Path(out_dir or image.parent) / f"{stem}.cat.fits"
