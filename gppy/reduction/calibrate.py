"""Calibration of one science frame, in electrons:

    image = (raw - bias - s * dark) / flat * gain          (s: dark scaling)

with a MASK extension of bit flags (gppy.reduction.flags.Pixel: the bad-pixel
mask, saturation, cosmic rays, pixels without calibration) and an ERR extension,
the 1-sigma error in electrons from Poisson noise, read noise and the masters'
own errors:

    ERR^2 = (gain * (raw - bias) + rn^2 + gain^2 (e_bias^2 + s^2 e_dark^2)) / flat^2
            + (image * e_flat)^2

(in ADU before the gain, raw - bias clipped at 0, e_flat relative): the dark
current that is subtracted still brought its Poisson noise (a warm pixel's or an
amplifier glow's). The science image is
the primary HDU so SExtractor and ds9 read it as before; the raw header is kept
and processing keywords are added. Written atomically; the raw file is only read.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
from astropy.io import fits

from gppy import __version__
from gppy.fitsio import read_header, write_atomic
from gppy.obsconfig.headers import FrameRecord
from gppy.obsconfig.schema import Profile
from gppy.reduction.flags import Cal, Pixel
from gppy.reduction.masters import MasterData, MasterError, read_master
from gppy.reduction.preprocess import load_raw

_UNSAFE = re.compile(r"[^A-Za-z0-9.+-]+")
# cards astropy writes itself; the raw file's values would be wrong for float32 data
_STRUCTURAL = ("SIMPLE", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "EXTEND", "BZERO", "BSCALE",
               "BLANK", "DATAMIN", "DATAMAX", "CHECKSUM", "DATASUM")


@dataclass(frozen=True)
class FrameCalibration:
    """The masters one science frame uses, chosen by the night routine."""

    bias: Path
    flat: Path
    dark: Path | None = None
    dark_scale: float = 1.0
    bpm: Path | None = None
    flags: Cal = Cal(0)
    nights: dict[str, str] = field(default_factory=dict)   # kind -> night it came from


@dataclass
class CalibResult:
    file: str
    output: Path
    ncosmic: int
    nbad: int
    calflag: int


def calib_name(obs: str, rec: FrameRecord) -> str:
    """Calib-{OBS}-{OBJECT}-{YYYYMMDD}-{HHMMSS}-{FILTER}-{EXPTIME}.fits, as the legacy system."""
    t = dt.datetime.fromisoformat(rec.dateobs)
    parts = [obs, rec.object or "unknown", t.strftime("%Y%m%d"), t.strftime("%H%M%S"),
             rec.filter, f"{rec.exptime:g}"]
    return "Calib-" + "-".join(_UNSAFE.sub("_", str(p)).strip("_") for p in parts) + ".fits"


@lru_cache(maxsize=8)
def _master(path: Path) -> MasterData:
    """Masters are shared by many frames: each worker reads each one once."""
    return read_master(path)


def _matching(master: MasterData | None, shape: tuple[int, int], file: str) -> MasterData | None:
    if master is not None and master.data.shape != shape:
        raise MasterError(f"{master.path}: master of shape {master.data.shape[0]}x"
                          f"{master.data.shape[1]} does not match {Path(file).name} "
                          f"({shape[0]}x{shape[1]}, binning or trim differ)")
    return master


def calibrate(rec: FrameRecord, cal: FrameCalibration, profile: Profile,
              out_dir: Path) -> CalibResult:
    """Calibrate one science frame and write its Calib file; raises BadFrame or
    MasterError for this frame only."""
    raw, saturated = load_raw(rec.file, profile)
    shape = raw.shape
    bias = _matching(_master(cal.bias), shape, rec.file)
    flat = _matching(_master(cal.flat), shape, rec.file)
    dark = _matching(_master(cal.dark), shape, rec.file) if cal.dark else None
    bpm = _matching(_master(cal.bpm), shape, rec.file) if cal.bpm else None
    gain = profile.camera.gain_e_per_adu
    read_noise_e = float(bias.header.get("RDNOISE", profile.camera.read_noise_e))

    counts = raw - bias.data            # what arrived, dark current included
    signal = counts
    var_adu2 = bias.err.astype(np.float32) ** 2
    if dark is not None:
        signal = counts - cal.dark_scale * dark.data
        var_adu2 += (cal.dark_scale * dark.err) ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        image = signal / flat.data * gain
        var = ((gain * np.maximum(counts, 0) + read_noise_e ** 2 + gain ** 2 * var_adu2)
               / flat.data ** 2 + (image * flat.err) ** 2)
    mask = np.zeros(shape, np.uint16)
    if bpm is not None:
        mask |= bpm.data.astype(np.uint16)
    mask[saturated] |= Pixel.SATURATED
    nocal = ~(np.isfinite(image) & np.isfinite(var) & (flat.data > 0))
    mask[nocal] |= Pixel.NOCAL
    image[nocal], var[nocal] = 0.0, 0.0

    ncosmic = 0
    if profile.reduction.remove_cosmic_rays:
        from gppy.reduction.cosmics import find_cosmics

        saturation_e = (profile.camera.saturation_adu - float(bias.header["BIASLEV"])) * gain
        cosmic = find_cosmics(image, var, mask != 0, read_noise_e, saturation_e,
                              profile.reduction.cosmics)
        mask[cosmic] |= Pixel.COSMIC
        ncosmic = int(np.count_nonzero(cosmic))

    header = _header(rec, cal, profile, bias, read_noise_e, ncosmic, mask)
    output = out_dir / calib_name(profile.name, rec)
    write_atomic(output, fits.HDUList([
        fits.PrimaryHDU(image.astype(np.float32), header),
        fits.ImageHDU(mask, name="MASK"),
        fits.ImageHDU(np.sqrt(var).astype(np.float32), name="ERR")]))
    return CalibResult(rec.file, output, ncosmic, int(np.count_nonzero(mask)), int(cal.flags))


def _header(rec: FrameRecord, cal: FrameCalibration, profile: Profile, bias: MasterData,
            read_noise_e: float, ncosmic: int, mask: np.ndarray) -> fits.Header:
    raw_header, _ = read_header(rec.file)
    header = fits.Header([c for c in raw_header.cards if c.keyword not in _STRUCTURAL])
    gain = profile.camera.gain_e_per_adu
    for key, value, comment in (
            ("BUNIT", "electron", "image and ERR in electrons"),
            ("GAIN", 1.0, "[e-/unit] the image is in electrons"),
            ("RAWGAIN", gain, "[e-/ADU] gain applied"),
            ("RDNOISE", round(read_noise_e, 3), "[e-] read noise (from the biases)"),
            ("SATURATE", round((profile.camera.saturation_adu - bias.header["BIASLEV"]) * gain, 1),
             "[e-] saturation level, approximately"),
            ("RAWFILE", Path(rec.file).name, "raw frame this was calibrated from"),
            ("OBJECT", rec.object, "homogenised target name"),
            ("FILTER", rec.filter, "homogenised filter"),
            ("FILTRAW", rec.filter_raw, "filter as written by the camera"),
            ("EXPTIME", rec.exptime, "[s] exposure time"),
            ("DATE-OBS", rec.dateobs, "[UTC] start of exposure"),
            ("MJD-OBS", rec.mjd, "[d] MJD at start of exposure"),
            ("BIASFILE", cal.bias.name, f"master bias, night {cal.nights.get('bias')}"),
            ("DARKFILE", cal.dark.name if cal.dark else "none",
             f"master dark, night {cal.nights.get('dark')}"),
            ("DARKSCAL", round(cal.dark_scale, 6), "dark scaled by this factor"),
            ("FLATFILE", cal.flat.name, f"master flat, night {cal.nights.get('flat')}"),
            ("BPMFILE", cal.bpm.name if cal.bpm else "none", "bad-pixel mask"),
            ("CALFLAG", int(cal.flags), "borrowed or scaled masters (flags.Cal bits)"),
            ("NCOSMIC", ncosmic, "pixels flagged as cosmic rays"),
            ("NMASKED", int(np.count_nonzero(mask)), "pixels with any MASK flag"),
            ("GPPYVER", __version__, "gpPy version")):
        if value is not None:
            header[key] = (value, comment)
    for kind in ("bias", "dark", "flat"):
        if kind in cal.nights:
            header[f"{kind.upper()}NITE"] = (cal.nights[kind], f"night of the master {kind}")
    return header
