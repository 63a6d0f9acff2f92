"""Cosmic-ray masks of calibrated science frames: astroscrappy (L.A.Cosmic) on a
frame in electrons with its variance and bad-pixel mask, run only where a
cosmic ray can be.

`find_cosmics` returns what `astroscrappy.detect_cosmics` returns for the
prepared frame (below) with the profile's [reduction.cosmics] parameters and the
frame's own variance as `invar` (astroscrappy need not model the noise), pixel
for pixel (tests/test_cosmics.py checks it), ~8x faster on a 4k frame (2.5 s
instead of ~20 s on 2 cores, `gppy bench cosmics`):

* Where to look. L.A.Cosmic flags a pixel first if S' = S - med7(S) > sigclip,
  with S = L+ / (2 noise), L+ the clipped Laplacian of the 2x-subsampled image and
  noise = sqrt(med7(variance)); then it grows the flags by two pixels at most.
  As S >= 0, S' <= S; and a median of 7 x 7 pixels is at least their minimum,
  which is at least the minimum over the 3 x 3 blocks of 8 x 8 around (the same
  holds for the full 5 x 5 median of sepmed = false). So every pixel
  astroscrappy can flag lies within 2 px of a "candidate", a pixel with
  L+ / (2 sqrt(that block minimum)) > sigclip: cheap to find (astroscrappy's own
  Laplacian, by row blocks). Only boxes around the candidates (stars, galaxies,
  cosmic rays, noise peaks: 15-20 % of a 4k frame), with a margin holding all that
  astroscrappy looks at to decide on the pixels inside (`_reach`: 9 px), go
  through astroscrappy, so the flags inside are those of a whole-frame run.
* One call per core. The boxes are packed side by side into one mosaic per
  thread (the margins keep the neighbouring boxes out of the result, as they
  would the box edges) and the mosaics run concurrently: astroscrappy's filters
  release the GIL (and use OpenMP, which alone leaves much of the work serial).
* Iterations. Before iteration k > 1 astroscrappy replaces the pixels flagged so
  far (`_clean`: cleantype 'meanmask', 'idw' exactly, 'medmask' up to the median
  of an even count); only pixels within reach of those whose value changed can
  change. So each later iteration runs, likewise, on boxes around the changed
  pixels only, and stops when it finds nothing new: niter costs little.
* Masked pixels. Pixels in `bad_mask`, non-finite ones and those without a
  positive variance are never reported (the caller's MASK has them). Small
  defects (hot pixels, bad columns: at least FILL_MIN_GOOD good pixels in their
  5 x 5 neighbourhood) are filled with the mean of those, not masked:
  astroscrappy ignores the neighbours of masked pixels, and would miss the part
  of a cosmic ray next to one. Larger ones are its `inmask`.
* Saturation is ours, not astroscrappy's: its `satlevel` is one number, but a
  calibrated frame's saturation level varies with the flat (and the caller's
  mask may hold only the saturated pixels and their direct neighbours). Pixels
  at or above SAT_FRACTION * `saturation_e` (scalar or per pixel), grown by
  SAT_GROW_PX, are masked and never reported: the steep wings and bleed trails
  of saturated stars are not cosmic rays.
* The frame edges. The frame is mirrored PAD_PX beyond each edge, so that
  astroscrappy's edge handling (its filters copy the outer pixels, so that it
  finds nothing within 3 px of an edge, and its Laplacian leaves them undefined;
  the wings of stars just inside were flagged) lies outside it. A star cut by the
  edge may still be flagged: the mirror makes it a double star.
* fsmode = 'convolve' gets its PSF FWHM from the frame's seeing (`seeing_px`,
  else the profile's psffwhm_px) and a kernel of +-1.5 FWHM; it is not the
  default (see profiles/_defaults.toml, whose comments give the reasons for every
  default value).
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from gppy.obsconfig.schema import Cosmics

SAT_FRACTION = 0.8      # of saturation_e: the flat spreads the calibrated level by ~+-20 %
SAT_GROW_PX = 3         # saturated stars' wings and bleed-trail ends are steep
PAD_PX = 10             # mirrored border: astroscrappy's edge effects reach ~8 px
BLOCK_PX = 4            # candidates are grouped on a grid of this many pixels
MIN_VAR_BLOCK_PX = 8    # the variance's minimum over 8 x 8 blocks bounds med7 from below
GRID_PX = 8             # the padded frame is a multiple of both
MOSAIC_WIDTH_PX = 2048
SAFETY_PX = 1
FILL_MIN_GOOD = 8       # a defect is filled if its 5 x 5 neighbourhood has this many good pixels


def find_cosmics(image_e: np.ndarray, var_e2: np.ndarray, bad_mask: np.ndarray | None,
                 read_noise_e: float, saturation_e: float | np.ndarray, params: Cosmics,
                 seeing_px: float | None = None, threads: int | None = None) -> np.ndarray:
    """The cosmic-ray mask (bool, the shape of `image_e`) of one calibrated frame.

    image_e: the calibrated frame in electrons per exposure (bias and dark
        subtracted, flat-fielded, times the gain; sky NOT subtracted).
    var_e2: its variance per pixel in e-^2 (it may include the cosmic rays' own
        charge: astroscrappy median-filters it).
    bad_mask: pixels to ignore (bad, saturated, uncalibrated), or None; they are
        never reported as cosmic rays.
    read_noise_e: read noise in e- (the variance of pixels whose variance is missing).
    saturation_e: the level in e- (scalar or per pixel) at which pixels saturate;
        pixels above SAT_FRACTION of it, and their neighbours, are ignored.
    params: the profile's [reduction.cosmics].
    seeing_px: the frame's PSF FWHM in pixels (used by fsmode = 'convolve').
    threads: mosaics processed in parallel (default: the machine's cores, at most 4).
    """
    frame = prepare(image_e, var_e2, bad_mask, read_noise_e, saturation_e, params, seeing_px)
    ny, nx = frame.shape
    found = np.zeros(frame.image.shape, bool)
    if not frame.never.all():
        threads = threads or min(os.cpu_count() or 1, 4)
        with ThreadPoolExecutor(max_workers=threads) as pool:
            found = _iterations(frame, params, pool, threads)
    found = found[PAD_PX:PAD_PX + ny, PAD_PX:PAD_PX + nx]
    found &= ~frame.never[PAD_PX:PAD_PX + ny, PAD_PX:PAD_PX + nx]
    return found


@dataclass
class Prepared:
    """A frame as astroscrappy sees it: float32, mirrored by PAD_PX beyond its edges."""

    image: np.ndarray       # e-; small defects filled from their neighbours
    var: np.ndarray         # e-^2, > 0; filled likewise
    ignored: np.ndarray     # bool: astroscrappy's inmask (saturated, large defects)
    never: np.ndarray       # bool: never reported (given mask, unusable, near saturation)
    shape: tuple[int, int]  # the frame's own shape
    kwargs: dict            # for astroscrappy.detect_cosmics (all but niter)
    reach_px: int           # what one iteration uses around a pixel (`_reach`)


def prepare(image_e, var_e2, bad_mask, read_noise_e, saturation_e, params: Cosmics,
            seeing_px=None) -> Prepared:
    """The frame, variance and masks as `find_cosmics` hands them to astroscrappy."""
    image = np.array(image_e, dtype=np.float32)
    var = np.array(var_e2, dtype=np.float32)
    if image.ndim != 2 or image.shape != var.shape:
        raise ValueError(f"image {image.shape} and variance {var.shape} must be equal 2-D shapes")
    never = (np.zeros(image.shape, bool) if bad_mask is None
             else np.array(bad_mask, dtype=bool).reshape(image.shape))
    usable = np.isfinite(image) & np.isfinite(var) & (var > 0)
    if not usable.all():
        never |= ~usable
        image[~usable] = np.median(image[usable]) if usable.any() else 0.0
        var[~usable] = max(float(read_noise_e), 1.0) ** 2
    with np.errstate(invalid="ignore"):
        saturated = image >= SAT_FRACTION * np.asarray(saturation_e, dtype=np.float32)
    if saturated.any():
        saturated = _grow(saturated, SAT_GROW_PX)
        never |= saturated
    ignored = never.copy()
    defects = never & ~saturated
    if defects.any():
        # Small defects (hot pixels, bad columns) are filled from their neighbours,
        # not masked: astroscrappy would ignore their neighbours as well.
        ys, xs = np.nonzero(defects)
        filled = _fill_from_neighbours(image, var, ys, xs, never)
        ignored[ys[filled], xs[filled]] = False
    kwargs = dict(sigclip=params.sigclip, sigfrac=params.sigfrac, objlim=params.objlim,
                  sepmed=params.sepmed, cleantype=params.cleantype, fsmode=params.fsmode,
                  gain=1.0, readnoise=float(read_noise_e), satlevel=np.inf)
    kernel_radius = 0
    if params.fsmode == "convolve":
        fwhm = float(seeing_px) if seeing_px and seeing_px > 0 else params.psffwhm_px
        kernel_radius = max(int(math.ceil(1.5 * fwhm)), 2)
        kwargs.update(psfmodel=params.psfmodel, psffwhm=fwhm, psfsize=2 * kernel_radius + 1)
    shape = image.shape
    # PAD_PX before, and up to GRID_PX - 1 more after, to a multiple of GRID_PX
    widths = [(PAD_PX, PAD_PX + (-(n + 2 * PAD_PX)) % GRID_PX) for n in shape]
    image, var, ignored, never = (np.pad(a, widths, mode="reflect")
                                  for a in (image, var, ignored, never))
    return Prepared(image, var, ignored, never, shape, kwargs, _reach(params, kernel_radius))


def _fill_from_neighbours(image, var, ys, xs, excluded, min_good: int | None = None):
    """Set image and var at (ys, xs) to the means of the pixels of their 5 x 5
    neighbourhoods that are not `excluded`, where there are at least `min_good`;
    return which pixels were filled."""
    ny, nx = image.shape
    total = np.zeros((2, ys.size), np.float64)
    count = np.zeros(ys.size, np.int64)
    for dy in range(-2, 3):
        for dx in range(-2, 3):
            yy, xx = np.clip(ys + dy, 0, ny - 1), np.clip(xs + dx, 0, nx - 1)
            use = (yy == ys + dy) & (xx == xs + dx) & ~excluded[yy, xx]
            total[0] += np.where(use, image[yy, xx], 0.0)
            total[1] += np.where(use, var[yy, xx], 0.0)
            count += use
    filled = count >= (FILL_MIN_GOOD if min_good is None else min_good)
    image[ys[filled], xs[filled]] = total[0, filled] / count[filled]
    var[ys[filled], xs[filled]] = total[1, filled] / count[filled]
    return filled


def _reach(params: Cosmics, kernel_radius: int) -> int:
    """How far from a pixel astroscrappy looks, in one iteration, to decide on it:
    the flags grow twice by one pixel (2), plus the farthest of: its mask (grown by
    one); S' = S - med(S), S from the Laplacian (one pixel) over the noise, the
    square root of med(variance); the fine-structure image (median: med then a
    wider med of the image; convolve: the kernel over the noise, then a med) and
    the noise at the pixel. Separable medians reach 3 (S, noise), 2 then 4 (fine
    structure); the others 2, 2, 1 then 3."""
    noise, s_med = (3, 3) if params.sepmed else (2, 2)
    wide = 4 if params.sepmed else 3
    if params.fsmode == "median":
        fine = (2 if params.sepmed else 1) + wide
    else:
        fine = kernel_radius + noise + wide
    return 2 + max(1, noise + s_med, 1 + s_med, fine) + SAFETY_PX


def candidates(frame: Prepared, sigclip: float, pool=None, rows: int = 256) -> np.ndarray:
    """The cells (BLOCK_PX x BLOCK_PX) holding a pixel where L+ / (2 sqrt(lower bound
    of med7(variance))) > sigclip, a superset of those whose S' can exceed sigclip
    (see the module docstring), within 2 px of the frame. In blocks of `rows` rows
    (astroscrappy's 4x subsampled Laplacian of a whole frame would take 1 GB), on
    `pool` if given."""
    ny, nx = frame.image.shape
    v, b = MIN_VAR_BLOCK_PX, BLOCK_PX
    # the minimum over the 3 x 3 blocks of v px around a pixel <= that over its 7 x 7
    floor = frame.var.reshape(ny // v, v, nx // v, v).min(axis=(1, 3))
    floor = ndimage.minimum_filter(floor, size=3, mode="nearest")
    # (1 - 1e-4): no rounding may hide a candidate
    limit = (2 * sigclip * (1 - 1e-4)) * np.sqrt(np.maximum(floor, 1e-5))
    # flags count inside the frame only, and lie within 2 px of a candidate
    (y0, y1), (x0, x1) = ((PAD_PX - 2, PAD_PX + n + 2) for n in frame.shape)
    cells = np.zeros((ny // b, nx // b), bool)
    rows -= rows % GRID_PX

    def one(a):
        z = min(a + rows, ny)
        lo, hi = max(a - 1, 0), min(z + 1, ny)      # L+ uses the pixels next to it
        lplus = _lplus(frame.image[lo:hi])[a - lo:z - lo]
        lim = np.repeat(np.repeat(limit[a // v:z // v], v, axis=0), v, axis=1)
        cand = (lplus > lim) & ~frame.ignored[a:z]
        cand[:max(y0 - a, 0)] = False
        cand[max(y1 - a, 0):] = False
        cand[:, :x0] = False
        cand[:, x1:] = False
        cells[a // b:z // b] = cand.reshape((z - a) // b, b, nx // b, b).any(axis=(1, 3))

    list((pool.map if pool else map)(one, range(0, ny, rows)))
    return cells


def _lplus(image: np.ndarray) -> np.ndarray:
    """astroscrappy's L+: the Laplacian of the 2x subsampled image, clipped at 0,
    rebinned (its own functions, so the same numbers)."""
    from astroscrappy.utils import laplaceconvolve, rebin, subsample

    lap = laplaceconvolve(subsample(np.ascontiguousarray(image)))
    np.maximum(lap, 0, out=lap)
    return rebin(lap)


@dataclass
class Box:
    core: tuple[slice, slice]   # where this box decides (in the padded frame)
    box: tuple[slice, slice]    # core plus margin: what it is given


def boxes_around(cells: np.ndarray, core_px: int, margin_px: int) -> list[Box]:
    """Boxes covering the marked `cells` (of BLOCK_PX) grown by `core_px`, each with
    `margin_px` around it; touching cells share a box."""
    b = BLOCK_PX
    ny, nx = cells.shape[0] * b, cells.shape[1] * b
    labels, _ = ndimage.label(cells, structure=np.ones((3, 3), bool))
    out = []
    for sl in ndimage.find_objects(labels):
        y0, y1 = max(sl[0].start * b - core_px, 0), min(sl[0].stop * b + core_px, ny)
        x0, x1 = max(sl[1].start * b - core_px, 0), min(sl[1].stop * b + core_px, nx)
        out.append(Box((slice(y0, y1), slice(x0, x1)),
                       (slice(max(y0 - margin_px, 0), min(y1 + margin_px, ny)),
                        slice(max(x0 - margin_px, 0), min(x1 + margin_px, nx)))))
    return out


def _cells_at(shape: tuple[int, int], ys, xs) -> np.ndarray:
    cells = np.zeros((shape[0] // BLOCK_PX, shape[1] // BLOCK_PX), bool)
    cells[ys // BLOCK_PX, xs // BLOCK_PX] = True
    return cells


def _iterations(frame: Prepared, params: Cosmics, pool, threads: int) -> np.ndarray:
    reach = frame.reach_px
    shape = frame.image.shape
    found = np.zeros(shape, bool)
    # Iteration 1: flags lie within 2 px of a candidate; deciding on them needs `reach`.
    fy, fx = run_boxes(frame, boxes_around(candidates(frame, params.sigclip, pool), 2, reach),
                       frame.image, frame.var, found, pool, threads)
    if params.niter == 1 or not fy.size:
        return found
    clean, var = frame.image.copy(), frame.var.copy()
    masked = _dilate3(frame.ignored)        # astroscrappy's own mask: inmask grown by one
    for _ in range(params.niter - 1):
        # Clean every flagged pixel again, as astroscrappy does before each iteration
        # (`_clean`); only pixels within `reach` of those whose values change can change.
        before = clean[fy, fx], var[fy, fx]
        clean[fy, fx] = _clean(frame.image, fy, fx, found, masked, params.cleantype)
        var[fy, fx] = _clean(frame.var, fy, fx, found, masked, params.cleantype)
        moved = (clean[fy, fx] != before[0]) | (var[fy, fx] != before[1])
        new = run_boxes(frame, boxes_around(_cells_at(shape, fy[moved], fx[moved]), reach, reach),
                        clean, var, found, pool, threads)
        if not new[0].size:
            break
        fy, fx = np.concatenate([fy, new[0]]), np.concatenate([fx, new[1]])
    return found


def run_boxes(frame: Prepared, boxes: list[Box], image, var, found: np.ndarray, pool,
              threads: int):
    """One astroscrappy iteration on `boxes` of (image, var), packed into one mosaic
    per thread. Sets the flags inside the boxes' cores in `found`; returns the
    newly flagged pixels (ys, xs)."""
    empty = (np.zeros(0, np.intp), np.zeros(0, np.intp))
    if not boxes:
        return empty
    groups: list[list[Box]] = [[] for _ in range(max(threads, 1))]
    load = [0] * len(groups)
    for b in sorted(boxes, key=_area, reverse=True):
        i = int(np.argmin(load))
        groups[i].append(b)
        load[i] += _area(b)
    fill = (float(np.median(image[::8, ::8])), float(np.median(var[::8, ::8])))

    def one(group: list[Box]):
        return _run_mosaic(group, image, var, frame.ignored, frame.kwargs, fill) if group else []

    ys, xs = [], []
    for results in pool.map(one, groups):
        for b, m in results:
            m &= ~found[b.core]              # new flags only (cores may overlap)
            if m.any():
                yy, xx = np.nonzero(m)
                ys.append(yy + b.core[0].start)
                xs.append(xx + b.core[1].start)
                found[b.core] |= m
    if not ys:
        return empty
    return np.concatenate(ys), np.concatenate(xs)


def _area(b: Box) -> int:
    return (b.box[0].stop - b.box[0].start) * (b.box[1].stop - b.box[1].start)


def _run_mosaic(group: list[Box], image, var, ignored, kwargs: dict, fill):
    import astroscrappy

    sizes = [(b.box[0].stop - b.box[0].start, b.box[1].stop - b.box[1].start) for b in group]
    width = max(MOSAIC_WIDTH_PX, max(w for _, w in sizes))
    places, height = _shelf_pack(sizes, width)
    m_image = np.full((height, width), fill[0], np.float32)
    m_var = np.full((height, width), fill[1], np.float32)
    m_mask = np.ones((height, width), bool)
    for b, (y, x), (h, w) in zip(group, places, sizes):
        m_image[y:y + h, x:x + w] = image[b.box]
        m_var[y:y + h, x:x + w] = var[b.box]
        m_mask[y:y + h, x:x + w] = ignored[b.box]
    flags, _ = astroscrappy.detect_cosmics(m_image, inmask=m_mask, invar=m_var, niter=1, **kwargs)
    out = []
    for b, (y, x) in zip(group, places):
        cy = y + b.core[0].start - b.box[0].start
        cx = x + b.core[1].start - b.box[1].start
        h, w = b.core[0].stop - b.core[0].start, b.core[1].stop - b.core[1].start
        out.append((b, flags[cy:cy + h, cx:cx + w]))
    return out


def _shelf_pack(sizes: list[tuple[int, int]], width: int):
    """Positions (y, x) for boxes of `sizes` (h, w) in rows ("shelves") of `width`,
    tallest first; and the total height."""
    order = sorted(range(len(sizes)), key=lambda i: sizes[i][0], reverse=True)
    places = [(0, 0)] * len(sizes)
    x = y = shelf = 0
    for i in order:
        h, w = sizes[i]
        if x + w > width:
            y, x, shelf = y + shelf, 0, 0
        places[i] = (y, x)
        x += w
        shelf = max(shelf, h)
    return places, y + shelf


_IDW_WEIGHTS = (1.0 / np.hypot(*np.mgrid[-2:3, -2:3]).clip(1e-9)).ravel()
_IDW_WEIGHTS[12] = 0.0


def _clean(values: np.ndarray, ys, xs, flagged: np.ndarray, masked: np.ndarray,
           cleantype: str) -> np.ndarray:
    """astroscrappy's cleaning of the flagged pixels (ys, xs), from their 5 x 5
    neighbourhoods: 'meanmask' the mean, 'medmask' the median, 'idw' the inverse-
    distance weighted mean of the neighbours neither flagged nor masked (the median
    of the frame where there are none); 'median' the median of all 25 (astroscrappy's
    own 'median' is broken: it keeps overwriting one element)."""
    ny, nx = values.shape
    offsets = np.mgrid[-2:3, -2:3].reshape(2, 25)
    yy, xx = ys[:, None] + offsets[0], xs[:, None] + offsets[1]
    inside = (yy >= 0) & (yy < ny) & (xx >= 0) & (xx < nx)
    yy, xx = np.clip(yy, 0, ny - 1), np.clip(xx, 0, nx - 1)
    near = values[yy, xx].astype(np.float64)
    if cleantype == "median":
        return np.median(near, axis=1).astype(values.dtype)
    use = inside & ~flagged[yy, xx] & ~masked[yy, xx]
    fallback = float(np.median(values[::8, ::8]))
    count = use.sum(axis=1)
    if cleantype == "medmask":
        with np.errstate(all="ignore"):
            out = np.nanmedian(np.where(use, near, np.nan), axis=1) if count.any() else 0.0
    else:
        weights = use * (_IDW_WEIGHTS if cleantype == "idw" else 1.0)
        with np.errstate(all="ignore"):
            out = (weights * near).sum(axis=1) / weights.sum(axis=1)
    return np.where(count > 0, out, fallback).astype(values.dtype)


def _dilate3(mask: np.ndarray) -> np.ndarray:
    """`mask` dilated by a 3 x 3 square (astroscrappy's dilate3, at the edges too)."""
    rows = mask.copy()
    rows[1:] |= mask[:-1]
    rows[:-1] |= mask[1:]
    out = rows.copy()
    out[:, 1:] |= rows[:, :-1]
    out[:, :-1] |= rows[:, 1:]
    return out


def _grow(mask: np.ndarray, radius: int) -> np.ndarray:
    """`mask` dilated by a (2 radius + 1)^2 square."""
    for _ in range(radius):
        mask = _dilate3(mask)
    return mask
