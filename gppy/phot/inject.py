"""Depth by injection and recovery of artificial stars.

Stars of known magnitude, drawn with the frame's fitted PSF (`gppy.phot.psf`,
pixel-integrated Moffat: the measured FWHM, beta and ellipticity), are added to
a copy of the frame with their own Poisson noise (ERR grows to match), at random
empty places (no detection or masked pixel within PLACE_RADIUS_FWHM x FWHM, and
at least 2 x that apart). The copy is extracted again exactly as the frame was
(`gppy.phot.detect.extract`, the profile's parameters). A star is recovered when
a detection lies within MATCH_RADIUS_FWHM x FWHM of where it was put and its
flux in the chosen aperture (at the detection's windowed centroid) has S/N >=
`snr_min` (errors from ERR).

The completeness curve, recovered or not against the injected magnitude, is fitted
by maximum likelihood with a logistic, p(m) = 1 / (1 + exp((m - m50) / width)):
m50 is the magnitude where half are recovered. Magnitudes are instrumental total
magnitudes of point sources, -2.5 log10(total flux e- / exptime): add the
total-flux zero point (an aperture's zero point minus its aperture correction).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import sep
from scipy.optimize import minimize
from scipy.spatial import cKDTree

from gppy.obsconfig.schema import Phot
from gppy.phot.apertures import sum_circle
from gppy.phot.detect import extract
from gppy.phot.limits import empty_distance_px
from gppy.phot.measure import FWHM_PER_SIGMA, FrameCatalog

PLACE_RADIUS_FWHM = 3.0
MATCH_RADIUS_FWHM = 1.0
MAG_RANGE = (-1.5, 1.0)        # injected around the expected depth (the 5-sigma limit)


@dataclass
class Completeness:
    mag_inst: np.ndarray            # injected, total instrumental
    recovered: np.ndarray           # bool
    m50_inst: float
    width_mag: float
    aperture_key: str
    snr_min: float


def _places(distance_px: np.ndarray, radius_px: float, n: int, rng: np.random.Generator
            ) -> tuple[np.ndarray, np.ndarray]:
    """Up to n random empty places at least 2 radius_px apart (sub-pixel positions)."""
    iy, ix = np.nonzero(distance_px > radius_px + 1.0)
    order = rng.permutation(ix.size)
    chosen: list[tuple[float, float]] = []
    for k in order:
        px, py = ix[k] + rng.uniform(-0.5, 0.5), iy[k] + rng.uniform(-0.5, 0.5)
        if all((px - qx) ** 2 + (py - qy) ** 2 >= (2 * radius_px) ** 2 for qx, qy in chosen):
            chosen.append((px, py))
            if len(chosen) == n:
                break
    pts = np.array(chosen).reshape(-1, 2)
    return pts[:, 0], pts[:, 1]


def fit_logistic(mag: np.ndarray, recovered: np.ndarray) -> tuple[float, float]:
    """(m50, width) by maximum likelihood."""
    y = recovered.astype(float)

    def nll(p):
        m50, log_w = p
        z = (mag - m50) / np.exp(log_w)
        # log p = -log(1 + e^z), log(1 - p) = z - log(1 + e^z)
        return float(np.sum(np.logaddexp(0.0, z) - (1.0 - y) * z))

    start = [float(np.median(mag)), np.log(0.1)]
    res = minimize(nll, start, method="Nelder-Mead", options={"xatol": 1e-4, "fatol": 1e-6})
    return float(res.x[0]), float(np.exp(res.x[1]))


def injection_depth(image: np.ndarray, mask: np.ndarray, err: np.ndarray, fc: FrameCatalog,
                    params: Phot, aperture_key: str = "opt", snr_min: float = 5.0,
                    gain: float = 1.0, n_per_trial: int = 150, trials: int = 4,
                    seed: int = 0) -> Completeness:
    """Completeness of point sources on this frame (measured by `measure` as
    `fc`); `gain`: e- per image unit (1 for calibrated frames in electrons)."""
    rng = np.random.default_rng(seed)
    psf, fwhm = fc.psf, fc.fwhm_px
    stats = fc.aperture(aperture_key)
    radius_px = stats.aperture.diameter_px / 2
    expected = stats.ul5_mag + stats.apcorr_mag        # total magnitude at S/N 5
    base = extract(image, mask, err, params)
    distance = empty_distance_px((base.segmap > 0) | base.bad)
    mags, found = [], []
    for _ in range(trials):
        x, y = _places(distance, PLACE_RADIUS_FWHM * fwhm, n_per_trial, rng)
        mag = expected + rng.uniform(*MAG_RANGE, size=x.size)
        model_e = psf.render(image.shape, x, y, 10 ** (-0.4 * mag) * fc.exptime_s)
        noisy = image + rng.poisson(np.maximum(model_e, 0) * gain) / gain
        noisy_err = np.sqrt(np.asarray(err, float) ** 2 + model_e / gain)
        ext = extract(noisy.astype(np.float32), mask, noisy_err.astype(np.float32), params)
        obj = ext.objects
        ok = np.zeros(x.size, bool)
        if len(obj):
            dist, j = cKDTree(np.column_stack([obj["x"], obj["y"]])).query(
                np.column_stack([x, y]), distance_upper_bound=MATCH_RADIUS_FWHM * fwhm)
            hit = np.isfinite(dist)
            if hit.any():
                jx, jy = obj["x"][j[hit]], obj["y"][j[hit]]
                wx, wy, wflag = sep.winpos(ext.sub, jx, jy, fwhm / FWHM_PER_SIGMA, mask=ext.bad)
                wx, wy = np.where(wflag == 0, wx, jx), np.where(wflag == 0, wy, jy)
                flux, ferr, _ = sum_circle(ext.sub, ext.noise, ext.bad, wx, wy, radius_px)
                ok[hit] = flux >= snr_min * ferr
        mags.append(mag)
        found.append(ok)
    mag_all, found_all = np.concatenate(mags), np.concatenate(found)
    m50, width = fit_logistic(mag_all, found_all)
    return Completeness(mag_all, found_all, m50, width, aperture_key, snr_min)
