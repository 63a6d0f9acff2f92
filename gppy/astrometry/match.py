"""Blind-ish astrometric matching: detections against a reference catalogue
projected at the header pointing, for any rotation (and a mirror flip), a pixel
scale known to a few per cent and a pointing error up to a search radius.

    match_pattern(xy, radec, center_radec, pixscale_arcsec, shape,
                  scale_tolerance=0.05, allow_flip=True, search_radius_deg=None)
      -> MatchResult | None

Conventions: `xy` (n, 2) are 0-based pixel centres (astropy origin=0), brightest
first, or the Table of `gppy.astrometry.sources.detect`; `radec` (m, 2) ICRS degrees,
brightest first, or the Table of `gppy.astrometry.refcat.reference_stars`;
`center_radec` the header pointing (ICRS degrees), taken to be the frame centre;
`pixscale_arcsec` the profile's (camera.pixscale_arcsec); `shape` (ny, nx). The
catalogue must cover `catalog_radius_deg(shape, pixscale_arcsec, search_radius_deg)`
around the pointing (the search radius defaults to one field width, the long side).
The result's WCS is a plain TAN (no SIP) with CRPIX at the frame centre, good to the
field's distortion (a pixel or two); `gppy.astrometry.refine` does the rest.

Typical use:

    cat = reference_stars(ra, dec, catalog_radius_deg(shape, scale), source=...,
                          cache_dir=DataDir.resolve().catalog_cache)
    result = match_pattern(sources, cat, (ra, dec), scale, shape)
    if result is not None:
        wcs, stats = refine(result.wcs, sources, cat, shape, profile.astrometry.sip_order)

Method (written for gpPy; no code is taken from elsewhere):

1. The catalogue is projected onto the tangent plane at the pointing, in nominal
   pixels with the normal sky parity (north up, east left: u = -xi/scale,
   v = eta/scale), and cut to the search disc (search radius + half diagonal).
2. Brightness-limited subsets of matched surface density: the n brightest
   detections and the brightest fraction of the catalogue that has r times their
   density (the catalogue's density measured locally, from its 5th-neighbour
   distances, so a catalogue covering only part of the disc is judged right; when
   the catalogue is the shallower one: all of it, and about as many detections as it
   has stars per frame). Attempts, until one is accepted: (n, r) = (30, 1.5),
   (60, 1.5), (30, 3), (100, 2), (200, 1.5).
3. Triangles: each star with every pair of its 6 nearest neighbours (in its own
   subset). A triangle with sides a >= b >= c is described by (b/a, c/a), which a
   similarity (rotation, scale, translation, flip) leaves alone, and by log a, which
   must agree within the scale tolerance. Triangles with two nearly equal sides
   (ambiguous vertex order) or shorter than 8 px are skipped. Detection triangles
   are looked up among catalogue triangles with a KD-tree (box of +-0.01 in the
   ratios, +-log(1 + scale_tolerance) + 0.01 in log a).
4. Each triangle pair gives a similarity transform from its three labelled vertices
   (parity from the signs of the two triangles' areas; flipped ones dropped unless
   `allow_flip`), kept if its scale is within tolerance and it puts the frame
   centre within the search radius of the pointing.
5. Every candidate is verified at once: the detections are mapped through it and
   counted if a catalogue star lies within `verify_radius_px` (6 px for a 2k frame:
   0.3 % of the frame size, at least 4 px). The best candidates are refined by
   least squares on their matches (similarity, then affine) and counted again.

Acceptance: the best count k (the three triangle vertices included) must be at
least `n_required` = max(`min_matches` (6), 3 + m), where m is the smallest count of
chance coincidences whose probability, over all the candidates tried, is below
1e-6: under the null hypothesis each of the other n - 3 detections falls within the
verify radius of a catalogue star with probability p = (catalogue density) x
pi r^2, so m solves K * P(Binomial(n - 3, p) >= m) <= 1e-6 for K candidates. A frame
whose pointing is far outside the search radius, or a catalogue that does not hold
the field, thus gives None (after the attempts above, a second or so).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
from astropy.wcs import WCS
from scipy.spatial import cKDTree
from scipy.stats import binom

NEIGHBOURS = 6
RATIO_TOL = 0.01
MIN_SIDE_PX = 8.0
FALSE_ALARM = 1e-6
MAX_CANDIDATES = 20000
ATTEMPTS = ((30, 1.5), (60, 1.5), (30, 3.0), (100, 2.0), (200, 1.5))


# ---------------------------------------------------------------- tangent-plane helpers

def _unit(ra_deg, dec_deg) -> np.ndarray:
    ra, dec = np.radians(ra_deg), np.radians(dec_deg)
    return np.stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)], axis=-1)


def _basis(ra0: float, dec0: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    a, d = math.radians(ra0), math.radians(dec0)
    t = np.array([math.cos(d) * math.cos(a), math.cos(d) * math.sin(a), math.sin(d)])
    e_ra = np.array([-math.sin(a), math.cos(a), 0.0])
    e_dec = np.array([-math.sin(d) * math.cos(a), -math.sin(d) * math.sin(a), math.cos(d)])
    return t, e_ra, e_dec


def gnomonic(ra_deg, dec_deg, ra0: float, dec0: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(xi, eta, in front) of positions on the tangent plane at (ra0, dec0): xi east,
    eta north, in degrees (FITS TAN intermediate world coordinates)."""
    p = _unit(np.asarray(ra_deg, float), np.asarray(dec_deg, float))
    t, e_ra, e_dec = _basis(ra0, dec0)
    w = p @ t
    front = w > 1e-6
    w = np.where(front, w, np.nan)
    return np.degrees((p @ e_ra) / w), np.degrees((p @ e_dec) / w), front


def inverse_gnomonic(xi_deg, eta_deg, ra0: float, dec0: float) -> tuple[np.ndarray, np.ndarray]:
    t, e_ra, e_dec = _basis(ra0, dec0)
    xi, eta = np.radians(np.asarray(xi_deg, float)), np.radians(np.asarray(eta_deg, float))
    p = t + xi[..., None] * e_ra + eta[..., None] * e_dec
    p = p / np.linalg.norm(p, axis=-1, keepdims=True)
    ra = np.degrees(np.arctan2(p[..., 1], p[..., 0])) % 360.0
    dec = np.degrees(np.arcsin(np.clip(p[..., 2], -1.0, 1.0)))
    return ra, dec


def tan_wcs(crval: tuple[float, float], crpix: tuple[float, float], cd: np.ndarray) -> WCS:
    """A TAN WCS (CRPIX 1-based as in FITS)."""
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.cunit = ["deg", "deg"]
    w.wcs.radesys = "ICRS"
    w.wcs.crval = [float(crval[0]) % 360.0, float(crval[1])]
    w.wcs.crpix = [float(crpix[0]), float(crpix[1])]
    w.wcs.cd = np.asarray(cd, float)
    w.wcs.set()
    return w


def catalog_radius_deg(shape: tuple[int, int], pixscale_arcsec: float,
                       search_radius_deg: float | None = None) -> float:
    """Radius around the pointing that the catalogue must cover for `match_pattern`."""
    ny, nx = shape
    if search_radius_deg is None:
        search_radius_deg = default_search_radius_deg(shape, pixscale_arcsec)
    return search_radius_deg + 0.5 * math.hypot(nx, ny) * pixscale_arcsec / 3600.0


def default_search_radius_deg(shape: tuple[int, int], pixscale_arcsec: float) -> float:
    """One field width (the long side)."""
    return max(shape) * pixscale_arcsec / 3600.0


# ------------------------------------------------------------------------- the result

@dataclass
class MatchResult:
    wcs: WCS                    # TAN, CRPIX at the frame centre ((nx + 1) / 2, (ny + 1) / 2)
    pairs: np.ndarray           # (k, 2) int: index into xy, index into radec
    n_matches: int              # len(pairs): matches of the final affine fit
    n_verified: int             # the acceptance count (see the module docstring)
    n_required: int             # the threshold it passed
    rms_px: float               # of the final affine fit over `pairs`
    scale_arcsec: float         # fitted pixel scale (sqrt |det CD|)
    rotation_deg: float         # position angle of the +y axis, east of north
    flipped: bool               # parity opposite to the normal sky (det CD > 0)
    offset_arcsec: float        # fitted frame centre minus the header pointing
    n_candidates: int           # candidate transforms verified (all attempts)
    attempt: int                # which attempt (0-based) succeeded
    seconds: float
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------- internals

def _triangles(pts: np.ndarray, k: int = NEIGHBOURS) -> tuple[np.ndarray, np.ndarray]:
    """(vertex indices (t, 3) ordered as the vertices opposite the sides a >= b >= c,
    features (t, 3): b/a, c/a, log a)."""
    n = len(pts)
    if n < 3:
        return np.zeros((0, 3), int), np.zeros((0, 3))
    kk = min(k, n - 1)
    _, nbr = cKDTree(pts).query(pts, kk + 1)
    nbr = nbr[:, 1:]
    jj, ll = np.triu_indices(kk, 1)
    tri = np.concatenate([np.repeat(np.arange(n), len(jj))[:, None],
                          nbr[:, jj].reshape(-1, 1), nbr[:, ll].reshape(-1, 1)], axis=1)
    tri = np.unique(np.sort(tri, axis=1), axis=0)
    p0, p1, p2 = pts[tri[:, 0]], pts[tri[:, 1]], pts[tri[:, 2]]
    # side opposite vertex i
    s = np.stack([np.hypot(*(p1 - p2).T), np.hypot(*(p0 - p2).T), np.hypot(*(p0 - p1).T)], axis=1)
    order = np.argsort(-s, axis=1)
    s = np.take_along_axis(s, order, axis=1)
    tri = np.take_along_axis(tri, order, axis=1)
    a, b, c = s.T
    ok = (c >= MIN_SIDE_PX) & ((a - b) > 2 * RATIO_TOL * a) & ((b - c) > 2 * RATIO_TOL * a)
    feats = np.stack([b / a, c / a, np.log(np.maximum(a, 1e-9))], axis=1)
    return tri[ok], feats[ok]


def _signed_area(z: np.ndarray) -> np.ndarray:
    d1, d2 = z[:, 1] - z[:, 0], z[:, 2] - z[:, 0]
    return (d1.conj() * d2).imag


def _similarity(z: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares w = A z + B per row (complex)."""
    zc, wc = z.mean(axis=1, keepdims=True), w.mean(axis=1, keepdims=True)
    dz, dw = z - zc, w - wc
    a = (dw * dz.conj()).sum(axis=1) / np.maximum((np.abs(dz) ** 2).sum(axis=1), 1e-30)
    return a, wc[:, 0] - a * zc[:, 0]


def _apply(a, b, flip, z):
    zz = np.where(flip[:, None], z[None, :].conj(), z[None, :])
    return a[:, None] * zz + b[:, None]


def as_xy(xy) -> np.ndarray:
    """(n, 2) float pixel positions from an array or a Table with x, y columns."""
    if hasattr(xy, "colnames"):
        return np.column_stack([np.asarray(xy["x"], float), np.asarray(xy["y"], float)])
    return np.asarray(xy, float).reshape(-1, 2)


def as_radec(radec) -> np.ndarray:
    """(m, 2) float degrees from an array or a Table with ra, dec columns."""
    if hasattr(radec, "colnames"):
        return np.column_stack([np.asarray(radec["ra"], float), np.asarray(radec["dec"], float)])
    return np.asarray(radec, float).reshape(-1, 2)


def solve_lsq(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Least-squares solution of a x = b for a tall, narrow `a`, by the normal
    equations on unit-norm columns (LAPACK's tall-matrix solvers are needlessly slow
    when OpenBLAS threads compete for a busy machine: 40 ms instead of 0.3 ms)."""
    norms = np.sqrt(np.sum(a * a, axis=0))
    norms[norms == 0] = 1.0
    an = a / norms
    x, *_ = np.linalg.lstsq(an.T @ an, an.T @ b, rcond=None)
    return x / (norms[:, None] if x.ndim == 2 else norms)


def _fit_affine(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """3x2 matrix M with dst ~ [src, 1] @ M."""
    design = np.column_stack([src, np.ones(len(src))])
    return solve_lsq(design, dst)


def _affine_at_centre(xy: np.ndarray, radec: np.ndarray, ra_c: float, dec_c: float):
    """The affine map from centred pixels `xy` to the tangent plane of the matched
    stars `radec`, with the tangent point moved to the frame centre: (3x2 map,
    ra_c, dec_c, xi, eta of the stars there)."""
    xi, eta, _ = gnomonic(radec[:, 0], radec[:, 1], ra_c, dec_c)
    m = _fit_affine(xy, np.column_stack([xi, eta]))
    ra_c, dec_c = (float(v) for v in inverse_gnomonic(m[2, 0], m[2, 1], ra_c, dec_c))
    xi, eta, _ = gnomonic(radec[:, 0], radec[:, 1], ra_c, dec_c)
    return _fit_affine(xy, np.column_stack([xi, eta])), ra_c, dec_c, xi, eta


def _match_nearest(pred: np.ndarray, tree: cKDTree, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Unique (i, j) pairs: detection i's nearest catalogue star j within radius and i
    the closest of the detections claiming j."""
    d, j = tree.query(pred, distance_upper_bound=radius)
    ok = np.isfinite(d)
    i = np.nonzero(ok)[0]
    j, d = j[ok], d[ok]
    order = np.argsort(d, kind="stable")
    _, first = np.unique(j[order], return_index=True)
    keep = order[first]
    return i[keep], j[keep]


def local_density(pts: np.ndarray, k: int = 5) -> float:
    """Typical surface density of a point set (per unit area): the median over its
    points of k / (pi d_k^2), d_k the distance to the k-th neighbour; unlike
    count / area it does not care how much of the area the set covers."""
    if len(pts) <= k:
        return len(pts) / max(np.ptp(pts[:, 0]) * np.ptp(pts[:, 1]), 1.0) if len(pts) else 0.0
    d, _ = cKDTree(pts).query(pts, k + 1)
    return float(np.median(k / (math.pi * np.maximum(d[:, k], 1e-9) ** 2)))


def _attempt(det: np.ndarray, cat: np.ndarray, rho_cat: float, n_det: int, ratio: float,
             area_px: float, search_r: float, scale_tol: float, allow_flip: bool,
             verify_r: float, min_matches: int):
    """One attempt; returns (candidate count, accepted (a, b, flip, k, n_req) or None).
    `rho_cat`: the local density of the whole catalogue (per px^2)."""
    n_det = min(n_det, len(det))
    fraction = ratio * (n_det / area_px) / max(rho_cat, 1e-30)   # of the catalogue to use
    if fraction >= 1.0:                                 # the catalogue is the shallower
        n_cat_frame = rho_cat * area_px
        n_det = max(min(n_det, int(math.ceil(n_cat_frame * 1.5 / ratio))), min(8, n_det))
        m_cat = len(cat)
        rho_sel = rho_cat
    else:
        m_cat = int(math.ceil(fraction * len(cat)))
        rho_sel = fraction * rho_cat
    if n_det < 4 or m_cat < 4:
        return 0, None
    d_pts, c_pts = det[:n_det], cat[:m_cat]
    d_tri, d_feat = _triangles(d_pts)
    c_tri, c_feat = _triangles(c_pts)
    if len(d_tri) == 0 or len(c_tri) == 0:
        return 0, None
    log_tol = math.log1p(scale_tol) + 0.01
    scale = np.array([1 / RATIO_TOL, 1 / RATIO_TOL, 1 / log_tol])
    tree = cKDTree(c_feat * scale)
    hits = tree.query_ball_point(d_feat * scale, r=1.0, p=np.inf)
    di = np.repeat(np.arange(len(hits)), [len(h) for h in hits])
    if di.size == 0:
        return 0, None
    ci = np.concatenate([np.asarray(h, int) for h in hits])
    dist = np.abs(d_feat[di] * scale - c_feat[ci] * scale).max(axis=1)
    if di.size > MAX_CANDIDATES:
        keep = np.argsort(dist, kind="stable")[:MAX_CANDIDATES]
        di, ci = di[keep], ci[keep]
    zd = d_pts[d_tri[di]] @ np.array([1.0, 1j])         # (K, 3) complex
    wc = c_pts[c_tri[ci]] @ np.array([1.0, 1j])
    flip = np.sign(_signed_area(zd)) != np.sign(_signed_area(wc))
    if not allow_flip:
        zd, wc, flip = zd[~flip], wc[~flip], flip[~flip]
    zz = np.where(flip[:, None], zd.conj(), zd)
    a, b = _similarity(zz, wc)
    s = np.abs(a)
    ok = (s > 1 / (1 + scale_tol)) & (s < 1 + scale_tol) & (np.abs(b) <= search_r * 1.05)
    a, b, flip = a[ok], b[ok], flip[ok]
    k_cand = len(a)
    if k_cand == 0:
        return 0, None
    # verify all candidates at once
    c_tree = cKDTree(c_pts)
    z_all = d_pts @ np.array([1.0, 1j])
    counts = np.zeros(k_cand, int)
    chunk = max(1, 200000 // n_det)
    for lo in range(0, k_cand, chunk):
        w = _apply(a[lo:lo + chunk], b[lo:lo + chunk], flip[lo:lo + chunk], z_all)
        d, _ = c_tree.query(np.column_stack([w.real.ravel(), w.imag.ravel()]),
                            distance_upper_bound=verify_r)
        counts[lo:lo + chunk] = np.isfinite(d).reshape(w.shape).sum(axis=1)
    # acceptance threshold: chance coincidences over all candidates
    p = min(1.0, rho_sel * math.pi * verify_r ** 2)
    trials = max(n_det - 3, 1)
    m = np.arange(trials + 1)
    tail = binom.sf(m - 1, trials, p)                    # P(X >= m)
    good = np.nonzero(k_cand * tail <= FALSE_ALARM)[0]
    m_req = int(good[0]) if good.size else trials + 1
    n_req = max(min_matches, 3 + m_req)
    best = np.argsort(-counts, kind="stable")[:5]
    for idx in best:
        if counts[idx] < n_req:
            break
        # refine the candidate: similarity, then affine, on its matches
        w = _apply(a[idx:idx + 1], b[idx:idx + 1], flip[idx:idx + 1], z_all)[0]
        i, j = _match_nearest(np.column_stack([w.real, w.imag]), c_tree, verify_r)
        if len(i) < n_req:
            continue
        src = np.column_stack([d_pts[i, 0], -d_pts[i, 1] if flip[idx] else d_pts[i, 1]])
        aa, bb = _similarity((src @ np.array([1.0, 1j]))[None],
                             (c_pts[j] @ np.array([1.0, 1j]))[None])
        return k_cand, (complex(aa[0]), complex(bb[0]), bool(flip[idx]), int(counts[idx]), n_req)
    return k_cand, None


def match_pattern(xy, radec, center_radec: tuple[float, float], pixscale_arcsec: float,
                  shape: tuple[int, int], scale_tolerance: float = 0.05, allow_flip: bool = True,
                  search_radius_deg: float | None = None, min_matches: int = 6,
                  verify_radius_px: float | None = None,
                  max_stars: int = 500) -> MatchResult | None:
    """Match detections `xy` to catalogue `radec` (see the module docstring); None if
    no convincing match exists."""
    t0 = time.perf_counter()
    xy = as_xy(xy)
    radec = as_radec(radec)
    ny, nx = shape
    ra0, dec0 = float(center_radec[0]), float(center_radec[1])
    scale_deg = pixscale_arcsec / 3600.0
    if search_radius_deg is None:
        search_radius_deg = default_search_radius_deg(shape, pixscale_arcsec)
    half_diag = 0.5 * math.hypot(nx, ny)
    search_r = search_radius_deg / scale_deg
    disc_r = search_r + half_diag
    verify_r = verify_radius_px or max(4.0, 0.003 * max(nx, ny))
    good_xy = np.all(np.isfinite(xy), axis=1)
    det_index = np.nonzero(good_xy)[0]
    det = xy[det_index]
    if len(det) < 4 or len(radec) < 4:
        return None
    xi, eta, front = gnomonic(radec[:, 0], radec[:, 1], ra0, dec0)
    uv = np.column_stack([-xi / scale_deg, eta / scale_deg])
    inside = front & (np.hypot(uv[:, 0], uv[:, 1]) <= disc_r)
    cat_index = np.nonzero(inside)[0]
    cat = uv[cat_index]
    if len(cat) < 4:
        return None
    centre = complex((nx - 1) / 2.0, (ny - 1) / 2.0)
    # centre the detections (better conditioned similarity fits)
    det_c = det - np.array([centre.real, centre.imag])
    area = float(nx * ny)
    rho_cat = local_density(cat)
    total = 0
    for attempt, (n_det, ratio) in enumerate(ATTEMPTS):
        k, found = _attempt(det_c, cat, rho_cat, n_det, ratio, area, search_r,
                            scale_tolerance, allow_flip, verify_r, min_matches)
        total += k
        if found is None:
            continue
        a, b, flip, n_verified, n_req = found
        result = _finish(a, b, flip, det, det_index, cat, cat_index, radec, ra0, dec0,
                         scale_deg, shape, verify_r, max_stars, rho_cat)
        if result is None or len(result.pairs) < n_req:
            continue
        result.n_verified, result.n_required = n_verified, n_req
        result.n_candidates, result.attempt = total, attempt
        result.seconds = time.perf_counter() - t0
        return result
    return None


def _finish(a: complex, b: complex, flip: bool, det, det_index, cat, cat_index, radec,
            ra0: float, dec0: float, scale_deg: float, shape, verify_r: float,
            max_stars: int, rho_cat: float) -> MatchResult | None:
    """From the similarity (centred detection pixels -> nominal sky pixels at the
    pointing) to a TAN WCS fitted on all detections, and its matched pairs."""
    ny, nx = shape
    cx, cy = (nx - 1) / 2.0, (ny - 1) / 2.0
    crpix = (cx + 1.0, cy + 1.0)
    det = det[:max_stars]
    det_index = det_index[:max_stars]
    # the brightest catalogue stars, three times as dense as the detections used
    zc = det - np.array([cx, cy])
    z = zc @ np.array([1.0, 1j])
    w = a * (z.conj() if flip else z) + b
    pred = np.column_stack([w.real, w.imag])
    fraction = 3.0 * len(det) / float(nx * ny) / max(rho_cat, 1e-30)
    m_use = max(min(len(cat), int(math.ceil(fraction * len(cat)))), min(len(cat), 10))
    tree = cKDTree(cat[:m_use])
    i, j = _match_nearest(pred, tree, verify_r)
    if len(i) < 4:
        return None
    # the frame centre on the sky, then an affine fit to the tangent plane there
    wc = b
    ra_c, dec_c = inverse_gnomonic(-wc.real * scale_deg, wc.imag * scale_deg, ra0, dec0)
    ra_c, dec_c = float(ra_c), float(dec_c)
    radius = verify_r
    for _ in range(4):
        m, ra_c, dec_c, xi, eta = _affine_at_centre(zc[i], radec[cat_index[:m_use][j]],
                                                    ra_c, dec_c)
        cd = m[:2].T
        # re-match all detections through this WCS with a shrinking radius
        xi_all, eta_all, front = gnomonic(radec[cat_index[:m_use], 0], radec[cat_index[:m_use], 1],
                                          ra_c, dec_c)
        sky = np.column_stack([xi_all, eta_all])
        sky[~front] = 1e9
        pix = np.linalg.solve(cd, (sky - m[2]).T).T
        resid = np.hypot(*(zc[i] @ m[:2] + m[2] - np.column_stack([xi, eta])).T) / scale_deg
        rms = float(np.sqrt(np.mean(resid ** 2)))
        radius = max(2.0, min(radius, 4.0 * rms + 1.0))
        i, j = _match_nearest(zc, cKDTree(pix), radius)
        if len(i) < 4:
            return None
    m, ra_c, dec_c, xi, eta = _affine_at_centre(zc[i], radec[cat_index[:m_use][j]], ra_c, dec_c)
    cd = m[:2].T
    resid = np.hypot(*(zc[i] @ m[:2] + m[2] - np.column_stack([xi, eta])).T) / scale_deg
    wcs = tan_wcs((ra_c, dec_c), crpix, cd)
    det_cd = float(np.linalg.det(cd))
    rotation = math.degrees(math.atan2(cd[0, 1], cd[1, 1]))
    c_sep = float(np.degrees(np.arccos(np.clip(_unit(ra_c, dec_c) @ _unit(ra0, dec0), -1, 1))))
    pairs = np.column_stack([det_index[i], cat_index[:m_use][j]]).astype(int)
    return MatchResult(wcs=wcs, pairs=pairs, n_matches=len(pairs), n_verified=0, n_required=0,
                       rms_px=float(np.sqrt(np.mean(resid ** 2))),
                       scale_arcsec=math.sqrt(abs(det_cd)) * 3600.0,
                       rotation_deg=rotation, flipped=det_cd > 0,
                       offset_arcsec=c_sep * 3600.0, n_candidates=0, attempt=0, seconds=0.0)
