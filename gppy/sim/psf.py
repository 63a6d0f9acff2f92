"""The point-spread function and the rendering of sources into pixel rates.

PSF: an elliptical Moffat profile I ∝ (1 + ρ²/α²)^-β on the sky, integrated over
each pixel (point sources: to fourth order through the closed-form Laplacian;
galaxies: their light is integrated over pixels, then convolved with the PSF
sampled at pixel centres). So a circular aperture of radius r holds the analytic
fraction 1 - (1 + r²/(α_major α_minor))^(1-β) of a star's flux, up to the
ellipticity's second-order effect, and the FWHM = 2 α sqrt(2^(1/β) - 1) (the
geometric mean of the major and minor FWHM) is that of the PSF before
pixelisation. Across the field the FWHM grows
as fwhm(r) = fwhm_axis (1 + field_growth r²) and a radial ellipticity
field_ellipticity r² adds to the frame's (tracking) ellipticity, r being the
distance from the optical axis in units of the full detector's half-diagonal.

Every source is normalised so that the rendered pixels sum to exactly its flux
times the analytic fraction of the profile inside its stamp (point sources: the
stamp reaches the radius beyond which less than max(2e-5 of the flux,
0.01 e-/s) is lost; galaxies: see `render_sersic`). Flux that falls off the
detector is lost, as in a real camera. Galaxies are drawn into an intrinsic
light layer that `convolve_tiles` convolves with the PSF at the centre of each
512 x 512 px tile (the PSF changes little across a tile).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.signal import oaconvolve
from scipy.special import gamma, gammainc, gammaincinv

STAMP_RADII = np.array([3, 4, 6, 8, 11, 16, 22, 32, 45, 64, 90, 128, 181])
_MAX_STAMP_PIXELS = 4_000_000          # per vectorised batch
_LOST_FRACTION = 2e-5
_KERNEL_LOST_FRACTION = 1e-4           # galaxy kernels are renormalised to 1
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


def _moffat_pixel(dx, dy, a_major, a_minor, angle, beta):
    """The Moffat integrated over a unit pixel centred at (dx, dy), to fourth order:
    f + (f_xx + f_yy) / 24, with the Laplacian in closed form."""
    c, s = np.cos(angle), np.sin(angle)
    u = (dx * c + dy * s) / a_major
    v = (-dx * s + dy * c) / a_minor
    t = 1.0 + u * u + v * v
    f = t ** -beta
    inv_a2, inv_b2 = 1.0 / a_major ** 2, 1.0 / a_minor ** 2
    laplacian = (-2.0 * beta * (inv_a2 + inv_b2) / t
                 + 4.0 * beta * (beta + 1.0) * (u * u * inv_a2 + v * v * inv_b2) / (t * t)) * f
    return f + laplacian / 24.0


def _accumulate(image_flat: np.ndarray, shape, ix, iy, values) -> None:
    ny, nx = shape
    ok = (ix >= 0) & (ix < nx) & (iy >= 0) & (iy < ny)
    image_flat += np.bincount((iy[ok] * nx + ix[ok]).ravel(), weights=values[ok].ravel(),
                              minlength=ny * nx)


def stamp_radius(psf: PSF, allowed_loss, alpha_major) -> np.ndarray:
    """Smallest tabulated radius beyond which less than `allowed_loss` (a fraction)
    of the light falls, at least 2.5 FWHM."""
    allowed = np.asarray(allowed_loss, dtype=float)
    needed = alpha_major * np.sqrt(np.maximum(allowed ** (1.0 / (1.0 - psf.beta)) - 1.0, 0.0))
    needed = np.maximum(needed, 2.5 * psf.fwhm_px)
    index = np.minimum(np.searchsorted(STAMP_RADII, needed), len(STAMP_RADII) - 1)
    return STAMP_RADII[index]


def render_points(image: np.ndarray, psf: PSF, x, y, flux) -> None:
    """Add point sources (0-based pixel positions, flux in any unit) to `image` (float64)."""
    x, y, flux = (np.atleast_1d(np.asarray(v, dtype=float)) for v in (x, y, flux))
    a_maj, a_min, angle = psf.shape_at(x, y)
    allowed = np.maximum(_LOST_FRACTION, _LOST_RATE_E_PER_S / np.maximum(flux, 1e-30))
    radius = stamp_radius(psf, allowed, a_maj)
    ny, nx = image.shape
    seen = ((x + radius >= 0) & (x - radius < nx) & (y + radius >= 0) & (y - radius < ny)
            & (flux > 0))
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
            prof = _moffat_pixel(ix - x[m, None], iy - y[m, None], a_maj[m, None], a_min[m, None],
                           angle[m, None], psf.beta)
            kept = flux[m] * (1.0 - psf.tail_fraction(r, a_maj[m]))
            prof *= (kept / prof.sum(axis=1))[:, None]
            _accumulate(flat, image.shape, ix, iy, prof)


def psf_kernel(psf: PSF, x: float, y: float) -> np.ndarray:
    """The PSF at (x, y) centred in an odd square stamp, summing to 1."""
    a_maj, a_min, angle = psf.shape_at(x, y)
    r = int(stamp_radius(psf, _KERNEL_LOST_FRACTION, a_maj))
    grid = np.arange(-r, r + 1, dtype=float)
    kernel = _moffat(grid[None, :], grid[:, None], a_maj, a_min, angle, psf.beta)
    return kernel / kernel.sum()


def convolve_tiles(layer: np.ndarray, psf: PSF, pad: int, tile_px: int = 512) -> np.ndarray:
    """Convolve an intrinsic-light layer (the frame plus `pad` pixels on every side)
    with the PSF, tile by tile, each tile with the PSF at its centre; returns the
    frame-sized result. `pad` must be at least the largest kernel radius."""
    ny, nx = layer.shape[0] - 2 * pad, layer.shape[1] - 2 * pad
    out = np.zeros((ny, nx))
    for y0 in range(0, ny, tile_px):
        for x0 in range(0, nx, tile_px):
            y1, x1 = min(y0 + tile_px, ny), min(x0 + tile_px, nx)
            source = layer[y0:y1 + 2 * pad, x0:x1 + 2 * pad]
            if not source.any():
                continue
            kernel = psf_kernel(psf, 0.5 * (x0 + x1 - 1), 0.5 * (y0 + y1 - 1))
            k = kernel.shape[0] // 2
            source = source[pad - k:source.shape[0] - pad + k, pad - k:source.shape[1] - pad + k]
            out[y0:y1, x0:x1] = oaconvolve(source, kernel, mode="valid")
    return out


def kernel_radius(psf: PSF, shape: tuple[int, int]) -> int:
    """The largest PSF kernel radius over a frame (the padding `convolve_tiles` needs)."""
    ny, nx = shape
    places = ((0, 0), (nx - 1, 0), (0, ny - 1), (nx - 1, ny - 1), (psf.axis_x, psf.axis_y))
    return max(psf_kernel(psf, x, y).shape[0] // 2 for x, y in places)


def sersic_b(n):
    """b_n such that r_eff encloses half the light."""
    return gammaincinv(2.0 * n, 0.5)


def sersic_extent(n, enclosed: float = 0.999, max_reff: float = 20.0):
    """(radius in units of r_eff, fraction of the light inside it) used to truncate."""
    n = np.asarray(n, dtype=float)
    b = sersic_b(n)
    radius = np.minimum((gammaincinv(2 * n, enclosed) / b) ** n, max_reff)
    return radius, gammainc(2 * n, b * radius ** (1.0 / n))


_CORE_PX = 5          # half-size of the 7x7 super-sampled core box
_SUPERSAMPLE = 7      # sub-pixels per pixel side in the core box (35 in the central 3x3 px)
_INNER_PX = 0.5       # the cusp inside this elliptical radius is placed analytically
_COMPACT_PX = 3.0     # below this minor-axis r_eff the sampled light is renormalised


def _sersic_grid(dx, dy, n, r_eff_px, q, pa_rad, b):
    """exp(-b ((ρ/r_eff)^(1/n) - 1)) and ρ/r_eff at offsets from the centre."""
    c, s = np.cos(pa_rad), np.sin(pa_rad)
    u = dx * c + dy * s
    v = (-dx * s + dy * c) / q
    rho = np.sqrt(u * u + v * v) / r_eff_px
    return np.exp(-b * ((rho if n == 1.0 else rho ** (1.0 / n)) - 1.0)), rho


def _sersic_box(x, y, n, r_eff_px, q, pa_rad, b, extent, xs, ys):
    """The profile (unit I_e) over pixel columns xs and rows ys: pixel centres,
    super-sampled near the centre, nothing inside ρ < 0.5 px or beyond `extent`."""
    model, rho = _sersic_grid(xs[None, :] - x, ys[:, None] - y, n, r_eff_px, q, pa_rad, b)
    cx, cy = int(np.rint(x)), int(np.rint(y))
    for half_box, factor in ((_CORE_PX, _SUPERSAMPLE), (1, 5 * _SUPERSAMPLE)):
        in_x, in_y = np.abs(xs - cx) <= half_box, np.abs(ys - cy) <= half_box
        if in_x.any() and in_y.any():
            sub = (np.arange(factor) + 0.5) / factor - 0.5
            fine_x = (xs[in_x][:, None] + sub[None, :]).ravel() - x
            fine_y = (ys[in_y][:, None] + sub[None, :]).ravel() - y
            fine, fine_rho = _sersic_grid(fine_x[None, :], fine_y[:, None], n, r_eff_px, q,
                                          pa_rad, b)
            fine[(fine_rho > extent) | (fine_rho * r_eff_px < _INNER_PX)] = 0.0
            core = np.ix_(in_y, in_x)
            model[core] = fine.reshape(in_y.sum(), factor, in_x.sum(), factor).mean(axis=(1, 3))
            rho[core] = 0.0  # already truncated at sub-pixel level
    model[rho > extent] = 0.0
    return model


def render_sersic(layer: np.ndarray, x: float, y: float, flux: float, n: float,
                  r_eff_px: float, q: float, pa_rad: float) -> None:
    """Add an intrinsic (not yet PSF-convolved) Sérsic profile to `layer`
    (pa_rad: major axis from +x towards +y).

    I(ρ) = I_e exp(-b_n ((ρ/r_eff)^(1/n) - 1)), ρ the elliptical radius, truncated at
    `sersic_extent` (0.999 of the light, at most 20 r_eff), so the total is
    flux * rendered_fraction. Pixel-centre samples, 7x7 sub-pixels in an 11x11 px
    core box and 35x35 in the central 3x3 px; the light inside ρ < 0.5 px is not
    sampled but its analytic amount is shared bilinearly among the four pixels
    around the centre. Resolved galaxies take I_e from the analytic total; compact
    ones (minor-axis r_eff < 3 px) are rendered whole and the sampled light is
    scaled to the analytic total, so the sum is exact. Light falling outside
    `layer` is lost.
    """
    b = float(sersic_b(n))
    extent, inside = (float(v) for v in sersic_extent(n))
    inner = flux * float(gammainc(2 * n, b * (_INNER_PX / r_eff_px) ** (1.0 / n)))
    radius = int(np.ceil(extent * r_eff_px)) + 1
    cx, cy = int(np.rint(x)), int(np.rint(y))
    ny, nx = layer.shape
    compact = r_eff_px * q < _COMPACT_PX
    if compact:
        x0, x1, y0, y1 = cx - radius, cx + radius + 1, cy - radius, cy + radius + 1
    else:
        x0, x1 = max(cx - radius, 0), min(cx + radius + 1, nx)
        y0, y1 = max(cy - radius, 0), min(cy + radius + 1, ny)
        if x0 >= x1 or y0 >= y1:
            return
    model = _sersic_box(x, y, n, r_eff_px, q, pa_rad, b, extent,
                        np.arange(x0, x1, dtype=float), np.arange(y0, y1, dtype=float))
    if compact:
        model *= (flux * inside - inner) / model.sum()
    else:
        total_per_ie = 2 * np.pi * n * q * r_eff_px ** 2 * np.exp(b) * b ** (-2 * n) * gamma(2 * n)
        model *= flux / total_per_ie
    fx, fy = x - np.floor(x), y - np.floor(y)
    for ox, oy, w in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)),
                      (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        px, py = int(np.floor(x)) + ox - x0, int(np.floor(y)) + oy - y0
        if 0 <= px < model.shape[1] and 0 <= py < model.shape[0]:
            model[py, px] += inner * w
    sx0, sy0 = max(x0, 0), max(y0, 0)
    sx1, sy1 = min(x1, nx), min(y1, ny)
    if sx0 < sx1 and sy0 < sy1:
        layer[sy0:sy1, sx0:sx1] += model[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0]
