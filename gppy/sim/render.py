"""Frames from the truth: the noise-free expectation and the noisy raw frame.

Everything here is a pure function of a loaded `truth.Truth` and one of its
frame records (plus, for the raw frame, a random generator), so the simulator
and later checks draw the very same images.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from gppy.sim import instrument
from gppy.sim.pointing import spherical_offset, wcs_from_cards
from gppy.sim.psf import (PSF, convolve_tiles, kernel_radius, render_points, render_sersic,
                          sersic_extent)

_MARGIN_PX = 200   # sources this far outside the array may still shine onto it


def _on_sky(table, frame: dict, wcs, shape, mag_column: str):
    """Rows of `table` in the frame's field near the array, with 0-based pixel positions."""
    ny, nx = shape
    rows = table[(table["field"] == frame["field"]) & np.isfinite(table[mag_column])]
    if len(rows) == 0:
        return rows, np.empty(0), np.empty(0)
    centre_ra, centre_dec = wcs.all_pix2world([(nx - 1) / 2], [(ny - 1) / 2], 0)
    scale_deg = np.sqrt(abs(np.linalg.det(wcs.wcs.cd)))
    radius = np.radians(1.2 * (0.5 * np.hypot(nx, ny) + _MARGIN_PX) * scale_deg)
    ra, dec = np.radians(rows["ra"]), np.radians(rows["dec"])
    c_ra, c_dec = np.radians(centre_ra[0]), np.radians(centre_dec[0])
    cos_sep = np.sin(dec) * np.sin(c_dec) + np.cos(dec) * np.cos(c_dec) * np.cos(ra - c_ra)
    rows = rows[cos_sep > np.cos(radius)]
    x, y = wcs.all_world2pix(rows["ra"], rows["dec"], 0, tolerance=1e-8, maxiter=50)
    near = (x > -_MARGIN_PX) & (x < nx + _MARGIN_PX) & (y > -_MARGIN_PX) & (y < ny + _MARGIN_PX)
    return rows[near], x[near], y[near]


def _rate(mag, zp_e_mag):
    return 10 ** (-0.4 * (np.asarray(mag, dtype=float) - zp_e_mag))


def _galaxies(rows, x, y, wcs, psf: PSF, shape, rate) -> np.ndarray:
    """PSF-convolved galaxy light (e-/s) on the frame; major axis and r_eff are
    mapped through the WCS (the point r_eff away along the position angle)."""
    tip_ra, tip_dec = spherical_offset(rows["ra"], rows["dec"], rows["pa_deg"],
                                       rows["r_eff_arcsec"] / 3600.0)
    tip_x, tip_y = wcs.all_world2pix(tip_ra, tip_dec, 0, tolerance=1e-8, maxiter=50)
    r_eff_px = np.hypot(tip_x - x, tip_y - y)
    angle = np.arctan2(tip_y - y, tip_x - x)
    extent_px = sersic_extent(np.asarray(rows["sersic_n"]))[0] * r_eff_px
    pad = kernel_radius(psf, shape)
    ny, nx = shape
    layer = np.zeros((ny + 2 * pad, nx + 2 * pad))
    for i in range(len(rows)):
        reach = extent_px[i] + pad
        if x[i] + reach < 0 or x[i] - reach >= nx or y[i] + reach < 0 or y[i] - reach >= ny:
            continue
        render_sersic(layer, x[i] + pad, y[i] + pad, float(rate[i]), float(rows["sersic_n"][i]),
                      float(r_eff_px[i]), float(rows["axis_ratio"][i]), float(angle[i]))
    return convolve_tiles(layer, psf, pad)


def source_rate(truth, frame: dict) -> np.ndarray:
    """Sky plus sources in e-/s per pixel, as they arrive at the detector (before
    the flat): what a perfect calibration recovers, times gain / exptime."""
    shape = truth.shape
    image = np.zeros(shape)
    if frame["type"] not in ("flat", "science"):
        return image
    psf = PSF(**frame["psf"])
    if frame["type"] == "flat":
        if frame["point_sources"]:
            x, y, rate = np.asarray(frame["point_sources"]).T
            render_points(image, psf, x, y, rate)
    else:
        wcs = wcs_from_cards(frame["wcs"])
        column = f"mag_{frame['filter']}"
        for table in (truth.stars, truth.transients):
            rows, x, y = _on_sky(table, frame, wcs, shape, column)
            render_points(image, psf, x, y, _rate(rows[column], frame["zp_e_mag"]))
        rows, x, y = _on_sky(truth.galaxies, frame, wcs, shape, column)
        if len(rows):
            image += _galaxies(rows, x, y, wcs, psf, shape, _rate(rows[column], frame["zp_e_mag"]))
    gx, gy = frame["sky_gradient_per_px"]
    ys, xs = np.arange(shape[0]) - psf.axis_y, np.arange(shape[1]) - psf.axis_x
    image += frame["sky_e_per_s"] * (1.0 + gx * xs[None, :] + gy * ys[:, None])
    return image


def expected_calibrated_adu(truth, frame: dict) -> np.ndarray:
    """The noise-free calibrated frame (bias and dark removed, divided by the
    flat), in ADU per exposure: source_rate * exptime / gain. Cosmic rays and
    saturation are not part of it."""
    return source_rate(truth, frame) * (frame["exptime_s"] / truth.gain)


def _electron_rate(truth, frame: dict) -> np.ndarray:
    """Expected e-/s at each pixel: the flat times sky and sources, plus dark current."""
    rate = truth.detector.dark_adu_per_s.astype(np.float64) * truth.gain
    if frame["type"] in ("flat", "science"):
        rate += truth.flat(frame["filter"]) * source_rate(truth, frame)
    return rate


def expected_raw_adu(truth, frame: dict) -> np.ndarray:
    """The noise-free raw frame in ADU (float; no cosmic rays, no saturation)."""
    bias = truth.detector.bias_adu.astype(np.float64) + frame["bias_offset_adu"]
    return bias + _electron_rate(truth, frame) * (frame["exptime_s"] / truth.gain)


def draw_raw(truth, frame: dict, rng: np.random.Generator,
             deposit_of: Callable[[np.ndarray], np.ndarray] | None = None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(uint16 raw data, cosmic-ray charge drawn, charge deposited) in e-, drawing
    from `rng` in a fixed order (see `gppy.sim.instrument` for the pixel model).
    `deposit_of(cosmic)` may change what is deposited (benchmarks replaying a frame
    with more or no cosmic rays) without changing the draws."""
    cam = truth.camera
    electrons = rng.poisson(_electron_rate(truth, frame) * frame["exptime_s"]).astype(np.float64)
    cosmic = instrument.cosmic_rays(rng, truth.shape, cam["kind"],
                                    frame["exptime_s"] + cam["readout_s"])
    deposit = cosmic if deposit_of is None else deposit_of(cosmic)
    electrons += deposit
    if cam["kind"] == "CCD":
        instrument.bloom(electrons, cam["full_well_e"])
    bias = truth.detector.bias_adu.astype(np.float64) + frame["bias_offset_adu"]
    data = instrument.digitise(electrons, bias, truth.gain, cam["read_noise_e"],
                               cam["saturation_adu"], rng)
    return data, cosmic, deposit


def raw_frame(truth, frame: dict, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(uint16 raw data, cosmic-ray mask) as the camera writes them. The mask marks
    pixels given more than one read-noise sigma of charge by a cosmic ray."""
    data, cosmic, _ = draw_raw(truth, frame, rng)
    return data, cosmic > truth.camera["read_noise_e"]
