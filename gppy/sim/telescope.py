"""Telescope facts the profiles lack (aperture, seeing, site sky brightness; from
data/telescopes.toml) and the photon zero point they imply."""

from __future__ import annotations

import math
import re
import tomllib
from dataclasses import dataclass
from importlib import resources

from gppy.sim.bands import ab0_photon_rate

OPTICS_THROUGHPUT = 0.75   # two mirrors, filter, window; grey


@dataclass(frozen=True)
class Telescope:
    aperture_m: float
    obstruction: float          # secondary / primary diameter
    seeing_arcsec: float        # median zenith FWHM
    sky_offset_mag: float       # night sky brighter than a dark site by this

    @property
    def area_m2(self) -> float:
        return math.pi / 4 * self.aperture_m ** 2 * (1 - self.obstruction ** 2)


def telescope_for(profile_name: str) -> Telescope:
    """Values for a profile name: the exact key, else the longest key it starts with
    followed by a unit number or '_' and a camera ('7DT05', 'DOAO_APOGEE'), else default."""
    table = tomllib.loads(resources.files("gppy.sim").joinpath("data/telescopes.toml").read_text())
    name = profile_name.casefold()
    matches = [k for k in table if re.fullmatch(re.escape(k.casefold()) + r"(\d+|_.*)?", name)]
    key = max(matches, key=len, default="default")
    return Telescope(**{**table["default"], **table[key]})


def zero_point_e_mag(tel: Telescope, band_name: str, kind: str) -> float:
    """Above the atmosphere: the natural AB magnitude giving 1 e-/s in total."""
    rate = ab0_photon_rate(band_name, kind) * tel.area_m2 * OPTICS_THROUGHPUT
    return 2.5 * math.log10(rate)
