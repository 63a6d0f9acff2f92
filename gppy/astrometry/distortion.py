"""One field distortion for all the frames of a camera in a night.

The distortion of a telescope and camera (pincushion, tilt) is fixed on the
detector for a night, while pointing, scale and rotation change from frame to
frame. A frame of a narrow, sparse field (a CMOS camera at 0.3"/px on a
high-latitude galaxy: ~200 stars) fits a cubic SIP of its own with errors of
0.1 px in the corners; fitting the distortion to all frames at once and only
the linear part (CRVAL, CD) to each frame brings that down by the square root of
the number of frames.

Model, for frame k with pixel offsets u, v from the frame centre (CRPIX, the same
for frames of one shape): (xi, eta) on the tangent plane at CRVAL_k =
CD_k (u + A(u, v), v + B(u, v)), with A, B polynomials of degree 2..order shared
by all frames: exactly TAN-SIP with the same A/B in every frame. Solved by
alternating the per-frame linear fits (given A, B) and the joint fit of A, B
(given each frame's CD and CRVAL), on the pairs each frame's own refinement
matched and kept, with its weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from astropy.table import Table
from astropy.wcs import WCS

from gppy.astrometry.match import gnomonic, inverse_gnomonic, solve_lsq
from gppy.astrometry.refine import _design, _exponents, _Model, _to_wcs

MIN_FRAMES = 3
MAX_ITER = 30
CONVERGED_PX = 1e-5


@dataclass
class SharedFit:
    """One frame's solution with the night's distortion."""

    wcs: WCS
    nstars: int
    rms_arcsec: float
    median_sep_arcsec: float


def fit_shared_distortion(pairs: list[Table], wcs: list[WCS], shape: tuple[int, int],
                          order: int) -> list[SharedFit] | None:
    """Each frame's WCS with the distortion fitted to all frames together, from the
    `pairs` their own refinement kept (refine's stats.residuals: x, y, ra, dec, used,
    weight) and their own `wcs` (the start). None when there are fewer than
    MIN_FRAMES frames or the order is below 2 (no distortion to share)."""
    if len(pairs) < MIN_FRAMES or order < 2:
        return None
    ny, nx = shape
    crpix = ((nx + 1) / 2.0, (ny + 1) / 2.0)
    norm = 0.5 * math.hypot(nx, ny)
    frames = [_Frame.start(p[p["used"]], w, crpix, norm, order) for p, w in zip(pairs, wcs)]
    higher = np.zeros((len(_exponents(order)) - 3, 2))
    for _ in range(MAX_ITER):
        for f in frames:
            f.fit_linear(higher)
        new = _fit_higher(frames)
        change_px = float(np.max(np.abs(new - higher))) * norm
        higher = new
        if change_px < CONVERGED_PX:
            break
    for f in frames:
        f.fit_linear(higher)
    return [f.result(higher, shape) for f in frames]


class _Frame:
    def __init__(self, u, v, ra, dec, weight, crval, order, crpix, norm):
        self.u, self.v, self.ra, self.dec, self.weight = u, v, ra, dec, weight
        self.crval, self.order, self.crpix, self.norm = crval, order, crpix, norm
        self.h = _design(u, v, order)[:, 3:]       # the terms of degree >= 2
        self.lin = np.zeros((2, 2))                # rows u, v; columns xi, eta (deg)

    @classmethod
    def start(cls, pairs: Table, wcs: WCS, crpix, norm, order) -> "_Frame":
        u = (np.asarray(pairs["x"], float) + 1.0 - crpix[0]) / norm
        v = (np.asarray(pairs["y"], float) + 1.0 - crpix[1]) / norm
        ra, dec = wcs.all_pix2world([[crpix[0] - 1.0, crpix[1] - 1.0]], 0)[0]
        # refine's weights are relative within a frame; scaled by the frame's own
        # residual variance they weigh a sharp frame above a blurred one
        weight = np.asarray(pairs["weight"], float)
        d2 = np.asarray(pairs["dx_arcsec"], float) ** 2 + np.asarray(pairs["dy_arcsec"], float) ** 2
        weight = weight / (np.sum(weight * d2) / len(d2))
        return cls(u, v, np.asarray(pairs["ra"], float), np.asarray(pairs["dec"], float), weight,
                   (float(ra), float(dec)), order, crpix, norm)

    def plane(self) -> np.ndarray:
        xi, eta, _ = gnomonic(self.ra, self.dec, *self.crval)
        return np.column_stack([xi, eta])

    def fit_linear(self, higher: np.ndarray) -> None:
        """CRVAL and CD given the shared distortion (constant terms moved into CRVAL)."""
        corrected = np.column_stack([self.u, self.v]) + self.h @ higher
        design = np.column_stack([np.ones(len(self.u)), corrected])
        sw = np.sqrt(self.weight)[:, None]
        for _ in range(5):
            coef = solve_lsq(design * sw, self.plane() * sw)
            self.crval = tuple(float(c) for c in inverse_gnomonic(*coef[0], *self.crval))
            self.lin = coef[1:]
            if math.hypot(*coef[0]) * 3600.0 < 1e-6:
                break

    def distortion_target(self) -> np.ndarray:
        """What A, B must give at each star: CD^-1 (xi, eta) - (u, v), normalised."""
        return self.plane() @ np.linalg.inv(self.lin) - np.column_stack([self.u, self.v])

    def result(self, higher: np.ndarray, shape) -> SharedFit:
        coef = np.vstack([np.zeros((1, 2)), self.lin, higher @ self.lin])
        model = _Model(self.crval, self.crpix, coef, self.order, self.norm)
        wcs, _ = _to_wcs(model, shape)
        d = (self.plane() - model.plane(np.column_stack([self.u * self.norm + self.crpix[0] - 1.0,
                                                         self.v * self.norm + self.crpix[1] - 1.0])))
        sep = np.hypot(d[:, 0], d[:, 1]) * 3600.0
        return SharedFit(wcs, len(sep), float(np.sqrt(np.mean(sep ** 2))), float(np.median(sep)))


def _fit_higher(frames: list[_Frame]) -> np.ndarray:
    """The shared distortion coefficients (terms of degree >= 2, normalised units)
    by weighted least squares over the stars of every frame."""
    h = np.vstack([f.h for f in frames])
    target = np.vstack([f.distortion_target() for f in frames])
    sw = np.sqrt(np.concatenate([f.weight for f in frames]))[:, None]
    return solve_lsq(h * sw, target * sw)
