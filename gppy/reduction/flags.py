"""Bit flags of the MASK extension (and of the bad-pixel mask, whose bits are the
first three), and of the CALFLAG header keyword. One definition for every stage."""

from __future__ import annotations

from enum import IntFlag

import numpy as np


class Pixel:
    """MASK bits, as numpy uint16 so they combine with mask arrays in place."""

    HOT = np.uint16(1)          # dark current far above the median (bad-pixel mask)
    LOW = np.uint16(2)          # dead or low response in the flat (bad-pixel mask)
    BADCOL = np.uint16(4)       # in a column with many bad pixels (bad-pixel mask)
    SATURATED = np.uint16(8)    # at or above the saturation level in the raw frame
    COSMIC = np.uint16(16)      # cosmic ray
    NOCAL = np.uint16(32)       # a master had no valid value here (NaN)


BPM_BITS = Pixel.HOT | Pixel.LOW | Pixel.BADCOL


class Cal(IntFlag):
    """CALFLAG: how a calibrated frame got its masters."""

    BIAS_BORROWED = 1
    DARK_BORROWED = 2
    FLAT_BORROWED = 4
    DARK_SCALED = 8    # dark of another exposure time, scaled
    NO_DARK = 16       # no usable dark: dark current not removed
    BPM_BORROWED = 32
