"""Solve one frame.

1. A frame that already has a WCS is checked against the catalogue and kept when
   good (or when it cannot be checked: too few stars, no catalogue), unless forced.
2. Where the installed astrometry.net indexes can solve a field this wide,
   solve-field on the detected sources with the pixel scale and the header
   pointing as hints; otherwise (or when it fails) the detected pattern is
   matched to the reference catalogue projected at the header pointing.
3. The solution is refined against the catalogue (TAN-SIP, outliers rejected).
4. When both hinted attempts fail, one blind solve-field, within its own limits.

Every way of failing ends in an unsolved result with the reason, never an exception.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from astropy.table import Table
from astropy.wcs import WCS

from gppy.astrometry import solvefield
from gppy.astrometry.match import catalog_radius_deg, match_pattern
from gppy.astrometry.refine import refine
from gppy.astrometry.sources import detect
from gppy.errors import InputError
from gppy.settings import AstrometrySettings

# Stricter settings for a frame that came out as the night's outlier: brighter
# stars only, tighter clipping.
DETECT_SIGMA, STRICT_DETECT_SIGMA = 5.0, 10.0
CLIP_SIGMA, STRICT_CLIP_SIGMA = 3.0, 2.5


@dataclass
class Frame:
    """What is known about a frame before solving it."""

    image: np.ndarray
    mask: np.ndarray | None
    err: np.ndarray | None
    pixscale_arcsec: float | None
    ra_deg: float | None          # header pointing
    dec_deg: float | None
    existing: WCS | None = None   # a WCS already in the header

    @property
    def shape(self) -> tuple[int, int]:
        return self.image.shape

    def catalog_radius_deg(self) -> float:
        """The cone the catalogue must cover: the frame and one field width of
        pointing error around it."""
        return catalog_radius_deg(self.shape, self.pixscale_arcsec)


@dataclass
class Options:
    sip_order: int = 3
    min_stars: int = 8
    good_rms_arcsec: float = 0.5
    settings: AstrometrySettings = field(default_factory=AstrometrySettings)
    strict: bool = False
    force: bool = False


@dataclass
class AstrometryResult:
    solved: bool
    method: str | None = None       # existing | solve-field | catalog | blind
    wcs: WCS | None = None
    catalog: str | None = None
    nstars: int = 0
    rms_arcsec: float | None = None
    median_sep_arcsec: float | None = None
    sip_order: int | None = None
    seconds: float = 0.0
    error: str | None = None        # why unsolved
    note: str | None = None         # e.g. an existing WCS kept without a check
    distortion: str | None = None   # "frame": fitted to this frame alone; "night": shared
    shape: tuple[int, int] | None = None   # (ny, nx) of the frame
    pairs: Table | None = None      # the refinement's matched pairs (refine's residuals)

    def quality(self) -> dict[str, object]:
        """The header's quality keywords."""
        def r(v):
            return None if v is None else round(float(v), 4)
        return {"ASTRMETH": self.method, "ASTRCAT": self.catalog, "ASTRNSTR": self.nstars,
                "ASTRRMS": r(self.rms_arcsec), "ASTRMSEP": r(self.median_sep_arcsec),
                "ASTRSIP": self.sip_order, "ASTRDIST": self.distortion}

    def summary(self) -> dict:
        return {"solved": self.solved, "method": self.method,
                "rms_arcsec": None if self.rms_arcsec is None else round(self.rms_arcsec, 4),
                "median_sep_arcsec": (None if self.median_sep_arcsec is None
                                      else round(self.median_sep_arcsec, 4)),
                "nstars": self.nstars, "catalog": self.catalog, "sip_order": self.sip_order,
                "distortion": self.distortion, "seconds": round(self.seconds, 2),
                "error": self.error, "note": self.note}


RefStars = Callable[[float, float, float], Table]   # (ra, dec, radius deg) -> ra, dec, mag


def solve(frame: Frame, refstars: RefStars, options: Options) -> AstrometryResult:
    started = time.monotonic()
    result = _solve(frame, refstars, options)
    result.seconds = time.monotonic() - started
    return result


def _solve(frame: Frame, refstars: RefStars, options: Options) -> AstrometryResult:
    sources = detect(frame.image, frame.mask, frame.err,
                     thresh_sigma=STRICT_DETECT_SIGMA if options.strict else DETECT_SIGMA)
    if frame.existing is not None and not options.force:
        return _check_existing(frame, sources, refstars, options)
    if len(sources) < options.min_stars:
        return AstrometryResult(False, error=f"only {len(sources)} sources detected "
                                             f"(at least {options.min_stars} needed)")
    if frame.pixscale_arcsec is None and (frame.ra_deg is None or frame.dec_deg is None):
        return _blind(frame, sources, refstars, options, "no pixel scale and no pointing")
    if frame.ra_deg is None or frame.dec_deg is None:
        return _blind(frame, sources, refstars, options, "no pointing in the header")
    s = options.settings
    fov_arcmin = max(frame.shape) * frame.pixscale_arcsec / 60.0
    reasons = []
    if solvefield.available() and solvefield.can_solve(fov_arcmin, s.index_dirs):
        hinted = solvefield.solve_field(
            ranked(sources), frame.shape, pixscale_arcsec=frame.pixscale_arcsec,
            ra_deg=frame.ra_deg, dec_deg=frame.dec_deg, radius_deg=frame.catalog_radius_deg(),
            index_dirs=s.index_dirs, cpulimit_s=s.cpulimit_s, timeout_s=s.timeout_s)
        if hinted.wcs is not None:
            refined = _refined_where_solved(hinted.wcs, sources, refstars, frame, options,
                                            "solve-field")
            if refined.solved:
                return refined
            reasons.append(f"solve-field solved but refining failed: {refined.error}")
        else:
            reasons.append(f"solve-field: {hinted.error}")
    try:   # solve-field needs no catalogue: a wrong pointing may have none
        stars = refstars(frame.ra_deg, frame.dec_deg, frame.catalog_radius_deg())
    except InputError as exc:
        reasons.append(f"no catalogue at the header pointing: {exc}")
        return _blind(frame, sources, refstars, options, "; ".join(reasons))
    matched = match_pattern(sources, stars, (frame.ra_deg, frame.dec_deg),
                            frame.pixscale_arcsec, frame.shape)
    if matched is not None:
        refined = _refined(matched.wcs, sources, stars, frame, options, "catalog")
        if refined.solved:
            return refined
        reasons.append(f"catalogue match refined badly: {refined.error}")
    else:
        catalog = stars.meta.get("catalog") or "the catalogue"
        reasons.append(f"no match to {catalog} near the header pointing")
    return _blind(frame, sources, refstars, options, "; ".join(reasons))


def _blind(frame: Frame, sources: Table, refstars: RefStars, options: Options,
           why: str) -> AstrometryResult:
    """The last resort: solve-field with no pointing, within its own limits."""
    s = options.settings
    if not solvefield.available():
        return AstrometryResult(False, error=f"{why}; no blind retry: solve-field is not installed")
    if frame.pixscale_arcsec is not None:
        fov_arcmin = max(frame.shape) * frame.pixscale_arcsec / 60.0
        if not solvefield.can_solve(fov_arcmin, s.index_dirs):
            return AstrometryResult(False, error=f"{why}; no blind retry: the installed "
                                                 f"indexes cannot solve a {fov_arcmin:.0f}' field")
    blind = solvefield.solve_field(ranked(sources), frame.shape, pixscale_arcsec=frame.pixscale_arcsec,
                                   index_dirs=s.index_dirs, cpulimit_s=s.blind_cpulimit_s,
                                   timeout_s=s.blind_timeout_s)
    if blind.wcs is None:
        return AstrometryResult(False, error=f"{why}; blind solve-field: {blind.error}")
    result = _refined_where_solved(blind.wcs, sources, refstars, frame, options, "blind")
    if not result.solved:
        result.error = f"{why}; solved blind, but {result.error}"
    return result


def _refined_where_solved(wcs: WCS, sources: Table, refstars: RefStars, frame: Frame,
                          options: Options, method: str) -> AstrometryResult:
    """Refine a solution against the stars of the cone it found (which the header
    pointing's cone may not cover: solve-field searches further)."""
    try:
        stars = refstars(*_centre(wcs, frame.shape), _half_diagonal_deg(wcs, frame.shape))
    except InputError as exc:
        return AstrometryResult(False, method=method, error=f"no catalogue there: {exc}")
    return _refined(wcs, sources, stars, frame, options, method)


def _pixscale_arcsec(wcs: WCS) -> float:
    return float(np.sqrt(abs(np.linalg.det(wcs.pixel_scale_matrix)))) * 3600.0


def _centre(wcs: WCS, shape: tuple[int, int]) -> tuple[float, float]:
    ra, dec = wcs.all_pix2world([[(shape[1] - 1) / 2, (shape[0] - 1) / 2]], 0)[0]
    return float(ra), float(dec)


def _half_diagonal_deg(wcs: WCS, shape: tuple[int, int]) -> float:
    return 0.5 * float(np.hypot(*shape)) * _pixscale_arcsec(wcs) / 3600.0


def ranked(sources: Table) -> Table:
    """x, y and a 'flux' that keeps detect's brightest-first order, saturated stars
    included, for solve-field (which sorts by flux)."""
    return Table({"x": sources["x"], "y": sources["y"],
                  "flux": np.arange(len(sources), 0, -1, dtype=float)})


def _unsaturated(sources: Table) -> Table:
    """Saturated stars help to solve but their centroids are too rough to refine with."""
    return sources[~sources["saturated"]]


def _refined(initial: WCS, sources: Table, stars: Table, frame: Frame, options: Options,
             method: str) -> AstrometryResult:
    catalog = stars.meta.get("catalog")
    wcs, stats = refine(initial, _unsaturated(sources), stars, frame.shape, options.sip_order,
                        clip_sigma=STRICT_CLIP_SIGMA if options.strict else CLIP_SIGMA)
    if stats.nstars < options.min_stars:
        return AstrometryResult(False, method=method, catalog=catalog, nstars=stats.nstars,
                                error=f"only {stats.nstars} stars matched to {catalog} "
                                      f"(at least {options.min_stars} needed)")
    return AstrometryResult(True, method, wcs, catalog, stats.nstars, stats.rms_arcsec,
                            stats.median_sep_arcsec, stats.sip_order, distortion="frame",
                            shape=frame.shape, pairs=stats.residuals)


def _check_existing(frame: Frame, sources: Table, refstars: RefStars,
                    options: Options) -> AstrometryResult:
    """Keep a WCS already in the header when the catalogue agrees with it, or when
    it cannot be checked; re-solve when the catalogue disagrees."""
    wcs = frame.existing
    kept = AstrometryResult(True, "existing", wcs)
    if len(sources) < options.min_stars:
        kept.note = f"kept unchecked: only {len(sources)} sources to check it with"
        return kept
    (ra, dec), scale = _centre(wcs, frame.shape), _pixscale_arcsec(wcs)
    try:
        stars = refstars(ra, dec, _half_diagonal_deg(wcs, frame.shape))
    except InputError as exc:
        kept.note = f"kept unchecked: {exc}"
        return kept
    _, stats = refine(wcs, _unsaturated(sources), stars, frame.shape, sip_order=0, fit=False)
    kept.catalog, kept.nstars = stars.meta.get("catalog"), stats.nstars
    kept.rms_arcsec, kept.median_sep_arcsec = stats.rms_arcsec, stats.median_sep_arcsec
    if stats.nstars >= options.min_stars and stats.rms_arcsec <= options.good_rms_arcsec:
        return kept
    redo = Frame(frame.image, frame.mask, frame.err, frame.pixscale_arcsec or scale,
                 frame.ra_deg if frame.ra_deg is not None else ra,
                 frame.dec_deg if frame.dec_deg is not None else dec)
    result = _solve(redo, refstars, options)
    result.note = (f"the header's WCS disagreed with {kept.catalog} ({stats.nstars} stars, "
                   f"RMS {stats.rms_arcsec}\"): solved again")
    return result
