"""Resampling onto another WCS grid (gppy.transient.resample): exact when nothing
moves, star fluxes conserved to 1e-3 and positions where the WCS puts them under
shifts, rotations (including the transposed path past 45 degrees), SIP distortion
and a change of pixel scale; ERR right per pixel with the correlation it brings;
MASK bits carried to every output pixel a bad input pixel touches."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from astropy.wcs import WCS

from gppy.reduction.flags import Pixel
from gppy.bench.resample import aperture, isolated, random_stars, render_stars, synthetic_wcs
from gppy.transient.resample import Resampler, kernel, resample

SIZE = 512


def _moved(w_in: WCS, shift=(0.0, 0.0), rot_deg=0.0, scale=1.0, sip=False) -> WCS:
    w = w_in.deepcopy()
    th = math.radians(rot_deg)
    rot = np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
    w.wcs.cd = rot @ np.asarray(w_in.wcs.cd) * scale
    w.wcs.crpix = [w_in.wcs.crpix[0] + shift[0], w_in.wcs.crpix[1] + shift[1]]
    if not sip:
        w.sip = None
        w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    return w


@pytest.fixture(scope="module")
def field():
    rng = np.random.default_rng(3)
    w_in = synthetic_wcs(SIZE)
    x, y, flux = random_stars(SIZE, 70, rng)
    image = render_stars((SIZE, SIZE), x, y, flux, 3.0).astype(np.float32) + np.float32(100.0)
    return w_in, x, y, flux, image


def test_identity_and_integer_shifts_are_exact(field):
    w_in, _, _, _, image = field
    rng = np.random.default_rng(0)
    mask = np.where(rng.random(image.shape) < 0.01, Pixel.COSMIC, 0).astype(np.uint16)
    err = np.sqrt(image)
    d, m, e, foot = resample(image, mask, err, w_in, w_in, image.shape)
    assert foot.all() and np.array_equal(d, image) and np.array_equal(m, mask)
    assert np.allclose(e, err, rtol=1e-6)
    # 5 px along x, -3 along y (a TAN grid without distortion: integers stay integers)
    w_tan = _moved(w_in)
    w_out = _moved(w_in, shift=(5.0, -3.0))
    d, m, e, foot = resample(image, mask, err, w_tan, w_out, image.shape)
    assert np.allclose(d[10:-10, 10:-10], image[13:-7, 5:-15], rtol=1e-5)
    assert np.array_equal(m[10:-10, 10:-10], mask[13:-7, 5:-15])   # no growth
    assert (m[:, :5] == Pixel.NOCAL).all() and not foot[:, :5].any() and foot[:-3, 5:].all()
    assert (d[:, :5] == 0).all() and (e[:, :5] == 0).all()


CASES = {"shift": dict(shift=(13.37, -7.61)),
         "shift+0.3deg": dict(shift=(13.37, -7.61), rot_deg=0.3),
         "10deg+SIP": dict(shift=(-20.2, 5.5), rot_deg=10.0, sip=True),
         "100deg (transposed)": dict(shift=(3.3, 4.4), rot_deg=100.0),
         "finer pixels (x0.8)": dict(shift=(2.5, 1.25), rot_deg=2.0, scale=0.8)}


# bilinear is for grids of one pixel scale: on a finer grid its stars lose ~0.2 %
PAIRS = [(c, k) for c in CASES for k in ("lanczos3", "bilinear")
         if not (k == "bilinear" and "scale" in CASES[c])]


@pytest.mark.parametrize("case,kernel_name", PAIRS)
def test_flux_and_positions(field, case, kernel_name):
    """Isolated stars (FWHM 3 px): aperture fluxes within 0.5 % each (their median
    within 1e-3), moment centroids where the WCS puts them within 0.05 px."""
    w_in, x, y, flux, image = field
    w_out = _moved(w_in, **CASES[case])
    scale = CASES[case].get("scale", 1.0)
    out, mask, err, foot = resample(image, None, None, w_in, w_out, image.shape,
                                    kernel=kernel_name)
    ra, dec = w_in.all_pix2world(x, y, 0)
    xo, yo = w_out.all_world2pix(ra, dec, 0)
    edge = 25
    ok = ((xo > edge) & (xo < SIZE - edge) & (yo > edge) & (yo < SIZE - edge)
          & isolated(x, y, 25.0))
    assert ok.sum() >= 20
    r_in, r_out = 9.0, 9.0 / scale
    f_in, cx_in, cy_in = aperture(image - 100.0, x[ok], y[ok], r_in)
    sky_out = 100.0 * scale ** 2   # the sky per output pixel scales with its area
    f_out, cx, cy = aperture(out - np.float32(sky_out), xo[ok], yo[ok], r_out)
    ratio = f_out / f_in
    offset = np.hypot(cx - xo[ok], cy - yo[ok])
    rms = np.sqrt(np.mean(offset ** 2))
    print(f"\n{case} {kernel_name}: flux ratio median {np.median(ratio):.5f}, worst "
          f"{np.abs(ratio - 1).max():.5f}; centroid offsets rms {rms:.4f} "
          f"px, worst {offset.max():.4f} (input's own: "
          f"{np.sqrt(np.mean((cx_in - x[ok]) ** 2 + (cy_in - y[ok]) ** 2)):.4f})")
    assert abs(np.median(ratio) - 1) < 1e-3
    assert np.abs(ratio - 1).max() < 0.005
    assert np.sqrt(np.mean(offset ** 2)) < 0.02 and offset.max() < 0.05
    assert not mask[foot].any()   # nothing was bad


def test_coarser_pixels_conserve_flux_on_average(field):
    """Output pixels 1.3 times larger (FWHM 3 -> 2.3 px): interpolation aliases, so
    each star's flux scatters by ~1 % (Lanczos-3) though the mean is kept; a grid
    as fine as the input's is the right choice for photometry."""
    w_in, x, y, flux, image = field
    w_out = _moved(w_in, shift=(2.5, 1.25), rot_deg=2.0, scale=1.3)
    out = resample(image, None, None, w_in, w_out, image.shape)[0]
    ra, dec = w_in.all_pix2world(x, y, 0)
    xo, yo = w_out.all_world2pix(ra, dec, 0)
    ok = ((xo > 25) & (xo < SIZE - 25) & (yo > 25) & (yo < SIZE - 25) & isolated(x, y, 25.0))
    f_in = aperture(image - 100.0, x[ok], y[ok], 9.0)[0]
    f_out = aperture(out - np.float32(100.0 * 1.3 ** 2), xo[ok], yo[ok], 9.0 / 1.3)[0]
    ratio = f_out / f_in
    print(f"\nx1.3 pixels: flux ratio median {np.median(ratio):.5f}, std {ratio.std():.5f}")
    assert abs(np.median(ratio) - 1) < 0.003 and ratio.std() < 0.01
    assert abs(out.sum() / image.sum() * (SIZE * SIZE) / foot_area(w_in, w_out) - 1) < 0.01


def foot_area(w_in: WCS, w_out: WCS) -> float:
    """Input pixels the output grid covers (both SIZE x SIZE)."""
    gy, gx = np.mgrid[0:SIZE, 0:SIZE]
    X, Y = w_in.all_world2pix(*w_out.all_pix2world(gx.ravel(), gy.ravel(), 0), 0)
    inside = (X >= -0.5) & (X <= SIZE - 0.5) & (Y >= -0.5) & (Y <= SIZE - 0.5)
    return inside.sum() * 1.3 ** 2


def test_err_per_pixel_and_the_correlation_it_hides():
    """Pure noise (sigma 10, ERR 10) resampled at half-pixel phases: noise / ERR has a
    std of 1 per pixel; ERR drops to sqrt(sum w^2) = 0.785^2 = 0.62 of the input's
    (the kernel averages neighbours), while the noise of 16 x 16 pixel sums keeps
    the input's: summing ERR^2 over an aperture underestimates its variance by
    1 / sum w^2 = 1.6 (correlated noise)."""
    n = 512
    rng = np.random.default_rng(5)
    noise = rng.normal(0, 10, (n, n)).astype(np.float32)
    err = np.full((n, n), 10.0, np.float32)
    w_in = _moved(synthetic_wcs(n))
    w_out = _moved(w_in, shift=(0.5, 0.5))
    out, mask, e, foot = resample(noise, None, err, w_in, w_out, (n, n))
    core = (slice(8, -8), slice(8, -8))
    z = (out / e)[core]
    w1 = kernel("lanczos3").table[:, 1024]
    expected = float(np.sum(w1 ** 2))   # 1-D sum of squares at phase 0.5
    print(f"\nstd(noise/ERR) {z.std():.4f}; ERR ratio {e[core].mean() / 10:.4f} "
          f"(expected {expected:.4f})")
    assert z.std() == pytest.approx(1.0, abs=0.01)
    assert e[core].mean() / 10 == pytest.approx(expected, rel=1e-3)
    blocks = out[8:-8, 8:-8][:480, :480].reshape(30, 16, 30, 16).sum(axis=(1, 3))
    var_blocks = blocks.var()
    var_from_err = float((e[core][:480, :480] ** 2).reshape(30, 16, 30, 16).sum(axis=(1, 3)).mean())
    var_input = 16 * 16 * 100.0
    print(f"16x16 sums: variance {var_blocks:.0f}, input's {var_input:.0f}, "
          f"sum of ERR^2 {var_from_err:.0f}")
    assert var_blocks == pytest.approx(var_input, rel=0.15)
    assert var_blocks / var_from_err == pytest.approx(1 / expected ** 2, rel=0.2)


def test_mask_bits_reach_every_pixel_a_bad_pixel_touches():
    n = 128
    w_in = _moved(synthetic_wcs(n))
    data = np.full((n, n), 50.0, np.float32)
    mask = np.zeros((n, n), np.uint16)
    mask[60, 40] = Pixel.COSMIC
    mask[20, 100] = Pixel.SATURATED | Pixel.HOT
    err = np.ones((n, n), np.float32)
    # a fractional shift: Lanczos-3 touches 6 x 6 output pixels, bilinear 2 x 2
    w_out = _moved(w_in, shift=(0.3, 0.6))
    for name, size in (("lanczos3", 6), ("bilinear", 2)):
        _, m, _, _ = resample(data, mask, err, w_in, w_out, (n, n), kernel=name)
        cosmic = np.argwhere(m & Pixel.COSMIC)
        sat = np.argwhere((m & (Pixel.SATURATED | Pixel.HOT)) == (Pixel.SATURATED | Pixel.HOT))
        assert len(cosmic) == size * size and len(sat) == size * size, name
        # around where the WCS puts the bad pixel: (40.3, 60.6)
        assert np.allclose(cosmic.mean(axis=0), [60.6, 40.3], atol=0.6)
        assert m[cosmic[:, 0], cosmic[:, 1]].tolist() == [Pixel.COSMIC] * size * size
    # a rotated grid: the bits stay, near the bad pixel's new place
    w_rot = _moved(w_in, shift=(2.2, 1.1), rot_deg=20)
    _, m, _, foot = resample(data, mask, err, w_in, w_rot, (n, n))
    ra, dec = w_in.all_pix2world([[40, 60]], 0)[0]
    xo, yo = w_rot.all_world2pix([[ra, dec]], 0)[0]
    cosmic = np.argwhere(m & Pixel.COSMIC)
    assert 25 <= len(cosmic) <= 49
    assert np.hypot(*(cosmic.mean(axis=0) - [yo, xo])) < 0.7
    assert ((m[~foot] == Pixel.NOCAL).all() and (~foot).sum() > 1000)


def test_block_api_matches_the_whole_image(field):
    """What the stack does: read the window of a block, resample it."""
    w_in, _, _, _, image = field
    w_out = _moved(w_in, shift=(30.3, -11.6), rot_deg=1.0)
    err = np.sqrt(image)
    mask = np.zeros(image.shape, np.uint16)
    whole = resample(image, mask, err, w_in, w_out, image.shape)
    r = Resampler(w_in, image.shape, w_out, image.shape)
    for r0, r1 in ((0, 37), (200, 333), (480, 512)):
        win = r.window(r0, r1)
        part = r.block(r0, r1, image[win], mask[win], err[win], win)
        for a, b in zip(part, whole):
            assert np.array_equal(a, b[r0:r1])


def test_speed_of_a_2k_frame():
    """data, MASK and ERR of a 2048 x 2048 frame, rotated and shifted (measured: 0.8 s
    of CPU; reproject_interp takes 4 s for the data alone)."""
    n = 2048
    rng = np.random.default_rng(1)
    data = rng.normal(100, 10, (n, n)).astype(np.float32)
    err = np.full((n, n), 10.0, np.float32)
    mask = np.zeros((n, n), np.uint16)
    w_in = synthetic_wcs(n)
    w_out = _moved(w_in, shift=(13.37, -7.61), rot_deg=0.3)
    cpu = time.process_time()
    resample(data, mask, err, w_in, w_out, (n, n))
    cpu = time.process_time() - cpu
    print(f"\n2048 x 2048: {cpu:.2f} s CPU")
    assert cpu < 4.0
