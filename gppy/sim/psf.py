"""The point-spread function and the rendering of sources into pixel rates.

PSF: an elliptical Moffat profile I ∝ (1 + ρ²/α²)^-β, sampled at pixel centres
(so the parameters describe the pixel-convolved PSF). FWHM = 2 α sqrt(2^(1/β) - 1)
is the geometric mean of the major and minor FWHM. Across the field the FWHM grows
as fwhm(r) = fwhm_axis (1 + field_growth r²) and a radial ellipticity
field_ellipticity r² adds to the frame's (tracking) ellipticity, r being the
distance from the optical axis in units of the full detector's half-diagonal.

Every source is normalised so that the rendered pixels sum to exactly its flux
times the analytic fraction of the profile inside its stamp (point sources: the
stamp reaches the radius beyond which less than max(1e-4 of the flux,
0.01 e-/s) is lost; galaxies: see `render_sersic`). Flux that falls off the
detector is lost, as in a real camera.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.signal import oaconvolve
from scipy.special import gamma, gammainc, gammaincinv

STAMP_RADII = np.array([3, 4, 6, 8, 11, 16, 22, 32, 45, 64, 90, 128, 181])
_MAX_STAMP_PIXELS = 4_000_000          # per vectorised batch
_LOST_FRACTION = 1e-4
_LOST_RATE_E_PER_S = 0.01


@dataclass(frozen=True)
class PSF:
    fwhm_px: float             # at the optical axis
    beta: float
    ellipticity: float         # 1 - b/a of the frame-wide (tracking) component
    theta_deg: float           # its major-axis angle, from +x towards +y
    field_growth: float        # fractional FWHM growth at r = 1
    field_ellipticity: float   # radial ellipticity at r = 1
    axis_x: float              # optical axis, 0-based pixel coordinates
    axis_y: float
    norm_radius_px: float      # the full detector's half-diagonal

    def as_dict(self) -> dict:
        return asdict(self)

    def alpha(self, fwhm_px):
        return fwhm_px / (2.0 * np.sqrt(2.0 ** (1.0 / self.beta) - 1.0))

    def shape_at(self, x, y) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(alpha_major, alpha_minor, angle rad) at pixel positions."""
        dx, dy = np.asarray(x) - self.axis_x, np.asarray(y) - self.axis_y
        r2 = (dx ** 2 + dy ** 2) / self.norm_radius_px ** 2
        alpha = self.alpha(self.fwhm_px * (1.0 + self.field_growth * r2))
        phi = np.arctan2(dy, dx)
        t = np.radians(self.theta_deg)
        e1 = self.ellipticity * np.cos(2 * t) + self.field_ellipticity * r2 * np.cos(2 * phi)
        e2 = self.ellipticity * np.sin(2 * t) + self.field_ellipticity * r2 * np.sin(2 * phi)
        q = 1.0 - np.clip(np.hypot(e1, e2), 0.0, 0.9)
        return alpha / np.sqrt(q), alpha * np.sqrt(q), 0.5 * np.arctan2(e2, e1)

    def tail_fraction(self, radius_px, alpha_major):
        """Fraction of a Moffat's flux beyond `radius_px` (circular, major-axis alpha)."""
        return (1.0 + (np.asarray(radius_px) / alpha_major) ** 2) ** (1.0 - self.beta)


def _moffat(dx, dy, a_major, a_minor, angle, beta):
    c, s = np.cos(angle), np.sin(angle)
    u = (dx * c + dy * s) / a_major
    v = (-dx * s + dy * c) / a_minor
    return (1.0 + u * u + v * v) ** -beta


def _accumulate(image_flat: np.ndarray, shape, ix, iy, values) -> None:
    ny, nx = shape
    ok = (ix >= 0) & (ix < nx) & (iy >= 0) & (iy < ny)
    image_flat += np.bincount((iy[ok] * nx + ix[ok]).ravel(), weights=values[ok].ravel(),
                              minlength=ny * nx)


def stamp_radius(psf: PSF, flux, alpha_major) -> np.ndarray:
    """Smallest tabulated radius losing less than max(1e-4 flux, 0.01 e-/s)."""
    allowed = np.maximum(_LOST_FRACTION, _LOST_RATE_E_PER_S / np.maximum(flux, 1e-30))
    needed = alpha_major * np.sqrt(np.maximum(allowed ** (1.0 / (1.0 - psf.beta)) - 1.0, 0.0))
    needed = np.maximum(needed, 2.5 * psf.fwhm_px)
    index = np.minimum(np.searchsorted(STAMP_RADII, needed), len(STAMP_RADII) - 1)
    return STAMP_RADII[index]


def render_points(image: np.ndarray, psf: PSF, x, y, flux) -> None:
    """Add point sources (0-based pixel positions, flux in any unit) to `image` (float64)."""
    x, y, flux = (np.atleast_1d(np.asarray(v, dtype=float)) for v in (x, y, flux))
    a_maj, a_min, angle = psf.shape_at(x, y)
    radius = stamp_radius(psf, flux, a_maj)
    ny, nx = image.shape
    seen = (x + radius >= 0) & (x - radius < nx) & (y + radius >= 0) & (y - radius < ny) & (flux > 0)
    flat = image.reshape(-1)
    for r in np.unique(radius[seen]):
        members = np.nonzero(seen & (radius == r))[0]
        grid = np.arange(-r, r + 1)
        inside = (grid[:, None] ** 2 + grid[None, :] ** 2) <= r * r
        gy, gx = np.nonzero(inside)
        gy, gx = grid[gy], grid[gx]
        batch = max(1, _MAX_STAMP_PIXELS // gx.size)
        for start in range(0, members.size, batch):
            m = members[start:start + batch]
            cx, cy = np.rint(x[m]).astype(np.int64), np.rint(y[m]).astype(np.int64)
            ix, iy = cx[:, None] + gx[None, :], cy[:, None] + gy[None, :]
            prof = _moffat(ix - x[m, None], iy - y[m, None], a_maj[m, None], a_min[m, None],
                           angle[m, None], psf.beta)
            kept = flux[m] * (1.0 - psf.tail_fraction(r, a_maj[m]))
            prof *= (kept / prof.sum(axis=1))[:, None]
            _accumulate(flat, image.shape, ix, iy, prof)


def psf_kernel(psf: PSF, x: float, y: float) -> np.ndarray:
    """The PSF at (x, y) centred in an odd square stamp, summing to 1."""
    a_maj, a_min, angle = psf.shape_at(x, y)
    r = int(stamp_radius(psf, np.array([1e6]), a_maj)[0])
    grid = np.arange(-r, r + 1, dtype=float)
    kernel = _moffat(grid[None, :], grid[:, None], a_maj, a_min, angle, psf.beta)
    return kernel / kernel.sum()


def sersic_b(n):
    """b_n such that r_eff encloses half the light."""
    return gammaincinv(2.0 * n, 0.5)


def sersic_extent(n, enclosed: float = 0.999, max_reff: float = 20.0):
    """(radius in units of r_eff, fraction of the light inside it) used to truncate."""
    n = np.asarray(n, dtype=float)
    b = sersic_b(n)
    radius = np.minimum((gammaincinv(2 * n, enclosed) / b) ** n, max_reff)
    return radius, gammainc(2 * n, b * radius ** (1.0 / n))


_CORE_PX = 5          # half-size of the super-sampled core box
_SUPERSAMPLE = 7      # sub-pixels per pixel side where the profile is steep
_INNER_PX = 0.5       # the cusp inside this elliptical radius is placed analytically


def _sersic_grid(dx, dy, n, r_eff_px, q, pa_rad, b):
    c, s = np.cos(pa_rad), np.sin(pa_rad)
    u = dx * c + dy * s
    v = (-dx * s + dy * c) / q
    rho = np.sqrt(u * u + v * v) / r_eff_px
    return np.exp(-b * (rho ** (1.0 / n) - 1.0)), rho


def render_sersic(image: np.ndarray, psf: PSF, x: float, y: float, flux: float, n: float,
                  r_eff_px: float, q: float, pa_rad: float) -> None:
    """Add a PSF-convolved Sérsic profile (pa_rad: major axis from +x towards +y).

    Surface brightness I(ρ) = I_e exp(-b_n ((ρ/r_eff)^(1/n) - 1)), ρ the elliptical
    radius, with I_e set analytically from the total flux; truncated at
    `sersic_extent` (0.999 of the light, at most 20 r_eff). Sampled at pixel
    centres, with 7x7 sub-pixels inside a 11x11 px core box (everywhere for a
    galaxy smaller than 3 px) and 35x35 in the central 3x3 px. The sampled total
    The light inside ρ < 0.5 px is not sampled: its analytic amount is shared
    bilinearly among the four pixels around the centre. The sampled total
    agrees with the analytic one to better than 0.5%.
    """
    b = float(sersic_b(n))
    extent, _ = sersic_extent(n)
    intensity_e = flux / (2 * np.pi * n * q * r_eff_px ** 2 * np.exp(b) * b ** (-2 * n) * gamma(2 * n))
    kernel = psf_kernel(psf, x, y)
    pad = kernel.shape[0] // 2
    radius = int(np.ceil(extent * r_eff_px)) + 1
    ny, nx = image.shape
    cx, cy = int(np.rint(x)), int(np.rint(y))
    x0, x1 = max(cx - radius - pad, 0), min(cx + radius + pad + 1, nx)
    y0, y1 = max(cy - radius - pad, 0), min(cy + radius + pad + 1, ny)
    if x0 >= x1 or y0 >= y1:
        return
    # render on the visible box plus a PSF margin, so light scattered in from outside is kept
    gx = np.arange(x0 - pad, x1 + pad) - x
    gy = np.arange(y0 - pad, y1 + pad) - y
    model, rho = _sersic_grid(gx[None, :], gy[:, None], n, r_eff_px, q, pa_rad, b)
    small = r_eff_px * q < 3.0
    for half_box, factor in ((None if small else _CORE_PX, _SUPERSAMPLE), (1, 5 * _SUPERSAMPLE)):
        in_x = np.abs(gx + x - cx) <= (half_box if half_box is not None else np.inf)
        in_y = np.abs(gy + y - cy) <= (half_box if half_box is not None else np.inf)
        if in_x.any() and in_y.any():
            sub = (np.arange(factor) + 0.5) / factor - 0.5
            fine_x = (gx[in_x][:, None] + sub[None, :]).ravel()
            fine_y = (gy[in_y][:, None] + sub[None, :]).ravel()
            fine, fine_rho = _sersic_grid(fine_x[None, :], fine_y[:, None], n, r_eff_px, q, pa_rad, b)
            fine[(fine_rho > extent) | (fine_rho * r_eff_px < _INNER_PX)] = 0.0
            core = np.ix_(in_y, in_x)
            model[core] = fine.reshape(in_y.sum(), factor, in_x.sum(), factor).mean(axis=(1, 3))
            rho[core] = 0.0  # already truncated at sub-pixel level
    model[rho > extent] = 0.0
    model *= intensity_e
    # the cusp inside ρ < 0.5 px: its analytic flux, shared bilinearly around the centre
    inner = flux * float(gammainc(2 * n, b * (_INNER_PX / r_eff_px) ** (1.0 / n)))
    fx, fy = x - np.floor(x), y - np.floor(y)
    for ox, oy, w in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)),
                      (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        px, py = int(np.floor(x)) + ox - (x0 - pad), int(np.floor(y)) + oy - (y0 - pad)
        if 0 <= px < model.shape[1] and 0 <= py < model.shape[0]:
            model[py, px] += inner * w
    image[y0:y1, x0:x1] += oaconvolve(model, kernel, mode="same")[pad:pad + y1 - y0, pad:pad + x1 - x0]
