"""Filter systems of reference magnitudes. Everything this package hands out is AB.

Vega -> AB. A catalogue that publishes Vega magnitudes (APASS B V, 2MASS J H Ks,
Gaia G BP RP) and every Johnson-Cousins magnitude computed below are put on the AB
system by adding m_AB - m_Vega:

* Johnson-Cousins U B V R I and 2MASS J H Ks: Blanton & Roweis 2007, AJ 133, 734,
  Table 1 (VEGA_TO_AB_MAG).
* Gaia G, BP, RP: the difference of the DR3 (EDR3) AB and Vega zero points of Riello
  et al. 2021, A&A 649, A3 (GAIA_VEGA_TO_AB_MAG).
* SDSS u and z are slightly off AB (SDSS DR7 documentation): u_AB = u_SDSS - 0.04,
  z_AB = z_SDSS + 0.02 (SDSS_TO_AB_MAG). PS1, SkyMapper and APASS g r i are AB.

Johnson-Cousins from survey bands. Each `Relation` is a published fit giving the
Vega-system magnitude as a linear combination of the catalogue's own (native)
magnitudes plus, for Tonry et al., a term quadratic in g - r:

* PS1 -> B V R I: Tonry et al. 2012, ApJ 750, 99, Table 6, in (g - r)_P1; the
  quadratic fits by default ("quadratic"), the linear ones on request ("linear";
  those reproduce the legacy gpPy PS1 -> BVRI tables exactly).
* SDSS -> U B V R I and APASS -> R I: Jordi, Grebel & Ammon 2006, A&A 460, 339
  (the ugriz -> UBVRI relations for stars). U combines their U-B in (u-g) with B-g
  in (g-r); APASS has no z, so its I combines their R-r and R-I, both in (r-i).

The error of a transformed magnitude is the input errors propagated through the
relation (first order, independent inputs) with the relation's star-to-star
scatter added in quadrature.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

# m_AB - m_Vega (Blanton & Roweis 2007, Table 1)
VEGA_TO_AB_MAG = {"U": 0.79, "B": -0.09, "V": 0.02, "R": 0.21, "I": 0.45,
                  "J": 0.91, "H": 1.39, "K": 1.85}
# m_AB - m_Vega from the Gaia DR3 zero points (AB 25.8010 25.3540 25.1040;
# Vega 25.6874 25.3385 24.7479 for G BP RP; Riello et al. 2021)
GAIA_VEGA_TO_AB_MAG = {"G": 0.1136, "BP": 0.0155, "RP": 0.3561}
# m_AB - m_SDSS
SDSS_TO_AB_MAG = {"u": -0.04, "z": 0.02}

TONRY = "Tonry et al. 2012, ApJ 750, 99, Table 6"
JORDI = "Jordi, Grebel & Ammon 2006, A&A 460, 339"
# Jordi et al. quote the uncertainties of their coefficients, not a star-to-star
# scatter: this much is assumed for it
JORDI_SCATTER_MAG = 0.02


@dataclass(frozen=True)
class Relation:
    """band (Vega) = zero_mag + sum(coef * input) + quad_coef * (b1 - b2)**2."""

    band: str                                 # Johnson-Cousins output band
    zero_mag: float
    linear: tuple[tuple[str, float], ...]     # (input band, coefficient)
    quadratic: tuple[str, str, float] | None  # (b1, b2, coefficient of (b1 - b2)^2)
    scatter_mag: float                        # the fit's rms about the relation
    source: str

    @property
    def inputs(self) -> list[str]:
        names = [b for b, _ in self.linear]
        if self.quadratic:
            names += [b for b in self.quadratic[:2] if b not in names]
        return names

    def apply(self, mags: Mapping[str, np.ndarray],
              errs: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """The AB magnitude and its error from native input magnitudes and errors."""
        mag = np.full(np.shape(mags[self.inputs[0]]), self.zero_mag, dtype=np.float64)
        slope = {b: 0.0 for b in self.inputs}   # d band / d input
        for b, coef in self.linear:
            mag = mag + coef * np.asarray(mags[b], np.float64)
            slope[b] = slope[b] + coef
        if self.quadratic:
            b1, b2, c2 = self.quadratic
            x = np.asarray(mags[b1], np.float64) - np.asarray(mags[b2], np.float64)
            mag = mag + c2 * x * x
            slope[b1] = slope[b1] + 2.0 * c2 * x
            slope[b2] = slope[b2] - 2.0 * c2 * x
        var = np.full_like(mag, self.scatter_mag ** 2)
        for b, d in slope.items():
            var = var + (d * np.asarray(errs[b], np.float64)) ** 2
        return mag + VEGA_TO_AB_MAG[self.band], np.sqrt(var)

    def describe(self) -> str:
        return f"{self.band} from {'/'.join(self.inputs)} ({self.source}), Vega->AB"


def _colour_fit(band: str, base: str, b1: str, b2: str, c0: float, c1: float, c2: float,
                scatter_mag: float, source: str) -> Relation:
    """band = base + c0 + c1 x + c2 x^2 with x = b1 - b2, as the papers write them."""
    linear: dict[str, float] = {base: 1.0}
    linear[b1] = linear.get(b1, 0.0) + c1
    linear[b2] = linear.get(b2, 0.0) - c1
    return Relation(band, c0, tuple(linear.items()), (b1, b2, c2) if c2 else None,
                    scatter_mag, source)


# Tonry et al. 2012, Table 6: (A0, A1, A2, rms) of band - base in x = (g - r)_P1
PS1_QUADRATIC = {
    "B": _colour_fit("B", "g", "g", "r", 0.212, 0.556, 0.034, 0.032, TONRY + " (quadratic)"),
    "V": _colour_fit("V", "r", "g", "r", 0.005, 0.462, 0.013, 0.012, TONRY + " (quadratic)"),
    "R": _colour_fit("R", "r", "g", "r", -0.137, -0.108, -0.029, 0.015, TONRY + " (quadratic)"),
    "I": _colour_fit("I", "i", "g", "r", -0.366, -0.136, -0.018, 0.017, TONRY + " (quadratic)"),
}
PS1_LINEAR = {
    "B": _colour_fit("B", "g", "g", "r", 0.213, 0.587, 0.0, 0.034, TONRY + " (linear)"),
    "V": _colour_fit("V", "r", "g", "r", 0.006, 0.474, 0.0, 0.012, TONRY + " (linear)"),
    "R": _colour_fit("R", "r", "g", "r", -0.138, -0.131, 0.0, 0.015, TONRY + " (linear)"),
    "I": _colour_fit("I", "i", "g", "r", -0.367, -0.149, 0.0, 0.016, TONRY + " (linear)"),
}

# Jordi et al. 2006: B-g = 0.313(g-r) + 0.219; V-g = -0.565(g-r) - 0.016;
# R-r = -0.153(r-i) - 0.117; I-i = -0.386(i-z) - 0.397; U-B = 0.79(u-g) - 0.93;
# R-I = 0.930(r-i) + 0.259
_B_SDSS = _colour_fit("B", "g", "g", "r", 0.219, 0.313, 0.0, JORDI_SCATTER_MAG, JORDI)
_R_SDSS = _colour_fit("R", "r", "r", "i", -0.117, -0.153, 0.0, JORDI_SCATTER_MAG, JORDI)
SDSS_JORDI = {
    # U = B + 0.79(u-g) - 0.93 = 0.79 u + (1.313 - 0.79) g - 0.313 r + (0.219 - 0.93)
    "U": Relation("U", 0.219 - 0.93, (("u", 0.79), ("g", 1.313 - 0.79), ("r", -0.313)), None,
                  JORDI_SCATTER_MAG, JORDI + " (U-B with B-g)"),
    "B": _B_SDSS,
    "V": _colour_fit("V", "g", "g", "r", -0.016, -0.565, 0.0, JORDI_SCATTER_MAG, JORDI),
    "R": _R_SDSS,
    "I": _colour_fit("I", "i", "i", "z", -0.397, -0.386, 0.0, JORDI_SCATTER_MAG, JORDI),
}
APASS_JORDI = {
    "R": _R_SDSS,
    # I = R - 0.930(r-i) - 0.259 = r - (0.153 + 0.930)(r-i) - (0.117 + 0.259)
    "I": _colour_fit("I", "r", "r", "i", -0.117 - 0.259, -0.153 - 0.930, 0.0,
                     JORDI_SCATTER_MAG, JORDI + " (R-r with R-I)"),
}

PS1_RELATIONS = {"quadratic": PS1_QUADRATIC, "linear": PS1_LINEAR}
_BY_CATALOG = {"PS1": PS1_QUADRATIC, "SDSS": SDSS_JORDI, "APASS": APASS_JORDI}


def relation(catalog: str, band: str, ps1_relation: str = "quadratic") -> Relation | None:
    """The relation giving `band` from catalogue `catalog`'s bands, or None."""
    if ps1_relation not in PS1_RELATIONS:
        raise ValueError(f"ps1_relation must be one of {', '.join(PS1_RELATIONS)}, "
                         f"got {ps1_relation!r}")
    table = PS1_RELATIONS[ps1_relation] if catalog == "PS1" else _BY_CATALOG.get(catalog, {})
    return table.get(band)


def transformable_bands(catalog: str) -> set[str]:
    """The Johnson-Cousins bands computed from `catalog`'s own bands."""
    return set(_BY_CATALOG.get(catalog, {}))
