"""The detector: true bias, dark-current and flat images, cosmic rays, blooming,
noise and digitisation.

Raw pixel model (ADU), for a frame of exposure t seconds:

    e    = Poisson(t (F S + D)) + cosmic rays          [electrons]
    e    = bloom(e)             (CCD: charge above full well runs along the column)
    raw  = clip(round(bias + bias_offset + e / g + N(0, σ_read / g)), 0, saturation_adu)

with S the sky and sources in e-/s, F the flat (median 1), D the dark current in
e-/s and g the gain. CCDs get a column pattern in the bias, a hot column segment,
a bias-bright column and a low-sensitivity column; CMOS sensors get no bad
columns but more hot pixels, a weaker column pattern and amplifier glow in a
corner. Everything is drawn on the simulated (sub-)array, centred in the full
detector, so that vignetting and the number of defects scale honestly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gppy.obsconfig.schema import Camera
from gppy.sim.bands import band
from gppy.sim.seeds import stream

# Used where a profile gives 0 (the legacy tables often did).
DEFAULT_READ_NOISE_E = {"CCD": 8.0, "CMOS": 2.5}
DEFAULT_DARK_E_PER_S = {"CCD": 0.005, "CMOS": 0.01}
READOUT_S = {"CCD": 15.0, "CMOS": 2.0}                 # full-frame readout
COSMIC_RATE_PER_MPX_S = {"CCD": 0.05, "CMOS": 0.01}    # CMOS pixels are smaller
SET_TEMPERATURE_C = {"CCD": -25.0, "CMOS": -10.0}


def read_noise_e(camera: Camera) -> float:
    return camera.read_noise_e or DEFAULT_READ_NOISE_E[camera.kind]


def dark_e_per_s(camera: Camera) -> float:
    return camera.dark_e_per_s or DEFAULT_DARK_E_PER_S[camera.kind]


@dataclass
class Detector:
    """The true calibration images of one simulated camera (float32)."""

    bias_adu: np.ndarray             # mean bias level and structure
    dark_adu_per_s: np.ndarray       # dark current incl. hot pixels and glow
    flats: dict[str, np.ndarray]     # band -> pixel response, median 1
    bias_level_adu: float            # the scalar level inside bias_adu


def _axis_coords(camera: Camera, shape: tuple[int, int], axis_offset_px: tuple[float, float]):
    """Pixel-centre coordinates from the optical axis (the centred sub-array's
    centre plus `axis_offset_px`), in units of the full detector's half-diagonal
    (r = 1 at a full-detector corner)."""
    ny, nx = shape
    half_diag = 0.5 * np.hypot(*camera.detector_px)
    u = (np.arange(nx) - (nx - 1) / 2 - axis_offset_px[0]) / half_diag
    v = (np.arange(ny) - (ny - 1) / 2 - axis_offset_px[1]) / half_diag
    return u, v, half_diag


def _donuts(rng, image, count_full, half_diag, area_fraction, radius_px, depth):
    """Multiply `image` by dust-shadow rings ("donuts"), centres uniform on the array."""
    ny, nx = image.shape
    for _ in range(rng.poisson(count_full * area_fraction)):
        cx, cy = rng.uniform(0, nx), rng.uniform(0, ny)
        r0 = rng.uniform(*radius_px)
        width = r0 * rng.uniform(0.15, 0.3)
        d = rng.uniform(*depth)
        half = int(r0 + 3 * width) + 1
        x0, x1 = max(int(cx) - half, 0), min(int(cx) + half + 1, nx)
        y0, y1 = max(int(cy) - half, 0), min(int(cy) + half + 1, ny)
        if x0 >= x1 or y0 >= y1:
            continue
        r = np.hypot(np.arange(x0, x1)[None, :] - cx, np.arange(y0, y1)[:, None] - cy)
        image[y0:y1, x0:x1] *= 1.0 - d * np.exp(-0.5 * ((r - r0) / width) ** 2)


def build_detector(seed: int, camera: Camera, shape: tuple[int, int], band_names: list[str],
                   axis_offset_px: tuple[float, float] = (0.0, 0.0)) -> Detector:
    """Draw the camera's true bias, dark and per-band flats; vignetting is centred
    on the optical axis."""
    rng = stream(seed, "detector")
    ny, nx = shape
    ccd = camera.kind == "CCD"
    gain = camera.gain_e_per_adu
    u, v, half_diag = _axis_coords(camera, shape, axis_offset_px)
    area_fraction = nx * ny / (camera.detector_px[0] * camera.detector_px[1])

    # bias: level, gentle gradient, fixed column pattern, (CCD) a bright column
    level = float(rng.uniform(600, 2000) if ccd else rng.uniform(100, 600))
    bias = np.full(shape, level)
    bias += rng.normal(0, 3.0) * u[None, :] + rng.normal(0, 3.0) * v[:, None]
    bias += rng.normal(0, 1.0 if ccd else 0.4, nx)[None, :]
    if ccd:
        bias[:, rng.integers(0, nx)] += rng.uniform(15, 40)

    # dark current (e-/s): base rate, hot pixels, hot column segment or amp glow
    base = dark_e_per_s(camera)
    dark = np.full(shape, base) * (1.0 + 0.1 * v[:, None])
    n_hot = rng.poisson((2e-4 if ccd else 1e-3) * nx * ny)
    hot_y, hot_x = rng.integers(0, ny, n_hot), rng.integers(0, nx, n_hot)
    dark[hot_y, hot_x] += 10 ** rng.uniform(-1, 1.7, n_hot)
    if ccd:
        col, start = rng.integers(0, nx), rng.integers(0, ny)
        dark[start:, col] += rng.uniform(0.5, 3.0)
    else:  # amplifier glow from the full detector's lower right corner
        fx, fy = camera.detector_px
        glow_x = np.exp(-(0.5 * fx - u * half_diag) / (0.05 * half_diag))
        glow_y = np.exp(-(0.5 * fy + v * half_diag) / (0.05 * half_diag))
        dark += 20 * base * glow_y[:, None] * glow_x[None, :]

    # flat: vignetting, dust on the window (all bands) and on each filter, PRNU
    r2 = u[None, :] ** 2 + v[:, None] ** 2
    vignetting = 1.0 - rng.uniform(0.08, 0.18) * r2 - rng.uniform(0.0, 0.05) * r2 ** 2
    common = vignetting.copy()
    _donuts(rng, common, 12, half_diag, area_fraction, (20, 45), (0.01, 0.04))
    prnu_common = rng.normal(0.0, 1.0, shape)
    low_column = rng.integers(0, nx) if ccd else None
    flats = {}
    for name in band_names:
        # a per-band stream, so a band's flat does not depend on which other bands are simulated
        band_rng = stream(seed, "flat", name)
        flat = common.copy()
        _donuts(band_rng, flat, 6, half_diag, area_fraction, (8, 25), (0.02, 0.06))
        blue = 500.0 / band(name).centre_nm          # PRNU is stronger in the blue
        flat *= 1.0 + (0.006 * blue) * prnu_common + 0.002 * band_rng.normal(0.0, 1.0, shape)
        if low_column is not None:
            flat[:, low_column] *= 0.7
        flats[name] = (flat / np.median(flat)).astype(np.float32)
    return Detector(bias_adu=bias.astype(np.float32),
                    dark_adu_per_s=(dark / gain).astype(np.float32),
                    flats=flats, bias_level_adu=level)


def cosmic_rays(rng: np.random.Generator, shape: tuple[int, int], kind: str,
                duration_s: float) -> np.ndarray:
    """Charge (e-) deposited by cosmic rays during `duration_s` (exposure plus
    readout): about 60% round spots of 1-4 px, the rest straight tracks (up to
    40 px on a thick CCD, 10 px on a CMOS sensor) sharing their charge between
    neighbouring pixels."""
    ny, nx = shape
    n = rng.poisson(COSMIC_RATE_PER_MPX_S[kind] * nx * ny / 1e6 * duration_s)
    deposit = np.zeros(ny * nx)
    max_length = 40.0 if kind == "CCD" else 10.0
    xs, ys, charges = [], [], []
    for _ in range(n):
        x, y = rng.uniform(0, nx), rng.uniform(0, ny)
        if rng.random() < 0.6:
            count = rng.integers(8, 40)
            xs.append(x + rng.normal(0, rng.uniform(0.2, 0.6), count))
            ys.append(y + rng.normal(0, rng.uniform(0.2, 0.6), count))
            charges.append(np.full(count, rng.lognormal(np.log(1500), 0.6) / count))
        else:
            length = rng.uniform(2, max_length)
            angle = rng.uniform(0, np.pi)
            t = np.arange(0, length, 0.25)
            xs.append(x + t * np.cos(angle))
            ys.append(y + t * np.sin(angle))
            charges.append(rng.lognormal(np.log(600), 0.5) * 0.25 * rng.uniform(0.7, 1.3, t.size))
    if n:
        x, y, q = np.concatenate(xs) - 0.5, np.concatenate(ys) - 0.5, np.concatenate(charges)
        fx, fy = x - np.floor(x), y - np.floor(y)
        ix, iy = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
        for ox, oy, w in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)),
                          (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
            px, py = ix + ox, iy + oy
            ok = (px >= 0) & (px < nx) & (py >= 0) & (py < ny)
            deposit += np.bincount(py[ok] * nx + px[ok], weights=(q * w)[ok], minlength=ny * nx)
    return deposit.reshape(shape)


def bloom(electrons: np.ndarray, full_well_e: float) -> None:
    """CCD blooming, in place: charge above the full well of a pixel spills along
    its column, half upwards and half downwards, filling neighbours to full well."""
    over_cols = np.nonzero((electrons > full_well_e).any(axis=0))[0]
    for col in over_cols:
        column = electrons[:, col]
        over = np.nonzero(column > full_well_e)[0]
        excess = float((column[over] - full_well_e).sum())
        column[over] = full_well_e
        lo, hi = over.min(), over.max()
        for direction, share in ((1, 0.5 * excess), (-1, 0.5 * excess)):
            run = np.arange(hi + 1, column.size) if direction > 0 else np.arange(lo - 1, -1, -1)
            room = np.maximum(full_well_e - column[run], 0.0)
            filled = np.minimum(np.cumsum(room), share)
            column[run] += np.diff(filled, prepend=0.0)
        electrons[:, col] = column


def digitise(electrons: np.ndarray, bias_adu: np.ndarray, gain_e_per_adu: float,
             read_noise_e: float, saturation_adu: float, rng: np.random.Generator) -> np.ndarray:
    """ADU as the camera writes them: uint16, read noise added, clipped at saturation."""
    adu = bias_adu + electrons / gain_e_per_adu
    adu += rng.normal(0.0, read_noise_e / gain_e_per_adu, electrons.shape)
    return np.clip(np.rint(adu), 0, min(saturation_adu, 65535)).astype(np.uint16)
