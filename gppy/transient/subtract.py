"""Image subtraction: the difference of a science frame and a reference on the
same pixel grid, in the same units (electrons), with its 1-sigma noise and QA.

    subtract(sci, ref, *, sci_mask, ref_mask, sci_err, ref_err,
             engine="builtin" | "hotpants", **options) -> Subtraction

The difference is always science minus reference, in the science frame's flux
scale (a source only in the science frame keeps its science flux), whichever
image is convolved:

    ref convolved:  diff = sci - (K ⊛ ref + bg)
                    noise² = err_sci² + K² ⊛ err_ref²
    sci convolved:  diff = (K ⊛ sci + bg - ref) / ΣK
                    noise² = (K² ⊛ err_sci² + err_ref²) / (ΣK)²

Built-in engine (Alard & Lupton 1998; Alard 2000). The kernel is a sum of
Gaussian basis functions times polynomials, G_σ(u, v) u^i v^j with i + j <= d
(by default three Gaussians, σ = 0.5, 1 and 2 times the width that turns the
sharper PSF into the broader one, degrees 6, 4, 2: 49 functions). The first
(the middle Gaussian, normalised to a sum of 1) carries the flux ratio and does
not vary; the others are made zero-sum and their coefficients vary as a
polynomial of degree `spatial_degree` in x, y, so the kernel changes shape
across the frame but the photometric scale stays one number (ΣK). A
polynomial background of degree `bg_degree` is fitted at the same time. On
the stamps that background also takes up star light the kernel cannot move
(a science PSF with heavier wings than the kernel reaches), which would leave
the blank sky of the difference offset (-0.09 sigma on a 4096 px benchmark
pair): after the convolution a polynomial of the same degree is fitted to the
difference on blank sky and removed (QA residual_sky_e, its mean).

The fit is a linear least-squares on stamps around bright, isolated,
unsaturated stars found (sep) in both images, spread over the frame (a 6 x 6
grid, brightest first), weighted by the inverse variance the convolution
leaves. Within a stamp the spatial polynomials take their value at the stamp's
centre, so the normal equations are assembled from one small (49 + 1)² matrix
per stamp; the stamp convolutions use the separable 1-D factors of the basis.
Stamps whose χ² per pixel is an outlier (median + 3 MAD) are dropped and the
fit repeated. Then each stamp is held out in turn and predicted from the others:
a stamp whose held-out residual holds a point source (matched-filter S/N above
`held_out_snr` and an outlier among the stamps) is dropped too. A faint
transient beside a stamp star hardly raises that stamp's χ², but the fit bends
the kernel to subtract it, there and, through the spatial terms, far away (on a
test night, a S/N 6 transient in one stamp cost another, 110 px away, half its
flux). Fewer stamps lower the spatial degrees (4 stamps per kernel term,
3 per background term). The whole image is then convolved once per spatial
term (FFT, overlap-add) with that term's kernel, and the results weighted by
the polynomials: K(x, y) ⊛ I = Σ_p P_p(x, y) (K_p ⊛ I). K² ⊛ err² takes the
kernel at the centre of each 256 px tile. The sharper image (smaller
half-light radius of the common stars) is the one convolved unless `convolve`
says.

Masks (uint16, flags.Pixel bits, nonzero = bad): the OR of both masks; the bad
pixels of the convolved image are grown by the kernel's radius (the radius
holding 99 % of Σ|K|), its saturated ones by the kernel's half width (a filled
saturated core lacks a star's light wherever the kernel reaches); NO_DATA marks
the border that the kernel cannot fill and any pixel without a value (diff 0,
noise inf there). Bad pixels of the convolved image are filled with its
background before the convolution; other masked difference values mean nothing.

QA (`Subtraction.qa`, see `quality`): the normalised residual std diff/noise on
blank sky and around bright stars, the kernel sum against the expected flux
ratio (from the zero points when given, else the stars' flux ratio), dipoles at
stars, the number of S/N >= 5 positive blobs (a first count of candidates).
`qa_cards` turns it into header keywords (SUB*).

Options of the builtin engine: see DEFAULTS. Of the hotpants engine: binary,
timeout_s, convolve (default "ref", as the legacy pipeline), workdir and the
settings of `gppy.transient.hotpants.hotpants_args`; both take flux_ratio_expected,
detect_thresh and back_size (source detection for the stamps and the QA).

Measured (tests/test_subtract.py; 2 shared cores): a simulated LOAO pair
(1024 px; science 1.72" FWHM, reference 2.00", PSFs growing across the field;
reference Lanczos-resampled onto the science grid) in ~1 s: residual std 0.99
on blank sky, 1.10 around stars, flux ratio within 0.3 % of the truth, the
truth transients at their fluxes. A 2048 px pair in ~5 s (QA 0.99 / 1.31).
Around bright stars the residual grows with flux: on ~2 px FWHM images the
reference's Lanczos-3 resampling alone misplaces ~1.6 % of a star's peak
(measured on noise-free simulated frames), which no kernel can undo. A PSF pair
with different Moffat betas leaves ~1 % of the flatter profile's light in wings
beyond the kernel's reach: ΣK then falls short of the total flux ratio by that
much, while transients keep their flux. The noise is right per pixel but, after
resampling or convolution, correlated: sums over apertures are noisier than
the quadrature sum of `noise` (`aperture_noise_factor`, ~1.2 here).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import sep
from numpy.lib.stride_tricks import sliding_window_view
from scipy import ndimage
from scipy.signal import fftconvolve, oaconvolve
from scipy.spatial import cKDTree

from gppy.errors import InputError
from gppy.reduction.flags import Pixel

ENGINES = ("builtin", "hotpants")
HOTPANTS_OPTIONS = ("binary", "timeout_s", "convolve", "workdir", "kernel_half_width",
                    "gaussians", "regions", "kernel_order", "bg_order", "verbosity", "extra")
NO_DATA = Pixel.NOCAL          # no valid difference here (image border, no overlap)
FWHM_PER_SIGMA = 2.3548

# Built-in engine defaults (overridable through **options of `subtract`).
DEFAULTS = dict(
    gauss_scales=(0.5, 1.0, 2.0),   # basis σ in units of the matching σ
    gauss_degrees=(6, 4, 2),
    min_sigma_px=0.5,               # floor of the matching σ (near-identical PSFs)
    spatial_degree=2,               # lowered automatically when stamps are few
    bg_degree=2,
    kernel_half_width=None,         # px; default from the broader FWHM
    max_stamps=200,
    min_stamp_snr=30.0,
    clip_sigma=3.0,
    clip_iterations=4,
    held_out_snr=5.0,               # a stamp's held-out residual: point-source S/N limit
    convolve="auto",                # "auto" | "ref" | "sci"
    detect_thresh=5.0,
    back_size=64,
    flux_ratio_expected=None,       # sci / ref flux ratio (e.g. from the zero points)
)


@dataclass
class Subtraction:
    """A difference image in the science frame's electrons, its 1-sigma noise and
    mask (flags.Pixel bits, nonzero = bad; NO_DATA where undefined, with diff 0 and
    noise inf there), the kernel image at the frame centre (None when the engine
    does not give one) and its description, which image was convolved ("ref" |
    "sci"), QA, wall-clock seconds. The difference's PSF is that of the image not
    convolved: the science's when convolved == "ref", the reference's otherwise."""

    diff: np.ndarray
    noise: np.ndarray
    mask: np.ndarray
    kernel: np.ndarray | None
    convolved: str
    qa: dict
    seconds: float
    engine: str = "builtin"
    kernel_info: dict = field(default_factory=dict)

    def snr(self) -> np.ndarray:
        """diff / noise, 0 where masked."""
        good = (self.mask == 0) & np.isfinite(self.noise) & (self.noise > 0)
        out = np.zeros(self.diff.shape, np.float32)
        np.divide(self.diff, self.noise, out=out, where=good)
        return out


def subtract(sci, ref, *, sci_mask=None, ref_mask=None, sci_err, ref_err,
             engine: str = "builtin", **options) -> Subtraction:
    """The difference sci - ref of two images on the same grid (see the module
    docstring). Masks: nonzero = bad (None: only non-finite pixels are bad);
    errors: 1-sigma per pixel, same units as the images."""
    if engine not in ENGINES:
        raise InputError(f"unknown subtraction engine {engine!r} (one of {', '.join(ENGINES)})")
    start = time.monotonic()
    sci, ref, sci_mask, ref_mask, sci_err, ref_err = _checked(sci, ref, sci_mask, ref_mask,
                                                            sci_err, ref_err)
    if engine == "hotpants":
        from gppy.transient.hotpants import find_hotpants, run_hotpants

        shared = ("detect_thresh", "back_size", "flux_ratio_expected")   # detection, QA
        params = {**DEFAULTS, **{k: options[k] for k in shared if k in options}}
        hp_opts = {k: v for k, v in options.items() if k not in shared}
        unknown = set(hp_opts) - set(HOTPANTS_OPTIONS)
        if unknown:
            raise InputError(f"unknown option(s) of the hotpants engine: "
                             f"{', '.join(sorted(unknown))}")
        find_hotpants(hp_opts.get("binary"))   # fail early, before any work
        pair = analyse_pair(sci, ref, sci_mask, ref_mask, sci_err, ref_err, params)
        result = run_hotpants(sci, ref, sci_mask, ref_mask, sci_err, ref_err, pair=pair,
                              **hp_opts)
    else:
        unknown = set(options) - set(DEFAULTS)
        if unknown:
            raise InputError(f"unknown option(s) of the builtin engine: {', '.join(sorted(unknown))}")
        params = {**DEFAULTS, **options}
        pair = analyse_pair(sci, ref, sci_mask, ref_mask, sci_err, ref_err, params)
        result = _builtin(sci, ref, sci_mask, ref_mask, sci_err, ref_err, pair, params)
    result.qa.update(quality(result, pair, params.get("flux_ratio_expected")))
    result.seconds = time.monotonic() - start
    result.qa["seconds"] = round(result.seconds, 3)
    return result


# --------------------------------------------------------------------------- inputs

def _checked(sci, ref, sci_mask, ref_mask, sci_err, ref_err):
    sci = np.asarray(sci, np.float32)
    ref = np.asarray(ref, np.float32)
    if sci.ndim != 2 or sci.shape != ref.shape:
        raise InputError(f"science {sci.shape} and reference {ref.shape} must be 2-D images "
                         f"on the same pixel grid")
    out = []
    for name, m in (("sci_mask", sci_mask), ("ref_mask", ref_mask)):
        m = np.zeros(sci.shape, np.uint16) if m is None else np.asarray(m)
        if m.shape != sci.shape:
            raise InputError(f"{name} {m.shape} differs from the image {sci.shape}")
        out.append(np.array(m, dtype=np.uint16, copy=True))   # never the caller's array
    errs = []
    for name, e in (("sci_err", sci_err), ("ref_err", ref_err)):
        e = np.asarray(e, np.float32)
        if e.shape != sci.shape:
            raise InputError(f"{name} {e.shape} differs from the image {sci.shape}")
        errs.append(e)
    sci_mask, ref_mask = out
    for img, m, e in ((sci, sci_mask, errs[0]), (ref, ref_mask, errs[1])):
        bad = ~(np.isfinite(img) & np.isfinite(e) & (e > 0))
        if bad.any():
            m[bad & (m == 0)] = NO_DATA
    return sci, ref, sci_mask, ref_mask, errs[0], errs[1]


@dataclass
class Sources:
    """sep detections of one image: positions, fluxes, sizes; its background."""

    x: np.ndarray
    y: np.ndarray
    flux: np.ndarray          # e- within the photometry radius
    snr: np.ndarray
    r50: np.ndarray           # half-light radius, px
    flags: np.ndarray         # sep flags
    back: np.ndarray          # background map
    rms: float                # global background rms
    footprint: np.ndarray     # bool: any detection's segmentation footprint
    sub: np.ndarray           # background-subtracted image (0 where bad)


def detect(image, bad, err, thresh=5.0, back_size=64) -> Sources:
    data = np.where(bad, 0.0, image).astype(np.float32)
    bkg = sep.Background(data, mask=bad, bw=back_size, bh=back_size, fw=3, fh=3)
    back = bkg.back()
    sub = np.where(bad, 0.0, data - back).astype(np.float32)
    noise = np.where(bad, np.float32(1.0), err).astype(np.float32)
    sep.set_extract_pixstack(max(300_000, sub.size // 5))
    sep.set_sub_object_limit(4096)
    objs, seg = sep.extract(sub, thresh, err=noise, mask=bad, minarea=5,
                            segmentation_map=True)
    x, y = objs["x"].astype(float), objs["y"].astype(float)
    if len(objs):
        rmax = np.clip(6.0 * objs["a"], 3.0, 40.0)
        r50, rflag = sep.flux_radius(sub, x, y, rmax, 0.5, subpix=5, mask=bad,
                                     normflux=objs["flux"])
        r50 = np.where(rflag == 0, r50, np.nan)
        rap = np.clip(2.0 * np.nanmedian(r50) * 2.0, 3.0, 30.0)
        flux, ferr, fflag = sep.sum_circle(sub, x, y, rap, err=noise, mask=bad, subpix=5)
        snr = np.where(ferr > 0, flux / np.where(ferr > 0, ferr, 1.0), 0.0)
        flags = objs["flag"] | fflag
    else:
        r50 = flux = snr = np.zeros(0)
        flags = np.zeros(0, int)
    return Sources(x, y, np.asarray(flux, float), np.asarray(snr, float), np.asarray(r50, float),
                   np.asarray(flags), back, float(bkg.globalrms), seg > 0, sub)


@dataclass
class Pair:
    """What both engines and the QA need from the two inputs."""

    sci: Sources
    ref: Sources
    i_sci: np.ndarray         # matched pairs (indices into sci / ref sources)
    i_ref: np.ndarray
    stars: np.ndarray         # among the matched pairs: point sources, good, bright
    fwhm_sci: float           # px, 2 r50 of the stars (a Gaussian's FWHM)
    fwhm_ref: float
    flux_ratio_stars: float   # sci / ref, median of the stars' aperture fluxes
    bad_sci: np.ndarray
    bad_ref: np.ndarray

    @cached_property
    def near_sources(self) -> np.ndarray:
        """Pixels within 1.5 FWHM (of the broader PSF) of any detection's footprint
        in either image: what is not blank sky."""
        grow = max(2, int(round(1.5 * max(self.fwhm_sci, self.fwhm_ref))))
        return ndimage.binary_dilation(self.sci.footprint | self.ref.footprint,
                                       structure=np.ones((3, 3), bool), iterations=grow)


def analyse_pair(sci, ref, sci_mask, ref_mask, sci_err, ref_err, params) -> Pair:
    bad_s, bad_r = sci_mask != 0, ref_mask != 0
    src_s = detect(sci, bad_s, sci_err, params["detect_thresh"], params["back_size"])
    src_r = detect(ref, bad_r, ref_err, params["detect_thresh"], params["back_size"])
    if len(src_s.x) < 3 or len(src_r.x) < 3:
        raise InputError(f"too few sources to match the images ({len(src_s.x)} in the science, "
                         f"{len(src_r.x)} in the reference)")
    tree = cKDTree(np.c_[src_r.x, src_r.y])
    d, j = tree.query(np.c_[src_s.x, src_s.y], distance_upper_bound=2.0)
    i_s = np.flatnonzero(np.isfinite(d))
    i_r = j[i_s]
    # one-to-one: keep the closest sci source per ref source
    order = np.argsort(d[i_s])
    _, first = np.unique(i_r[order], return_index=True)
    keep = np.sort(order[first])
    i_s, i_r = i_s[keep], i_r[keep]
    good = ((src_s.flags[i_s] == 0) & (src_r.flags[i_r] == 0)
            & np.isfinite(src_s.r50[i_s]) & np.isfinite(src_r.r50[i_r])
            & (src_s.snr[i_s] >= 20) & (src_r.snr[i_r] >= 20))
    if good.sum() < 3:
        raise InputError(f"only {good.sum()} clean stars common to both images: cannot match "
                         f"their PSFs")
    # point sources: half-light radius near the mode in both images
    rs, rr = src_s.r50[i_s], src_r.r50[i_r]
    ms, mr = np.median(rs[good]), np.median(rr[good])
    stars = good & (np.abs(rs / ms - 1) < 0.25) & (np.abs(rr / mr - 1) < 0.25)
    if stars.sum() < 3:
        stars = good
    fwhm_s, fwhm_r = float(2 * np.median(rs[stars])), float(2 * np.median(rr[stars]))
    # flux ratio of the stars in one large circle (3 FWHM of the broader) in both
    k = np.flatnonzero(stars)
    radius = 3.0 * max(fwhm_s, fwhm_r)
    xs, ys = src_s.x[i_s[k]], src_s.y[i_s[k]]
    fs, _, flag_s = sep.sum_circle(src_s.sub, xs, ys, radius, mask=bad_s, subpix=5)
    fr, _, flag_r = sep.sum_circle(src_r.sub, xs, ys, radius, mask=bad_r, subpix=5)
    ok = (flag_s == 0) & (flag_r == 0) & (fs > 0) & (fr > 0)
    ratio = fs[ok] / fr[ok] if ok.sum() >= 3 else (src_s.flux[i_s[k]] / src_r.flux[i_r[k]])
    ratio = ratio[np.isfinite(ratio) & (ratio > 0)]
    return Pair(src_s, src_r, i_s, i_r, k, fwhm_s, fwhm_r, float(np.median(ratio)),
                bad_s, bad_r)


# --------------------------------------------------------------------------- kernel basis

@dataclass
class Basis:
    half: int
    sigmas: tuple
    degrees: tuple
    raw: list                 # (sigma index, i, j) of the separable raw functions
    transform: np.ndarray     # (n_basis, n_raw): basis = transform @ raw
    images: np.ndarray        # (n_basis, 2h+1, 2h+1)
    vectors: dict             # (sigma index, power) -> 1-D factor

    @property
    def n(self) -> int:
        return self.images.shape[0]


def make_basis(half: int, sigmas, degrees) -> Basis:
    """Gaussian-polynomial basis; element 0 (the middle Gaussian) sums to 1, the
    others sum to 0."""
    u = np.arange(-half, half + 1, dtype=float)
    vectors, raw, images = {}, [], []
    for g, (sigma, deg) in enumerate(zip(sigmas, degrees)):
        gauss = np.exp(-0.5 * (u / sigma) ** 2)
        for p in range(deg + 1):
            vectors[(g, p)] = gauss * (u / sigma) ** p
        for i in range(deg + 1):
            for j in range(deg + 1 - i):
                raw.append((g, i, j))
                images.append(np.outer(vectors[(g, j)], vectors[(g, i)]))   # rows: y
    images = np.array(images)
    centre = len(sigmas) // 2
    k0 = raw.index((centre, 0, 0))
    s0 = images[k0].sum()
    order = [k0] + [k for k in range(len(raw)) if k != k0]
    transform = np.zeros((len(raw), len(raw)))
    for row, k in enumerate(order):
        if row == 0:
            transform[0, k] = 1.0 / s0
            continue
        total = images[k].sum()
        if abs(total) > 1e-12 * np.abs(images[k]).sum():   # even powers: make zero-sum
            transform[row, k] = 1.0 / total
            transform[row, k0] = -1.0 / s0
        else:
            transform[row, k] = 1.0
        # unit L2 norm for conditioning
        norm = np.sqrt(np.sum(np.tensordot(transform[row], images, axes=1) ** 2))
        transform[row] /= norm
    basis_images = np.tensordot(transform, images, axes=1)
    return Basis(half, tuple(sigmas), tuple(degrees), raw, transform, basis_images, vectors)


def _convolve_stamps(stamps: np.ndarray, basis: Basis) -> np.ndarray:
    """(n_stamps, n_basis, s, s): each stamp (side s + 2h) convolved ('valid') with
    each basis function, through the separable raw functions."""
    h = basis.half
    flip = {k: v[::-1].copy() for k, v in basis.vectors.items()}
    wx = sliding_window_view(stamps, 2 * h + 1, axis=2)        # (S, H, s, 2h+1)
    along_x = {}
    raw_out = []
    for g, i, j in basis.raw:
        if (g, i) not in along_x:
            along_x[(g, i)] = wx @ flip[(g, i)]                  # (S, H, s)
        wy = sliding_window_view(along_x[(g, i)], 2 * h + 1, axis=1)   # (S, s, s, 2h+1)
        raw_out.append(wy @ flip[(g, j)])
    raw_out = np.stack(raw_out, axis=1)                          # (S, n_raw, s, s)
    return np.einsum("br,srxy->sbxy", basis.transform, raw_out, optimize=True)


def poly_terms(x, y, degree: int, shape) -> np.ndarray:
    """(n_terms, ...) monomials x^i y^j (i + j <= degree) of coordinates scaled to
    [-1, 1] over an image of `shape`."""
    ny, nx = shape
    xn = (np.asarray(x, float) - (nx - 1) / 2) / max(nx / 2, 1)
    yn = (np.asarray(y, float) - (ny - 1) / 2) / max(ny / 2, 1)
    return np.array([xn ** i * yn ** j for i in range(degree + 1) for j in range(degree + 1 - i)])


def poly_images(degree: int, shape):
    """The monomials of `poly_terms` over a whole image, one float32 image at a
    time (outer products of the scaled coordinates)."""
    ny, nx = shape
    xn = ((np.arange(nx) - (nx - 1) / 2) / max(nx / 2, 1)).astype(np.float32)
    yn = ((np.arange(ny) - (ny - 1) / 2) / max(ny / 2, 1)).astype(np.float32)
    for i in range(degree + 1):
        for j in range(degree + 1 - i):
            yield np.outer(yn ** j, xn ** i)


# --------------------------------------------------------------------------- the fit

@dataclass
class KernelSolution:
    basis: Basis
    spatial_degree: int
    bg_degree: int
    shape: tuple
    a0: float                 # kernel sum
    a: np.ndarray             # (n_basis - 1, n_spatial)
    c: np.ndarray             # (n_bg,)
    n_stamps: int
    n_used: int
    chi2: float               # median χ² per pixel of the stamps kept

    def kernel_terms(self) -> np.ndarray:
        """(n_spatial, 2h+1, 2h+1): K(x, y) = Σ_p P_p(x, y) K_p."""
        terms = np.tensordot(self.a.T, self.basis.images[1:], axes=1)
        terms[0] += self.a0 * self.basis.images[0]
        return terms

    def kernel_at(self, x: float, y: float) -> np.ndarray:
        p = poly_terms(x, y, self.spatial_degree, self.shape)
        return np.tensordot(p, self.kernel_terms(), axes=1)

    def background(self) -> np.ndarray:
        out = np.zeros(self.shape, np.float32)
        for c, term in zip(self.c, poly_images(self.bg_degree, self.shape)):
            out += np.float32(c) * term
        return out


def _select_stamps(pair: Pair, conv_sci: bool, h: int, s: int, shape, params) -> np.ndarray:
    """Indices (into pair.i_sci / i_ref) of the stamp stars, spread over the frame."""
    ny, nx = shape
    src_t, src_c = (pair.ref, pair.sci) if conv_sci else (pair.sci, pair.ref)
    it, ic = (pair.i_ref, pair.i_sci) if conv_sci else (pair.i_sci, pair.i_ref)
    cand = pair.stars
    x, y = pair.sci.x[pair.i_sci[cand]], pair.sci.y[pair.i_sci[cand]]
    margin = s + h + 2
    ok = (x > margin) & (x < nx - 1 - margin) & (y > margin) & (y < ny - 1 - margin)
    ok &= (src_t.snr[it[cand]] >= params["min_stamp_snr"])
    ok &= (src_c.snr[ic[cand]] >= params["min_stamp_snr"] / 2)
    # no masked pixel in either image where the stamp and its convolution reach
    bad = (pair.bad_sci | pair.bad_ref).astype(np.uint8)
    box = 2 * (s + h) + 1
    near_bad = ndimage.maximum_filter(bad, size=box)
    xi, yi = np.round(x).astype(int).clip(0, nx - 1), np.round(y).astype(int).clip(0, ny - 1)
    ok &= near_bad[yi, xi] == 0
    # no brighter (or comparable) detection within the stamp
    allx = np.r_[pair.sci.x, pair.ref.x]
    ally = np.r_[pair.sci.y, pair.ref.y]
    allf = np.r_[pair.sci.flux, pair.ref.flux / max(pair.flux_ratio_stars, 1e-30)]
    tree = cKDTree(np.c_[allx, ally])
    flux = pair.sci.flux[pair.i_sci[cand]]
    for k in np.flatnonzero(ok):
        for m in tree.query_ball_point([x[k], y[k]], r=math.hypot(s, s)):
            dist = math.hypot(allx[m] - x[k], ally[m] - y[k])
            if dist > 2.0 and allf[m] > 0.5 * flux[k]:
                ok[k] = False
                break
    cand, x, y, flux = cand[ok], x[ok], y[ok], flux[ok]
    if len(cand) == 0:
        return cand
    # brightest first within a grid of cells, taken round-robin
    ncell = 6
    cell = (np.minimum((y / ny * ncell).astype(int), ncell - 1) * ncell
            + np.minimum((x / nx * ncell).astype(int), ncell - 1))
    rank = np.empty(len(cand), int)
    for c in np.unique(cell):
        idx = np.flatnonzero(cell == c)
        rank[idx[np.argsort(-flux[idx])]] = np.arange(len(idx))
    order = np.lexsort((-flux, rank))
    return cand[order[: params["max_stamps"]]]


def _cut(image, x, y, r):
    """(n, 2r+1, 2r+1) cut-outs centred on the nearest pixels."""
    xi, yi = np.round(x).astype(int), np.round(y).astype(int)
    off = np.arange(-r, r + 1)
    return image[(yi[:, None, None] + off[None, :, None]), (xi[:, None, None] + off[None, None, :])]


def fit_kernel(target, conv, var_t, var_c, xs, ys, basis: Basis, s: int, params,
               ratio_guess: float, psf_sigma_px: float) -> KernelSolution:
    """Least-squares kernel and background that turn `conv` into `target` on the
    stamps centred at (xs, ys) (half-size s), with stamp clipping."""
    shape = target.shape
    h = basis.half
    t = _cut(target, xs, ys, s).reshape(len(xs), -1).astype(float)
    vt = _cut(var_t, xs, ys, s).reshape(len(xs), -1).astype(float)
    vc = _cut(var_c, xs, ys, s).reshape(len(xs), -1).astype(float)
    w = 1.0 / (vt + ratio_guess ** 2 * vc)
    cols = _convolve_stamps(_cut(conv, xs, ys, s + h).astype(float), basis)
    cols = cols.reshape(len(xs), basis.n, -1)
    cols = np.concatenate([cols, np.ones((len(xs), 1, cols.shape[2]))], axis=1)  # + bg
    normal = np.einsum("skp,slp,sp->skl", cols, cols, w, optimize=True)
    rhs = np.einsum("skp,sp,sp->sk", cols, t, w, optimize=True)

    n = len(xs)
    sdeg = params["spatial_degree"]
    bdeg = params["bg_degree"]
    # enough stamps for the spatial terms?
    while sdeg > 0 and n < 4 * (sdeg + 1) * (sdeg + 2) // 2:
        sdeg -= 1
    while bdeg > 0 and n < 3 * (bdeg + 1) * (bdeg + 2) // 2:
        bdeg -= 1
    P = poly_terms(xs, ys, sdeg, shape).T     # (S, np)
    Q = poly_terms(xs, ys, bdeg, shape).T     # (S, nq)
    nb = basis.n
    n_sp = P.shape[1]
    # global parameter layout: [a0, a(k=1..nb-1, p), c(q)]
    groups = [(slice(0, 1), np.ones((n, 1))), (slice(1, nb), P), (slice(nb, nb + 1), Q)]

    def assemble(use):
        """The normal equations (A, b) of the global coefficients over the stamps `use`."""
        blocks, rows = [], []
        for sa, wa in groups:
            row = []
            for sb, wb in groups:
                nk = normal[use][:, sa, sb]
                blk = np.einsum("skl,sp,sq->kplq", nk, wa[use], wb[use], optimize=True)
                row.append(blk.reshape(nk.shape[1] * wa.shape[1], nk.shape[2] * wb.shape[1]))
            blocks.append(row)
            rows.append(np.einsum("sk,sp->kp", rhs[use][:, sa], wa[use]).ravel())
        return np.block(blocks), np.concatenate(rows)

    def solve(A, b):
        """(a0, a, c, each stamp's local coefficients) of the normal equations."""
        scale = np.sqrt(np.clip(np.diag(A), 1e-300, None))
        As = A / scale[:, None] / scale[None, :]
        try:
            sol = np.linalg.solve(As + 1e-10 * np.eye(len(b)), b / scale) / scale
        except np.linalg.LinAlgError:
            sol = np.linalg.lstsq(As, b / scale, rcond=1e-12)[0] / scale
        a = sol[1:1 + (nb - 1) * n_sp].reshape(nb - 1, n_sp)
        c = sol[1 + (nb - 1) * n_sp:]
        local = np.concatenate([np.full((n, 1), sol[0]), P @ a.T, (Q @ c)[:, None]], axis=1)
        return float(sol[0]), a, c, local

    keep = np.ones(n, bool)
    # the weights with the variance the convolution leaves (ΣK² var_c) from a first fit
    local = solve(*assemble(keep))[3]
    kern = np.tensordot(local[:, :nb], basis.images, axes=1)
    w = 1.0 / (vt + np.sum(kern ** 2, axis=(1, 2))[:, None] * vc)
    normal = np.einsum("skp,slp,sp->skl", cols, cols, w, optimize=True)
    rhs = np.einsum("skp,sp,sp->sk", cols, t, w, optimize=True)

    def chi2_of(local):
        model = np.einsum("sk,skp->sp", local, cols)
        return np.sum((t - model) ** 2 * w, axis=1) / t.shape[1]

    def outliers(values, use):
        med = np.median(values[use])
        mad = 1.4826 * np.median(np.abs(values[use] - med))
        return values > med + params["clip_sigma"] * max(mad, 0.05 * med)

    min_kept = max(5, n_sp + 2)
    for _ in range(params["clip_iterations"]):
        new = keep & ~outliers(chi2_of(solve(*assemble(keep))[3]), keep)
        if new.sum() == keep.sum() or new.sum() < min_kept:
            break
        keep = new
    # held out of the fit, a stamp shows a source in one image only (a transient
    # beside its star) at its full S/N; in the fit, the kernel bends to remove it
    A, b = assemble(keep)
    peak = np.zeros(n)
    side = 2 * s + 1
    for i in np.flatnonzero(keep):
        one = np.zeros(n, bool)
        one[i] = True
        Ai, bi = assemble(one)
        held = solve(A - Ai, b - bi)[3][i]
        resid = ((t[i] - held @ cols[i]) * np.sqrt(w[i])).reshape(side, side)
        peak[i] = _point_source_peak(resid, psf_sigma_px)
    new = keep & ~(outliers(peak, keep) & (peak > params["held_out_snr"]))
    if new.sum() >= min_kept:
        keep = new
    a0, a, c, local = solve(*assemble(keep))
    return KernelSolution(basis, sdeg, bdeg, shape, a0, a, c, n, int(keep.sum()),
                          float(np.median(chi2_of(local)[keep])))


def _point_source_peak(resid: np.ndarray, sigma_px: float) -> float:
    """The largest |S/N| of a point source (Gaussian PSF of `sigma_px`, matched
    filter) in a residual image in units of its noise, away from its border."""
    r = max(2, int(math.ceil(3 * sigma_px)))
    g = np.exp(-np.arange(-r, r + 1) ** 2 / (2 * sigma_px ** 2))
    mf = ndimage.correlate1d(ndimage.correlate1d(resid, g, axis=0, mode="constant"), g, axis=1,
                             mode="constant") / float((g * g).sum())
    return float(np.abs(mf[r:-r, r:-r]).max()) if mf.shape[0] > 2 * r else 0.0


def _kernel_radius(kernel: np.ndarray, fraction: float = 0.99) -> int:
    h = kernel.shape[0] // 2
    yy, xx = np.mgrid[-h:h + 1, -h:h + 1]
    r = np.maximum(np.abs(xx), np.abs(yy)).ravel()
    weight = np.abs(kernel).ravel()
    cum = np.array([weight[r <= k].sum() for k in range(h + 1)])
    return int(np.searchsorted(cum, fraction * weight.sum()))


def _grow_bits(mask: np.ndarray, radius: int) -> np.ndarray:
    """Each set bit of `mask` spread over a (2 radius + 1)² square."""
    if radius <= 0 or not mask.any():
        return mask.copy()
    out = np.zeros_like(mask)
    for bit in range(16):
        value = np.uint16(1 << bit)
        layer = (mask & value) != 0
        if layer.any():
            out[ndimage.maximum_filter(layer.view(np.uint8), size=2 * radius + 1) > 0] |= value
    return out


def apply_kernel(image: np.ndarray, sol: KernelSolution) -> np.ndarray:
    """K(x, y) ⊛ image + background, the spatial variation through one FFT
    convolution per spatial term."""
    image = np.asarray(image, np.float32)
    out = sol.background()
    for term, weight in zip(sol.kernel_terms().astype(np.float32),
                            poly_images(sol.spatial_degree, sol.shape)):
        out += weight * oaconvolve(image, term, mode="same")
    return out


def convolve_variance(var: np.ndarray, sol: KernelSolution, tile: int = 256) -> np.ndarray:
    """K² ⊛ var, the kernel taken at the centre of each tile."""
    ny, nx = var.shape
    h = sol.basis.half
    out = np.empty_like(var)
    for y0 in range(0, ny, tile):
        for x0 in range(0, nx, tile):
            y1, x1 = min(y0 + tile, ny), min(x0 + tile, nx)
            k2 = (sol.kernel_at((x0 + x1 - 1) / 2, (y0 + y1 - 1) / 2) ** 2).astype(np.float32)
            ya, yb, xa, xb = max(0, y0 - h), min(ny, y1 + h), max(0, x0 - h), min(nx, x1 + h)
            conv = fftconvolve(var[ya:yb, xa:xb], k2, mode="same")
            out[y0:y1, x0:x1] = conv[y0 - ya:y1 - ya, x0 - xa:x1 - xa]
    return out


def residual_sky(diff: np.ndarray, noise: np.ndarray, blank: np.ndarray, degree: int,
                 max_pixels: int = 200_000, clip_sigma: float = 4.0) -> np.ndarray:
    """The smooth sky left in a difference: a polynomial of `degree` in x, y fitted to
    its `blank` pixels (those of a regular grid of about max_pixels pixels), weighted
    by 1 / noise², pixels beyond clip_sigma dropped over three passes. Zero with
    fewer than 100 blank pixels there."""
    step = max(1, int(math.sqrt(diff.size / max_pixels)))
    ys, xs = np.nonzero(blank[::step, ::step])
    if len(xs) < 100:
        return np.zeros(diff.shape, np.float32)
    xs, ys = xs * step, ys * step
    value, sigma = diff[ys, xs].astype(float), noise[ys, xs].astype(float)
    design = poly_terms(xs, ys, degree, diff.shape).T / sigma[:, None]
    target = value / sigma
    keep = np.ones(len(xs), bool)
    for _ in range(3):
        coef = np.linalg.lstsq(design[keep], target[keep], rcond=None)[0]
        keep = np.abs(target - design @ coef) < clip_sigma
    sky = np.zeros(diff.shape, np.float32)
    for c, term in zip(coef, poly_images(degree, diff.shape)):
        sky += np.float32(c) * term
    return sky


def _builtin(sci, ref, sci_mask, ref_mask, sci_err, ref_err, pair: Pair, params) -> Subtraction:
    mode = params["convolve"]
    if mode not in ("auto", "ref", "sci"):
        raise InputError(f"convolve must be auto, ref or sci, not {mode!r}")
    conv_sci = (pair.fwhm_sci < pair.fwhm_ref) if mode == "auto" else (mode == "sci")
    fwhm_t, fwhm_c = (pair.fwhm_ref, pair.fwhm_sci) if conv_sci else (pair.fwhm_sci, pair.fwhm_ref)
    broad = max(fwhm_t, fwhm_c)
    sig_match = math.sqrt(max(fwhm_t ** 2 - fwhm_c ** 2, 0.0)) / FWHM_PER_SIGMA
    sig_match = max(sig_match, params["min_sigma_px"])
    sigmas = tuple(sig_match * f for f in params["gauss_scales"])
    h = params["kernel_half_width"] or int(np.clip(math.ceil(max(2.0 * broad, 3.0 * sigmas[-1])),
                                                   5, 30))
    s = h + int(math.ceil(0.5 * broad)) + 2
    basis = make_basis(h, sigmas, params["gauss_degrees"])

    target, conv = (ref, sci) if conv_sci else (sci, ref)
    bad_t, bad_c = (pair.bad_ref, pair.bad_sci) if conv_sci else (pair.bad_sci, pair.bad_ref)
    var_t = (ref_err if conv_sci else sci_err).astype(np.float32) ** 2
    var_c = (sci_err if conv_sci else ref_err).astype(np.float32) ** 2
    back_c = (pair.sci if conv_sci else pair.ref).back
    conv_filled = np.where(bad_c, back_c, conv).astype(np.float32)
    var_c_filled = np.where(bad_c, np.median(var_c[~bad_c]), var_c).astype(np.float32)
    var_t_filled = np.where(bad_t, np.median(var_t[~bad_t]), var_t).astype(np.float32)

    idx = _select_stamps(pair, conv_sci, h, s, sci.shape, params)
    if len(idx) < 5:
        raise InputError(f"only {len(idx)} usable stamp stars (bright, isolated, unsaturated, "
                         f"in both images): cannot fit a kernel")
    xs, ys = pair.sci.x[pair.i_sci[idx]], pair.sci.y[pair.i_sci[idx]]
    xs, ys = np.round(xs), np.round(ys)
    ratio = pair.flux_ratio_stars if not conv_sci else 1.0 / pair.flux_ratio_stars
    sol = fit_kernel(target, conv_filled, var_t_filled, var_c_filled, xs, ys, basis, s,
                     params, ratio, fwhm_t / FWHM_PER_SIGMA)

    model = apply_kernel(conv_filled, sol)
    var_conv = convolve_variance(var_c_filled, sol)
    if conv_sci:
        diff = (model - target) / sol.a0
        noise = np.sqrt(np.clip(var_conv + var_t_filled, 0, None)) / abs(sol.a0)
        m_conv, m_other = sci_mask, ref_mask
    else:
        diff = target - model
        noise = np.sqrt(np.clip(var_conv + var_t_filled, 0, None))
        m_conv, m_other = ref_mask, sci_mask

    centre = sol.kernel_at((sci.shape[1] - 1) / 2, (sci.shape[0] - 1) / 2)
    radius = max(1, _kernel_radius(centre))
    # a filled saturated core lacks a star's light: its whole kernel reach is wrong
    saturated = m_conv & Pixel.SATURATED
    mask = m_other | _grow_bits(m_conv & ~Pixel.SATURATED, radius) | _grow_bits(saturated, h)
    edge = np.zeros(sci.shape, bool)
    edge[:h], edge[-h:], edge[:, :h], edge[:, -h:] = True, True, True, True
    mask[edge] |= NO_DATA
    undefined = ((mask & NO_DATA) != 0) | ~np.isfinite(diff) | ~np.isfinite(noise)
    mask[undefined] |= NO_DATA
    diff = np.where(undefined, 0.0, diff).astype(np.float32)
    noise = np.where(undefined, np.inf, noise).astype(np.float32)
    # the background fitted with the kernel on the stamps also takes up star light
    # the kernel cannot move (wings beyond its reach): the sky of the difference is
    # fitted again on blank sky and removed
    sky = residual_sky(diff, noise, (mask == 0) & ~pair.near_sources, sol.bg_degree)
    np.subtract(diff, sky, out=diff, where=~undefined)
    info = dict(sigmas_px=[round(v, 3) for v in sigmas], degrees=list(basis.degrees),
                half_width_px=h, stamp_half_px=s, spatial_degree=sol.spatial_degree,
                bg_degree=sol.bg_degree, kernel_sum=sol.a0, mask_grow_px=radius)
    qa = dict(n_stamps=sol.n_stamps, n_stamps_used=sol.n_used, stamp_chi2=round(sol.chi2, 3),
              residual_sky_e=round(float(np.mean(sky)), 4),
              kernel_sum=round(sol.a0, 5), kernel_half_width=h,
              spatial_degree=sol.spatial_degree, bg_degree=sol.bg_degree)
    return Subtraction(diff, noise, mask, centre.astype(np.float32),
                       "sci" if conv_sci else "ref", qa, 0.0, "builtin", info)


# --------------------------------------------------------------------------- QA

def _clipped_std(values: np.ndarray, nsigma: float = 5.0, iterations: int = 5) -> float:
    v = values[np.isfinite(values)]
    if v.size < 10:
        return float("nan")
    for _ in range(iterations):
        med = np.median(v)
        std = np.std(v)
        keep = np.abs(v - med) < nsigma * std
        if keep.all():
            break
        v = v[keep]
    return float(np.std(v))


def _aperture_snr(snr: np.ndarray, bad: np.ndarray, x, y, r: float) -> np.ndarray:
    """Sum of snr over a circle of radius r divided by sqrt(its unmasked pixels):
    the aperture's S/N if the pixels' noise were independent."""
    ones = np.ones_like(snr)
    total, _, _ = sep.sum_circle(snr, x, y, r, mask=bad, subpix=5)
    npix, _, _ = sep.sum_circle(ones, x, y, r, mask=bad, subpix=5)
    return total / np.sqrt(np.clip(npix, 1.0, None))


def aperture_noise_factor(snr: np.ndarray, bad: np.ndarray, blank: np.ndarray, r: float,
                          n: int = 2000, seed: int = 0) -> float:
    """The std of `_aperture_snr` at random blank positions: 1 for independent pixel
    noise, more where it is correlated (a resampled image: the kernel's ERR is
    right per pixel, not for sums)."""
    ny, nx = snr.shape
    rr = int(math.ceil(r)) + 1
    inner = np.zeros_like(blank)
    inner[rr:ny - rr, rr:nx - rr] = blank[rr:ny - rr, rr:nx - rr]
    # centres whose whole aperture is blank
    inner &= ndimage.minimum_filter(blank.view(np.uint8), size=2 * rr + 1) > 0
    ys, xs = np.nonzero(inner)
    if len(xs) < 50:
        return 1.0
    pick = np.random.default_rng(seed).choice(len(xs), size=min(n, len(xs)), replace=False)
    values = _aperture_snr(snr, bad, xs[pick].astype(float), ys[pick].astype(float), r)
    return _clipped_std(values)


def _blobs(snr: np.ndarray, bad: np.ndarray, fwhm: float, factor: float = 1.0):
    """Positive blobs of snr >= 3 per pixel whose aperture S/N (radius FWHM, divided
    by the aperture noise factor) reaches 5: (x, y, aperture S/N)."""
    empty = np.zeros(0), np.zeros(0), np.zeros(0)
    data = np.where(bad, 0.0, snr).astype(np.float32)
    try:
        objs = sep.extract(data, 3.0, err=np.ones_like(data), mask=bad, minarea=4,
                           deblend_cont=0.005)
    except Exception:   # pixel stack overflow on a terrible subtraction
        return empty
    if len(objs) == 0:
        return empty
    x, y = objs["x"].astype(float), objs["y"].astype(float)
    apsnr = _aperture_snr(data, bad, x, y, max(1.5, fwhm)) / factor
    keep = apsnr >= 5.0
    return x[keep], y[keep], apsnr[keep]


def quality(result: Subtraction, pair: Pair, flux_ratio_expected: float | None = None) -> dict:
    """QA of a difference (either engine). Keys:

    resid_std_blank, resid_mean_blank  std (5-sigma clipped) and mean of diff/noise
        on blank sky: unmasked pixels 1.5 FWHM away from every detection of either
        image (blank_fraction of the frame)
    resid_std_stars  median over the bright stars (S/N >= 50, point sources found in
        both, nothing masked within 1.5 FWHM) of the rms of diff/noise within 1.5
        FWHM; resid_std_stars_p90 its 90th percentile; n_qa_stars
    flux_ratio  the subtraction's sci/ref (ΣK, or 1/ΣK when the science is
        convolved); flux_ratio_stars the stars' (median ratio of fluxes within 3
        FWHM); flux_ratio_expected (the caller's, source "zp", else the stars'),
        flux_ratio_offset = flux_ratio / expected - 1
    n_blobs, n_negative  positive / negative blobs of diff/noise (>= 3 per pixel
        over >= 4 pixels) whose aperture S/N (radius 1 FWHM) reaches 5, the aperture
        noise scaled by aperture_noise_factor (the std of that S/N at random blank
        places: > 1 where the noise is correlated, as after resampling)
    n_dipoles  detections with a positive and a negative blob within 2 FWHM of each
        other whose midpoint is within 1 FWHM of it
    fwhm_sci_px, fwhm_ref_px (2 half-light radii of the stars), convolved, diff_psf
        (the image whose PSF the difference has) and fwhm_diff_px."""
    snr = result.snr()
    bad = (result.mask != 0) | ~np.isfinite(result.noise)
    fwhm = max(pair.fwhm_sci, pair.fwhm_ref)
    qa: dict = {"fwhm_sci_px": round(pair.fwhm_sci, 3), "fwhm_ref_px": round(pair.fwhm_ref, 3),
                "convolved": result.convolved, "engine": result.engine,
                # the difference has the PSF of the image that was not convolved
                "diff_psf": "ref" if result.convolved == "sci" else "sci",
                "fwhm_diff_px": round(pair.fwhm_ref if result.convolved == "sci"
                                      else pair.fwhm_sci, 3)}
    blank = ~bad & ~pair.near_sources
    qa["resid_std_blank"] = round(_clipped_std(snr[blank]), 4)
    qa["resid_mean_blank"] = round(float(np.mean(snr[blank])) if blank.any() else float("nan"), 4)
    qa["blank_fraction"] = round(float(blank.mean()), 4)
    # bright stars: rms of diff/noise within 1.5 FWHM
    i = pair.stars[pair.sci.snr[pair.i_sci[pair.stars]] >= 50]
    xs, ys = pair.sci.x[pair.i_sci[i]], pair.sci.y[pair.i_sci[i]]
    r = max(2.0, 1.5 * fwhm)
    rr = int(math.ceil(r))
    ny, nx = snr.shape
    inside = (xs > rr) & (xs < nx - 1 - rr) & (ys > rr) & (ys < ny - 1 - rr)
    xs, ys = xs[inside], ys[inside]
    rms = []
    if len(xs):
        cut = _cut(snr, xs, ys, rr)
        cbad = _cut(bad, xs, ys, rr)
        off = np.arange(-rr, rr + 1)
        dx = off[None, None, :] - (xs - np.round(xs))[:, None, None]
        dy = off[None, :, None] - (ys - np.round(ys))[:, None, None]
        disk = dx ** 2 + dy ** 2 <= r * r
        for k in range(len(xs)):
            if cbad[k][disk[k]].any():
                continue
            rms.append(float(np.sqrt(np.mean(cut[k][disk[k]] ** 2))))
    rms = np.array(rms)
    qa["n_qa_stars"] = int(len(rms))
    qa["resid_std_stars"] = round(float(np.median(rms)), 4) if len(rms) else None
    qa["resid_std_stars_p90"] = round(float(np.percentile(rms, 90)), 4) if len(rms) else None
    # flux ratio
    ksum = result.kernel_info.get("kernel_sum")
    ratio = None
    if ksum:
        ratio = ksum if result.convolved == "ref" else 1.0 / ksum
        qa["flux_ratio"] = round(float(ratio), 5)
    qa["flux_ratio_stars"] = round(pair.flux_ratio_stars, 5)
    if flux_ratio_expected:
        qa["flux_ratio_expected"], qa["flux_ratio_source"] = float(flux_ratio_expected), "zp"
    else:
        qa["flux_ratio_expected"], qa["flux_ratio_source"] = pair.flux_ratio_stars, "stars"
    qa["flux_ratio_offset"] = (round(ratio / qa["flux_ratio_expected"] - 1.0, 5)
                               if ratio else None)
    # blobs, dipoles
    factor = aperture_noise_factor(snr, bad, blank, max(1.5, fwhm))
    qa["aperture_noise_factor"] = round(factor, 4)
    factor = factor if np.isfinite(factor) and factor > 0 else 1.0
    px, py, psnr = _blobs(snr, bad, fwhm, factor)
    nx_, ny_, _ = _blobs(-snr, bad, fwhm, factor)
    qa["n_blobs"] = int(len(px))
    qa["n_negative"] = int(len(nx_))
    dip = 0
    if len(px) and len(nx_):
        stars = cKDTree(np.c_[pair.sci.x, pair.sci.y])
        neg = cKDTree(np.c_[nx_, ny_])
        used = set()
        for x, y in zip(px, py):
            for m in neg.query_ball_point([x, y], r=2.0 * fwhm):
                mx, my = (x + nx_[m]) / 2, (y + ny_[m]) / 2
                d, s = stars.query([mx, my])
                if d <= fwhm and s not in used:
                    used.add(s)
                    dip += 1
                    break
    qa["n_dipoles"] = dip
    return qa


# --------------------------------------------------------------------------- header

QA_KEYWORDS = {   # qa key -> (FITS keyword, comment)
    "engine": ("SUBENGIN", "subtraction engine"),
    "convolved": ("SUBCONV", "image convolved to match the other: ref or sci"),
    "diff_psf": ("SUBPSFIM", "the difference has this image's PSF"),
    "fwhm_diff_px": ("SUBFWHMD", "[px] FWHM of the difference's PSF"),
    "kernel_sum": ("SUBKSUM", "sum of the kernel"),
    "flux_ratio": ("SUBRATIO", "fitted flux ratio sci/ref"),
    "flux_ratio_expected": ("SUBRATEX", "expected flux ratio sci/ref"),
    "flux_ratio_source": ("SUBRATSR", "source of SUBRATEX: zp or stars"),
    "flux_ratio_offset": ("SUBRATOF", "SUBRATIO / SUBRATEX - 1"),
    "resid_std_blank": ("SUBRSBLK", "std of diff/noise on blank sky"),
    "resid_mean_blank": ("SUBRMBLK", "mean of diff/noise on blank sky"),
    "residual_sky_e": ("SUBSKY", "[e-] mean residual sky removed (builtin)"),
    "resid_std_stars": ("SUBRSSTR", "median rms of diff/noise at bright stars"),
    "resid_std_stars_p90": ("SUBRSS90", "90th percentile of that rms"),
    "n_qa_stars": ("SUBNQSTR", "bright stars of SUBRSSTR"),
    "n_dipoles": ("SUBNDIP", "stars with a +/- residual pair"),
    "n_blobs": ("SUBNBLOB", "positive blobs at S/N >= 5"),
    "n_negative": ("SUBNNEG", "negative blobs at S/N >= 5"),
    "aperture_noise_factor": ("SUBAPNF", "aperture noise / independent-pixel noise"),
    "fwhm_sci_px": ("SUBFWHMS", "[px] science FWHM (2 half-light radii)"),
    "fwhm_ref_px": ("SUBFWHMR", "[px] reference FWHM (2 half-light radii)"),
    "n_stamps": ("SUBNSTMP", "stamp stars of the kernel fit"),
    "n_stamps_used": ("SUBNSTUS", "stamp stars kept after clipping"),
    "stamp_chi2": ("SUBCHI2", "median chi2 per pixel of the stamps kept"),
    "kernel_half_width": ("SUBKHW", "[px] kernel half width"),
    "spatial_degree": ("SUBKDEG", "degree of the kernel's spatial variation"),
    "bg_degree": ("SUBBDEG", "degree of the background polynomial"),
    "seconds": ("SUBSECS", "[s] wall-clock time of the subtraction"),
}


def qa_cards(qa: dict) -> list[tuple[str, object, str]]:
    """(keyword, value, comment) for the QA values a header can hold (finite numbers,
    strings)."""
    cards = []
    for key, (keyword, comment) in QA_KEYWORDS.items():
        value = qa.get(key)
        if isinstance(value, (bool, np.bool_)):
            value = bool(value)
        elif isinstance(value, (int, np.integer)):
            value = int(value)
        elif isinstance(value, (float, np.floating)):
            if not np.isfinite(value):
                continue
            value = float(value)
        elif not isinstance(value, str):
            continue
        cards.append((keyword, value, comment))
    return cards
