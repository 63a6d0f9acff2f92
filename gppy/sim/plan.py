"""The observing plan of a night: which frames, when, where, and under what sky.

Evening routine: biases and darks ending 10 min before sunset; twilight flats
from a solar altitude of -2 deg, bands in order of increasing twilight signal,
exposure times set from the previous frame's sky rate (so levels differ, as with
real automatic flats); science from a solar altitude of -16 deg: each field in
turn, each band, `nscience` dithered frames. Every frame's conditions are drawn
here: seeing and PSF, sky, transparency (in the zero point), bias offset,
commanded pointing and the true WCS.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from dataclasses import asdict, dataclass
from functools import cached_property

import numpy as np

from gppy.errors import InputError
from gppy.obsconfig.schema import Profile, Telescope
from gppy.sim import atmosphere, ephem
from gppy.sim.instrument import READOUT_S, SET_TEMPERATURE_C, read_noise_e
from gppy.sim.pointing import Optics, offset_arcsec, true_wcs_cards
from gppy.sim.psf import PSF
from gppy.sim.seeds import stream
from gppy.sim.sky import Field
from gppy.sim.telescope import zero_point_e_mag

SCIENCE_SUN_ALT_DEG = -16.0
FLAT_SUN_ALT_DEG = -2.0
MAX_FLAT_EXPTIME_S = 60.0
MIN_FLAT_EXPTIME_S = 1.0
# Near the zenith the twilight sky brightens towards the Sun by roughly 1 % per degree
# (Chromey & Hasselbacher 1996, PASP 108, 944); the same direction for a whole flat sequence.
TWILIGHT_GRADIENT_PER_DEG = 0.01
OVERHEAD_S = 5.0
SLEW_S = 60.0
DITHER_BOX_ARCSEC = 60.0
POINTING_ERROR_ARCSEC = 20.0     # rms per axis, per field and night
POINTING_JITTER_ARCSEC = 1.5     # rms per axis, frame to frame


class SimulationError(InputError, ValueError):
    """A run that cannot be simulated as asked (bad filter, file-name template, ...)."""


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a simulated run."""

    profile: Profile
    seed: int
    shape: tuple[int, int]           # (ny, nx) simulated array
    bands: list[str]                 # filters observed
    first_night: dt.date
    n_nights: int
    n_fields: int
    nscience: int                    # frames per field and band
    exptime_s: float                 # science exposure
    n_bias: int = 5
    n_flat: int = 5                  # per band
    darks_per_exptime: int = 3
    n_transients: int = 8            # per field, appearing from the second night
    transient_faint_mag: float = -0.3  # faintest peak, relative to a frame's 5-sigma depth
    # PSF change across the field (FWHM growth, radial ellipticity at the detector's
    # half-diagonal); None: drawn from the seed, 3-10 % and 0.02-0.06
    field_psf: tuple[float, float] | None = None

    @cached_property
    def telescope(self) -> Telescope:
        return self.profile.telescope

    @cached_property
    def optics(self) -> Optics:
        return Optics.draw(stream(self.seed, "optics"), self.profile.camera.detector_px)

    @property
    def dark_exptimes_s(self) -> list[float]:
        return sorted({10.0, 60.0, float(self.exptime_s)})

    @property
    def readout_s(self) -> float:
        kind = self.profile.camera.kind
        pixels = self.shape[0] * self.shape[1]
        return READOUT_S[kind] * (pixels / 2048 ** 2 if kind == "CCD" else 1.0)

    def night(self, index: int) -> dt.date:
        return self.first_night + dt.timedelta(days=index)


@dataclass
class Frame:
    """One frame of the night and its true conditions (what the truth file records)."""

    seq: int
    type: str                          # bias | dark | flat | science
    filter: str                        # canonical band (the wheel position for bias/dark)
    exptime_s: float
    dateobs: str                       # ISO UTC, start of exposure
    mjd: float
    ccd_temp_c: float
    bias_offset_adu: float
    sun_alt_deg: float
    file: str = ""
    object: str | None = None          # the OBJECT card (science frames)
    field: str | None = None           # IMSNG field (science frames)
    ra_cmd_deg: float | None = None    # commanded pointing (written to the header)
    dec_cmd_deg: float | None = None
    airmass: float | None = None
    fwhm_arcsec: float | None = None   # PSF FWHM at the optical axis
    psf: dict | None = None            # `psf.PSF` fields
    zp_e_mag: float | None = None      # 1 e-/s in the calibrated image
    zp_mag: float | None = None        # 1 ADU/s in the calibrated image
    extinction_mag: float | None = None  # k X + clouds, included in the zero points
    sky_mag_arcsec2: float | None = None
    sky_e_per_s: float | None = None   # per pixel at the optical axis, before the flat
    sky_adu_per_s: float | None = None
    sky_gradient_per_px: list[float] = dataclasses.field(default_factory=lambda: [0.0, 0.0])
    wcs: dict | None = None            # true WCS header cards (science frames)
    point_sources: list[list[float]] = dataclasses.field(default_factory=list)  # flats: x, y, e-/s

    def as_dict(self) -> dict:
        return asdict(self)


def point_source_depth(zp_e_mag: float, sky_e_per_s: float, fwhm_px: float,
                       exptime_s: float, read_noise: float, snr: float = 5.0) -> float:
    """Magnitude detected at `snr` with PSF-optimal weighting (noise area 2.27 FWHM^2)."""
    area = 2.266 * fwhm_px ** 2
    background = area * (sky_e_per_s * exptime_s + read_noise ** 2)
    signal = 0.5 * (snr ** 2 + math.sqrt(snr ** 4 + 4 * snr ** 2 * background))
    return zp_e_mag - 2.5 * math.log10(signal / exptime_s)


def nominal_depth(cfg: RunConfig, band_name: str, airmass: float = 1.2) -> float:
    """5-sigma depth of one science frame in median conditions."""
    cam, site, tel = cfg.profile.camera, cfg.profile.site, cfg.telescope
    k = atmosphere.extinction_mag_per_airmass(band_name, site.height_m)
    zp_top = zero_point_e_mag(tel, band_name, cam.kind)
    mu = atmosphere.sky_mag(band_name, -90.0, airmass, k, tel.sky_offset_mag)
    sky = 10 ** (-0.4 * (mu - zp_top)) * cam.pixscale_arcsec ** 2
    fwhm_px = tel.seeing_arcsec * airmass ** 0.6 / cam.pixscale_arcsec
    return point_source_depth(zp_top - k * airmass, sky, fwhm_px, cfg.exptime_s, read_noise_e(cam))


def science_start_jd(cfg: RunConfig, night: dt.date) -> float:
    site = cfg.profile.site
    return ephem.evening_crossing_jd(night, site.latitude_deg, site.longitude_deg,
                                     SCIENCE_SUN_ALT_DEG)


def science_block_s(cfg: RunConfig) -> float:
    per_frame = cfg.exptime_s + cfg.readout_s + OVERHEAD_S
    return SLEW_S + len(cfg.bands) * cfg.nscience * per_frame


def choose_fields(cfg: RunConfig, fields: list[Field]) -> list[Field]:
    """The `n_fields` IMSNG fields highest above the horizon throughout the first
    night's science window (ranked by their lowest altitude in it)."""
    site = cfg.profile.site
    start = science_start_jd(cfg, cfg.first_night)
    window = start + np.linspace(0, cfg.n_fields * science_block_s(cfg), 8) / 86400.0
    lowest = [float(ephem.altitude_deg(window, f.ra_deg, f.dec_deg, site.latitude_deg,
                                       site.longitude_deg).min()) for f in fields]
    order = sorted(range(len(fields)), key=lambda i: (-lowest[i], fields[i].name))
    return [fields[i] for i in order[:cfg.n_fields]]


def _iso(jd: float) -> str:
    return ephem.datetime_from_jd(jd).isoformat(timespec="milliseconds")


class _NightPlanner:
    """Draws one night's conditions and lays its frames out in time."""

    def __init__(self, cfg: RunConfig, night_index: int):
        self.cfg, self.night_index = cfg, night_index
        self.cam, self.site, self.tel = cfg.profile.camera, cfg.profile.site, cfg.telescope
        self.night = cfg.night(night_index)
        self.rng = rng = stream(cfg.seed, "night", night_index)
        self.half_diag_px = 0.5 * math.hypot(*self.cam.detector_px)
        growth, radial_e = stream(cfg.seed, "psf-field").uniform((0.03, 0.02), (0.10, 0.06))
        if cfg.field_psf is not None:
            growth, radial_e = cfg.field_psf
        self.static_psf = {"field_growth": float(growth), "field_ellipticity": float(radial_e),
                           "norm_radius_px": self.half_diag_px}
        self.seeing_arcsec = self.tel.seeing_arcsec * float(rng.lognormal(0.0, 0.15))
        self.beta = float(rng.uniform(3.0, 4.5))
        self.cloud_mag = abs(float(rng.normal(0.0, 0.03)))
        self.sky_offset_mag = float(rng.normal(0.0, 0.15))
        self.rotation_deg = float(rng.normal(0.0, 0.02))
        self.frames: list[Frame] = []
        self.wheel = cfg.bands[0]
        self.jd = 0.0

    def sun_alt(self, jd: float) -> float:
        return float(ephem.sun_altitude_deg(jd, self.site.latitude_deg, self.site.longitude_deg))

    def crossing(self, sun_altitude: float) -> float:
        site = self.site
        return ephem.evening_crossing_jd(self.night, site.latitude_deg, site.longitude_deg,
                                         sun_altitude)

    def zp_top(self, band_name: str) -> float:
        return zero_point_e_mag(self.tel, band_name, self.cam.kind)

    def sky_rate(self, band_name: str, mu: float) -> float:
        """e-/s per pixel from a sky of `mu` mag/arcsec^2."""
        return 10 ** (-0.4 * (mu - self.zp_top(band_name))) * self.cam.pixscale_arcsec ** 2

    def twilight_rate(self, band_name: str, jd: float) -> float:
        mu = atmosphere.sky_mag(band_name, self.sun_alt(jd), 1.0, 0.0, self.tel.sky_offset_mag)
        return self.sky_rate(band_name, mu)

    def add(self, ftype: str, exptime: float, **kw) -> None:
        rng = self.rng
        self.frames.append(Frame(
            seq=len(self.frames) + 1, type=ftype, filter=kw.pop("filter", self.wheel),
            exptime_s=float(exptime), dateobs=_iso(self.jd), mjd=round(self.jd - 2400000.5, 8),
            ccd_temp_c=round(SET_TEMPERATURE_C[self.cam.kind] + float(rng.normal(0, 0.1)), 2),
            bias_offset_adu=float(rng.normal(0.0, 0.5)), sun_alt_deg=self.sun_alt(self.jd), **kw))
        self.jd += (exptime + self.cfg.readout_s + OVERHEAD_S) / 86400.0

    def conditions(self, band_name: str, altitude: float, sun_alt: float, gradient: float,
                   sky_mag: float | None = None, gradient_angle_rad: float | None = None) -> dict:
        """Airmass, PSF, zero points, sky (the model's unless `sky_mag` is given) with a
        linear sky gradient of `gradient` (fraction per detector half-diagonal) towards
        `gradient_angle_rad` on the detector (random when None)."""
        rng, gain = self.rng, self.cam.gain_e_per_adu
        x = float(atmosphere.airmass(altitude))
        k = atmosphere.extinction_mag_per_airmass(band_name, self.site.height_m)
        ext = k * x + self.cloud_mag + abs(float(rng.normal(0.0, 0.01)))
        if sky_mag is None:
            sky_mag = (atmosphere.sky_mag(band_name, sun_alt, x, k, self.tel.sky_offset_mag)
                       + self.sky_offset_mag)
        sky_e = self.sky_rate(band_name, sky_mag)
        fwhm = self.seeing_arcsec * x ** 0.6 * float(rng.lognormal(0.0, 0.08))
        ny, nx = self.cfg.shape
        psf = PSF(fwhm_px=fwhm / self.cam.pixscale_arcsec,
                  beta=float(np.clip(self.beta + rng.normal(0, 0.1), 2.5, 5.0)),
                  ellipticity=float(rng.uniform(0.01, 0.08)), theta_deg=float(rng.uniform(0, 180)),
                  axis_x=(nx - 1) / 2 + self.cfg.optics.axis_offset_px[0],
                  axis_y=(ny - 1) / 2 + self.cfg.optics.axis_offset_px[1], **self.static_psf)
        angle = rng.uniform(0, 2 * np.pi) if gradient_angle_rad is None else gradient_angle_rad
        zp_e = self.zp_top(band_name) - ext
        return dict(filter=band_name, airmass=round(x, 4), fwhm_arcsec=fwhm, psf=psf.as_dict(),
                    zp_e_mag=zp_e, zp_mag=zp_e - 2.5 * math.log10(gain), extinction_mag=ext,
                    sky_mag_arcsec2=sky_mag, sky_e_per_s=sky_e, sky_adu_per_s=sky_e / gain,
                    sky_gradient_per_px=[gradient * math.cos(angle) / self.half_diag_px,
                                         gradient * math.sin(angle) / self.half_diag_px])

    def calibrations(self) -> None:
        """Biases, then darks at each exposure time, ending 10 min before sunset."""
        cfg = self.cfg
        per_frame = cfg.readout_s + OVERHEAD_S
        total_s = cfg.n_bias * per_frame + sum(cfg.darks_per_exptime * (t + per_frame)
                                               for t in cfg.dark_exptimes_s)
        self.jd = self.crossing(-0.83) - (600 + total_s) / 86400.0
        for _ in range(cfg.n_bias):
            self.add("bias", 0.0)
        for exptime in cfg.dark_exptimes_s:
            for _ in range(cfg.darks_per_exptime):
                self.add("dark", exptime)

    @property
    def twilight_gradient(self) -> float:
        """The twilight sky's gradient across a detector half-diagonal near the zenith."""
        return TWILIGHT_GRADIENT_PER_DEG * self.half_diag_px * self.cam.pixscale_arcsec / 3600.0

    def sun_direction_rad(self, jd: float) -> float:
        """Direction of the Sun's azimuth on the detector for a zenith pointing
        (north up, east left): the twilight sky is brighter that way."""
        az = math.radians(ephem.sun_azimuth_deg(jd, self.site.latitude_deg, self.site.longitude_deg))
        return math.atan2(math.cos(az), -math.sin(az))

    def twilight_flats(self) -> None:
        """Evening sky flats near the zenith with a few faint stars in each."""
        cfg, rng, ny, nx = self.cfg, self.rng, *self.cfg.shape
        self.jd = self.crossing(FLAT_SUN_ALT_DEG)
        full_e = self.cam.saturation_adu * self.cam.gain_e_per_adu
        for band_name in sorted(cfg.bands, key=lambda b: self.twilight_rate(b, self.jd)):
            rate_seen = self.twilight_rate(band_name, self.jd)
            for _ in range(cfg.n_flat):
                target_e = full_e * rng.uniform(0.3, 0.55)     # of the saturation level
                while target_e / rate_seen < MIN_FLAT_EXPTIME_S:  # too bright yet: wait
                    self.jd += 20.0 / 86400.0
                    rate_seen = self.twilight_rate(band_name, self.jd)
                exptime = round(min(target_e / rate_seen, MAX_FLAT_EXPTIME_S), 1)
                mid = self.jd + exptime / 2 / 86400.0
                mu = atmosphere.sky_mag(band_name, self.sun_alt(mid), 1.0, 0.0,
                                        self.tel.sky_offset_mag)
                cond = self.conditions(band_name, 89.0, self.sun_alt(mid), self.twilight_gradient,
                                       sky_mag=mu, gradient_angle_rad=self.sun_direction_rad(mid))
                cond["point_sources"] = [
                    [float(rng.uniform(0, nx)), float(rng.uniform(0, ny)),
                     cond["sky_e_per_s"] * float(rng.uniform(0.5, 4))]
                    for _ in range(int(rng.poisson(10 * nx * ny / 2048 ** 2)) + 2)]
                lst = float(ephem.local_sidereal_deg(self.jd, self.site.longitude_deg))
                self.add("flat", exptime, ra_cmd_deg=lst, dec_cmd_deg=self.site.latitude_deg - 1.0,
                         **cond)
                rate_seen = self.twilight_rate(band_name, self.jd)   # what the observer last saw
            self.wheel = band_name

    def science(self, fields: list[Field]) -> None:
        """Each field in turn, each band, `nscience` dithered frames."""
        cfg, rng, cam, site = self.cfg, self.rng, self.cam, self.site
        self.jd = max(self.jd + 300 / 86400.0, science_start_jd(cfg, self.night))
        for fld in fields:
            self.jd += SLEW_S / 86400.0
            pointing_rng = stream(cfg.seed, "pointing", self.night_index, fld.name)
            error = pointing_rng.normal(0.0, POINTING_ERROR_ARCSEC, 2)
            for band_name in cfg.bands:
                for _ in range(cfg.nscience):
                    dither = rng.uniform(-DITHER_BOX_ARCSEC / 2, DITHER_BOX_ARCSEC / 2, 2)
                    ra_cmd, dec_cmd = offset_arcsec(fld.ra_deg, fld.dec_deg, *dither)
                    east, north = error + rng.normal(0.0, POINTING_JITTER_ARCSEC, 2)
                    ra_true, dec_true = offset_arcsec(ra_cmd, dec_cmd, east, north)
                    mid = self.jd + cfg.exptime_s / 2 / 86400.0
                    alt = float(ephem.altitude_deg(mid, fld.ra_deg, fld.dec_deg, site.latitude_deg,
                                                   site.longitude_deg))
                    cond = self.conditions(band_name, alt, self.sun_alt(mid), 0.005)
                    wcs = true_wcs_cards(cfg.optics, cam.pixscale_arcsec, cfg.shape,
                                         ra_true, dec_true, self.rotation_deg)
                    self.add("science", cfg.exptime_s, object=fld.name, field=fld.name,
                             ra_cmd_deg=ra_cmd, dec_cmd_deg=dec_cmd, wcs=wcs, **cond)
                self.wheel = band_name
                self.jd += 10.0 / 86400.0  # filter change


def plan_night(cfg: RunConfig, night_index: int, fields: list[Field]) -> list[Frame]:
    """All frames of one night, in time order, file names not yet assigned."""
    planner = _NightPlanner(cfg, night_index)
    planner.calibrations()
    planner.twilight_flats()
    planner.science(fields)
    return planner.frames
