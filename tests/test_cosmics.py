"""gppy.reduction.cosmics.find_cosmics on small simulated KCT frames (1024 x 1024,
a fixed seed), scored with the metrics of gppy.bench.cosmics (see its docstring):
cosmic rays with a peak above 10 sigma are found, star cores are not flagged,
nor saturated stars, nor bad pixels; a frame without cosmic rays gives a
near-empty mask; and the fast path (candidate boxes in mosaics) returns what
astroscrappy returns for the whole frame. Speed is `gppy bench cosmics`'s business."""

from __future__ import annotations

import dataclasses

import astroscrappy
import numpy as np
import pytest
from scipy import ndimage

from gppy.bench.cosmics import (calibrated_frame, default_params, run_ours, score,
                                simulate_frames, summarise)
from gppy.reduction import cosmics
from gppy.reduction.cosmics import find_cosmics, prepare
from gppy.astrometry import tycho

pytestmark = pytest.mark.skipif(not (tycho.DEFAULT_INDEX_DIR / tycho.INDEX_NAME).is_file(),
                                reason="astrometry-data-tycho2-07-littleendian is not installed")

SIZE, SEED, EXPTIME_S = 1024, 7, 300.0
EXTRA_COSMICS_S = 3000.0     # more cosmic rays than one exposure's ~25, for the statistics


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    truth, frames = simulate_frames(tmp_path_factory.mktemp("kct"), SIZE, 1, seed=SEED,
                                    processes=2, exptime_s=EXPTIME_S)
    return truth, frames[0]


@pytest.fixture(scope="module")
def busy(night):
    """The frame with its own cosmic rays and ~250 more."""
    return calibrated_frame(*night, extra_cosmics_s=EXTRA_COSMICS_S)


@pytest.fixture(scope="module")
def busy_mask(busy):
    return run_ours(busy)


def test_finds_strong_cosmic_rays_and_spares_star_cores(busy, busy_mask):
    t = summarise([score(busy_mask, busy.truth)])
    assert t["strong_crs"] >= 150 and t["strong_px"] >= 1500
    assert t["recovery"] >= 0.90, t
    assert t["stars"] >= 50 and t["star_core_px"] >= 2000
    assert t["star_core"] < 0.001, t
    # and it does not flag much else: noise peaks, galaxies
    assert t["false_px"] < 1e-4 * SIZE * SIZE, t


def test_same_as_astroscrappy_on_the_whole_frame(busy):
    """Candidate boxes packed into mosaics, and later iterations only near the
    pixels they change, give astroscrappy's own result for the whole (prepared)
    frame."""
    for niter, tolerance in ((1, 0), (default_params().niter, 0.001)):
        params = dataclasses.replace(default_params(), niter=niter)
        frame = prepare(busy.image_e, busy.var_e2, busy.bad_mask, busy.read_noise_e,
                        busy.saturation_e, params, busy.seeing_px)
        whole, _ = astroscrappy.detect_cosmics(frame.image, inmask=frame.ignored, invar=frame.var,
                                               niter=niter, **frame.kwargs)
        inside = tuple(slice(cosmics.PAD_PX, cosmics.PAD_PX + n) for n in frame.shape)
        whole = whole[inside] & ~frame.never[inside]
        ours = run_ours(busy, params)
        assert whole.sum() > 1000
        assert (ours != whole).sum() <= tolerance * whole.sum(), (niter, (ours != whole).sum())


def _saturated_stars(cal, min_px: int = 5):
    """Labels of saturated regions of at least `min_px` pixels (stars, not hits)."""
    labels, n = ndimage.label(cal.image_e >= 0.9 * cal.saturation_e, structure=np.ones((3, 3)))
    sizes = ndimage.sum(np.ones_like(labels), labels, index=np.arange(1, n + 1))
    return np.isin(labels, 1 + np.nonzero(sizes >= min_px)[0]), int((sizes >= min_px).sum())


def test_saturated_stars_are_not_cosmic_rays(busy, busy_mask):
    saturated, n_stars = _saturated_stars(busy)
    assert n_stars >= 2
    fwhm = busy.seeing_px
    around = ndimage.binary_dilation(saturated, structure=np.ones((3, 3), bool),
                                     iterations=int(np.ceil(4 * fwhm)))
    # within 4 FWHM of saturated pixels (wings, bleed trails), only true cosmic rays
    assert not (busy_mask & around & ~busy.truth.cr_near).any()


def test_bad_pixels_are_not_reported_and_do_not_hide_their_neighbours(busy, busy_mask):
    """Defects in the mask are never reported as cosmic rays, nor do they make
    new flags around them; a cosmic ray next to a bad pixel is still found
    (find_cosmics fills small defects from their neighbours instead of letting
    astroscrappy ignore everything next to them)."""
    rng = np.random.default_rng(1)
    image, bad = busy.image_e.copy(), busy.bad_mask.copy()
    defects = np.zeros(image.shape, bool)
    ys, xs = rng.integers(20, SIZE - 20, (2, 300))
    defects[ys, xs] = True                      # hot pixels, bright as cosmic rays
    image[ys, xs] += rng.uniform(500, 5000, ys.size)
    defects[100:700, 300] = True                # a hot column segment
    image[100:700, 300] += 3000
    defects[:, 700] = True                      # a dead column
    image[:, 700] = 0
    # and single bad pixels right next to strong cosmic-ray pixels found before
    strong = np.argwhere(busy.truth.strong_cr & busy_mask)
    chosen = strong[rng.choice(len(strong), 40, replace=False)]
    beside = chosen + [0, 1]
    beside = beside[beside[:, 1] < SIZE]
    defects[beside[:, 0], beside[:, 1]] = True
    bad |= defects
    mask = find_cosmics(image, busy.var_e2, bad, busy.read_noise_e, busy.saturation_e,
                        default_params(), seeing_px=busy.seeing_px)
    assert not (mask & bad).any()
    near = ndimage.binary_dilation(defects, structure=np.ones((3, 3), bool), iterations=2)
    assert not (mask & near & ~busy_mask & ~busy.truth.cr_near).any()
    kept = ~defects[chosen[:, 0], chosen[:, 1]]
    found = mask[chosen[kept, 0], chosen[kept, 1]]
    assert found.mean() >= 0.9, found.mean()


def test_no_cosmic_rays_gives_a_near_empty_mask(night):
    quiet = calibrated_frame(*night, sim_cosmics=False, with_truth=False)
    mask = run_ours(quiet)
    assert mask.sum() <= 5e-5 * SIZE * SIZE, mask.sum()


def test_non_finite_pixels_and_no_mask(busy, busy_mask):
    image = busy.image_e.copy()
    holes = np.zeros(image.shape, bool)
    holes[500:503, 500:520] = True
    image[holes] = np.nan
    image[10, 10] = np.inf
    mask = find_cosmics(image, busy.var_e2, busy.bad_mask, busy.read_noise_e, busy.saturation_e,
                        default_params(), seeing_px=busy.seeing_px)
    assert mask.dtype == bool and mask.shape == image.shape
    assert not mask[holes].any() and not mask[10, 10]
    far = ~ndimage.binary_dilation(holes, iterations=12)
    far[:22, :22] = False
    assert (mask[far] != busy_mask[far]).sum() == 0
    # no bad-pixel mask at all, and a per-pixel saturation level
    mask = find_cosmics(busy.image_e, busy.var_e2, None, busy.read_noise_e,
                        np.full(image.shape, busy.saturation_e, np.float32), default_params())
    assert mask.sum() >= busy_mask.sum() * 0.9


def test_fsmode_convolve_uses_the_frames_seeing(busy):
    params = dataclasses.replace(default_params(), fsmode="convolve", objlim=1.0)
    frame = prepare(busy.image_e, busy.var_e2, busy.bad_mask, busy.read_noise_e,
                    busy.saturation_e, params, seeing_px=3.2)
    assert frame.kwargs["psffwhm"] == 3.2 and frame.kwargs["psfsize"] == 11
    mask = find_cosmics(busy.image_e, busy.var_e2, busy.bad_mask, busy.read_noise_e,
                        busy.saturation_e, params, seeing_px=busy.seeing_px)
    assert summarise([score(mask, busy.truth)])["recovery"] > 0.5
