"""The photon zero point a profile's telescope implies (its [telescope] section:
aperture, obstruction, typical seeing, site sky brightness)."""

from __future__ import annotations

import math

from gppy.obsconfig.schema import Telescope
from gppy.sim.bands import ab0_photon_rate

OPTICS_THROUGHPUT = 0.75   # two mirrors, filter, window; grey


def zero_point_e_mag(tel: Telescope, band_name: str, kind: str) -> float:
    """Above the atmosphere: the natural AB magnitude giving 1 e-/s in total."""
    rate = ab0_photon_rate(band_name, kind) * tel.area_m2 * OPTICS_THROUGHPUT
    return 2.5 * math.log10(rate)
