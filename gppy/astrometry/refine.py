"""Refine a WCS against a reference catalogue: cross-match, fit TAN-SIP with
outlier rejection, iterate.

    refine(wcs, xy, radec, shape, sip_order, ...) -> (WCS, RefineStats)

Conventions: `xy` (n, 2) 0-based pixel centres (astropy origin=0), or the Table of
`gppy.astrometry.sources.detect` (then its centroid errors weight the fit: pass it
whole); `radec` (m, 2) ICRS degrees, or a Table with ra, dec (and mag: used to ignore
much fainter neighbours when deciding whether a match is ambiguous); `shape` (ny,
nx). The returned WCS is TAN (SIP order < 2) or TAN-SIP with CRPIX at the frame
centre ((nx + 1) / 2, (ny + 1) / 2, FITS 1-based), forward A/B of the order used and
an inverse AP/BP one order higher, fitted on a grid over the frame (its worst error
is stats.inverse_max_err_px), so tools that read AP/BP invert it too.

Method:

* Cross-match in the tangent plane: detections go to the sky through the current
  model (the input WCS first, `all_pix2world`: any WCS astropy reads will do, SIP
  included), both sides are projected on the tangent plane at CRVAL, and a
  detection is paired with its nearest catalogue star within the match radius when
  it is also that star's nearest detection and no other comparable catalogue star
  (less than 3 mag fainter, or either magnitude unknown) lies within the radius (a
  blend). Only catalogue stars inside the frame (plus 10 px) take part.
* The radius starts at `radius_px` (5 px by default, meant for a start good to a
  pixel or two such as `match.match_pattern`'s) and then follows the fit:
  max(`min_radius_px` (1 px), 5 x the rms), never growing; the outer iterations stop
  when the matched pairs and the radius no longer change (or after `max_iter`).
* The fit: xi and eta (degrees, tangent plane at CRVAL) as full polynomials of the
  order in u, v = pixel - CRPIX, normalised by the half diagonal (so the least
  squares, solved by the normal equations on unit-norm columns, are well
  conditioned up to order 6). The constant terms move CRVAL (the catalogue is
  re-projected and the fit repeated until they vanish), the linear ones are CD and
  the rest, through CD^-1, the SIP A/B coefficients: exactly the TAN-SIP model.
* Weights, with centroid errors (`xy_err`, or from the detect Table: FWHM / (2.355
  SNR)): 1 / (alpha^2 err^2 + beta^2), alpha and beta re-estimated from the
  residuals (robust variances of stars binned by err, non-negative least squares;
  beta starts at `err_floor_arcsec`, it absorbs catalogue errors and centroid
  systematics). Without errors all stars weigh the same (much worse for cameras
  whose faint stars are noisy: pass the errors).
* Outlier rejection: a pair is rejected when its (weight-normalised) residual
  distance exceeds `clip_sigma` (3.5) x sigma, sigma the robust per-axis scatter
  sqrt(median(d^2) / ln 4); the rejection is recomputed from all pairs after each
  fit (a star may come back) until the set is stable.
* Sparse fields: polynomial order n needs at least 3 x (n + 1)(n + 2) / 2 stars
  (SIP 3: 30, SIP 2: 18) and stars in at least 5 (n = 2) or 7 (n >= 3) of the 3 x 3
  cells of the frame, else the order is lowered; TAN (affine) needs 5 stars. Then,
  `choose_order`: of the orders allowed, the one with the smallest estimated mean
  squared error over an 11 x 11 grid on the frame (corners included): its variance
  from the least-squares covariance plus, for lower orders, the squared bias
  estimated against the highest order. Either change is said in stats.notes and
  stats.sip_order (0: plain TAN) against stats.sip_order_requested. With fewer than
  5 matches nothing is fitted: the input WCS comes back with stats.ok False.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from astropy.table import Table
from astropy.wcs import WCS, Sip
from scipy.spatial import cKDTree

from gppy.astrometry.match import as_xy, gnomonic, inverse_gnomonic, solve_lsq, tan_wcs

MIN_FIT_STARS = 5
NOISE_BIN_STARS = 15
BLEND_DMAG = 3.0
EDGE_MARGIN_PX = 10.0


@dataclass
class RefineStats:
    nstars: int                 # pairs used in the final fit
    rms_arcsec: float           # sqrt(mean(d^2)) of their residual distances
    median_sep_arcsec: float    # median residual distance
    sip_order: int              # order fitted (0: plain TAN)
    sip_order_requested: int
    n_matched: int              # pairs before rejection
    n_rejected: int
    radius_px: float            # final match radius
    iterations: int
    converged: bool
    ok: bool                    # False: too few matches, the input WCS was returned
    inverse_max_err_px: float   # worst AP/BP round-trip error on the frame grid
    rms_px: float = float("nan")     # rms_arcsec in pixels of the fitted scale
    noise_model: tuple[float, float] | None = None   # (alpha, beta px) when xy_err is given
    predicted_err_px: float = float("nan")  # 1-sigma estimate of the WCS error at the worst
    #                                         point of an 11 x 11 grid on the frame (px)
    notes: list[str] = field(default_factory=list)
    residuals: Table | None = None   # per matched pair (see `refine`)


def centroid_errors(sources: Table) -> np.ndarray:
    """Approximate 1-D centroid errors (px) of `sources.detect` rows: FWHM / (2.355 SNR)
    (what the windowed centroid reaches on background-limited Gaussian stars; good
    enough as relative weights)."""
    snr = np.asarray(sources["flux"], float) / np.asarray(sources["flux_err"], float)
    fwhm = np.asarray(sources["fwhm_px"], float)
    return fwhm / (2.3548 * np.clip(snr, 1.0, None))


def _n_terms(order: int) -> int:
    return (order + 1) * (order + 2) // 2


def _exponents(order: int) -> list[tuple[int, int]]:
    return [(p, t - p) for t in range(order + 1) for p in range(t, -1, -1)]


def _design(u: np.ndarray, v: np.ndarray, order: int) -> np.ndarray:
    return np.column_stack([u ** p * v ** q for p, q in _exponents(order)])


def _cells_occupied(xy: np.ndarray, shape) -> int:
    ny, nx = shape
    cx = np.clip((xy[:, 0] / nx * 3).astype(int), 0, 2)
    cy = np.clip((xy[:, 1] / ny * 3).astype(int), 0, 2)
    return len(set(zip(cx.tolist(), cy.tolist())))


def usable_order(xy: np.ndarray, shape, requested: int) -> tuple[int, str | None]:
    """The highest order <= requested that the stars support, and why it was lowered."""
    n = len(xy)
    cells = _cells_occupied(xy, shape) if n else 0
    order = max(1, requested)
    while order > 1:
        need_cells = 7 if order >= 3 else 5
        if n >= 3 * _n_terms(order) and cells >= need_cells:
            break
        order -= 1
    order = order if requested >= 2 else 1
    note = None
    if order < max(1, requested):
        note = (f"SIP order lowered from {requested} to {order if order >= 2 else 0} "
                f"({n} stars in {cells} of 9 frame cells; order n needs 3 x (n+1)(n+2)/2 stars "
                f"and 5-7 cells)")
    return order, note


@dataclass
class _Model:
    crval: tuple[float, float]
    crpix: tuple[float, float]      # 1-based
    coef: np.ndarray                # (n_terms, 2) on normalised u, v; xi, eta in degrees
    order: int
    norm: float

    def sky(self, xy0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        xi, eta = self.plane(xy0).T
        return inverse_gnomonic(xi, eta, *self.crval)

    def plane(self, xy0: np.ndarray) -> np.ndarray:
        u = (xy0[:, 0] + 1.0 - self.crpix[0]) / self.norm
        v = (xy0[:, 1] + 1.0 - self.crpix[1]) / self.norm
        return _design(u, v, self.order) @ self.coef


def _fit(xy0, ra, dec, weights, crval, crpix, order, norm) -> _Model:
    u = (xy0[:, 0] + 1.0 - crpix[0]) / norm
    v = (xy0[:, 1] + 1.0 - crpix[1]) / norm
    a = _design(u, v, order)
    sw = np.sqrt(weights)[:, None]
    for _ in range(5):
        xi, eta, _ = gnomonic(ra, dec, *crval)
        coef = solve_lsq(a * sw, np.column_stack([xi, eta]) * sw)
        shift = coef[0]
        crval = tuple(float(c) for c in inverse_gnomonic(shift[0], shift[1], *crval))
        if math.hypot(*shift) * 3600.0 < 1e-6:
            break
    xi, eta, _ = gnomonic(ra, dec, *crval)
    coef = solve_lsq(a * sw, np.column_stack([xi, eta]) * sw)
    return _Model(crval, crpix, coef, order, norm)


def _to_wcs(model: _Model, shape) -> tuple[WCS, float]:
    """The astropy WCS of a fitted model, and the worst AP/BP inverse error (px)."""
    exps = _exponents(model.order)
    coef = model.coef.copy()
    coef[0] = 0.0   # the tangent point is at CRPIX (constant terms absorbed into CRVAL)
    for k, (p, q) in enumerate(exps):
        coef[k] /= model.norm ** (p + q)
    cd = np.array([[coef[exps.index((1, 0)), 0], coef[exps.index((0, 1)), 0]],
                   [coef[exps.index((1, 0)), 1], coef[exps.index((0, 1)), 1]]])
    w = tan_wcs(model.crval, model.crpix, cd)
    if model.order < 2:
        return w, 0.0
    cdinv = np.linalg.inv(cd)
    n = model.order
    a = np.zeros((n + 1, n + 1))
    b = np.zeros((n + 1, n + 1))
    for k, (p, q) in enumerate(exps):
        if p + q >= 2:
            f = cdinv @ coef[k]
            a[p, q], b[p, q] = f
    # inverse on a grid (focal-plane -> pixel), one order higher
    ny, nx = shape
    gx, gy = np.meshgrid(np.linspace(0.5, nx + 0.5, 41), np.linspace(0.5, ny + 0.5, 41))
    u, v = gx.ravel() - model.crpix[0], gy.ravel() - model.crpix[1]
    fu = sum(a[p, q] * u ** p * v ** q for p, q in exps if p + q >= 2)
    fv = sum(b[p, q] * u ** p * v ** q for p, q in exps if p + q >= 2)
    uu, vv = u + fu, v + fv
    ni = n + 1
    iexps = _exponents(ni)
    norm = model.norm
    design = _design(uu / norm, vv / norm, ni)
    sol = solve_lsq(design, np.column_stack([u - uu, v - vv]))
    ap = np.zeros((ni + 1, ni + 1))
    bp = np.zeros((ni + 1, ni + 1))
    for k, (p, q) in enumerate(iexps):
        ap[p, q] = sol[k, 0] / norm ** (p + q)
        bp[p, q] = sol[k, 1] / norm ** (p + q)
    back_u = uu + design @ sol[:, 0]
    back_v = vv + design @ sol[:, 1]
    inv_err = float(np.max(np.hypot(back_u - u, back_v - v)))
    w.sip = Sip(a, b, ap, bp, w.wcs.crpix)
    w.wcs.ctype = ["RA---TAN-SIP", "DEC--TAN-SIP"]
    w.wcs.set()
    return w, inv_err


def _as_catalog(radec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if isinstance(radec, Table):
        ra = np.asarray(radec["ra"], float)
        dec = np.asarray(radec["dec"], float)
        mag = (np.asarray(radec["mag"], float) if "mag" in radec.colnames
               else np.full(len(ra), np.nan))
        return ra, dec, mag
    arr = np.asarray(radec, float).reshape(-1, 2)
    return arr[:, 0], arr[:, 1], np.full(len(arr), np.nan)


def _planes(det_ra, det_dec, cat_ra, cat_dec, crval, scale_deg: float, good_det: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray]:
    """Detections and catalogue stars on the tangent plane at `crval`, in pixels;
    those that cannot be matched (behind the plane, not finite, not good) far away."""
    xi_d, eta_d, _ = gnomonic(det_ra, det_dec, *crval)
    xi_c, eta_c, front = gnomonic(cat_ra, cat_dec, *crval)
    det_plane = np.column_stack([xi_d, eta_d]) / scale_deg
    cat_plane = np.column_stack([xi_c, eta_c]) / scale_deg
    cat_plane[~front] = 1e12
    det_plane[~(np.isfinite(det_plane).all(axis=1) & good_det)] = -1e12
    return det_plane, cat_plane


def _cross_match(det_plane: np.ndarray, cat_plane: np.ndarray, cat_mag: np.ndarray,
                 radius: float) -> tuple[np.ndarray, np.ndarray]:
    """(detection index, catalogue index) pairs, unique and unambiguous (see the
    module docstring); coordinates in the same units as `radius`."""
    if len(cat_plane) == 0 or len(det_plane) == 0:
        return np.zeros(0, int), np.zeros(0, int)
    tree = cKDTree(cat_plane)
    k = min(2, len(cat_plane))
    d, j = tree.query(det_plane, k=k, distance_upper_bound=radius)
    if k == 1:
        d, j = d[:, None], j[:, None]
        d = np.column_stack([d, np.full(len(d), np.inf)])
        j = np.column_stack([j, np.full(len(j), len(cat_plane))])
    ok = np.isfinite(d[:, 0])
    second = np.isfinite(d[:, 1])
    if second.any():
        m1 = cat_mag[np.minimum(j[:, 0], len(cat_mag) - 1)]
        m2 = cat_mag[np.minimum(j[:, 1], len(cat_mag) - 1)]
        comparable = ~(m2 - m1 > BLEND_DMAG)      # NaN magnitudes count as comparable
        ok &= ~(second & comparable)
    i = np.nonzero(ok)[0]
    jj, dd = j[ok, 0], d[ok, 0]
    order = np.argsort(dd, kind="stable")
    _, first = np.unique(jj[order], return_index=True)
    keep = np.sort(order[first])
    # a detection must also be the catalogue star's nearest detection
    i, jj = i[keep], jj[keep]
    if len(i):
        dtree = cKDTree(det_plane)
        _, nearest_det = dtree.query(cat_plane[jj])
        mutual = nearest_det == i
        i, jj = i[mutual], jj[mutual]
    return i, jj


def refine(wcs: WCS, xy, radec, shape: tuple[int, int], sip_order: int, *,
           xy_err=None, radius_px: float = 5.0, min_radius_px: float = 1.0,
           clip_sigma: float = 3.5, max_iter: int = 10, err_floor_arcsec: float = 0.015,
           max_stars: int | None = None, choose_order: bool = True,
           fit: bool = True) -> tuple[WCS, RefineStats]:
    """Fit TAN-SIP of `sip_order` (lowered for sparse fields) to the detections `xy`
    cross-matched with the catalogue `radec` through `wcs`; see the module docstring.
    `fit` False: only check `wcs` (cross-match with the same shrinking radius and
    clipping, no fit); it comes back unchanged with the stats of its residuals.

    Returns (the fitted WCS, RefineStats). stats.residuals has one row per matched
    pair: det, cat (indices into xy and radec), x, y, ra, dec, dx_arcsec (east) and
    dy_arcsec (north) residuals = catalogue - fit on the tangent plane, sep_arcsec,
    used (False: rejected as an outlier) and, when fitted, weight (the fit's relative
    weight, median 1 over the pairs used).
    """
    ny, nx = shape
    if xy_err is None and hasattr(xy, "colnames") and {"flux", "flux_err", "fwhm_px"} <= set(
            xy.colnames):
        xy_err = centroid_errors(xy)
    xy = as_xy(xy)
    if max_stars is not None:
        xy = xy[:max_stars]
    ra_c, dec_c, mag_c = _as_catalog(radec)
    good_det = np.all(np.isfinite(xy), axis=1)
    crpix = ((nx + 1) / 2.0, (ny + 1) / 2.0)
    norm = 0.5 * math.hypot(nx, ny)
    requested = int(sip_order)
    notes: list[str] = []

    # the input WCS's frame centre and scale start things off
    c_ra, c_dec = wcs.all_pix2world([[crpix[0] - 1.0, crpix[1] - 1.0]], 0)[0]
    crval = (float(c_ra), float(c_dec))
    det_ra, det_dec = wcs.all_pix2world(xy[:, 0], xy[:, 1], 0)
    scale_deg = _scale_deg(wcs, crpix)
    err_all = None
    noise = (1.0, err_floor_arcsec / (scale_deg * 3600.0))
    if xy_err is not None:
        err_all = np.asarray(xy_err, float)[:len(xy)]
        err_all = np.where(np.isfinite(err_all) & (err_all > 0), err_all, np.nanmax(err_all))

    # catalogue stars inside the frame (through the input WCS)
    with np.errstate(invalid="ignore"):
        cx, cy = _world2pix(wcs, ra_c, dec_c)
    inside = ((cx > -EDGE_MARGIN_PX) & (cx < nx - 1 + EDGE_MARGIN_PX) & (cy > -EDGE_MARGIN_PX)
              & (cy < ny - 1 + EDGE_MARGIN_PX))
    cat_idx = np.nonzero(inside)[0]

    if not fit:
        return wcs, _check_only(wcs, xy, good_det, ra_c, dec_c, mag_c, cat_idx, det_ra, det_dec,
                                crval, scale_deg, requested, radius_px, min_radius_px,
                                clip_sigma, max_iter)

    radius = float(radius_px)
    model: _Model | None = None
    prev_pairs: tuple | None = None
    converged = False
    it = 0
    used = np.zeros(0, bool)
    i = j = np.zeros(0, int)
    for it in range(1, max_iter + 1):
        det_plane, cat_plane = _planes(det_ra, det_dec, ra_c[cat_idx], dec_c[cat_idx], crval,
                                       scale_deg, good_det)
        i, jl = _cross_match(det_plane, cat_plane, mag_c[cat_idx], radius)
        j = cat_idx[jl]
        if len(i) < MIN_FIT_STARS:
            break
        order, note = usable_order(xy[i], shape, requested)
        model, used, noise = _fit_weighted(xy[i], ra_c[j], dec_c[j], _sub(err_all, i), noise,
                                           crval, crpix, order, norm, clip_sigma, scale_deg)
        crval = model.crval
        det_ra, det_dec = model.sky(xy)
        d = _residual_px(model, xy[i][used], ra_c[j][used], dec_c[j][used], scale_deg)
        rms_px = float(np.sqrt(np.mean(d ** 2)))
        new_radius = min(radius, max(min_radius_px, 5.0 * rms_px))
        pairs = (tuple(i.tolist()), tuple(j.tolist()))
        if pairs == prev_pairs and new_radius == radius:
            converged = True
            break
        prev_pairs, radius = pairs, new_radius

    if model is None or len(i) < MIN_FIT_STARS:
        notes.append(f"only {len(i)} matches within {radius:.1f} px: nothing fitted, the input "
                     f"WCS is returned")
        return wcs, RefineStats(nstars=len(i), rms_arcsec=float("nan"),
                                median_sep_arcsec=float("nan"), sip_order=0,
                                sip_order_requested=requested, n_matched=len(i), n_rejected=0,
                                radius_px=radius, iterations=it, converged=False, ok=False,
                                inverse_max_err_px=float("nan"), notes=notes)
    order, note = usable_order(xy[i][used], shape, requested)
    if order != model.order:     # rejection left too few stars for the order: refit lower
        model, used, noise = _fit_weighted(xy[i], ra_c[j], dec_c[j], _sub(err_all, i), noise,
                                           crval, crpix, order, norm, clip_sigma, scale_deg)
        order, note = usable_order(xy[i][used], shape, requested)
    if note:
        notes.append(note)
    weights = (np.ones(len(i)) if err_all is None
               else 1.0 / (noise[0] ** 2 * err_all[i] ** 2 + noise[1] ** 2))
    mse = _order_errors(xy[i][used], ra_c[j][used], dec_c[j][used], weights[used], model.crval,
                        crpix, model.order, norm, shape, scale_deg)
    if choose_order and model.order > 1:
        best = min(mse, key=lambda n: (mse[n][0], -n))
        if best < model.order:
            notes.append(f"SIP order {_sip(best)} instead of {_sip(model.order)}: its estimated "
                         f"error over the frame is smaller (rms {math.sqrt(mse[best][0]):.3f} vs "
                         f"{math.sqrt(mse[model.order][0]):.3f} px)")
            model, used, noise = _fit_weighted(xy[i], ra_c[j], dec_c[j], _sub(err_all, i), noise,
                                               model.crval, crpix, best, norm, clip_sigma,
                                               scale_deg)
    predicted = math.sqrt(mse[model.order][1]) if model.order in mse else float("nan")
    out, inv_err = _to_wcs(model, shape)
    xi_c, eta_c, _ = gnomonic(ra_c[j], dec_c[j], *model.crval)
    fit = model.plane(xy[i])
    dx, dy = (xi_c - fit[:, 0]) * 3600.0, (eta_c - fit[:, 1]) * 3600.0
    sep = np.hypot(dx, dy)
    if err_all is not None:   # the final noise model's weights
        weights = 1.0 / (noise[0] ** 2 * err_all[i] ** 2 + noise[1] ** 2)
    resid = Table({"det": i, "cat": j, "x": xy[i, 0], "y": xy[i, 1], "ra": ra_c[j],
                   "dec": dec_c[j], "dx_arcsec": dx, "dy_arcsec": dy, "sep_arcsec": sep,
                   "used": used, "weight": weights / np.median(weights[used])})
    stats = RefineStats(nstars=int(used.sum()),
                        rms_arcsec=float(np.sqrt(np.mean(sep[used] ** 2))),
                        median_sep_arcsec=float(np.median(sep[used])),
                        sip_order=_sip(model.order), predicted_err_px=predicted,
                        sip_order_requested=requested, n_matched=len(i),
                        n_rejected=int((~used).sum()), radius_px=radius, iterations=it,
                        converged=converged, ok=True, inverse_max_err_px=inv_err,
                        rms_px=float(np.sqrt(np.mean(sep[used] ** 2)))
                        / (_scale_deg(out, crpix) * 3600.0),
                        noise_model=None if err_all is None else (float(noise[0]), float(noise[1])),
                        notes=notes, residuals=resid)
    return out, stats


def _check_only(wcs, xy, good_det, ra_c, dec_c, mag_c, cat_idx, det_ra, det_dec, crval,
                scale_deg, requested, radius_px, min_radius_px, clip_sigma, max_iter
                ) -> RefineStats:
    """Stats of an existing WCS against the catalogue (refine(..., fit=False))."""
    det_plane, cat_plane = _planes(det_ra, det_dec, ra_c[cat_idx], dec_c[cat_idx], crval,
                                   scale_deg, good_det)
    radius, prev, converged, it = float(radius_px), None, False, 0
    i = jl = np.zeros(0, int)
    used = np.zeros(0, bool)
    d = np.zeros(0)
    for it in range(1, max_iter + 1):
        i, jl = _cross_match(det_plane, cat_plane, mag_c[cat_idx], radius)
        if len(i) < MIN_FIT_STARS:
            break
        d = np.hypot(*(cat_plane[jl] - det_plane[i]).T)
        used = np.ones(len(i), bool)
        for _ in range(20):
            sigma = max(math.sqrt(np.median(d[used] ** 2) / math.log(4.0)), 1e-4)
            new = d <= clip_sigma * sigma
            if np.array_equal(new, used) or new.sum() < MIN_FIT_STARS:
                break
            used = new
        rms_px = float(np.sqrt(np.mean(d[used] ** 2)))
        new_radius = min(radius, max(min_radius_px, 5.0 * rms_px))
        pairs = tuple(i.tolist())
        if pairs == prev and new_radius == radius:
            converged = True
            break
        prev, radius = pairs, new_radius
    j = cat_idx[jl]
    sip = wcs.sip.a_order if wcs.sip is not None else 0
    if len(i) < MIN_FIT_STARS:
        return RefineStats(nstars=len(i), rms_arcsec=float("nan"), median_sep_arcsec=float("nan"),
                           sip_order=sip, sip_order_requested=requested, n_matched=len(i),
                           n_rejected=0, radius_px=radius, iterations=it, converged=False,
                           ok=False, inverse_max_err_px=float("nan"),
                           notes=[f"only {len(i)} matches within {radius:.1f} px"])
    dxy = (cat_plane[jl] - det_plane[i]) * scale_deg * 3600.0
    sep = np.hypot(dxy[:, 0], dxy[:, 1])
    resid = Table({"det": i, "cat": j, "x": xy[i, 0], "y": xy[i, 1], "ra": ra_c[j],
                   "dec": dec_c[j], "dx_arcsec": dxy[:, 0], "dy_arcsec": dxy[:, 1],
                   "sep_arcsec": sep, "used": used})
    rms = float(np.sqrt(np.mean(sep[used] ** 2)))
    return RefineStats(nstars=int(used.sum()), rms_arcsec=rms,
                       median_sep_arcsec=float(np.median(sep[used])), sip_order=sip,
                       sip_order_requested=requested, n_matched=len(i),
                       n_rejected=int((~used).sum()), radius_px=radius, iterations=it,
                       converged=converged, ok=True, inverse_max_err_px=float("nan"),
                       rms_px=rms / (scale_deg * 3600.0), notes=["checked only (fit=False)"],
                       residuals=resid)


def _sip(poly_order: int) -> int:
    return poly_order if poly_order >= 2 else 0


def _order_errors(xy, ra, dec, weights, crval, crpix, max_order, norm, shape, scale_deg
                  ) -> dict[int, tuple[float, float]]:
    """Order -> (mean, max) over an 11 x 11 grid on the frame (corners included) of the
    estimated squared error (px^2) of the fit of that order: its variance (from the
    weighted least-squares covariance, the noise scaled by the residuals of the
    highest order) plus, for lower orders, its squared bias, estimated as the squared
    difference from the highest order's prediction less that difference's variance."""
    xi, eta, _ = gnomonic(ra, dec, *crval)
    y = np.column_stack([xi, eta]) / scale_deg
    u = (xy[:, 0] + 1.0 - crpix[0]) / norm
    v = (xy[:, 1] + 1.0 - crpix[1]) / norm
    ny, nx = shape
    gx, gy = np.meshgrid(np.linspace(0, nx - 1, 11), np.linspace(0, ny - 1, 11))
    gu = (gx.ravel() + 1.0 - crpix[0]) / norm
    gv = (gy.ravel() + 1.0 - crpix[1]) / norm
    sw = np.sqrt(weights)[:, None]
    preds, variances, s2_top = {}, {}, None
    for n in range(max_order, 0, -1):
        a = _design(u, v, n)
        if len(y) <= a.shape[1]:
            continue
        coef = solve_lsq(a * sw, y * sw)
        if s2_top is None:
            r = (y - a @ coef) * sw
            s2_top = float(np.sum(r ** 2) / (2 * (len(y) - a.shape[1])))
        g = _design(gu, gv, n)
        cov = s2_top * np.linalg.pinv((a * sw).T @ (a * sw))
        preds[n] = g @ coef
        variances[n] = 2.0 * np.einsum("ij,jk,ik->i", g, cov, g)
    if not preds:
        return {}
    top = max(preds)
    out = {}
    for n in preds:
        mse = variances[n].copy()
        if n < top:
            d2 = np.sum((preds[n] - preds[top]) ** 2, axis=1)
            mse += np.maximum(0.0, d2 - (variances[top] - variances[n]))
        out[n] = (float(np.mean(mse)), float(np.max(mse)))
    return out


def _sub(values, index):
    return None if values is None else values[index]


def _scale_deg(wcs: WCS, crpix) -> float:
    x0, y0 = crpix[0] - 1.0, crpix[1] - 1.0
    (r0, d0), (r1, d1), (r2, d2) = wcs.all_pix2world([[x0, y0], [x0 + 10, y0], [x0, y0 + 10]], 0)
    xi1, eta1, _ = gnomonic(r1, d1, r0, d0)
    xi2, eta2, _ = gnomonic(r2, d2, r0, d0)
    return math.sqrt(abs(xi1 * eta2 - xi2 * eta1)) / 10.0


def _world2pix(wcs: WCS, ra, dec) -> tuple[np.ndarray, np.ndarray]:
    """Pixel positions through `wcs` (the iterative inverse for SIP; quiet on divergence)."""
    if len(ra) == 0:
        return np.zeros(0), np.zeros(0)
    try:
        x, y = wcs.all_world2pix(ra, dec, 0, tolerance=1e-4, maxiter=30, quiet=True)
    except Exception:      # astropy gives up on points far outside the frame
        x, y = wcs.wcs_world2pix(ra, dec, 0)
    return np.asarray(x), np.asarray(y)


def _residual_px(model: _Model, xy, ra, dec, scale_deg) -> np.ndarray:
    xi, eta, _ = gnomonic(ra, dec, *model.crval)
    fit = model.plane(xy)
    return np.hypot(xi - fit[:, 0], eta - fit[:, 1]) / scale_deg


def _fit_clipped(xy, ra, dec, weights, crval, crpix, order, norm, clip_sigma,
                 scale_deg) -> tuple[_Model, np.ndarray]:
    """Fit with iterative sigma clipping; (model, mask of the pairs used)."""
    used = np.ones(len(xy), bool)
    model = _fit(xy, ra, dec, weights, crval, crpix, order, norm)
    wnorm = np.sqrt(weights / np.median(weights))
    for _ in range(20):
        d = _residual_px(model, xy, ra, dec, scale_deg) * wnorm
        sigma = math.sqrt(np.median(d[used] ** 2) / math.log(4.0))
        sigma = max(sigma, 1e-4)
        new = d <= clip_sigma * sigma
        if new.sum() < max(MIN_FIT_STARS, _n_terms(order)):
            break
        if np.array_equal(new, used):
            break
        used = new
        model = _fit(xy[used], ra[used], dec[used], weights[used], model.crval, crpix, order, norm)
    return model, used


def _noise_model(d_px: np.ndarray, err: np.ndarray, previous: tuple[float, float]
                 ) -> tuple[float, float]:
    """(alpha, beta) of sigma^2 = alpha^2 err^2 + beta^2 (px) from residual distances:
    the robust variance of stars binned by their error, fitted with non-negative
    least squares; `previous` when there are too few stars."""
    from scipy.optimize import nnls

    n_bins = min(6, len(d_px) // NOISE_BIN_STARS)
    if n_bins < 3:
        return previous
    order = np.argsort(err, kind="stable")
    rows, rhs = [], []
    for chunk in np.array_split(order, n_bins):
        var = float(np.median(d_px[chunk] ** 2) / math.log(4.0))
        e2 = float(np.median(err[chunk]) ** 2)
        w = math.sqrt(len(chunk)) / max(var, 1e-12)     # relative errors of the variances
        rows.append([e2 * w, w])
        rhs.append(var * w)
    (a2, b2), _ = nnls(np.array(rows), np.array(rhs))
    if not (a2 > 0 or b2 > 0):
        return previous
    return math.sqrt(max(a2, 0.0)), math.sqrt(max(b2, 1e-8))


def _fit_weighted(xy, ra, dec, err, noise, crval, crpix, order, norm, clip_sigma, scale_deg
                  ) -> tuple[_Model, np.ndarray, tuple[float, float] | None]:
    """The clipped fit; with centroid errors `err`, the error model is re-estimated
    from the residuals and the fit repeated (twice)."""
    if err is None:
        model, used = _fit_clipped(xy, ra, dec, np.ones(len(xy)), crval, crpix, order, norm,
                                   clip_sigma, scale_deg)
        return model, used, None
    for _ in range(3):
        weights = 1.0 / (noise[0] ** 2 * err ** 2 + noise[1] ** 2)
        model, used = _fit_clipped(xy, ra, dec, weights, crval, crpix, order, norm, clip_sigma,
                                   scale_deg)
        crval = model.crval
        d = _residual_px(model, xy[used], ra[used], dec[used], scale_deg)
        noise = _noise_model(d, err[used], noise)
    return model, used, noise
