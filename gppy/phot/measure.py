"""One calibrated frame measured: detections, PSF, aperture photometry,
aperture corrections and limiting magnitudes.

    measure(image, mask, err, wcs, pixscale_arcsec, params, exptime_s) -> FrameCatalog

The catalogue (`FrameCatalog.table`, one row per detection, brightest first):

    id               sep's object number (its value in the segmentation map)
    x, y             windowed centroid (sep.winpos, window FWHM / 2.3548), 0-based px
    ra, dec          deg, from the WCS given (NaN without one)
    flags            `gppy.phot.detect.SourceFlag` bits (SExtractor's meanings)
    fwhm_arcsec      half-light radius (sep.flux_radius) scaled by the PSF stars'
                     FWHM / half-light ratio: point sources read the seeing
    ellipticity      1 - b/a from the isophotal moments
    a_px, b_px, theta_rad   sep's moments
    peak_e           highest pixel above the background
    nn_dist_arcsec   distance to the nearest other detection
    flux_<k>, fluxerr_<k>   e- in aperture k (see `gppy.phot.apertures` for the keys)
    mag_<k>, magerr_<k>     instrumental: -2.5 log10(flux / exptime_s) (e-/s), NaN if
                     flux <= 0; add the aperture's zero point to calibrate

Frame-level: seeing (the fitted Moffat's FWHM), ellipticity, sky level and
sigma, and per aperture its diameter, aperture correction, empty-aperture noise
and 3- and 5-sigma limits (in the aperture's instrumental system).

PSF stars (also those of the growth curve and the aperture corrections):
unflagged, unsaturated detections with no masked pixel and no other detection
within (TOTAL_RADIUS_FWHM + 2) FWHM, S/N >= PSF_MIN_SNR, brightest first.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import sep
from astropy import units as u
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS
from scipy.spatial import cKDTree

from gppy.astrometry.wcsio import celestial_wcs
from gppy.errors import InputError
from gppy.obsconfig.schema import Phot, Profile
from gppy.phot.apertures import (TOTAL_RADIUS_FWHM, Aperture, aperture_correction, aperture_set,
                                 optimum_diameter, sum_circle, sum_kron, total_flux)
from gppy.phot.detect import Extraction, SourceFlag, extract, footprint_flags
from gppy.phot.limits import empty_apertures, empty_distance_px, limiting_mag
from gppy.phot.psf import Moffat, PsfEstimate, estimate_psf

FWHM_PER_SIGMA = 2.3548
ISOLATION_FWHM = 2.0           # NEIGHBOUR: a detection within the largest circle's radius + this
PSF_ISOLATION_FWHM = TOTAL_RADIUS_FWHM + 2.0
MAX_PSF_STARS = 50
PSF_MIN_SNR = 20               # within TOTAL_RADIUS_FWHM
MIN_APCOR_STARS = 5            # fewer central PSF stars: aperture corrections from all
EMPTY_MARGIN_FWHM = 1.0        # empty apertures keep this far from any footprint


class PhotometryError(InputError):
    """A frame that cannot be measured (too few stars for a PSF)."""


@dataclass
class ApertureStats:
    aperture: Aperture
    diameter_arcsec: float          # NaN for Kron
    apcorr_mag: float               # add to mag_<key> for a point source's total magnitude
    apcorr_err_mag: float
    noise_e: float                  # robust std of sums in empty apertures (NaN for Kron)
    noise_err_e: float              # what ERR says of the same apertures (noise_e / this:
                                    # ~1 on single frames, > 1 for correlated noise)
    n_empty: int
    ul3_mag: float                  # instrumental limits in this aperture (add its zero point)
    ul5_mag: float

    @property
    def key(self) -> str:
        return self.aperture.key


@dataclass
class FrameCatalog:
    table: Table
    seeing_arcsec: float
    fwhm_px: float
    ellipticity: float
    psf: Moffat
    n_psf_stars: int
    fwhm_scatter_arcsec: float       # robust std of the PSF stars' FWHM
    sky_e: float
    sky_sigma_e: float
    exptime_s: float
    pixscale_arcsec: float
    shape: tuple[int, int]
    apertures: list[ApertureStats] = field(default_factory=list)
    psf_star_ids: np.ndarray = field(default_factory=lambda: np.empty(0, int))

    def aperture(self, key: str) -> ApertureStats:
        for a in self.apertures:
            if a.key == key:
                return a
        raise KeyError(key)

    def summary(self) -> dict:
        """Frame-level numbers, plain values (for headers, logs, the ledger)."""
        out = {"seeing_arcsec": self.seeing_arcsec, "fwhm_px": self.fwhm_px,
               "ellipticity": self.ellipticity, "moffat_beta": self.psf.beta,
               "n_psf_stars": self.n_psf_stars, "sky_e": self.sky_e,
               "sky_sigma_e": self.sky_sigma_e, "n_sources": len(self.table)}
        for a in self.apertures:
            out[f"aperture_{a.key}"] = {
                "diameter_arcsec": a.diameter_arcsec, "apcorr_mag": a.apcorr_mag,
                "apcorr_err_mag": a.apcorr_err_mag, "noise_e": a.noise_e,
                "ul3_inst_mag": a.ul3_mag, "ul5_inst_mag": a.ul5_mag}
        return out


def _first_fwhm_guess(obj: np.ndarray, flags: np.ndarray) -> float:
    """From the isophotal moments of the brightest clean detections (only a start)."""
    clean = np.nonzero(flags == 0)[0]
    if clean.size == 0:
        clean = np.arange(len(obj))
    bright = clean[np.argsort(obj["flux"][clean])[::-1][:50]]
    return float(np.median(FWHM_PER_SIGMA * np.sqrt(obj["a"][bright] * obj["b"][bright])))


def _nearest_other(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    if len(x) < 2:
        return np.full(len(x), np.inf)
    dist, _ = cKDTree(np.column_stack([x, y])).query(np.column_stack([x, y]), k=2)
    return dist[:, 1]


def _any_in_circle(pixels: np.ndarray, x, y, radius_px) -> np.ndarray:
    count, _, _ = sum_circle(pixels.astype(np.float32), None, None, x, y, radius_px)
    return count > 0


def _psf_candidates(ext: Extraction, flags, x, y, fwhm_px: float) -> np.ndarray:
    """Indices of PSF-star candidates, brightest first."""
    radius = PSF_ISOLATION_FWHM * fwhm_px
    ok = (flags == 0) & (_nearest_other(x, y) > radius)
    ok &= ~_any_in_circle(ext.bad, x, y, TOTAL_RADIUS_FWHM * fwhm_px)
    flux, err, _ = sum_circle(ext.sub, ext.noise, ext.bad, x, y, TOTAL_RADIUS_FWHM * fwhm_px)
    ok &= flux >= PSF_MIN_SNR * err
    idx = np.nonzero(ok)[0]
    return idx[np.argsort(flux[idx])[::-1]]


def _psf(ext: Extraction, flags) -> tuple[PsfEstimate, np.ndarray]:
    obj = ext.objects
    guess = _first_fwhm_guess(obj, flags)
    cand = _psf_candidates(ext, flags, obj["x"], obj["y"], guess)
    est = estimate_psf(ext.sub, ext.noise, ext.bad, obj["x"][cand], obj["y"][cand], guess,
                       max_stars=MAX_PSF_STARS)
    if est is None:
        raise PhotometryError(f"fewer than 3 usable PSF stars among {len(obj)} detections")
    return est, cand[:len(est.fits)][est.used]


def _photometry(ext: Extraction, apertures: list[Aperture], x, y) -> tuple[dict, np.ndarray]:
    """({key: (flux, error)}, the OR of sep's aperture flags over the apertures)."""
    obj = ext.objects
    out, sepflags = {}, np.zeros(len(x), np.int32)
    for ap in apertures:
        if ap.kind == "kron":
            flux, err, flag, _ = sum_kron(ext.sub, ext.noise, ext.bad, x, y, obj["a"], obj["b"],
                                          obj["theta"])
        else:
            flux, err, flag = sum_circle(ext.sub, ext.noise, ext.bad, x, y, ap.diameter_px / 2)
        out[ap.key] = (flux, err)
        sepflags |= flag
    return out, sepflags


def _aperture_flags(ext: Extraction, sepflags, x, y, radius_px: float) -> np.ndarray:
    flags = np.zeros(len(x), np.int32)
    flags[(sepflags & sep.APER_TRUNC) != 0] |= SourceFlag.TRUNCATED
    flags[(sepflags & sep.APER_HASMASKED) != 0] |= SourceFlag.MASKED
    if ext.saturated.any():
        flags[_any_in_circle(ext.saturated, x, y, radius_px)] |= SourceFlag.SATURATED
        # MASKED is for other masked pixels: saturated ones have their own flag
        other = ext.bad & ~ext.saturated
        only_sat = (flags & SourceFlag.SATURATED) != 0
        only_sat &= ~_any_in_circle(other, x, y, radius_px)
        flags[only_sat & ((sepflags & sep.APER_HASMASKED) != 0)] &= ~np.int32(SourceFlag.MASKED)
    return flags


def _magnitudes(flux, err, exptime_s: float) -> tuple[np.ndarray, np.ndarray]:
    with np.errstate(divide="ignore", invalid="ignore"):
        mag = np.where(flux > 0, -2.5 * np.log10(flux / exptime_s), np.nan)
        magerr = np.where(flux > 0, 2.5 / np.log(10) * err / flux, np.nan)
    return mag, magerr


def measure_file(path: str | os.PathLike, profile: Profile, seed: int = 0) -> FrameCatalog:
    """`measure` a calibrated frame file (primary image in electrons, MASK, ERR;
    EXPTIME and a celestial WCS, if any, in the primary header). The pixel scale is
    the WCS's, else the profile's."""
    with fits.open(path, memmap=False) as hdul:
        header = hdul[0].header
        image, mask, err = hdul[0].data, hdul["MASK"].data, hdul["ERR"].data
    wcs = celestial_wcs(header)
    if wcs is not None:
        pixscale = float(np.sqrt(abs(np.linalg.det(wcs.pixel_scale_matrix)))) * 3600.0
    else:
        pixscale = profile.camera.pixscale_arcsec
    return measure(image, mask, err, wcs, pixscale, profile.phot, float(header["EXPTIME"]),
                   seed=seed)


def measure(image: np.ndarray, mask: np.ndarray, err: np.ndarray, wcs: WCS | None,
            pixscale_arcsec: float, params: Phot, exptime_s: float = 1.0,
            seed: int = 0) -> FrameCatalog:
    """Measure a calibrated frame (see the module docstring); `seed` fixes the
    random empty apertures. Raises PhotometryError when no PSF can be measured."""
    ext = extract(image, mask, err, params)
    obj = ext.objects
    if len(obj) < 3:
        raise PhotometryError(f"only {len(obj)} detections")
    flags = footprint_flags(ext)
    est, psf_idx = _psf(ext, flags)
    psf = est.model
    fwhm = psf.fwhm_px

    x, y, wflag = sep.winpos(ext.sub, obj["x"], obj["y"], fwhm / FWHM_PER_SIGMA, mask=ext.bad)
    bad_win = (wflag != 0) | ~np.isfinite(x) | (np.hypot(x - obj["x"], y - obj["y"]) > fwhm)
    x, y = np.where(bad_win, obj["x"], x), np.where(bad_win, obj["y"], y)

    opt_px, _, _ = optimum_diameter(ext.sub, ext.bad, x[psf_idx], y[psf_idx], psf)
    apertures = aperture_set(fwhm, opt_px, pixscale_arcsec)
    phot, sepflags = _photometry(ext, apertures, x, y)
    largest_px = max(a.diameter_px for a in apertures if a.kind == "circle") / 2
    flags |= _aperture_flags(ext, sepflags, x, y, largest_px)
    nn = _nearest_other(x, y)
    flags[nn < largest_px + ISOLATION_FWHM * fwhm] |= SourceFlag.NEIGHBOUR

    # The PSF widens away from the axis, so the aperture corrections come from the
    # PSF stars where the zero-point stars are (the central part); with all of them
    # the total zero point of a simulated 27' field came out 0.015 mag too bright.
    ny, nx = ext.sub.shape
    half = params.central_fraction / 2.0
    central = ((np.abs(x[psf_idx] - (nx - 1) / 2) <= half * nx)
               & (np.abs(y[psf_idx] - (ny - 1) / 2) <= half * ny))
    apcor_idx = psf_idx[central] if central.sum() >= MIN_APCOR_STARS else psf_idx
    total, total_err = total_flux(ext.sub, ext.noise, ext.bad, x[apcor_idx], y[apcor_idx], psf)
    rng = np.random.default_rng(seed)
    distance = empty_distance_px((ext.segmap > 0) | ext.bad)
    stats = []
    for ap in apertures:
        ap_flux, ap_err = phot[ap.key]
        corr, corr_err = aperture_correction(ap_flux[apcor_idx], ap_err[apcor_idx], total,
                                             total_err)
        if ap.kind == "circle":
            empty = empty_apertures(ext.sub, ext.noise, distance, ap.diameter_px, rng,
                                    margin_px=EMPTY_MARGIN_FWHM * fwhm)
            noise, noise_err, n_empty = empty.noise_e, empty.err_e, empty.n
        else:
            noise, noise_err, n_empty = np.nan, np.nan, 0
        stats.append(ApertureStats(ap, ap.diameter_arcsec(pixscale_arcsec), corr, corr_err,
                                   noise, noise_err, n_empty, limiting_mag(noise, exptime_s, 3.0),
                                   limiting_mag(noise, exptime_s, 5.0)))

    r_half, _ = sep.flux_radius(ext.sub, x, y, np.full(len(x), TOTAL_RADIUS_FWHM * fwhm), 0.5,
                                mask=ext.bad, subpix=5)
    fwhm_per_rhalf = fwhm / np.median(r_half[psf_idx])
    if wcs is not None:
        ra, dec = wcs.all_pix2world(x, y, 0)
    else:
        ra = dec = np.full(len(x), np.nan)

    table = Table()
    table["id"] = np.arange(1, len(obj) + 1, dtype=np.int32)
    table["x"], table["y"] = x, y
    table["ra"], table["dec"] = np.asarray(ra) * u.deg, np.asarray(dec) * u.deg
    table["flags"] = flags.astype(np.int32)
    table["fwhm_arcsec"] = r_half * fwhm_per_rhalf * pixscale_arcsec * u.arcsec
    table["ellipticity"] = 1.0 - obj["b"] / obj["a"]
    table["a_px"], table["b_px"], table["theta_rad"] = obj["a"], obj["b"], obj["theta"]
    table["peak_e"] = obj["peak"] * u.electron
    table["nn_dist_arcsec"] = nn * pixscale_arcsec * u.arcsec
    for ap in apertures:
        flux, ferr = phot[ap.key]
        mag, magerr = _magnitudes(flux, ferr, exptime_s)
        table[f"flux_{ap.key}"], table[f"fluxerr_{ap.key}"] = flux * u.electron, ferr * u.electron
        table[f"mag_{ap.key}"], table[f"magerr_{ap.key}"] = mag * u.mag, magerr * u.mag
    order = np.argsort(-phot["auto"][0])
    table = table[order]
    return FrameCatalog(table=table, seeing_arcsec=fwhm * pixscale_arcsec, fwhm_px=fwhm,
                        ellipticity=psf.ellipticity, psf=psf, n_psf_stars=est.n_stars,
                        fwhm_scatter_arcsec=est.fwhm_scatter_px * pixscale_arcsec,
                        sky_e=ext.sky_e, sky_sigma_e=ext.sky_sigma_e, exptime_s=exptime_s,
                        pixscale_arcsec=pixscale_arcsec, shape=ext.sub.shape,
                        apertures=stats, psf_star_ids=psf_idx + 1)
