"""Raw frames as the observatory writes them: night-folder and file names, header
cards in the profile's dialect, uint16 data (BZERO = 32768). No WCS, no
time-of-writing cards: same seed, same bytes."""

from __future__ import annotations

import datetime as dt
import fnmatch
import re
from pathlib import Path

import numpy as np
from astropy.io import fits

from gppy.fitsio import write_atomic
from gppy.obsconfig.headers import imagetyp_alias
from gppy.obsconfig.nights import format_night
from gppy.obsconfig.schema import Profile
from gppy.sim.plan import Frame, SimulationError

_UNSAFE = re.compile(r"[^A-Za-z0-9.+-]+")


def night_folder(profile: Profile, night: dt.date) -> str:
    return format_night(profile.raw.night_folder, night, profile.camera.gain_mode)


def keyword(profile: Profile, field: str) -> str:
    """The raw keyword this observatory writes for a homogenised field (the first it reads)."""
    return profile.header.keywords.get(field, [field])[0]


def filter_value(profile: Profile, band_name: str) -> str:
    return profile.dialect.filter.get(band_name, band_name)


def _classify_hints(profile: Profile, ftype: str) -> tuple[dict, str | None]:
    """(extra cards, OBJECT value) that make a frame read back as `ftype` when the
    dialect's IMAGETYP alone does not (the profile then has a classify rule)."""
    written = profile.dialect.imagetyp[ftype]
    if imagetyp_alias(profile.header, written) == ftype:
        return {}, None
    for rule in profile.header.classify:
        if rule.type == ftype and (rule.header or rule.object):
            literal = rule.object.replace("*", "").replace("?", "") if rule.object else None
            return dict(rule.header), literal
    return {}, None


def _object(profile: Profile, frame: Frame) -> str | None:
    return frame.object if frame.type == "science" else _classify_hints(profile, frame.type)[1]


def _exptime_field(exptime_s: float) -> int | float:
    return int(exptime_s) if float(exptime_s).is_integer() else exptime_s


def file_name(profile: Profile, frame: Frame) -> str:
    start = dt.datetime.fromisoformat(frame.dateobs)
    text = {"obs": profile.name, "object": _object(profile, frame) or frame.type,
            "filter": filter_value(profile, frame.filter),
            "imagetyp": profile.dialect.imagetyp[frame.type], "type": frame.type,
            "date": start.strftime("%Y%m%d"), "time": start.strftime("%H%M%S")}
    safe = {k: _UNSAFE.sub("_", v).strip("_") for k, v in text.items()}
    return profile.dialect.file_name.format(**safe, seq=frame.seq,
                                            exptime=_exptime_field(frame.exptime_s))


def assign_file_names(profile: Profile, frames: list[Frame]) -> None:
    names = [file_name(profile, f) for f in frames]
    if len(set(names)) != len(names):
        raise SimulationError(f"dialect.file_name {profile.dialect.file_name!r} gives the same "
                              f"name to several frames of a night; it needs {{seq}} or {{time}}")
    if not any(fnmatch.fnmatch(names[0], g) for g in profile.raw.file_glob):
        raise SimulationError(f"file name {names[0]!r} matches none of raw.file_glob "
                              f"{profile.raw.file_glob}")
    for frame, name in zip(frames, names):
        frame.file = name


def _sexagesimal(degrees: float, hours: bool) -> str:
    value = degrees / 15.0 if hours else degrees
    sign = "-" if value < 0 else ("" if hours else "+")
    total = round(abs(value) * 3600, 2 if hours else 1)
    d, rest = divmod(total, 3600)
    m, s = divmod(rest, 60)
    return f"{sign}{int(d):02d}:{int(m):02d}:{s:0{5 if hours else 4}.{2 if hours else 1}f}"


def raw_header(profile: Profile, frame: Frame) -> fits.Header:
    cam = profile.camera
    header = fits.Header()
    extra, _ = _classify_hints(profile, frame.type)

    def put(field: str, value, comment: str = "") -> None:
        header[keyword(profile, field)] = (value, comment)

    put("IMAGETYP", profile.dialect.imagetyp[frame.type], "type of image")
    obj = _object(profile, frame)
    if obj:
        put("OBJECT", obj, "target name")
    put("FILTER", filter_value(profile, frame.filter), "filter in the beam")
    put("EXPTIME", float(frame.exptime_s), "[s] exposure time")
    put("DATE-OBS", frame.dateobs, "[UTC] start of exposure")
    if frame.ra_cmd_deg is not None:
        if profile.dialect.coord_format == "degrees":
            put("RA", round(frame.ra_cmd_deg, 6), "[deg] commanded pointing, J2000")
            put("DEC", round(frame.dec_cmd_deg, 6), "[deg] commanded pointing, J2000")
        else:
            put("RA", _sexagesimal(frame.ra_cmd_deg, hours=True), "[hms] commanded pointing, J2000")
            put("DEC", _sexagesimal(frame.dec_cmd_deg, hours=False),
                "[dms] commanded pointing, J2000")
        header["EQUINOX"] = (2000.0, "equinox of the pointing")
        header["AIRMASS"] = (frame.airmass, "airmass at mid-exposure")
    put("XBINNING", int(cam.binning[0]), "binning along x")
    put("YBINNING", int(cam.binning[1]), "binning along y")
    put("CCD-TEMP", frame.ccd_temp_c, "[C] sensor temperature")
    for key, value in {**profile.dialect.cards, **extra}.items():
        header[key] = value
    return header


def write_raw(path: Path, data: np.ndarray, header: fits.Header) -> Path:
    hdu = fits.PrimaryHDU(data=data, header=header)
    return write_atomic(path, hdu)
