"""Transient candidates on a difference image: detection, features, rejections,
classes and a real/bogus score.

Inputs (all on one pixel grid, pixel coordinates 0-based as in numpy):
  diff   D = science - (kernel ⊛ reference), electrons; its PSF is the science PSF
  noise  N, the 1-sigma noise of D per pixel (ERR of both images combined)
  sci    an image with the difference's PSF: the science image, or the reference
         when the science was convolved to match it; ref the (resampled) reference
         image; electrons, with or without their sky (a sep background is
         subtracted here); either may be None
  mask   uint16 bit flags (gppy.reduction.flags.Pixel) of science and reference
         combined, nonzero = bad; bit 8 = saturated. None: nothing masked
  wcs    the celestial WCS of the grid; None: no RA/Dec (NaN), no catalogue stars,
         no other epochs, and reference stars matched within 0.5 FWHM
  zp     the AB zero point of a point source's total flux in e-/s of sci; None:
         no magnitudes (NaN)

Detection. sep.extract (no further filtering, no cleaning, every pixel above
threshold kept) on the matched-filter S/N image of D/N, sum(k D / N²) /
sqrt(sum(k² / N²)), k the Gaussian of the PSF FWHM: the threshold `thresh_sigma`
applies to the optimal (PSF-fit) S/N of a point source. D and -D are both searched: positive
sources (brighter now) and negative ones (brighter in the reference). Pixels with
mask != 0, non-finite D or N, or N <= 0 are ignored.

Features, per detection (v = sign * D, so that every source is positive in v):
  x, y         Gaussian-windowed centroid (window sigma = PSF sigma), iterated
  flux         PSF-weighted flux: sum(g v) / sum(g²) over good pixels within
               2 FWHM, g the normalised Gaussian of the PSF FWHM at (x, y), times
               the aperture correction APCORR (see below); fluxerr from N. mag =
               -2.5 log10(flux / exptime_s) + zp for the light that appeared
               (sign +1) or disappeared (sign -1); magerr = 1.0857 fluxerr / flux
  snr          flux / fluxerr (signed like the residual: negative for sign -1)
  fwhm_ratio   size from the Gaussian-windowed second moments, corrected for the
               window (exact for a Gaussian: C = (M⁻¹ - W⁻¹)⁻¹), FWHM = 2.3548
               (det C)^¼, divided by the same measure of the PSF. NaN: unmeasurable
               (no positive light in the window)
  ellipticity  1 - b/a of C
  neg_ratio    |sum of v over pixels with v < -2N| / sum of v over pixels with
               v > +2N, within 1.5 FWHM: the opposite-sign light in the aperture.
               Beside a star (below), the pixels nearer the star are left out
  counterpart  an opposite-sign detection within `dipole_radius_fwhm` FWHM whose
               |flux| is at least `dipole_flux_ratio` of this one's (beside a
               star, not one on that star: the star's own residual)
  beside_star  a positive detection 1-3 FWHM (`beside_star_fwhm`) from a reference
               star (below): a transient beside a star, or the star's PSF-matching
               residual (lobes, rings). Nearer, it is the star's (a misalignment
               dipole's lobes lie ~0.5 FWHM from it)
  star_resid_flux
               the star's residual: its light beyond the noise, sqrt(sum(D² - N²))
               within 2.5 FWHM of the star, over the half away from the detection
               (doubled); where that half is masked or off the image, RESIDLEV x the
               star's flux, RESIDLEV the median of that measure over the 15
               brightest reference stars, over their flux (0.003 on a good
               difference, 0.013 on one whose PSFs differ in shape)
  excess_snr   (flux - star_resid_flux) / fluxerr beside a star: the light beyond
               the star's residual, in sigma
  dist_edge    distance (px) to the image border or to the nearest pixel without
               data (non-finite D or N), capped at the search radius
  dist_masked  distance (px) to the nearest pixel with mask != 0 (capped likewise)
  masked_frac  fraction of the PSF weight (Gaussian, within 2 FWHM) on masked pixels
  sat_dist     distance (px) to the nearest saturated region (mask bit 8: its
               bounding box), within whose reach, sat_radius_fwhm FWHM +
               sat_radius_scale r_eq (r_eq = sqrt(n_pixels / pi) of the region:
               the brighter the star, the larger its saturated core and the
               farther its residual halo, spikes and ghosts reach), a detection
               may be that star's halo
  sat_light    there: the static light beneath the detection, the PSF-weighted
               flux of the reference above its median at (x, y) (NaN farther
               out). near_saturated: within the reach, and |flux| at most
               sat_halo_fraction (0.1) of sat_light, which a PSF mismatch of the
               star's wings could leave; a transient on dark sky beside a
               saturated star is brighter than that. Without a reference, every
               detection within the reach
  star_sep_arcsec, star_mag, star_src
               the nearest known star within `match_radius_arcsec` (1"): from the
               `known_stars` catalogue (ra, dec, mag; star_src 'catalog') or a
               bright point-like source of the reference (S/N >= ref_star_snr, 20;
               windowed FWHM <= ref_star_size, 1.25, times the reference's stellar
               FWHM and ellipticity <= the stars' median + ref_star_ell, 0.15;
               star_src 'reference', star_mag its magnitude with `zp`). A bright
               compact galaxy nucleus can pass for a star: a transient on it is
               then "variable"

The PSF measure (FWHM_PSF) and APCORR come from bright, isolated, unmasked stars
of `sci`, measured exactly as candidates are: FWHM_PSF the stellar locus of the
windowed FWHM, APCORR the median ratio of a 5-FWHM aperture flux (sky from an
annulus of 6-9 FWHM) to the Gaussian PSF-weighted flux (a Moffat's wings lie
outside the Gaussian). With fewer than 5 such stars, FWHM_PSF = fwhm_px and APCORR = 1.

Rejections (column `reasons`, comma-separated; any of them makes the class "bogus"):
  edge            dist_edge < edge_fwhm FWHM
  masked          masked_frac > masked_frac_max (a masked pixel at the centre alone
                  carries ~0.1 of a Gaussian's weight)
  dipole          counterpart, or neg_ratio > neg_ratio_max: misalignment,
                  PSF-matching residuals
  star_residual   beside a star, with excess_snr below the threshold: what
                  stands out from the star's residual is not a detection
  sharp / broad   fwhm_ratio below / above fwhm_ratio_range, 0.5-3 (cosmic rays,
                  hot pixels / extended residuals); "shape" if unmeasurable
  elongated       ellipticity > ellipticity_max, 0.6 (trails, residuals)
                  Both shape cuts widen where noise alone would scatter a point
                  source beyond them: with sigma_r = 1.2 / |snr| (of ln fwhm_ratio)
                  and sigma_e = 1.8 / |snr| (of the ellipticity), as measured on
                  injected Moffat sources, the range is [min(0.5, exp(-3 sigma_r)),
                  max(3, exp(3 sigma_r))] and the ellipticity limit
                  min(0.9, max(0.6, 3 sigma_e)): 0.9 at S/N 5, 0.6 from S/N 9
  saturated_star  near_saturated
  negative        a negative residual that is on no known star (brighter in the
                  reference: a reference artefact, or a transient that has faded)
  score           score < score_min

Classes (column `cls`):
  bogus      any rejection
  variable   on a known star within 1" (positive or negative residual): a star that
             merely varied; reasons notes "known_star" (catalogue) or "ref_star"
  moving     positive, otherwise a candidate, and absent from other epochs of the
             night that cover the spot (`other_epochs` / `mark_absent`: forced
             photometry; `flag_moving`: cross-matching candidate tables); reasons
             "single_epoch". An epoch in another band (the night's stack in another
             filter: another time too) counts only for candidates below
             absent_max_snr_other_band (8): at that S/N a source in one stack alone is
             a mover or a noise peak (a Gaussian S/N map of a 3 px PSF has ~1.5 peaks
             above 5 per 2048 x 2048 px), not a red or blue transient the other
             filter cannot see, as it may be brighter. Or on a known asteroid or
             comet: gppy.transient.skybot.mark_movers
  candidate  the rest

Score: a hand-set logistic combination, score = 1 / (1 + exp(-z)),
  z = 3
      + ln(|snr| / thresh_sigma), clipped to [0, 3]
      - 2.5 ln(fwhm_ratio)² / (ln(1.6)² + (2 sigma_r)²)    (2.5 at 1.6 or 1/1.6 times
                                                              the PSF, at high S/N)
      - 2.5 ellipticity² / (0.5² + (2 sigma_e)²)
      - 6.0 [fwhm_ratio or ellipticity unmeasurable, or fwhm_ratio 0 or inf]
      - 4.0 min(neg_ratio, 1.5)
      - 4.0 [counterpart]
      - 30 masked_frac
      - 3.0 exp(-dist_edge / FWHM)
      - 3.0 [near_saturated]
(sigma_r, sigma_e the shape noise above). Examples: a clean PSF-like source
scores 0.95 at the threshold and 0.99 at S/N 20; 1.6 times the PSF's size 0.88
at S/N 20; ellipticity 0.5 0.90; fwhm_ratio 0.75, ellipticity 0.45 and
neg_ratio 0.2 at S/N 7 (a typical faint real source) 0.72; a dipole lobe
(counterpart, neg_ratio 1) 0.04. The weights were set by hand looking at the
features of injected point sources and of artefacts (tests/test_candidates.py),
not fitted. Rejections are separate hard cuts; the score adds the "score"
rejection below score_min (0.5) and ranks what passes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import sep
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS
from scipy import ndimage

from gppy.reduction.flags import Pixel

FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
MAGERR_PER_RELERR = 2.5 / math.log(10.0)
CLASSES = ("candidate", "variable", "moving", "bogus")


@dataclass(frozen=True)
class CandidateParams:
    """Tunable thresholds of `find_candidates` (see the module docstring)."""

    minarea: int = 1                          # pixels of the filtered S/N above threshold
    deblend_cont: float = 0.005
    edge_fwhm: float = 1.5
    masked_frac_max: float = 0.05
    dipole_radius_fwhm: float = 1.5
    dipole_flux_ratio: float = 0.3
    neg_ratio_max: float = 0.5
    fwhm_ratio_range: tuple[float, float] = (0.5, 3.0)
    ellipticity_max: float = 0.6
    shape_noise_fwhm: float = 1.2             # sigma of ln(fwhm_ratio) ~ this / |snr|
    shape_noise_ell: float = 1.8              # sigma of the ellipticity ~ this / |snr|
    sat_radius_fwhm: float = 3.0
    sat_radius_scale: float = 4.0
    sat_halo_fraction: float = 0.1            # of the static light beneath: a halo
    match_radius_arcsec: float = 1.0
    ref_star_snr: float = 20.0
    ref_star_size: float = 1.25
    ref_star_ell: float = 0.15                # above the reference stars' median
    beside_star_fwhm: tuple[float, float] = (1.0, 3.0)   # a reference star this far
    residual_stars: int = 15                  # the brightest: the residual's level
    score_min: float = 0.5
    moving_absent_snr: float = 3.0            # other epochs: forced S/N below this ...
    moving_diff_sigma: float = 3.0            # ... and flux this many sigma below ours
    absent_max_snr_other_band: float = 8.0    # epochs in another band: fainter ones only
    psf_star_snr: float = 50.0                # science stars calibrating FWHM_PSF, APCORR
    max_psf_stars: int = 200


@dataclass
class Epoch:
    """Another difference image of the same night (any grid), for `other_epochs` and
    `mark_absent`: its arrays may be memory maps (only windows are read).
    flux_scale multiplies its PSF-weighted fluxes onto the candidates' scale (exposure
    times, zero points and aperture corrections of the two); same_band: in the
    candidates' filter."""

    diff: np.ndarray
    noise: np.ndarray
    wcs: WCS
    mask: np.ndarray | None = None
    fwhm_px: float | None = None
    flux_scale: float = 1.0
    same_band: bool = True


@dataclass
class _Frame:
    data: np.ndarray          # D, 0 where bad, float32
    noise: np.ndarray         # N, 1 where bad, float32
    nodata: np.ndarray        # bool: D or N unusable
    masked: np.ndarray        # bool: mask != 0
    shape: tuple[int, int] = field(init=False)

    def __post_init__(self):
        self.shape = self.data.shape

    @property
    def bad(self) -> np.ndarray:
        return self.nodata | self.masked


def _frame(diff, noise, mask) -> _Frame:
    diff = np.asarray(diff, dtype=np.float32)
    noise = np.asarray(noise, dtype=np.float32)
    nodata = ~np.isfinite(diff) | ~np.isfinite(noise) | ~(noise > 0)
    masked = np.zeros(diff.shape, bool) if mask is None else (np.asarray(mask) != 0)
    bad = nodata | masked
    return _Frame(np.ascontiguousarray(np.where(bad, 0.0, diff), dtype=np.float32),
                  np.ascontiguousarray(np.where(nodata, 1.0, noise), dtype=np.float32),
                  nodata, masked & ~nodata)


def _snr_map(fr: _Frame, sigma: float) -> np.ndarray:
    """The matched-filter S/N image: sum(k D / N²) / sqrt(sum(k² / N²)) with k the
    Gaussian of the PSF (separable, so two 1-d passes per axis); masked pixels
    carry no weight. A point source's value at its centre is its optimal S/N
    (for a Gaussian PSF); on pure noise the map is N(0, 1)."""
    r = max(2, int(math.ceil(3.0 * sigma)))
    k1 = np.exp(-np.arange(-r, r + 1) ** 2 / (2 * sigma * sigma))
    w = np.where(fr.bad, 0.0, 1.0 / (fr.noise.astype(np.float64) ** 2))

    def smooth(img, k):
        out = ndimage.correlate1d(img, k, axis=0, mode="constant")
        return ndimage.correlate1d(out, k, axis=1, mode="constant")

    num = smooth(fr.data * w, k1)
    den = smooth(w, k1 * k1)
    del w
    good = den > 0
    out = np.zeros(fr.shape, np.float32)
    out[good] = num[good] / np.sqrt(den[good])
    return out


def _map_width(snr_map: np.ndarray, bad: np.ndarray) -> float:
    """The robust standard deviation (1.4826 MAD) of an S/N map's good pixels
    within 4 widths of the median (the sources left out), iterated: a fixed cut
    would truncate a wide map and underestimate it (by 10 % at width 2.4). At
    most 10⁶ pixels, evenly spaced, are used."""
    values = snr_map[~bad]
    if values.size < 1000:
        return 1.0
    values = values[::max(1, values.size // 1_000_000)]
    centre, width = 0.0, math.inf
    for _ in range(4):
        kept = values[np.abs(values - centre) < 4.0 * width]
        centre = float(np.median(kept))
        width = float(1.4826 * np.median(np.abs(kept - centre)))
    return width


def _unit_snr_map(fr: _Frame, sigma: float) -> tuple[np.ndarray, float]:
    """(the S/N map, the factor its noise was widened by). Resampling and
    convolution correlate the noise, so the map is wider than N(0, 1) (1.07-1.39 on
    pipeline differences): the noise is scaled to make it unit-wide, or the 5-sigma
    threshold lets through noise peaks."""
    snr_map = _snr_map(fr, sigma)
    scale = max(_map_width(snr_map, fr.bad), 1.0)
    snr_map /= np.float32(scale)
    return snr_map, scale


def snr_image(diff, noise, mask, fwhm_px: float) -> np.ndarray:
    """The S/N image `find_candidates` detects on (its inputs as there): the
    matched-filter S/N of a point source at each pixel, on unit-wide noise."""
    return _unit_snr_map(_frame(diff, noise, mask), fwhm_px / FWHM_PER_SIGMA)[0]


def _gauss_kernel(sigma: float) -> np.ndarray:
    r = max(2, int(math.ceil(2.5 * sigma)))
    g = np.arange(-r, r + 1, dtype=float)
    k = np.exp(-(g[:, None] ** 2 + g[None, :] ** 2) / (2 * sigma * sigma))
    return (k / k.sum()).astype(np.float32)


# ---------------------------------------------------------------------------
# per-source measurements on a small stamp


def _window(shape, x, y, radius):
    """Slices and pixel offsets (dx, dy from (x, y)) of the pixels within `radius`."""
    ny, nx = shape
    r = int(math.ceil(radius))
    ix0, iy0 = int(math.floor(x)) - r, int(math.floor(y)) - r
    x0, x1 = max(ix0, 0), min(ix0 + 2 * r + 2, nx)
    y0, y1 = max(iy0, 0), min(iy0 + 2 * r + 2, ny)
    if x0 >= x1 or y0 >= y1:
        return None
    sl = (slice(y0, y1), slice(x0, x1))
    dy, dx = np.mgrid[y0:y1, x0:x1].astype(float)
    dx -= x
    dy -= y
    return sl, dx, dy


def _centroid(v, good, dx0, dy0, sigma, max_shift):
    """Gaussian-windowed centroid offset (SExtractor's XWIN iteration)."""
    ox = oy = 0.0
    for _ in range(12):
        dx, dy = dx0 - ox, dy0 - oy
        w = np.exp(-(dx * dx + dy * dy) / (2 * sigma * sigma)) * good
        s = float((w * v).sum())
        if s <= 0:
            return 0.0, 0.0
        sx, sy = 2.0 * float((w * v * dx).sum()) / s, 2.0 * float((w * v * dy).sum()) / s
        sx, sy = np.clip(sx, -sigma, sigma), np.clip(sy, -sigma, sigma)
        ox, oy = ox + sx, oy + sy
        if math.hypot(ox, oy) > max_shift:
            return 0.0, 0.0
        if abs(sx) < 1e-3 and abs(sy) < 1e-3:
            break
    return ox, oy


def _shape(v, good, dx, dy, sigma) -> tuple[float, float]:
    """(FWHM px, ellipticity) from Gaussian-windowed second moments, corrected for
    the window (exact for an elliptical Gaussian). NaN when unmeasurable; FWHM inf
    when broader than the window can tell."""
    r2 = dx * dx + dy * dy
    w = np.exp(-r2 / (2 * sigma * sigma)) * good * (r2 <= (2 * FWHM_PER_SIGMA * sigma) ** 2)
    s = float((w * v).sum())
    if not s > 0:
        return math.nan, math.nan
    mxx = float((w * v * dx * dx).sum()) / s
    myy = float((w * v * dy * dy).sum()) / s
    mxy = float((w * v * dx * dy).sum()) / s
    tr, det = mxx + myy, mxx * myy - mxy * mxy
    disc = math.sqrt(max(tr * tr / 4 - det, 0.0))
    lam1, lam2 = tr / 2 + disc, tr / 2 - disc
    if lam2 <= 0:
        return (0.0 if lam1 > 0 else math.nan), math.nan
    s2 = sigma * sigma

    def deconv(lam):
        return math.inf if lam >= s2 * 0.98 else lam * s2 / (s2 - lam)

    a2, b2 = deconv(lam1), deconv(lam2)
    if math.isinf(a2):
        return math.inf, (0.0 if math.isinf(b2) else 1.0)
    fwhm = FWHM_PER_SIGMA * (a2 * b2) ** 0.25
    return fwhm, 1.0 - math.sqrt(b2 / a2)


def _psf_flux(v, noise, good, dx, dy, sigma):
    """PSF(Gaussian)-weighted flux and its error, over good pixels within 2 FWHM."""
    r2 = dx * dx + dy * dy
    inside = good & (r2 <= (2 * FWHM_PER_SIGMA * sigma) ** 2)
    g = np.exp(-r2 / (2 * sigma * sigma)) / (2 * math.pi * sigma * sigma) * inside
    gg = float((g * g).sum())
    if gg <= 0:
        return math.nan, math.nan
    flux = float((g * v).sum()) / gg
    err = math.sqrt(float((g * g * noise * noise).sum())) / gg
    return flux, err


@dataclass
class _Measure:
    x: float
    y: float
    flux: float              # PSF-weighted, without APCORR
    fluxerr: float
    fwhm: float
    ellipticity: float
    neg_ratio: float
    dist_edge: float
    dist_masked: float
    masked_frac: float


def _measure(fr: _Frame, sign: int, x: float, y: float, sigma: float,
             search_px: float, star: tuple[float, float] | None = None) -> _Measure:
    """The features of a detection at (x, y); with `star` (x, y of a reference star
    beside it), neg_ratio leaves out the pixels nearer the star than the detection:
    the star's own PSF-matching residual is judged separately."""
    fwhm = FWHM_PER_SIGMA * sigma
    radius = max(2 * fwhm, search_px) + 2
    sl, dx, dy = _window(fr.shape, x, y, radius)      # (x, y) lies inside the image
    v = sign * fr.data[sl].astype(float)
    n = fr.noise[sl].astype(float)
    masked, nodata = fr.masked[sl], fr.nodata[sl]
    good = ~(masked | nodata)
    ox, oy = _centroid(v, good, dx, dy, sigma, max_shift=fwhm)
    x, y = x + ox, y + oy
    dx, dy = dx - ox, dy - oy
    flux, fluxerr = _psf_flux(v, n, good, dx, dy, sigma)
    fw, ell = _shape(v, good, dx, dy, sigma)
    r2 = dx * dx + dy * dy
    ap = good & (r2 <= (1.5 * fwhm) ** 2)
    if star is not None:
        sdx, sdy = dx + x - star[0], dy + y - star[1]
        ap &= r2 < sdx * sdx + sdy * sdy
    pos = float(v[ap & (v > 2 * n)].sum())
    neg = abs(float(v[ap & (v < -2 * n)].sum()))
    neg_ratio = neg / pos if pos > 0 else (math.inf if neg > 0 else 0.0)
    ny, nx = fr.shape
    border = min(x + 0.5, nx - 0.5 - x, y + 0.5, ny - 0.5 - y)
    r = np.sqrt(r2)
    dist_edge = min(border, float(r[nodata].min()) if nodata.any() else math.inf, search_px)
    dist_masked = min(float(r[masked].min()) if masked.any() else math.inf, search_px)
    inside = r2 <= (2 * fwhm) ** 2
    g = np.exp(-r2 / (2 * sigma * sigma)) * inside
    # pixels beyond the border carry weight too: the window is truncated there
    gsum = 2 * math.pi * sigma * sigma * (1 - math.exp(-(2 * fwhm) ** 2 / (2 * sigma * sigma)))
    masked_frac = float(g[masked].sum()) / gsum
    return _Measure(x, y, flux, fluxerr, fw, ell, neg_ratio, max(dist_edge, 0.0),
                    dist_masked, masked_frac)


# ---------------------------------------------------------------------------
# the science PSF, reference stars, saturated regions


def _background_subtracted(image, bad) -> tuple[np.ndarray, float]:
    data = np.ascontiguousarray(np.where(bad, 0.0, image), dtype=np.float32)
    bkg = sep.Background(data, mask=bad, bw=64, bh=64, fw=3, fh=3)
    return np.where(bad, 0.0, data - bkg.back()).astype(np.float32), float(bkg.globalrms)


def _bright_sources(image, bad, sigma, snr_min, max_n):
    """(sub, objects, snr, frame) of sources of S/N >= snr_min (aperture of radius
    2 FWHM against the global sky rms), brightest first, at most max_n."""
    bad = bad | ~np.isfinite(image)
    sub, rms = _background_subtracted(image, bad)
    if not rms > 0:
        return None
    objs = sep.extract(sub, 5.0, err=rms, mask=bad, minarea=5,
                       filter_kernel=_gauss_kernel(sigma), clean=False)
    if len(objs) == 0:
        return None
    fwhm = FWHM_PER_SIGMA * sigma
    flux, ferr, _ = sep.sum_circle(sub, objs["x"], objs["y"], 2.0 * fwhm, err=rms, mask=bad)
    snr = flux / np.maximum(ferr, 1e-30)
    order = np.argsort(-flux)
    order = order[snr[order] >= snr_min][:max_n]
    fr = _Frame(sub, np.full(sub.shape, rms, np.float32), np.zeros(sub.shape, bool), bad)
    return sub, objs[order], snr[order], fr


def _psf_calibration(sci, bad, sigma, params: CandidateParams) -> tuple[float, float, int]:
    """(FWHM_PSF px, APCORR, number of stars) from bright isolated stars of sci."""
    fwhm = FWHM_PER_SIGMA * sigma
    found = _bright_sources(sci, bad, sigma, params.psf_star_snr, 4 * params.max_psf_stars)
    if found is None:
        return fwhm, 1.0, 0
    sub, objs, _, fr = found
    ny, nx = sub.shape
    x, y = objs["x"], objs["y"]
    m = 8 * fwhm
    inner = (x > m) & (x < nx - 1 - m) & (y > m) & (y < ny - 1 - m)
    # isolated among all the bright detections
    pts = np.column_stack([x, y])
    d2 = ((pts[:, None, :] - pts[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d2, np.inf)
    isolated = d2.min(axis=1) > (6 * fwhm) ** 2 if len(pts) > 1 else np.ones(len(pts), bool)
    keep = np.nonzero(inner & isolated)[0][: params.max_psf_stars]
    if keep.size < 5:
        return fwhm, 1.0, 0
    ap, _, flag = sep.sum_circle(sub, x[keep], y[keep], 5 * fwhm, mask=fr.masked,
                                 bkgann=(6 * fwhm, 9 * fwhm))
    sizes, ratios = [], []
    for i, k in enumerate(keep):
        if flag[i] & sep.APER_HASMASKED:
            continue
        me = _measure(fr, 1, float(x[k]), float(y[k]), sigma, 2 * fwhm)
        if me.masked_frac > 0 or not np.isfinite(me.fwhm) or not me.flux > 0:
            continue
        sizes.append(me.fwhm)
        ratios.append(ap[i] / me.flux)
    sizes, ratios = np.array(sizes), np.array(ratios)
    if sizes.size < 5:
        return fwhm, 1.0, 0
    # the stellar locus: the smallest sources' mode, away from galaxies and blends
    centre = np.percentile(sizes, 30)
    for _ in range(3):
        locus = np.abs(sizes / centre - 1) < 0.15
        if locus.sum() < 3:
            break
        centre = float(np.median(sizes[locus]))
    locus = np.abs(sizes / centre - 1) < 0.15
    if locus.sum() < 3:
        return fwhm, 1.0, 0
    return float(centre), float(np.median(ratios[locus])), int(locus.sum())


def _reference_stars(ref, bad, sigma, params: CandidateParams):
    """(x, y, PSF-weighted flux) of the bright point-like sources of the reference."""
    found = _bright_sources(ref, bad, sigma, params.ref_star_snr, 20000)
    empty = (np.zeros(0),) * 3
    if found is None:
        return empty
    sub, objs, _, fr = found
    fwhm = FWHM_PER_SIGMA * sigma
    sizes, ells, xs, ys, fl = [], [], [], [], []
    for o in objs:
        me = _measure(fr, 1, float(o["x"]), float(o["y"]), sigma, 2 * fwhm)
        sizes.append(me.fwhm)
        ells.append(me.ellipticity)
        xs.append(me.x)
        ys.append(me.y)
        fl.append(me.flux)
    sizes = np.array(sizes)
    ok = np.isfinite(sizes) & (sizes > 0)
    if not ok.any():
        return empty
    # the reference's own stellar FWHM: the locus of the smallest bright sources
    centre = np.percentile(sizes[ok], 30)
    for _ in range(3):
        locus = ok & (np.abs(sizes / centre - 1) < 0.2)
        if locus.sum() < 3:
            break
        centre = float(np.median(sizes[locus]))
    ells = np.array(ells)
    locus = ok & (np.abs(sizes / centre - 1) < 0.2)
    ell_max = (float(np.median(ells[locus])) if locus.any() else 0.0) + params.ref_star_ell
    point = ok & (sizes <= params.ref_star_size * centre) & (ells <= ell_max)
    return tuple(np.array(v)[point] for v in (xs, ys, fl))


def _residual_level(fr: _Frame, rx, ry, rflux, fwhm: float, params: CandidateParams) -> float:
    """The PSF-matching residual a star leaves on this difference, as a fraction
    of its flux: the median over the `residual_stars` brightest reference stars
    (whole and unmasked within 2.5 FWHM) of sqrt(sum(D² - N²)) / flux within 2.5
    FWHM, the residual's light beyond the noise. The median ignores the few stars
    that hold a real transient. 0 with fewer than 5 such stars."""
    fractions = []
    for k in np.argsort(-rflux):
        energy = _residual_energy(fr, rx[k], ry[k], fwhm)
        if energy is not None:
            fractions.append(energy / rflux[k])
        if len(fractions) == params.residual_stars:
            break
    return float(np.median(fractions)) if len(fractions) >= 5 else 0.0


def _residual_energy(fr: _Frame, sx: float, sy: float, fwhm: float,
                     away_from: tuple[float, float] | None = None) -> float | None:
    """sqrt(sum(D² - N²)) within 2.5 FWHM of a star: its residual's light beyond
    the noise. With `away_from` (a detection beside it), over the half away from
    the detection only, doubled. None where pixels are missing or masked."""
    win = _window(fr.shape, sx, sy, 2.5 * fwhm)
    if win is None:
        return None
    sl, dx, dy = win
    inside = dx * dx + dy * dy <= (2.5 * fwhm) ** 2
    full = 0.9 * math.pi * (2.5 * fwhm) ** 2
    if away_from is not None:
        inside &= dx * (away_from[0] - sx) + dy * (away_from[1] - sy) < 0
        full /= 2
    if inside.sum() < full or fr.bad[sl][inside].any():
        return None
    d, n = fr.data[sl][inside].astype(float), fr.noise[sl][inside].astype(float)
    scale = 2.0 if away_from is not None else 1.0
    return math.sqrt(scale * max(float((d * d - n * n).sum()), 0.0))


def _saturated_regions(mask) -> np.ndarray:
    """(n, 5): x0, x1, y0, y1 (pixel bounds, inclusive) and r_eq of each connected
    region of saturated pixels."""
    if mask is None:
        return np.zeros((0, 5))
    sat = (np.asarray(mask) & Pixel.SATURATED) != 0
    if not sat.any():
        return np.zeros((0, 5))
    labels, n = ndimage.label(sat, structure=np.ones((3, 3)))
    counts = np.bincount(labels.ravel())[1:]
    rows = []
    for i, sl in enumerate(ndimage.find_objects(labels)):
        rows.append((sl[1].start, sl[1].stop - 1, sl[0].start, sl[0].stop - 1,
                     math.sqrt(counts[i] / math.pi)))
    return np.array(rows, float)


def _static_light(ref, bad, x, y, sigma) -> np.ndarray:
    """The PSF-weighted flux (as `_psf_flux`) of the reference above the median of
    its good pixels at each (x, y): the light that stays, beneath a detection."""
    ref = np.asarray(ref)
    good = ~bad & np.isfinite(ref)
    sky = float(np.median(ref[good])) if good.any() else 0.0
    fwhm = FWHM_PER_SIGMA * sigma
    out = np.full(len(x), np.nan)
    for i, (xi, yi) in enumerate(zip(x, y)):
        sl, dx, dy = _window(ref.shape, xi, yi, 2 * fwhm + 1)
        out[i] = _psf_flux(ref[sl].astype(float) - sky, np.ones(dx.shape), good[sl], dx, dy,
                           sigma)[0]
    return out


def _saturation_distance(regions, x, y, fwhm, params: CandidateParams):
    """(distance px to the nearest saturated region, inside its influence radius?)."""
    if len(regions) == 0:
        return np.full(len(x), np.inf), np.zeros(len(x), bool)
    x, y = np.asarray(x)[:, None], np.asarray(y)[:, None]
    ddx = np.maximum(np.maximum(regions[None, :, 0] - x, x - regions[None, :, 1]), 0)
    ddy = np.maximum(np.maximum(regions[None, :, 2] - y, y - regions[None, :, 3]), 0)
    dist = np.hypot(ddx, ddy)
    reach = params.sat_radius_fwhm * fwhm + params.sat_radius_scale * regions[None, :, 4]
    return dist.min(axis=1), (dist <= reach).any(axis=1)


# ---------------------------------------------------------------------------


def _shape_noise(snr, params: CandidateParams):
    """(sigma of ln fwhm_ratio, sigma of ellipticity) expected from noise alone at
    this S/N (measured on injected Moffat sources: 1.2 / S/N and 1.8 / S/N)."""
    a = np.maximum(np.abs(np.nan_to_num(snr, nan=1.0)), 1.0)
    return params.shape_noise_fwhm / a, params.shape_noise_ell / a


def _score(snr, fwhm_ratio, ell, neg_ratio, counterpart, masked_frac, dist_edge, near_sat,
           thresh, fwhm, params: CandidateParams):
    """The documented logistic real/bogus score (module docstring)."""
    s_r, s_e = _shape_noise(snr, params)
    z = 3.0 + np.clip(np.log(np.maximum(np.abs(snr), 1e-9) / thresh), 0.0, 3.0)
    measurable = np.isfinite(fwhm_ratio) & (fwhm_ratio > 0) & np.isfinite(ell)
    lr = np.log(np.where(measurable, fwhm_ratio, 1.0))
    z = z - 2.5 * lr ** 2 / (math.log(1.6) ** 2 + (2 * s_r) ** 2)
    z = z - 2.5 * np.where(measurable, ell, 0.0) ** 2 / (0.5 ** 2 + (2 * s_e) ** 2)
    z = z - 6.0 * ~measurable
    z = z - 4.0 * np.minimum(np.nan_to_num(neg_ratio, nan=1.5, posinf=1.5), 1.5)
    z = z - 4.0 * counterpart - 30.0 * masked_frac
    z = z - 3.0 * np.exp(-dist_edge / fwhm) - 3.0 * near_sat
    return 1.0 / (1.0 + np.exp(-z))


def _forced(epoch: Epoch, ra, dec, sigma_default, edge_px):
    """Forced PSF-weighted flux (flux, err, covered) at sky positions of an epoch, on
    its own scale; covered 0 outside it or where pixels within 1 FWHM are bad."""
    sigma = (epoch.fwhm_px / FWHM_PER_SIGMA) if epoch.fwhm_px else sigma_default
    x, y = epoch.wcs.world_to_pixel_values(ra, dec)
    ny, nx = epoch.diff.shape
    out = np.full((len(ra), 3), np.nan)
    for i, (xi, yi) in enumerate(zip(np.atleast_1d(x), np.atleast_1d(y))):
        if not (edge_px <= xi <= nx - 1 - edge_px and edge_px <= yi <= ny - 1 - edge_px):
            out[i, 2] = 0
            continue
        sl, dx, dy = _window((ny, nx), xi, yi, 2 * FWHM_PER_SIGMA * sigma + 1)
        d = np.asarray(epoch.diff[sl], float)
        n = np.asarray(epoch.noise[sl], float)
        good = np.isfinite(d) & np.isfinite(n) & (n > 0)
        if epoch.mask is not None:
            good &= np.asarray(epoch.mask[sl]) == 0
        if not good[np.hypot(dx, dy) <= FWHM_PER_SIGMA * sigma].all():
            out[i, 2] = 0
            continue
        f, e = _psf_flux(np.where(good, d, 0.0), np.where(good, n, 1.0), good, dx, dy, sigma)
        out[i] = (f, e, 1)
    return out


def mark_absent(table: Table, epochs: list[Epoch], params: CandidateParams | None = None
                ) -> np.ndarray:
    """Class "moving" (reasons + "single_epoch") for the rows of class "candidate" of a
    `find_candidates` table (its meta FWHM_PX and APCORR) that are absent from
    every epoch covering them, at least one (see the module docstring); counts in
    n_epochs_cover and n_epochs_seen. The table is changed in place; returns the
    indices of the rows it made "moving"."""
    p = params or CandidateParams()
    n = len(table)
    for name in ("n_epochs_cover", "n_epochs_seen"):
        if name not in table.colnames:
            table[name] = np.zeros(n, int)
    cand = np.flatnonzero(np.asarray(table["cls"]) == "candidate")
    if not epochs or cand.size == 0:
        return np.zeros(0, int)
    apcorr = float(table.meta.get("APCORR", 1.0))
    sigma = float(table.meta["FWHM_PX"]) / FWHM_PER_SIGMA
    ra, dec = np.asarray(table["ra"], float)[cand], np.asarray(table["dec"], float)[cand]
    flux = np.asarray(table["flux"], float)[cand] / apcorr       # PSF-weighted
    fluxerr = np.asarray(table["fluxerr"], float)[cand] / apcorr
    snr = np.abs(np.asarray(table["snr"], float)[cand])
    cover, seen = np.zeros(cand.size, int), np.zeros(cand.size, int)
    for ep in epochs:
        res = _forced(ep, ra, dec, sigma, p.edge_fwhm * FWHM_PER_SIGMA * sigma)
        cov = res[:, 2] == 1
        if not ep.same_band:
            cov &= snr < p.absent_max_snr_other_band
        f_o, e_o = res[:, 0] * ep.flux_scale, res[:, 1] * ep.flux_scale
        with np.errstate(invalid="ignore"):
            gone = ((f_o / e_o < p.moving_absent_snr)
                    & ((flux - f_o) / np.hypot(fluxerr, e_o) > p.moving_diff_sigma))
        cover += cov
        seen += cov & ~gone
    table["n_epochs_cover"][cand] += cover
    table["n_epochs_seen"][cand] += seen
    moving = cand[(cover > 0) & (seen == 0)]
    cls = np.asarray(table["cls"]).astype("U9")
    cls[moving] = "moving"
    table["cls"] = cls
    reasons = [str(r) for r in table["reasons"]]
    for i in moving:
        reasons[i] = ",".join([r for r in reasons[i].split(",") if r] + ["single_epoch"])
    table["reasons"] = np.array(reasons, dtype=str)
    return moving


def find_candidates(diff, noise, sci, ref, mask, wcs: WCS | None, *, fwhm_px: float,
                    zp: float | None,
                    exptime_s: float, thresh_sigma: float = 5.0,
                    known_stars: Table | None = None,
                    other_epochs: list[Epoch] | None = None,
                    params: CandidateParams | None = None) -> Table:
    """Candidates of a difference image, one row per positive or negative
    detection (see the module docstring). Columns: id, x, y, ra, dec, mag, magerr,
    snr, fwhm_ratio, ellipticity, score, cls, reasons, then the other features
    (sign, flux, fluxerr, neg_ratio, counterpart, dist_edge, dist_masked,
    masked_frac, sat_dist, sat_light, near_saturated, star_sep_arcsec, star_mag, star_src,
    beside_star, star_resid_flux, excess_snr, n_epochs_cover, n_epochs_seen). Sorted
    by |snr|, largest first."""
    p = params or CandidateParams()
    zp = math.nan if zp is None else float(zp)
    sigma = fwhm_px / FWHM_PER_SIGMA
    fr = _frame(diff, noise, mask)
    sep.set_extract_pixstack(max(300_000, fr.data.size // 5))
    sep.set_sub_object_limit(4096)

    snr_map, noise_scale = _unit_snr_map(fr, sigma)
    fr.noise *= np.float32(noise_scale)
    dets = []
    for sign in (1, -1):
        objs = sep.extract(np.ascontiguousarray(sign * snr_map), thresh_sigma, mask=fr.bad,
                           minarea=p.minarea, filter_kernel=None,
                           deblend_cont=p.deblend_cont, clean=False)
        dets += [(sign, float(o["x"]), float(o["y"])) for o in objs]
    del snr_map

    fwhm_psf, apcorr, n_psf = fwhm_px, 1.0, 0
    if sci is not None:
        fwhm_psf, apcorr, n_psf = _psf_calibration(sci, fr.bad, sigma, p)

    # bright point-like sources of the reference: a detection on one is a variable
    # star, one beside one may be the star's PSF-matching residual
    rx = ry = rflux = np.zeros(0)
    if dets and ref is not None:
        rx, ry, rflux = _reference_stars(ref, fr.bad, sigma, p)
    if wcs is not None:   # separations in arcsec, else in pixels
        pix = abs(float(np.sqrt(abs(np.linalg.det(wcs.pixel_scale_matrix))))) * 3600.0
        on_star = p.match_radius_arcsec
    else:
        pix, on_star = 1.0, 0.5 * fwhm_px
    search = max(p.edge_fwhm, 1.0) * fwhm_px
    meas = [_measure(fr, s, x, y, sigma, search) for s, x, y in dets]
    n = len(meas)
    sign = np.array([d[0] for d in dets], int)
    # each detection's nearest reference star, and its separation (px)
    star = np.full(n, -1)
    star_px = np.full(n, np.inf)
    beside = np.zeros(n, bool)
    if n and rx.size:
        xm, ym = (np.array([getattr(m, k) for m in meas]) for k in ("x", "y"))
        dist = np.hypot(xm[:, None] - rx[None, :], ym[:, None] - ry[None, :])
        star = dist.argmin(axis=1)
        star_px = dist[np.arange(n), star]
        lo, hi = (f * fwhm_px for f in p.beside_star_fwhm)
        beside = (sign > 0) & (star_px * pix > on_star) & (star_px >= lo) & (star_px <= hi)
        for k in np.flatnonzero(beside):
            meas[k] = _measure(fr, 1, meas[k].x, meas[k].y, sigma, search,
                               (rx[star[k]], ry[star[k]]))
    col = {k: np.array([getattr(m, k) for m in meas], float) for k in
           ("x", "y", "flux", "fluxerr", "fwhm", "ellipticity", "neg_ratio", "dist_edge",
            "dist_masked", "masked_frac")}
    flux = col["flux"] * apcorr
    fluxerr = col["fluxerr"] * apcorr
    with np.errstate(invalid="ignore", divide="ignore"):
        snr = sign * col["flux"] / col["fluxerr"]
        mag = -2.5 * np.log10(flux / exptime_s) + zp
        magerr = MAGERR_PER_RELERR * fluxerr / flux
    mag[~(flux > 0)] = np.nan
    magerr[~(flux > 0)] = np.nan
    fwhm_ratio = col["fwhm"] / fwhm_psf
    ell = col["ellipticity"]
    x, y = col["x"], col["y"]
    if n and wcs is not None:
        ra, dec = wcs.pixel_to_world_values(x, y)
        ra, dec = np.atleast_1d(ra).astype(float), np.atleast_1d(dec).astype(float)
    else:
        ra, dec = np.full(n, np.nan), np.full(n, np.nan)

    # dipoles: an opposite-sign detection close by with comparable flux
    counterpart = np.zeros(n, bool)
    if n:
        d2 = (x[:, None] - x[None, :]) ** 2 + (y[:, None] - y[None, :]) ** 2
        near = (d2 <= (p.dipole_radius_fwhm * fwhm_px) ** 2) & (sign[:, None] != sign[None, :])
        if rx.size:   # beside a star, the star's own residual is judged by its level
            from_star = np.hypot(x[None, :] - rx[star][:, None], y[None, :] - ry[star][:, None])
            near &= ~(beside[:, None] & (from_star * pix <= on_star))
        comparable = np.abs(flux)[None, :] >= p.dipole_flux_ratio * np.abs(flux)[:, None]
        counterpart = (near & comparable & np.isfinite(flux)[None, :]).any(axis=1)

    sat_dist, near_sat = _saturation_distance(_saturated_regions(mask), x, y, fwhm_px, p)
    sat_light = np.full(n, np.nan)
    if ref is not None and near_sat.any():
        sat_light[near_sat] = _static_light(ref, fr.bad, x[near_sat], y[near_sat], sigma)
        near_sat &= ~(np.abs(col["flux"]) > p.sat_halo_fraction * sat_light)

    # known stars: catalogue, then bright point-like sources of the reference
    star_sep = np.full(n, np.nan)
    star_mag = np.full(n, np.nan)
    star_src = np.array([""] * n, dtype="U9")
    if n and wcs is not None and known_stars is not None and len(known_stars):
        cand = SkyCoord(ra, dec, unit="deg")
        cat = SkyCoord(np.asarray(known_stars["ra"], float), np.asarray(known_stars["dec"], float),
                       unit="deg")
        idx, sep2d, _ = cand.match_to_catalog_sky(cat)
        hit = sep2d.arcsec <= p.match_radius_arcsec
        star_sep[hit] = sep2d.arcsec[hit]
        if "mag" in known_stars.colnames:
            star_mag[hit] = np.asarray(known_stars["mag"], float)[idx[hit]]
        star_src[hit] = "catalog"
    # (a detection beside a star is 1 FWHM or more from it: re-measuring it there
    # does not bring it onto the star)
    hit = (star_px * pix <= on_star) & (star_src == "")
    star_sep[hit] = star_px[hit] * pix
    with np.errstate(invalid="ignore", divide="ignore"):
        star_mag[hit] = -2.5 * np.log10(rflux[star[hit]] / exptime_s) + zp
    star_src[hit] = "reference"
    on_star = star_src != ""

    # beside a star, a detection must stand out from the residual such a star leaves
    level = _residual_level(fr, rx, ry, rflux, fwhm_px, p) if beside.any() else 0.0
    star_resid = np.zeros(n)
    for i in np.flatnonzero(beside):   # the star's own, on its far side, else typical
        own = _residual_energy(fr, rx[star[i]], ry[star[i]], fwhm_px, (x[i], y[i]))
        star_resid[i] = own if own is not None else level * rflux[star[i]]
    with np.errstate(invalid="ignore", divide="ignore"):
        excess_snr = np.where(beside, (col["flux"] - star_resid) / col["fluxerr"], np.nan)

    score = _score(snr, fwhm_ratio, ell, col["neg_ratio"], counterpart, col["masked_frac"],
                   col["dist_edge"], near_sat, thresh_sigma, fwhm_px, p)

    reasons = [[] for _ in range(n)]
    # shape cuts widen where noise alone would scatter a point source beyond them
    s_r, s_e = _shape_noise(snr, p)
    lo = np.minimum(p.fwhm_ratio_range[0], np.exp(-3 * s_r))
    hi = np.maximum(p.fwhm_ratio_range[1], np.exp(3 * s_r))
    ell_max = np.minimum(0.9, np.maximum(p.ellipticity_max, 3 * s_e))
    for i in range(n):
        r = reasons[i]
        if col["dist_edge"][i] < p.edge_fwhm * fwhm_px:
            r.append("edge")
        if col["masked_frac"][i] > p.masked_frac_max:
            r.append("masked")
        if counterpart[i] or col["neg_ratio"][i] > p.neg_ratio_max:
            r.append("dipole")
        fr_i = fwhm_ratio[i]
        if np.isnan(fr_i):
            r.append("shape")
        elif fr_i < lo[i]:
            r.append("sharp")
        elif fr_i > hi[i]:
            r.append("broad")
        if np.isfinite(ell[i]) and ell[i] > ell_max[i]:
            r.append("elongated")
        if near_sat[i]:
            r.append("saturated_star")
        if beside[i] and not on_star[i] and not excess_snr[i] >= thresh_sigma:
            r.append("star_residual")
        if sign[i] < 0 and not on_star[i]:
            r.append("negative")
        if score[i] < p.score_min and not r:
            r.append("score")

    cls = np.array(["bogus" if r else ("variable" if on_star[i] else "candidate")
                    for i, r in enumerate(reasons)], dtype="U9")
    notes = [list(r) for r in reasons]
    for i in range(n):
        if cls[i] == "variable":
            notes[i].append("known_star" if star_src[i] == "catalog" else "ref_star")

    order = np.argsort(-np.abs(np.nan_to_num(snr, nan=0.0)), kind="stable")
    reasons = (np.array([",".join(notes[i]) for i in range(n)], dtype=object).astype(str)
               if n else np.zeros(0, "U1"))
    columns = {"x": x, "y": y, "ra": ra, "dec": dec, "mag": mag, "magerr": magerr, "snr": snr,
               "fwhm_ratio": fwhm_ratio, "ellipticity": ell, "score": score, "cls": cls,
               "reasons": reasons, "sign": sign, "flux": flux, "fluxerr": fluxerr,
               "neg_ratio": col["neg_ratio"], "counterpart": counterpart,
               "dist_edge": col["dist_edge"], "dist_masked": col["dist_masked"],
               "masked_frac": col["masked_frac"], "sat_dist": sat_dist,
               "sat_light": sat_light * apcorr,
               "near_saturated": near_sat, "star_sep_arcsec": star_sep, "star_mag": star_mag,
               "star_src": star_src, "beside_star": beside, "star_resid_flux": star_resid * apcorr,
               "excess_snr": excess_snr,
               "n_epochs_cover": np.zeros(n, int), "n_epochs_seen": np.zeros(n, int)}
    t = Table({"id": np.arange(1, n + 1, dtype=int)}
              | {name: np.asarray(values)[order] for name, values in columns.items()})
    t.meta.update({"FWHM_PX": float(fwhm_px), "FWHM_PSF": float(fwhm_psf),
                   "APCORR": float(apcorr), "NPSFSTAR": int(n_psf),
                   "THRESH": float(thresh_sigma), "NOISESCL": round(noise_scale, 4),
                   "RESIDLEV": round(level, 5),
                   "ZP": float(zp),
                   "EXPTIME": float(exptime_s), "SHAPE": [int(v) for v in fr.shape],
                   "WCSHDR": "" if wcs is None else wcs.to_header_string(relax=True)})
    if other_epochs and wcs is not None:
        mark_absent(t, [ep if isinstance(ep, Epoch) else Epoch(*ep) for ep in other_epochs], p)
    return t


def flag_moving(candidates_per_frame: list[Table], radius_arcsec: float = 1.5,
                min_snr: float = 8.0) -> list[Table]:
    """Cross-match the candidate tables of one night's frames (from
    `find_candidates`, meta SHAPE and WCSHDR give each frame's footprint). A row
    of class "candidate" with snr >= min_snr (bright enough to be found again)
    that no row of any class matches within `radius_arcsec` in every other frame
    covering its position (inside the frame, edge_fwhm FWHM from its border), and
    with at least one such frame, becomes "moving" (reasons "single_epoch").
    Returns copies with columns n_frames_cover, n_frames_seen."""
    frames = []
    for t in candidates_per_frame:
        w = WCS(fits.Header.fromstring(t.meta["WCSHDR"])) if "WCSHDR" in t.meta else None
        coords = SkyCoord(np.asarray(t["ra"], float), np.asarray(t["dec"], float), unit="deg")
        frames.append((t, w, t.meta.get("SHAPE"), coords))
    margin = CandidateParams().edge_fwhm
    out = []
    for i, (t, _, _, coords) in enumerate(frames):
        t = t.copy()
        n = len(t)
        cover = np.zeros(n, int)
        seen = np.zeros(n, int)
        for j, (tj, wj, shape_j, cj) in enumerate(frames):
            if j == i:
                continue
            if wj is not None and shape_j is not None and n:
                xj, yj = wj.world_to_pixel_values(np.asarray(t["ra"], float),
                                                  np.asarray(t["dec"], float))
                m = margin * float(tj.meta.get("FWHM_PX", 0.0))
                cov = ((xj >= m) & (xj <= shape_j[1] - 1 - m)
                       & (yj >= m) & (yj <= shape_j[0] - 1 - m))
            else:
                cov = np.ones(n, bool)
            hit = np.zeros(n, bool)
            if n and len(tj):
                _, d2d, _ = coords.match_to_catalog_sky(cj)
                hit = d2d.arcsec <= radius_arcsec
            cover += cov
            seen += cov & hit
        moving = ((np.asarray(t["cls"]) == "candidate") & (np.abs(np.asarray(t["snr"])) >= min_snr)
                  & (cover > 0) & (seen == 0))
        cls = np.asarray(t["cls"]).astype("U9")
        cls[moving] = "moving"
        t["cls"] = cls
        reasons = [str(r) for r in t["reasons"]]
        for k in np.nonzero(moving)[0]:
            reasons[k] = ",".join([r for r in reasons[k].split(",") if r] + ["single_epoch"])
        t["reasons"] = np.array(reasons, dtype=str) if n else t["reasons"]
        t["n_frames_cover"] = cover
        t["n_frames_seen"] = seen
        out.append(t)
    return out

