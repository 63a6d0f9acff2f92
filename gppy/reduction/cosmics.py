"""Cosmic-ray masks of calibrated science frames: astroscrappy (L.A.Cosmic), made
fast and safe for frames in electrons with a variance plane and a bad-pixel mask.

`find_cosmics` runs `astroscrappy.detect_cosmics` with the profile's
[reduction.cosmics] parameters and the frame's own variance (`invar`, so that
astroscrappy need not model the noise), and adds:

* Masked pixels stay out. Pixels in `bad_mask`, non-finite pixels and pixels with
  no positive variance are astroscrappy's `inmask` (it also ignores their direct
  neighbours); pixels near saturation are masked and grown (see below); none of
  these is ever returned as a cosmic ray: the caller's MASK already flags them.
* Saturation is ours, not astroscrappy's: its `satlevel` is one number in the
  units of the image, but a calibrated frame's saturation level varies with the
  flat. Pixels at or above SAT_FRACTION * `saturation_e` (scalar or per pixel)
  are masked and grown by SAT_GROW_PX, so that the steep wings and bleed trails
  of saturated stars are not taken for cosmic rays.
* The frame edges: the image is mirrored PAD_PX beyond each edge, so that
  astroscrappy's edge handling (its median filters and Laplacian treat the
  outer pixels specially and flag star wings there) falls outside the frame.
* Both cores: the first iteration runs on overlapping row blocks, one per
  thread (astroscrappy releases the GIL in its filters and numpy in its ufuncs;
  its OpenMP loops alone leave most of the numpy work serial).
* Further iterations only where they can change anything: iteration k > 1 of
  L.A.Cosmic re-examines a frame in which only the pixels flagged so far were
  replaced, so it can only find new pixels next to earlier ones. Iterations 2..niter
  therefore run on small boxes around the first iteration's detections (with a
  margin that keeps the boxes' own edges out of the result), not on the whole frame.
* fsmode = 'convolve' builds astroscrappy's PSF kernel from the frame's seeing
  (`seeing_px`, else the profile's psffwhm_px), over +-1.5 FWHM.

The defaults in profiles/_defaults.toml and why: see the comments there.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from scipy import ndimage

from gppy.obsconfig.schema import Cosmics

SAT_FRACTION = 0.8      # of saturation_e: the flat spreads the calibrated level by ~+-20 %
SAT_GROW_PX = 3         # saturated stars' wings and bleed-trail ends are steep
PAD_PX = 10             # mirrored border: astroscrappy's edge effects reach ~5 px
BLOCK_OVERLAP_PX = 16   # one iteration sees ~9 px (Laplacian 1, noise and S' medians 3 + 3, growth 2)
REFINE_REACH_PX = 6     # new pixels of a later iteration lie this close to earlier ones
REFINE_MARGIN_PX = 16   # and need this much context around them


def find_cosmics(image_e: np.ndarray, var_e2: np.ndarray, bad_mask: np.ndarray | None,
                 read_noise_e: float, saturation_e: float | np.ndarray, params: Cosmics,
                 seeing_px: float | None = None, threads: int | None = None) -> np.ndarray:
    """The cosmic-ray mask (bool, shape of `image_e`) of one calibrated frame.

    image_e: the calibrated frame in electrons per exposure (bias and dark
        subtracted, flat-fielded, times the gain; sky NOT subtracted).
    var_e2: its variance per pixel in e-^2 (may include the cosmic rays' own
        charge: astroscrappy median-filters it).
    bad_mask: pixels to ignore (bad, saturated, uncalibrated), or None; never
        reported as cosmic rays.
    read_noise_e: read noise in electrons (only used where the variance is missing).
    saturation_e: level in e- (scalar or per pixel) at which a pixel saturates;
        pixels above SAT_FRACTION of it, and their neighbours, are ignored.
    params: the profile's [reduction.cosmics].
    seeing_px: the frame's PSF FWHM in pixels, for fsmode = 'convolve'.
    threads: row blocks processed in parallel (default: the machine's cores, at most 4).
    """
    image = np.array(image_e, dtype=np.float32, copy=True)
    var = np.array(var_e2, dtype=np.float32, copy=True)
    if image.ndim != 2 or image.shape != var.shape:
        raise ValueError(f"image {image.shape} and variance {var.shape} must be equal 2-D shapes")
    ny, nx = image.shape
    given = (np.zeros(image.shape, bool) if bad_mask is None
             else np.asarray(bad_mask, dtype=bool).reshape(image.shape))
    usable = np.isfinite(image) & np.isfinite(var) & (var > 0)
    ignored = given | ~usable
    with np.errstate(invalid="ignore"):
        saturated = image >= SAT_FRACTION * np.asarray(saturation_e, dtype=np.float32)
    if saturated.any():
        ignored |= _grow(saturated, SAT_GROW_PX)
    if not usable.all():
        image[~usable] = np.median(image[usable]) if usable.any() else 0.0
        var[~usable] = max(read_noise_e, 1.0) ** 2
    if ignored.all():
        return np.zeros(image.shape, bool)

    image, var, ignored_p = (np.pad(a, PAD_PX, mode="reflect") for a in (image, var, ignored))
    kwargs = _astroscrappy_kwargs(params, read_noise_e, seeing_px)
    threads = threads or min(os.cpu_count() or 1, 4)

    with ThreadPoolExecutor(max_workers=threads) as pool:
        found, clean = _first_iteration(pool, threads, image, var, ignored_p, kwargs)
        if params.niter > 1 and found.any():
            found |= _later_iterations(pool, found, clean, var, ignored_p, kwargs, params.niter - 1)
    found = found[PAD_PX:PAD_PX + ny, PAD_PX:PAD_PX + nx]
    found &= ~ignored
    return found


def _astroscrappy_kwargs(params: Cosmics, read_noise_e: float, seeing_px: float | None) -> dict:
    kwargs = dict(sigclip=params.sigclip, sigfrac=params.sigfrac, objlim=params.objlim,
                  sepmed=params.sepmed, cleantype=params.cleantype, fsmode=params.fsmode,
                  gain=1.0, readnoise=float(read_noise_e), satlevel=np.inf)
    if params.fsmode == "convolve":
        fwhm = float(seeing_px) if seeing_px and seeing_px > 0 else params.psffwhm_px
        kwargs.update(psfmodel=params.psfmodel, psffwhm=fwhm,
                      psfsize=2 * max(int(math.ceil(1.5 * fwhm)), 2) + 1)
    return kwargs


def _detect(image, var, mask, kwargs, niter: int):
    import astroscrappy

    return astroscrappy.detect_cosmics(image, inmask=mask, invar=var, niter=niter, **kwargs)


def _first_iteration(pool, threads, image, var, mask, kwargs):
    """Iteration 1 on overlapping row blocks: (mask, cleaned image)."""
    ny = image.shape[0]
    edges = np.linspace(0, ny, threads + 1).round().astype(int)
    blocks = [(a, b) for a, b in zip(edges[:-1], edges[1:]) if b > a]

    def one(block):
        a, b = block
        lo, hi = max(a - BLOCK_OVERLAP_PX, 0), min(b + BLOCK_OVERLAP_PX, ny)
        m, c = _detect(image[lo:hi], var[lo:hi], mask[lo:hi], kwargs, 1)
        return a, b, m[a - lo:b - lo], c[a - lo:b - lo]

    found = np.zeros(image.shape, bool)
    clean = np.empty_like(image)
    for a, b, m, c in pool.map(one, blocks):
        found[a:b], clean[a:b] = m, c
    return found, clean


def _later_iterations(pool, found, clean, var, mask, kwargs, niter: int) -> np.ndarray:
    """Iterations 2..niter+1, on boxes around the pixels `found` so far, on the
    cleaned image (and the variance cleaned the same way: 5 x 5 mean of the
    unflagged, unmasked pixels)."""
    ny, nx = found.shape
    reach = REFINE_REACH_PX * niter
    margin = REFINE_MARGIN_PX * niter
    labels, _ = ndimage.label(found, structure=np.ones((3, 3), bool))
    cores = []
    for sl in ndimage.find_objects(labels):
        cores.append([max(sl[0].start - reach, 0), min(sl[0].stop + reach, ny),
                      max(sl[1].start - reach, 0), min(sl[1].stop + reach, nx)])
    cores = _merge_boxes(cores, 2 * margin)

    def one(core):
        y0, y1, x0, x1 = core
        by0, by1 = max(y0 - margin, 0), min(y1 + margin, ny)
        bx0, bx1 = max(x0 - margin, 0), min(x1 + margin, nx)
        box = (slice(by0, by1), slice(bx0, bx1))
        f, m = found[box], mask[box]
        v = var[box].copy()
        if f.any():
            good = (~f & ~m).astype(np.float32)
            num = ndimage.uniform_filter(v * good, 5, mode="nearest")
            den = ndimage.uniform_filter(good, 5, mode="nearest")
            fill = np.where(den > 0, num / np.maximum(den, 1e-12), np.median(v))
            v[f] = fill[f]
        new, _ = _detect(clean[box], v, m, kwargs, niter)
        return core, new[y0 - by0:y1 - by0, x0 - bx0:x1 - bx0]

    more = np.zeros(found.shape, bool)
    for (y0, y1, x0, x1), new in pool.map(one, cores):
        more[y0:y1, x0:x1] |= new
    return more


def _merge_boxes(boxes: list[list[int]], gap: int) -> list[list[int]]:
    """Merge boxes [y0, y1, x0, x1] that overlap or lie within `gap` of each other
    (each box's margins would mostly repeat the other's work)."""
    boxes = sorted(boxes)
    merged = True
    while merged:
        merged = False
        out: list[list[int]] = []
        for b in boxes:
            for o in out:
                if (b[0] < o[1] + gap and o[0] < b[1] + gap
                        and b[2] < o[3] + gap and o[2] < b[3] + gap):
                    o[0], o[1] = min(o[0], b[0]), max(o[1], b[1])
                    o[2], o[3] = min(o[2], b[2]), max(o[3], b[3])
                    merged = True
                    break
            else:
                out.append(list(b))
        boxes = out
    return boxes


def _grow(mask: np.ndarray, radius: int) -> np.ndarray:
    """`mask` dilated by a (2 radius + 1)^2 square, computed only around its pixels."""
    out = mask.copy()
    labels, _ = ndimage.label(mask)
    ny, nx = mask.shape
    for sl in ndimage.find_objects(labels):
        y0, y1 = max(sl[0].start - radius, 0), min(sl[0].stop + radius, ny)
        x0, x1 = max(sl[1].start - radius, 0), min(sl[1].stop + radius, nx)
        out[y0:y1, x0:x1] |= ndimage.maximum_filter(mask[y0:y1, x0:x1], 2 * radius + 1)
    return out
