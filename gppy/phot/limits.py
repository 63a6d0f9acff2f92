"""Limiting magnitudes from the noise measured in random empty apertures.

For each aperture diameter, up to N_APERTURES circles are placed at random
where no detected source (its segmentation footprint grown by `margin_px`) and
no masked pixel falls within, and summed in the background-subtracted image.
The noise of an aperture sum is the robust standard deviation (1.4826 MAD) of
those sums. Unlike the quadratic sum of per-pixel errors this includes
correlated noise (stacks, resampled frames) and the error of the background.

    limit(n sigma) = -2.5 log10(n * noise / exptime)

is a magnitude in that aperture's instrumental system (e-/s): add the
aperture's zero point to calibrate it; a point source of that calibrated
magnitude has S/N = n in that aperture.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from gppy.phot.apertures import sum_circle

N_APERTURES = 20000            # overlapping is fine; the MAD of 1000 scatters by 4 %
MIN_APERTURES = 30


def empty_distance_px(occupied: np.ndarray) -> np.ndarray:
    """Distance of each pixel centre to the nearest occupied pixel (or the edge)."""
    free = ~occupied
    free[0, :] = free[-1, :] = free[:, 0] = free[:, -1] = False   # the edge counts as occupied
    return ndimage.distance_transform_edt(free)


def random_empty_positions(distance_px: np.ndarray, radius_px: float, n: int,
                           rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Up to n random positions (x, y) whose disc of `radius_px` is empty, placed
    anywhere within a pixel: small apertures centred on pixel centres read a
    noise several per cent off."""
    iy, ix = np.nonzero(distance_px > radius_px + 1.0)    # +1: the offset within the pixel
    if ix.size == 0:
        return np.empty(0), np.empty(0)
    pick = rng.choice(ix.size, size=min(n, ix.size), replace=False)
    return (ix[pick] + rng.uniform(-0.5, 0.5, pick.size),
            iy[pick] + rng.uniform(-0.5, 0.5, pick.size))


@dataclass
class EmptyApertures:
    noise_e: float          # robust std of the sums (NaN if fewer than MIN_APERTURES)
    err_e: float            # median error the same apertures get from ERR (apertures.sum_circle)
    n: int


def empty_apertures(sub: np.ndarray, noise: np.ndarray, distance_px: np.ndarray,
                    diameter_px: float, rng: np.random.Generator, margin_px: float = 0.0,
                    n: int = N_APERTURES) -> EmptyApertures:
    """Sums in up to n random empty apertures of `diameter_px` keeping `margin_px`
    from anything occupied (`distance_px`: `empty_distance_px` of the occupied
    pixels). noise_e / err_e is ~1 on a single frame, above 1 where the noise is
    correlated between pixels (stacks, resampled frames)."""
    x, y = random_empty_positions(distance_px, diameter_px / 2 + margin_px, n, rng)
    if x.size < MIN_APERTURES:
        return EmptyApertures(np.nan, np.nan, int(x.size))
    sums, errs, _ = sum_circle(sub, noise, None, x, y, diameter_px / 2)
    mad = np.median(np.abs(sums - np.median(sums)))
    return EmptyApertures(1.4826 * float(mad), float(np.median(errs)), int(x.size))


def limiting_mag(noise_e: float, exptime_s: float, nsigma: float) -> float:
    if not np.isfinite(noise_e) or noise_e <= 0:
        return np.nan
    return float(-2.5 * np.log10(nsigma * noise_e / exptime_s))
