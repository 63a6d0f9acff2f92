"""Pass bands, detector QE and the stellar colour model, all in AB magnitudes.

A band's response is a top-hat in wavelength times the quantum efficiency of the
sensor kind (CCD or CMOS); telescope optics are grey and live in the zero point.
Every magnitude in the simulator is a *natural-system* AB magnitude of that
response, photon-weighted:

    m_b = -2.5 log10( ∫ f_ν R(λ) dlnλ / ∫ 3631 Jy R(λ) dlnλ )

so a source of magnitude m_b yields exactly 10**(-0.4 (m_b - ZP_e)) e-/s with
ZP_e from `telescope.zero_point_e_mag` (no colour terms by construction).

Colour model: every source (star, galaxy component, transient) is a black body of
temperature T, scaled so that its monochromatic AB magnitude at 550 nm is its
`vmag_ab` (Tycho VT is taken as that number). Smooth and simple; it has no
Balmer jump or molecular bands, so u/U colours of cool stars are only indicative.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gppy.errors import InputError

H_PLANCK = 6.62607015e-34        # J s
K_BOLTZMANN = 1.380649e-23       # J/K
C_LIGHT = 2.99792458e8           # m/s
AB_ZERO_JY = 3631.0
# AB magnitude 0 in photons per second per m^2 per unit ln(lambda): 3631 Jy / h.
AB0_PHOTONS_PER_S_M2_LNLAMBDA = AB_ZERO_JY * 1e-26 / H_PLANCK
ANCHOR_NM = 550.0                # wavelength at which vmag_ab is defined
_QUADRATURE_POINTS = 24


@dataclass(frozen=True)
class Band:
    """A top-hat pass band (nm)."""

    name: str
    lo_nm: float
    hi_nm: float

    @property
    def centre_nm(self) -> float:
        return 0.5 * (self.lo_nm + self.hi_nm)

    @property
    def width_nm(self) -> float:
        return self.hi_nm - self.lo_nm

    def grid_nm(self) -> np.ndarray:
        """Mid-points of equal steps in ln(lambda) across the band."""
        edges = np.linspace(np.log(self.lo_nm), np.log(self.hi_nm), _QUADRATURE_POINTS + 1)
        return np.exp(0.5 * (edges[1:] + edges[:-1]))


def _tophat(name: str, centre_nm: float, width_nm: float) -> Band:
    return Band(name, centre_nm - width_nm / 2, centre_nm + width_nm / 2)


# Johnson-Cousins and SDSS as top-hats of their effective width; 7DT medium bands
# m400..m875 are 25 nm wide, 25 nm apart; 'clear' is the open sensor response.
BANDS: dict[str, Band] = {b.name: b for b in (
    _tophat("U", 365, 66), _tophat("B", 445, 94), _tophat("V", 551, 88),
    _tophat("R", 658, 138), _tophat("I", 806, 149),
    _tophat("u", 355, 57), _tophat("g", 477, 137), _tophat("r", 623, 137),
    _tophat("i", 763, 153), _tophat("z", 913, 95), _tophat("y", 963, 83),
    *(_tophat(f"m{c}", c, 25) for c in range(400, 900, 25)),
    Band("clear", 350, 1000),
)}
BAND_ALIASES = {"L": "clear", "Clear": "clear", "C": "clear", "N": "clear", "w": "clear"}


class UnknownBand(InputError, KeyError):
    def __str__(self) -> str:
        return self.args[0]


def has_band(name: str) -> bool:
    return BAND_ALIASES.get(name, name) in BANDS


def band(name: str) -> Band:
    key = BAND_ALIASES.get(name, name)
    if key not in BANDS:
        raise UnknownBand(f"the simulator has no pass band for filter {name!r}; known: "
                          f"{', '.join(BANDS)} (aliases {', '.join(BAND_ALIASES)})")
    return BANDS[key]


def quantum_efficiency(wavelength_nm: np.ndarray, kind: str) -> np.ndarray:
    """Smooth QE curves: a back-illuminated broadband CCD peaking at 0.90 near 600 nm,
    a CMOS sensor peaking at 0.85 near 520 nm with a redder fall-off."""
    peak, centre, width = (0.90, 600.0, 330.0) if kind == "CCD" else (0.85, 520.0, 300.0)
    return peak * np.exp(-((np.asarray(wavelength_nm) - centre) / width) ** 2)


def response(b: Band, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(wavelengths nm, response weights per unit ln(lambda)) of a band on a sensor kind."""
    lam = b.grid_nm()
    dlnlam = np.log(b.hi_nm / b.lo_nm) / _QUADRATURE_POINTS
    return lam, quantum_efficiency(lam, kind) * dlnlam


def planck_nu(wavelength_nm: np.ndarray, temperature_k: np.ndarray) -> np.ndarray:
    """B_nu(T) up to a constant, broadcasting wavelength against temperature."""
    nu = C_LIGHT / (np.asarray(wavelength_nm) * 1e-9)
    x = H_PLANCK * nu / (K_BOLTZMANN * np.asarray(temperature_k))
    return nu ** 3 / np.expm1(x)


def colour_offsets(names: list[str], temperature_k: np.ndarray, kind: str) -> np.ndarray:
    """m_band - vmag_ab for black bodies of the given temperatures, shape (n, len(names))."""
    t = np.atleast_1d(np.asarray(temperature_k, dtype=float))[:, None]
    anchor = planck_nu(np.array([ANCHOR_NM]), t)[:, 0]
    out = np.empty((t.shape[0], len(names)))
    for j, name in enumerate(names):
        lam, w = response(band(name), kind)
        mean_fnu = (planck_nu(lam[None, :], t) * w).sum(axis=1) / w.sum()
        out[:, j] = -2.5 * np.log10(mean_fnu / anchor)
    return out


def magnitudes(names: list[str], vmag_ab: np.ndarray, temperature_k: np.ndarray,
               kind: str) -> np.ndarray:
    """Natural-system AB magnitudes, shape (n, len(names))."""
    return np.asarray(vmag_ab, dtype=float)[:, None] + colour_offsets(names, temperature_k, kind)


def ab0_photon_rate(name: str, kind: str) -> float:
    """Photo-electrons per second per m^2 of collecting area from an AB=0 source,
    through the band and the sensor QE (optics and atmosphere excluded)."""
    _, w = response(band(name), kind)
    return AB0_PHOTONS_PER_S_M2_LNLAMBDA * float(w.sum())
