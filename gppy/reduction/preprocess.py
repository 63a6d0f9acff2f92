"""A raw frame as the calibration steps take it: float32 ADU, overscan level
removed row by row and trimmed where the profile says, and the pixels that
reached saturation in the raw data.

Saturated means within 1 % of the profile's saturation level (a pixel at full
well reads a little below it, by the read noise, and response is no longer
linear there), grown by one pixel: the neighbours of a saturated pixel hold
charge spilled from it, as do the ends of CCD bleed trails."""

from __future__ import annotations

import os

import bottleneck as bn
import numpy as np
from scipy import ndimage

from gppy.fitsio import read_image
from gppy.obsconfig.schema import Profile
from gppy.reduction.sections import parse_section

SATURATION_FRACTION = 0.99


def saturated_pixels(raw_adu: np.ndarray, saturation_adu: float) -> np.ndarray:
    saturated = raw_adu >= SATURATION_FRACTION * saturation_adu
    if saturated.any():
        saturated = ndimage.binary_dilation(saturated, structure=np.ones((3, 3), bool))
    return saturated


def preprocess(raw_adu: np.ndarray, profile: Profile) -> tuple[np.ndarray, np.ndarray]:
    """(image, saturated) from raw ADU: the overscan median of each row subtracted
    (reduction.biassec), then the image cut to reduction.trimsec."""
    saturated = saturated_pixels(raw_adu, profile.camera.saturation_adu)
    image = raw_adu.astype(np.float32, copy=True)
    red = profile.reduction
    if red.biassec:
        rows, cols = parse_section(red.biassec)
        level = bn.nanmedian(image[rows, cols], axis=1)
        image[rows, :] -= level[:, None]
    if red.trimsec:
        rows, cols = parse_section(red.trimsec)
        image, saturated = image[rows, cols], saturated[rows, cols]
    return np.ascontiguousarray(image), np.ascontiguousarray(saturated)


def load_raw(path: str | os.PathLike, profile: Profile) -> tuple[np.ndarray, np.ndarray]:
    """`preprocess` of a raw file (BadFrame if it cannot be read)."""
    return preprocess(read_image(path, dtype=np.float32), profile)


def needs_preprocessing(profile: Profile) -> bool:
    return bool(profile.reduction.biassec or profile.reduction.trimsec)
