"""Header homogenisation: a raw header in an observatory's dialect becomes one
`FrameRecord` with canonical type, filter, times and pointing.

Pure functions of (header, file name, profile); pixel statistics are asked for
through a callable only when a classification rule needs them.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import math
import re
from dataclasses import asdict, dataclass
from typing import Any, Callable

from astropy.io import fits
from astropy.time import Time

from gppy.obsconfig.schema import ClassifyRule, HeaderRules, Profile


@dataclass
class FrameRecord:
    """One frame's homogenised header: what the rest of the pipeline reads."""

    file: str
    type: str                   # bias | dark | flat | science | unknown
    reason: str                 # why that type
    filter: str | None
    exptime: float | None       # seconds
    dateobs: str | None         # ISO 8601 UTC, start of exposure
    mjd: float | None
    object: str | None
    ra: float | None            # degrees, header pointing (not a WCS)
    dec: float | None           # degrees
    binning: list[int] | None   # [x, y]
    gain: float | None          # e-/ADU
    rdnoise: float | None       # e-
    saturation: float | None    # ADU
    shape: list[int] | None = None  # [ny, nx]
    imagetyp_raw: str | None = None
    filter_raw: str | None = None
    ccdtemp: float | None = None  # deg C, measured
    settemp: float | None = None  # deg C, cooler set-point
    error: str | None = None    # why the frame is skipped, or None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def unreadable(cls, file: str, problem: str) -> "FrameRecord":
        return cls(file=file, type="unknown", reason="unreadable", filter=None, exptime=None,
                   dateobs=None, mjd=None, object=None, ra=None, dec=None, binning=None,
                   gain=None, rdnoise=None, saturation=None, error=problem)


def _norm(value: str) -> str:
    return " ".join(str(value).split()).casefold()


def imagetyp_alias(rules: HeaderRules, raw: str) -> str | None:
    """Frame type for a raw IMAGETYP value; case and spacing do not matter."""
    table = {_norm(k): v for k, v in rules.imagetyp.items()}
    return table.get(_norm(raw))


def filter_alias(rules: HeaderRules, raw: str) -> str:
    """Canonical band for a raw FILTER value. Exact match first, because case
    carries meaning (Johnson R is not SDSS r); then a case-insensitive match of
    multi-character aliases ('Sloan_G'); otherwise the value itself."""
    value = str(raw).strip()
    if value in rules.filter:
        return rules.filter[value]
    folded = {k.casefold(): v for k, v in rules.filter.items() if len(k) > 1}
    return folded.get(value.casefold(), value)


def _lookup(header: fits.Header, rules: HeaderRules, field: str) -> tuple[Any, str | None]:
    """(value, keyword it came from) for a homogenised field, blank strings as missing."""
    for key in rules.keywords.get(field, [field]):
        if key in header:
            value = header[key]
            if isinstance(value, str):
                value = value.strip()
                if not value:
                    continue
            if value is None or isinstance(value, fits.card.Undefined):
                continue
            return value, key
    return None, None


def _tried(rules: HeaderRules, field: str) -> str:
    return ", ".join(rules.keywords.get(field, [field]))


_SEXAGESIMAL = re.compile(r"^\s*([+-]?)\s*(\d+)[\s:hd]+(\d+)[\s:m']+(\d+(?:\.\d*)?)\s*[s\"]?\s*$")


def parse_angle(value: Any, *, hours: bool) -> float:
    """Degrees from a number (degrees) or a sexagesimal string (hours for RA)."""
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value).strip()
    m = _SEXAGESIMAL.match(text)
    if m:
        sign = -1.0 if m.group(1) == "-" else 1.0
        a = int(m.group(2)) + int(m.group(3)) / 60 + float(m.group(4)) / 3600
        return sign * a * (15.0 if hours else 1.0)
    return float(text)  # a decimal string is degrees; ValueError otherwise


def parse_dateobs(date_value: Any, time_value: Any = None) -> Time:
    """Start-of-exposure time from DATE-OBS (ISO, or date with separate TIME-OBS,
    or the old DD/MM/YY form)."""
    text = str(date_value).strip()
    if re.fullmatch(r"\d{2}/\d{2}/\d{2}", text):
        # The old FITS form DD/MM/YY meant 19YY, but MaxIm DL still writes it for 20YY.
        d, m, y = (int(x) for x in text.split("/"))
        text = f"{(1900 if y >= 70 else 2000) + y:04d}-{m:02d}-{d:02d}"
    if "T" not in text and time_value is not None:
        text = f"{text}T{str(time_value).strip()}"
    return Time(text, format="isot", scale="utc")


def _observation_time(header: fits.Header, rules: HeaderRules) -> Time:
    date, _ = _lookup(header, rules, "DATE-OBS")
    if date is not None:
        time_of_day, _ = _lookup(header, rules, "TIME-OBS")
        return parse_dateobs(date, time_of_day)
    mjd, _ = _lookup(header, rules, "MJD-OBS")
    if mjd is not None:
        return Time(float(mjd), format="mjd", scale="utc")
    jd, _ = _lookup(header, rules, "JD")
    if jd is not None:
        return Time(float(jd), format="jd", scale="utc")
    raise KeyError(f"no observation time (tried {_tried(rules, 'DATE-OBS')}, "
                   f"{_tried(rules, 'MJD-OBS')}, {_tried(rules, 'JD')})")


def _rule_matches(rule: ClassifyRule, rec: FrameRecord, header: fits.Header,
                  name: str, pixel_median: Callable[[], float]) -> bool:
    def glob(pattern: str | None, value: str | None) -> bool:
        return pattern is None or (value is not None
                                   and fnmatch.fnmatch(value.casefold(), pattern.casefold()))

    if rule.if_type and rec.type not in rule.if_type:
        return False
    if not (glob(rule.filename, name) and glob(rule.object, rec.object)
            and glob(rule.imagetyp, rec.imagetyp_raw)):
        return False
    for key, wanted in rule.header.items():
        if key not in header or _norm(header[key]) != _norm(wanted):
            return False
    if rule.exptime_min_s is not None and (rec.exptime is None or rec.exptime < rule.exptime_min_s):
        return False
    if rule.exptime_max_s is not None and (rec.exptime is None or rec.exptime > rule.exptime_max_s):
        return False
    if rule.needs_pixels():
        median = pixel_median()  # NaN (unreadable data) fails both bounds
        if rule.median_adu_min is not None and not median >= rule.median_adu_min:
            return False
        if rule.median_adu_max is not None and not median <= rule.median_adu_max:
            return False
    return True


def _number(value: Any, what: str) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} is not a number: {value!r}") from None
    if not math.isfinite(x):
        raise ValueError(f"{what} is not finite: {value!r}")
    return x


def homogenise(header: fits.Header, file: str, profile: Profile,
               shape: tuple[int, int] | None = None,
               pixel_median: Callable[[], float] | None = None) -> FrameRecord:
    """Apply the profile's header rules to one raw header.

    Problems that make the frame unusable (no observation time, a science frame
    without exposure time, an unparsable value) are put in `error`, never raised.
    """
    rules = profile.header
    cam = profile.camera
    name = file.rsplit("/", 1)[-1]
    rec = FrameRecord(file=file, type="unknown", reason="", filter=None, exptime=None,
                      dateobs=None, mjd=None, object=None, ra=None, dec=None,
                      binning=list(cam.binning), gain=cam.gain_e_per_adu,
                      rdnoise=cam.read_noise_e, saturation=cam.saturation_adu,
                      shape=list(shape) if shape else None)
    problems: list[str] = []

    raw_type, key = _lookup(header, rules, "IMAGETYP")
    if raw_type is None:
        rec.reason = f"no IMAGETYP (tried {_tried(rules, 'IMAGETYP')})"
    else:
        rec.imagetyp_raw = str(raw_type)
        mapped = imagetyp_alias(rules, raw_type)
        if mapped is None:
            rec.reason = f"{key}={raw_type!r} is not a known image type in this profile"
        else:
            rec.type, rec.reason = mapped, f"{key}={raw_type!r}"

    raw_object, _ = _lookup(header, rules, "OBJECT")
    if raw_object is not None:
        rec.object = rules.object.get(str(raw_object), str(raw_object))
    raw_filter, _ = _lookup(header, rules, "FILTER")
    if raw_filter is not None:
        rec.filter_raw = str(raw_filter)
        rec.filter = filter_alias(rules, raw_filter)

    for field, attr, what in (("EXPTIME", "exptime", "exposure time"), ("GAIN", "gain", "gain"),
                              ("RDNOISE", "rdnoise", "read noise"),
                              ("SATURATE", "saturation", "saturation level"),
                              ("CCD-TEMP", "ccdtemp", "CCD temperature"),
                              ("SET-TEMP", "settemp", "cooler set-point")):
        value, key = _lookup(header, rules, field)
        if value is not None:
            try:
                setattr(rec, attr, _number(value, f"{key}"))
            except ValueError as exc:
                problems.append(str(exc))

    binning = []
    for field, default in (("XBINNING", cam.binning[0]), ("YBINNING", cam.binning[1])):
        value, _ = _lookup(header, rules, field)
        binning.append(int(value) if isinstance(value, (int, float)) else default)
    rec.binning = binning

    try:
        t = _observation_time(header, rules)
        rec.dateobs, rec.mjd = t.isot, float(t.mjd)
    except (KeyError, ValueError) as exc:
        problems.append(f"observation time: {exc}" if isinstance(exc, ValueError) else exc.args[0])

    for field, attr, hours in (("RA", "ra", True), ("DEC", "dec", False)):
        value, key = _lookup(header, rules, field)
        if value is not None:
            try:
                setattr(rec, attr, parse_angle(value, hours=hours))
            except ValueError:
                problems.append(f"{key} is not an angle: {value!r}")

    median_cache: list[float] = []

    def cached_median() -> float:
        if not median_cache:
            if pixel_median is None:
                raise ValueError("a classification rule needs pixel statistics, none given")
            median_cache.append(float(pixel_median()))
        return median_cache[0]

    for i, rule in enumerate(rules.classify):
        if _rule_matches(rule, rec, header, name, cached_median):
            rec.type, rec.reason = rule.type, f"{rule.reason} (classify rule {i + 1})"
            break

    if rec.exptime is None:
        if rec.type == "bias":
            rec.exptime = 0.0
        elif rec.type != "unknown":
            problems.append(f"no exposure time (tried {_tried(rules, 'EXPTIME')})")
    if problems:
        rec.error = "; ".join(problems)
    return rec


def night_of(t_iso: str, longitude_deg: float) -> dt.date:
    """The local date at the start of the night: local mean solar time minus 12 h,
    so every frame from one evening to the next morning shares a date."""
    t = dt.datetime.fromisoformat(t_iso)
    return (t + dt.timedelta(hours=longitude_deg / 15.0 - 12.0)).date()
