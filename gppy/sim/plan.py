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

import datetime as dt
import math
import dataclasses
from dataclasses import asdict, dataclass
from functools import cached_property

import numpy as np

from gppy.obsconfig.schema import Profile
from gppy.sim import atmosphere, ephem
from gppy.sim.bands import band
from gppy.sim.instrument import READOUT_S, SET_TEMPERATURE_C, read_noise_e
from gppy.sim.pointing import Optics, offset_arcsec, true_wcs_cards
from gppy.sim.psf import PSF
from gppy.sim.seeds import stream
from gppy.sim.sky import Field
from gppy.sim.telescope import Telescope, telescope_for, zero_point_e_mag

SCIENCE_SUN_ALT_DEG = -16.0
FLAT_SUN_ALT_DEG = -2.0
MAX_FLAT_EXPTIME_S = 60.0
MIN_FLAT_EXPTIME_S = 1.0
OVERHEAD_S = 5.0
SLEW_S = 60.0
DITHER_BOX_ARCSEC = 60.0
POINTING_ERROR_ARCSEC = 20.0     # rms per axis, per field and night
POINTING_JITTER_ARCSEC = 1.5     # rms per axis, frame to frame


class SimulationError(ValueError):
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
    n_flat: int = 3                  # per band
    darks_per_exptime: int = 2

    @cached_property
    def telescope(self) -> Telescope:
        return telescope_for(self.profile.name)

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
    point_sources: list[list[float]] = dataclasses.field(default_factory=list)  # flats: [x, y, e-/s]

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
    return ephem.evening_crossing_jd(night, site.latitude_deg, site.longitude_deg, SCIENCE_SUN_ALT_DEG)


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


class _Clock:
    """Night time in Julian days, advanced frame by frame."""

    def __init__(self, jd: float):
        self.jd = jd

    def advance(self, seconds: float) -> None:
        self.jd += seconds / 86400.0


def _iso(jd: float) -> str:
    return ephem.datetime_from_jd(jd).isoformat(timespec="milliseconds")


def _psf(cfg: RunConfig, rng, fwhm_arcsec: float, beta: float, static: dict) -> PSF:
    ny, nx = cfg.shape
    return PSF(fwhm_px=fwhm_arcsec / cfg.profile.camera.pixscale_arcsec, beta=beta,
               ellipticity=float(rng.uniform(0.01, 0.08)), theta_deg=float(rng.uniform(0, 180)),
               axis_x=(nx - 1) / 2 + cfg.optics.axis_offset_px[0],
               axis_y=(ny - 1) / 2 + cfg.optics.axis_offset_px[1], **static)


def plan_night(cfg: RunConfig, night_index: int, fields: list[Field]) -> list[Frame]:
    """All frames of one night, in time order, file names not yet assigned."""
    prof, cam, site, tel = cfg.profile, cfg.profile.camera, cfg.profile.site, cfg.telescope
    rng = stream(cfg.seed, "night", night_index)
    night = cfg.night(night_index)
    gain = cam.gain_e_per_adu
    optics = cfg.optics
    ny, nx = cfg.shape
    half_diag = 0.5 * math.hypot(*cam.detector_px)
    growth, radial_e = stream(cfg.seed, "psf-field").uniform((0.03, 0.02), (0.10, 0.06))
    static_psf = {"field_growth": float(growth), "field_ellipticity": float(radial_e),
                  "norm_radius_px": half_diag}
    seeing = tel.seeing_arcsec * float(rng.lognormal(0.0, 0.15))
    beta = float(rng.uniform(3.0, 4.5))
    cloud = abs(float(rng.normal(0.0, 0.03)))
    sky_offset = float(rng.normal(0.0, 0.15))
    rotation = float(rng.normal(0.0, 0.02))
    set_temp = SET_TEMPERATURE_C[cam.kind]
    frames: list[Frame] = []
    wheel = cfg.bands[0]

    def add(ftype: str, exptime: float, clock: _Clock, **kw) -> Frame:
        sun = float(ephem.sun_altitude_deg(clock.jd, site.latitude_deg, site.longitude_deg))
        frame = Frame(seq=len(frames) + 1, type=ftype, filter=kw.pop("filter", wheel),
                      exptime_s=float(exptime), dateobs=_iso(clock.jd),
                      mjd=round(clock.jd - 2400000.5, 8),
                      ccd_temp_c=round(set_temp + float(rng.normal(0, 0.1)), 2),
                      bias_offset_adu=float(rng.normal(0.0, 0.5)), sun_alt_deg=sun, **kw)
        frames.append(frame)
        clock.advance(exptime + cfg.readout_s + OVERHEAD_S)
        return frame

    def conditions(band_name: str, altitude: float, sun_alt: float, gradient: float) -> dict:
        x = float(atmosphere.airmass(altitude))
        k = atmosphere.extinction_mag_per_airmass(band_name, site.height_m)
        ext = k * x + cloud + abs(float(rng.normal(0.0, 0.01)))
        zp_top = zero_point_e_mag(tel, band_name, cam.kind)
        mu = atmosphere.sky_mag(band_name, sun_alt, x, k, tel.sky_offset_mag) + sky_offset
        sky_e = 10 ** (-0.4 * (mu - zp_top)) * cam.pixscale_arcsec ** 2
        fwhm = seeing * x ** 0.6 * float(rng.lognormal(0.0, 0.08))
        psf = _psf(cfg, rng, fwhm, float(np.clip(beta + rng.normal(0, 0.1), 2.5, 5.0)), static_psf)
        angle = rng.uniform(0, 2 * np.pi)
        return dict(filter=band_name, airmass=round(x, 4), fwhm_arcsec=fwhm, psf=psf.as_dict(),
                    zp_e_mag=zp_top - ext, zp_mag=zp_top - ext - 2.5 * math.log10(gain),
                    extinction_mag=ext, sky_mag_arcsec2=mu, sky_e_per_s=sky_e,
                    sky_adu_per_s=sky_e / gain,
                    sky_gradient_per_px=[gradient * math.cos(angle) / half_diag,
                                         gradient * math.sin(angle) / half_diag])

    # biases and darks, finishing 10 minutes before sunset
    sunset = ephem.evening_crossing_jd(night, site.latitude_deg, site.longitude_deg, -0.83)
    calib_s = (cfg.n_bias * (cfg.readout_s + OVERHEAD_S)
               + sum(cfg.darks_per_exptime * (t + cfg.readout_s + OVERHEAD_S) for t in cfg.dark_exptimes_s))
    clock = _Clock(sunset - (600 + calib_s) / 86400.0)
    for _ in range(cfg.n_bias):
        add("bias", 0.0, clock)
    for exptime in cfg.dark_exptimes_s:
        for _ in range(cfg.darks_per_exptime):
            add("dark", exptime, clock)

    # twilight flats near the zenith
    clock = _Clock(ephem.evening_crossing_jd(night, site.latitude_deg, site.longitude_deg,
                                             FLAT_SUN_ALT_DEG))
    full_e = cam.saturation_adu * gain

    def twilight_rate(band_name: str, jd: float) -> float:
        sun = float(ephem.sun_altitude_deg(jd, site.latitude_deg, site.longitude_deg))
        mu = atmosphere.sky_mag(band_name, sun, 1.0, 0.0, tel.sky_offset_mag)
        return 10 ** (-0.4 * (mu - zero_point_e_mag(tel, band_name, cam.kind))) * cam.pixscale_arcsec ** 2

    for band_name in sorted(cfg.bands, key=lambda b: twilight_rate(b, clock.jd)):
        rate_seen = twilight_rate(band_name, clock.jd)
        for _ in range(cfg.n_flat):
            target = full_e * rng.uniform(0.3, 0.55)     # of the saturation level
            while target / rate_seen < MIN_FLAT_EXPTIME_S:       # too bright yet: wait
                clock.advance(20.0)
                rate_seen = twilight_rate(band_name, clock.jd)
            exptime = round(min(target / rate_seen, MAX_FLAT_EXPTIME_S), 1)
            sun = float(ephem.sun_altitude_deg(clock.jd, site.latitude_deg, site.longitude_deg))
            cond = conditions(band_name, 89.0, sun, 0.015)
            rate_mid = twilight_rate(band_name, clock.jd + exptime / 2 / 86400.0)
            cond.update(sky_e_per_s=rate_mid, sky_adu_per_s=rate_mid / gain,
                        sky_mag_arcsec2=zero_point_e_mag(tel, band_name, cam.kind)
                        - 2.5 * math.log10(rate_mid / cam.pixscale_arcsec ** 2))
            n_stars = int(rng.poisson(10 * nx * ny / 2048 ** 2)) + 2
            cond["point_sources"] = [[float(rng.uniform(0, nx)), float(rng.uniform(0, ny)),
                                      float(rate_mid * rng.uniform(20, 200))] for _ in range(n_stars)]
            lst = float(ephem.local_sidereal_deg(clock.jd, site.longitude_deg))
            add("flat", exptime, clock, ra_cmd_deg=lst, dec_cmd_deg=site.latitude_deg - 1.0, **cond)
            rate_seen = twilight_rate(band_name, clock.jd)
        wheel = band_name

    # science: each field, each band, dithered
    clock = _Clock(max(clock.jd + 300 / 86400.0, science_start_jd(cfg, night)))
    for fld in fields:
        clock.advance(SLEW_S)
        field_rng = stream(cfg.seed, "pointing", night_index, fld.name)
        error = field_rng.normal(0.0, POINTING_ERROR_ARCSEC, 2)
        for band_name in cfg.bands:
            for _ in range(cfg.nscience):
                dither = rng.uniform(-DITHER_BOX_ARCSEC / 2, DITHER_BOX_ARCSEC / 2, 2)
                ra_cmd, dec_cmd = offset_arcsec(fld.ra_deg, fld.dec_deg, *dither)
                east, north = error + rng.normal(0.0, POINTING_JITTER_ARCSEC, 2)
                ra_true, dec_true = offset_arcsec(ra_cmd, dec_cmd, east, north)
                mid = clock.jd + cfg.exptime_s / 2 / 86400.0
                sun = float(ephem.sun_altitude_deg(mid, site.latitude_deg, site.longitude_deg))
                alt = float(ephem.altitude_deg(mid, fld.ra_deg, fld.dec_deg, site.latitude_deg,
                                               site.longitude_deg))
                cond = conditions(band_name, alt, sun, 0.005)
                wcs = true_wcs_cards(optics, cam.pixscale_arcsec, cfg.shape, ra_true, dec_true, rotation)
                add("science", cfg.exptime_s, clock, object=fld.name, field=fld.name,
                    ra_cmd_deg=ra_cmd, dec_cmd_deg=dec_cmd, wcs=wcs, **cond)
            wheel = band_name
            clock.advance(10.0)  # filter change
    return frames
