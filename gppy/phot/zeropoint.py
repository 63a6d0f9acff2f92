"""Zero points from detections matched to reference stars (arrays in: the
reference catalogue is read elsewhere).

    mag_ref - mag_inst = zp  [+ c * colour]

A zero point calibrates the magnitudes it was fitted with: fitted on one
aperture's instrumental magnitudes it holds that aperture's loss of light (so
it differs from the total-flux zero point by the aperture correction), and that
aperture's calibrated magnitudes are mag_inst + zp, total magnitudes of point
sources.

Fit: `gppy.phot.fitting.clipped_wls` of mag_ref - mag_inst with errors
sqrt(err_inst^2 + err_ref^2): weighted, with the star-to-star scatter beyond the
errors, clipped. The zero point's error is the weighted scatter over sqrt(N),
never below ERR_FLOOR_MAG (the flat field is not known better than that).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from gppy.astrometry.tycho import unit_vector
from gppy.phot.detect import SourceFlag
from gppy.phot.fitting import CLIP_SIGMA, clipped_wls

ERR_FLOOR_MAG = 0.003
MIN_STARS = 3
ALWAYS_EXCLUDED = (SourceFlag.NEIGHBOUR | SourceFlag.SATURATED | SourceFlag.TRUNCATED
                   | SourceFlag.MASKED | SourceFlag.OVERFLOW)


@dataclass
class ZeroPoint:
    zp_mag: float
    zp_err_mag: float
    colour_term: float | None       # None: not fitted
    colour_term_err: float | None
    scatter_mag: float              # weighted rms of the residuals of the stars used
    extra_scatter_mag: float        # s: scatter beyond the stated errors
    n_used: int
    n_input: int
    used: np.ndarray                # bool over the input


def crossmatch(ra_deg, dec_deg, ref_ra_deg, ref_dec_deg, radius_arcsec: float
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(index into detections, index into the reference, separation arcsec) of
    pairs within `radius_arcsec`: each detection's nearest reference star, each
    reference star used once (its closest detection)."""
    det = unit_vector(np.asarray(ra_deg, float), np.asarray(dec_deg, float))
    ref = unit_vector(np.asarray(ref_ra_deg, float), np.asarray(ref_dec_deg, float))
    empty = np.empty(0, int)
    if len(det) == 0 or len(ref) == 0:
        return empty, empty, np.empty(0)
    chord = 2.0 * np.sin(np.radians(radius_arcsec / 3600.0) / 2.0)
    dist, j = cKDTree(ref).query(det, k=1, distance_upper_bound=chord)
    i = np.nonzero(np.isfinite(dist))[0]
    j, dist = j[i], dist[i]
    order = np.argsort(dist)                       # closest pairs first
    _, first = np.unique(j[order], return_index=True)
    keep = np.sort(order[first])
    sep_arcsec = np.degrees(2.0 * np.arcsin(dist[keep] / 2.0)) * 3600.0
    return i[keep], j[keep], sep_arcsec


def calibration_stars(flags, mag_ref, magerr_ref, magerr_inst, x, y, shape: tuple[int, int],
                      *, refmag_bright: float, refmag_faint: float, refmagerr_max: float,
                      inmagerr_max: float, flag_cut: int, central_fraction: float = 1.0
                      ) -> np.ndarray:
    """Boolean: stars fit to calibrate. flags <= flag_cut and never a neighbour,
    saturated, truncated or masked pixels (whatever flag_cut); reference magnitude
    in [refmag_bright, refmag_faint] with error <= refmagerr_max; instrumental
    error <= inmagerr_max; inside the central `central_fraction` of each axis."""
    flags = np.asarray(flags)
    mag_ref, magerr_ref = np.asarray(mag_ref, float), np.asarray(magerr_ref, float)
    magerr_inst = np.asarray(magerr_inst, float)
    ny, nx = shape
    half = central_fraction / 2.0
    central = ((np.abs(np.asarray(x) - (nx - 1) / 2) <= half * nx)
               & (np.abs(np.asarray(y) - (ny - 1) / 2) <= half * ny))
    return ((flags <= flag_cut) & ((flags & ALWAYS_EXCLUDED) == 0)
            & np.isfinite(mag_ref) & (mag_ref >= refmag_bright) & (mag_ref <= refmag_faint)
            & (magerr_ref <= refmagerr_max) & np.isfinite(magerr_inst)
            & (magerr_inst <= inmagerr_max) & central)


def fit_zeropoint(mag_inst, magerr_inst, mag_ref, magerr_ref, colour=None, *,
                  clip_sigma: float = CLIP_SIGMA, floor_mag: float = ERR_FLOOR_MAG
                  ) -> ZeroPoint | None:
    """The zero point (and colour term, if `colour` is given) of stars already
    selected (`calibration_stars`); None with fewer than MIN_STARS finite ones."""
    mag_inst, mag_ref = np.asarray(mag_inst, float), np.asarray(mag_ref, float)
    err = np.hypot(np.asarray(magerr_inst, float), np.asarray(magerr_ref, float))
    fit = clipped_wls(mag_ref - mag_inst, err, None if colour is None else [colour],
                      clip_sigma=clip_sigma, min_points=MIN_STARS)
    if fit is None:
        return None
    return ZeroPoint(zp_mag=float(fit.coef[0]), zp_err_mag=max(float(fit.err[0]), floor_mag),
                     colour_term=None if colour is None else float(fit.coef[1]),
                     colour_term_err=None if colour is None else float(fit.err[1]),
                     scatter_mag=fit.scatter, extra_scatter_mag=fit.extra_scatter,
                     n_used=fit.n_used, n_input=int(len(mag_ref)), used=fit.used)
