"""Aperture photometry: the frame's aperture set, sums with errors from ERR,
Kron apertures, the growth curve and aperture corrections.

Apertures (key: column suffix):

    opt       the growth-curve optimum: the diameter that maximises the S/N of a
              faint, sky-limited point source, f(r) / r, with f(r) the median
              growth curve of bright isolated stars (~1.2-1.5 FWHM for a Moffat)
    fwhm135   1.35 x FWHM diameter (the optimum of a Gaussian PSF)
    fwhm200   2 x FWHM
    fwhm300   3 x FWHM
    3arcsec   3" diameter
    5arcsec   5" diameter
    auto      Kron: an ellipse of 2.5 Kron radii (sep.kron_radius over 6 a), or a
              circle of KRON_MIN_RADIUS_PX where that is smaller (SExtractor's MAG_AUTO)

Sums are exact pixel overlaps (sep, subpix=0) in the background-subtracted
image; masked pixels are left out and the sum is scaled up by the lost area (sep's
default), and the source is flagged. Errors: from ERR (which holds the source's
own Poisson noise) over the aperture. sep (as SExtractor) sums w * ERR^2 over
pixels of overlap w, but the variance of sum(w * pixel) is sum(w^2 * ERR^2): for
independent pixels sep overstates the noise of a 2 px radius circle by 9 %
(`overlap_noise_factor`, applied to circular apertures; Kron apertures use whole
pixels, subpix=1, where the two agree).

Aperture correction (mag, <= 0): add it to a magnitude in an aperture to get
the total magnitude of a point source. "Total" is the flux within
TOTAL_RADIUS_FWHM x FWHM, plus the fitted Moffat's tail beyond it (< 0.4 % for
beta >= 3). A weighted, clipped mean over the PSF stars (`aperture_correction`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import sep

from gppy.phot.fitting import clipped_wls
from gppy.phot.psf import Moffat

KRON_FACTOR = 2.5
KRON_MOMENTS_RADIUS = 6.0      # sep.kron_radius integrates out to this many a, b
KRON_MIN_RADIUS_PX = 1.75      # below this, a circle of this radius
TOTAL_RADIUS_FWHM = 4.0
GROWTH_RADII_FWHM = np.arange(0.25, 2.51, 0.025)


@dataclass(frozen=True)
class Aperture:
    key: str
    kind: str                       # "circle" | "kron"
    diameter_px: float              # NaN for kron
    description: str

    def diameter_arcsec(self, pixscale_arcsec: float) -> float:
        return self.diameter_px * pixscale_arcsec


def aperture_set(fwhm_px: float, opt_diameter_px: float, pixscale_arcsec: float) -> list[Aperture]:
    return [Aperture("opt", "circle", opt_diameter_px, "growth-curve optimum (sky-limited S/N)"),
            Aperture("fwhm135", "circle", 1.35 * fwhm_px, "1.35 x FWHM"),
            Aperture("fwhm200", "circle", 2.0 * fwhm_px, "2 x FWHM"),
            Aperture("fwhm300", "circle", 3.0 * fwhm_px, "3 x FWHM"),
            Aperture("3arcsec", "circle", 3.0 / pixscale_arcsec, '3" diameter'),
            Aperture("5arcsec", "circle", 5.0 / pixscale_arcsec, '5" diameter'),
            Aperture("auto", "kron", np.nan, "Kron (2.5 Kron radii, MAG_AUTO)")]


@lru_cache(maxsize=64)
def overlap_noise_factor(radius_px: float, offsets_per_axis: int = 4) -> float:
    """sqrt(sum w^2 / sum w) for the exact-overlap weights w of a circle of
    `radius_px`, averaged over centres spread within a pixel: what sep's error
    (sqrt(sum w ERR^2)) must be multiplied by for independent pixels of equal ERR.
    The weights come from sep itself: one unit pixel summed by apertures at every
    offset from it."""
    half = int(np.ceil(radius_px)) + 2
    impulse = np.zeros((2 * half + 1, 2 * half + 1), np.float32)
    impulse[half, half] = 1.0
    steps = np.arange(-half + 1, half)
    sub_px = (np.arange(offsets_per_axis) + 0.5) / offsets_per_axis - 0.5
    i, j, ox, oy = np.meshgrid(steps, steps, sub_px, sub_px, indexing="ij")
    w, _, _ = sep.sum_circle(impulse, (half - i + ox).ravel(), (half - j + oy).ravel(),
                             radius_px, subpix=0)
    w = w.reshape(i.shape)
    return float(np.sqrt((w ** 2).sum() / w.sum()))


def sum_circle(sub: np.ndarray, noise: np.ndarray | None, bad: np.ndarray | None, x, y,
               radius_px: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(flux, error, sep flag) in circles of `radius_px` (one radius for all)."""
    flux, err, flag = sep.sum_circle(sub, x, y, float(radius_px), err=noise, mask=bad, subpix=0)
    if noise is not None:
        err = err * overlap_noise_factor(round(float(radius_px), 4))
    return flux, err, flag


def sum_kron(sub: np.ndarray, noise: np.ndarray, bad: np.ndarray, x, y, a, b, theta
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(flux, error, sep flag, equivalent circular radius px) in Kron apertures."""
    x, y, a, b, theta = (np.asarray(v, float) for v in (x, y, a, b, theta))
    # sep's float32 theta can exceed pi/2 in double precision, which sep refuses
    theta = np.clip(theta, -np.pi / 2, np.pi / 2)
    ok = (a > 0) & (b > 0) & np.isfinite(a + b + theta)
    kron = np.zeros(x.size)
    kflag = np.zeros(x.size, np.int16)
    if ok.any():
        kron[ok], kflag[ok] = sep.kron_radius(sub, x[ok], y[ok], a[ok], b[ok], theta[ok],
                                              KRON_MOMENTS_RADIUS, mask=bad)
    kron = np.where(np.isfinite(kron), kron, 0.0)
    radius = KRON_FACTOR * kron * np.sqrt(np.where(ok, a * b, 0.0))
    flux, err = np.zeros(x.size), np.zeros(x.size)
    flag = np.zeros(x.size, np.int16)
    ellipse = radius >= KRON_MIN_RADIUS_PX
    if ellipse.any():
        flux[ellipse], err[ellipse], flag[ellipse] = sep.sum_ellipse(
            sub, x[ellipse], y[ellipse], a[ellipse], b[ellipse], theta[ellipse],
            KRON_FACTOR * kron[ellipse], err=noise, mask=bad, subpix=1)
    circle = ~ellipse
    if circle.any():
        flux[circle], err[circle], flag[circle] = sum_circle(sub, noise, bad, x[circle],
                                                             y[circle], KRON_MIN_RADIUS_PX)
        radius[circle] = KRON_MIN_RADIUS_PX
    return flux, err, flag | kflag, radius


def total_flux(sub, noise, bad, x, y, psf: Moffat) -> tuple[np.ndarray, np.ndarray]:
    """Point-source total flux and its error: within TOTAL_RADIUS_FWHM x FWHM, plus
    the model's tail."""
    radius = TOTAL_RADIUS_FWHM * psf.fwhm_px
    flux, err, _ = sum_circle(sub, noise, bad, x, y, radius)
    inside = 1.0 - psf.tail_fraction(radius)
    return flux / inside, err / inside


def optimum_diameter(sub, bad, x, y, psf: Moffat) -> tuple[float, np.ndarray, np.ndarray]:
    """(optimum diameter px, radii px, median enclosed fraction) from the growth
    curves of the stars at (x, y)."""
    radii = GROWTH_RADII_FWHM * psf.fwhm_px
    total, _ = total_flux(sub, None, bad, x, y, psf)
    fractions = np.array([sum_circle(sub, None, bad, x, y, r)[0] / total for r in radii])
    curve = np.median(fractions, axis=1)
    snr = curve / radii                      # sky-limited: noise grows as the radius
    i = int(np.clip(np.argmax(snr), 1, len(radii) - 2))
    # vertex of the parabola through the best grid point and its neighbours
    y0, y1, y2 = snr[i - 1:i + 2]
    step = radii[1] - radii[0]
    denom = y0 - 2 * y1 + y2
    shift = 0.5 * (y0 - y2) / denom if denom < 0 else 0.0
    return 2.0 * float(radii[i] + np.clip(shift, -1, 1) * step), radii, curve


def aperture_correction(flux_aper, err_aper, flux_total, err_total) -> tuple[float, float]:
    """(correction mag, its error): the weighted, clipped mean over stars of
    2.5 log10(flux_aper / flux_total) (`gppy.phot.fitting.clipped_wls`), each star's
    error from the noise outside the aperture and inside it (the sums are nested:
    total = aperture + the rest, independent)."""
    flux_aper, err_aper = np.asarray(flux_aper, float), np.asarray(err_aper, float)
    flux_total, err_total = np.asarray(flux_total, float), np.asarray(err_total, float)
    ok = (flux_aper > 0) & (flux_total > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        dm = np.where(ok, 2.5 * np.log10(flux_aper / flux_total), np.nan)
        err_rest2 = np.maximum(err_total ** 2 - err_aper ** 2, 0.0)
        err = 2.5 / np.log(10) * np.sqrt((err_aper * (1 / flux_aper - 1 / flux_total)) ** 2
                                          + err_rest2 / flux_total ** 2)
    fit = clipped_wls(dm, err)
    if fit is None:
        return np.nan, np.nan
    return float(fit.coef[0]), float(fit.err[0])
