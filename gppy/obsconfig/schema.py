"""The observatory profile schema: typed, frozen dataclasses.

The dataclasses are the schema: `validate.build` walks their type hints to check a
TOML document, so a field added here is a key accepted in every profile file.
Field metadata carries a one-line description and optional numeric bounds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

FrameType = Literal["bias", "dark", "flat", "science", "unknown"]
FRAME_TYPES: tuple[str, ...] = ("bias", "dark", "flat", "science", "unknown")

# Homogenised header fields that a profile may map to raw header keywords.
CANONICAL_KEYWORDS: tuple[str, ...] = (
    "IMAGETYP", "FILTER", "EXPTIME", "DATE-OBS", "TIME-OBS", "MJD-OBS", "JD",
    "OBJECT", "RA", "DEC", "XBINNING", "YBINNING", "GAIN", "RDNOISE",
    "SATURATE", "CCD-TEMP", "SET-TEMP", "INSTRUME",
)


def doc(text: str, *, ge: float | None = None, gt: float | None = None,
        le: float | None = None, default=None, default_factory=None):
    """A dataclass field with a description and optional numeric bounds."""
    meta = {"doc": text, "ge": ge, "gt": gt, "le": le}
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=meta)
    if default is not None:
        return field(default=default, metadata=meta)
    return field(metadata=meta)


def optional(text: str, **bounds):
    """An optional field (absent from the file means None)."""
    meta = {"doc": text, "ge": None, "gt": None, "le": None, **bounds}
    return field(default=None, metadata=meta)


@dataclass(frozen=True)
class Site:
    latitude_deg: float = doc("geodetic latitude, north positive", ge=-90, le=90)
    longitude_deg: float = doc("longitude, east positive", ge=-180, le=360)
    height_m: float = doc("height above sea level", ge=-500, le=6000)


@dataclass(frozen=True)
class Telescope:
    aperture_m: float = doc("primary mirror diameter", gt=0)
    obstruction: float = doc("central obstruction: secondary / primary diameter", ge=0, le=0.9)
    seeing_arcsec: float = doc("median FWHM at the zenith (image quality for fast optics)", gt=0)
    sky_offset_mag: float = doc("night sky brighter than a dark site by this much", ge=0)

    @property
    def area_m2(self) -> float:
        return math.pi / 4 * self.aperture_m ** 2 * (1 - self.obstruction ** 2)


@dataclass(frozen=True)
class Camera:
    name: str = doc("camera / detector name")
    kind: Literal["CCD", "CMOS"] = doc("sensor technology")
    gain_e_per_adu: float = doc("conversion gain", gt=0)
    read_noise_e: float = doc("read noise (0 where the legacy table gave none)", ge=0)
    dark_e_per_s: float = doc("typical dark current per pixel", ge=0)
    pixscale_arcsec: float = doc("pixel scale of the binned pixel", gt=0)
    fov_arcmin: float = doc("field of view along the long side", gt=0)
    detector_px: list[int] = doc("detector size [nx, ny] in binned pixels")
    saturation_adu: float = doc("level above which pixels are saturated", gt=0)
    filters: list[str] = doc("canonical names of the filters in use")
    binning: list[int] = doc("binning [x, y]", default_factory=lambda: [1, 1])
    gain_mode: str | None = optional("camera gain setting, for night folders like 2025-01-31_gain2750")


@dataclass(frozen=True)
class Raw:
    root: str = doc("upload folder holding one sub-folder per night (~ and $VARS expanded; "
                     "{name} is replaced by the profile name)")
    night_folder: str = doc("night-folder template: {YYYY} {YY} {MM} {DD} {gain}, e.g. '{YYYY}_{MM}{DD}'")
    file_glob: list[str] = doc("glob patterns of raw frames inside a night folder")
    settle_s: float = doc("a night is complete when unchanged for this long", gt=0)
    poll_s: float = doc("how often a settling night is re-checked", gt=0)
    polling: bool = doc("watch by polling instead of inotify (automatic on network filesystems)")


@dataclass(frozen=True)
class Cosmics:
    """astroscrappy.detect_cosmics parameters for calibrated frames in electrons."""

    sigclip: float = doc("Laplacian-to-noise limit for cosmic rays", gt=0)
    sigfrac: float = doc("fraction of sigclip for neighbouring pixels", gt=0)
    objlim: float = doc("contrast limit between cosmic rays and the underlying object", gt=0)
    niter: int = doc("iterations", ge=1)
    sepmed: bool = doc("separable median filter (faster)")
    cleantype: Literal["median", "medmask", "meanmask", "idw"] = doc("how flagged pixels are filled")
    fsmode: Literal["median", "convolve"] = doc("fine-structure image: median filter or PSF convolution")
    psfmodel: Literal["gauss", "gaussx", "gaussy", "moffat"] = doc("PSF model for fsmode = convolve")
    psffwhm_px: float = doc("PSF FWHM for fsmode = convolve", gt=0)


@dataclass(frozen=True)
class Reduction:
    remove_cosmic_rays: bool = doc("run astroscrappy on science frames (the legacy system skipped CMOS)")
    cosmics: Cosmics = doc("cosmic-ray detection parameters")
    dark_policy: Literal["nearest", "longest", "exact"] = doc(
        "without a dark of the science exposure time: scale the nearest or the longest, or none")
    dark_temp_tolerance_c: float = doc("darks and biases match frames within this set-point difference",
                                       ge=0)
    flat_min_adu: float = doc("flats with a median below this (bias-subtracted) are too faint", ge=0)
    flat_max_fraction: float = doc("flats with a median above this fraction of saturation are rejected",
                                   gt=0, le=1)
    master_max_age_days: float = doc("a night may borrow masters this many days away at most", ge=0)
    hot_pixel_sigma: float = doc("dark current this many robust sigma above the median is hot", gt=0)
    low_flat_response: float = doc("flat response below this (median 1) is dead or low", gt=0, le=1)
    bad_column_fraction: float = doc("a column with this fraction of bad pixels is bad whole", gt=0, le=1)
    mem_limit_gb: float = doc("working memory for combining master frames", gt=0)
    camera_walls: list[str] = doc("dates (YYYY-MM-DD) of camera changes: masters are never borrowed "
                                  "across them", default_factory=list)
    biassec: str | None = optional("overscan region, IRAF notation '[x1:x2,y1:y2]' (1-based, inclusive)")
    trimsec: str | None = optional("region kept after overscan correction, IRAF notation")


@dataclass(frozen=True)
class Astrometry:
    sip_order: int = doc("order of the SIP distortion fitted against the reference catalogue",
                         ge=0, le=6)
    good_rms_arcsec: float = doc("a WCS whose matched-star RMS is below this is good", gt=0)
    min_stars: int = doc("matched stars needed for a solution", ge=4)
    refcat_mag_limit: float = doc("faintest reference stars fetched (keeps wide cones small)")


@dataclass(frozen=True)
class Phot:
    refcat: Literal["PS1", "SDSS", "APASS", "2MASS", "SkyMapper", "GaiaDR3", "file"] = doc(
        "reference catalogue for zero points")
    refmag_bright: float = doc("brightest reference magnitude used")
    refmag_faint: float = doc("faintest reference magnitude used")
    refmagerr_max: float = doc("largest reference-magnitude error accepted", gt=0)
    inmagerr_max: float = doc("largest instrumental-magnitude error accepted", gt=0)
    flag_cut: int = doc("sources with extraction flags above this are not used", ge=0)
    detect_thresh_sigma: float = doc("detection threshold", gt=0)
    detect_minarea_px: int = doc("minimum pixels above threshold", ge=1)
    deblend_nthresh: int = doc("deblending sub-thresholds", ge=1)
    deblend_mincont: float = doc("minimum deblending contrast", ge=0)
    back_size_px: int = doc("background mesh size", ge=8)
    back_filtersize: int = doc("background filter size in meshes", ge=1)
    central_fraction: float = doc("fraction of the image (centred) used for zero points", gt=0, le=1)
    refquery_radius_deg: float = doc("reference catalogue query radius", gt=0)


@dataclass(frozen=True)
class Transient:
    group_gap_h: float = doc("frames of one object and filter further apart than this (hours) "
                             "go into separate stacks", gt=0)
    max_seeing_ratio: float = doc("frames whose seeing exceeds the group's median by this "
                                  "factor are left out of its stack", gt=1)
    max_zp_drop_mag: float = doc("frames whose zero point is this far below the group's median "
                                 "(clouds) are left out of its stack", gt=0)
    engine: Literal["builtin", "hotpants"] = doc("image subtraction engine")
    template_dir: str | None = optional("folder of reference images (OBJECT/FILTER/*.fits, or "
                                        "any FITS whose OBJECT and FILTER match)")


@dataclass(frozen=True)
class ClassifyRule:
    """Overrides the IMAGETYP-based type when every condition given holds."""

    type: FrameType = doc("type given to frames matching this rule")
    reason: str = doc("why, shown in the inventory")
    if_type: list[FrameType] = doc("only frames currently of these types (empty: any)",
                                   default_factory=list)
    filename: str | None = optional("glob on the file name, case-insensitive")
    object: str | None = optional("glob on the homogenised OBJECT, case-insensitive")
    imagetyp: str | None = optional("glob on the raw IMAGETYP value, case-insensitive")
    header: dict[str, str] = doc("raw header keyword -> required value (case-insensitive)",
                                 default_factory=dict)
    exptime_min_s: float | None = optional("minimum exposure time", ge=0)
    exptime_max_s: float | None = optional("maximum exposure time", ge=0)
    median_adu_min: float | None = optional("minimum pixel median (reads the data)")
    median_adu_max: float | None = optional("maximum pixel median (reads the data)")

    def needs_pixels(self) -> bool:
        return self.median_adu_min is not None or self.median_adu_max is not None

    def conditions(self) -> list[str]:
        names = ("filename", "object", "imagetyp", "exptime_min_s", "exptime_max_s",
                 "median_adu_min", "median_adu_max")
        given = [n for n in names if getattr(self, n) is not None]
        return given + (["header"] if self.header else [])


@dataclass(frozen=True)
class HeaderRules:
    keywords: dict[str, list[str]] = doc(
        "homogenised field -> raw header keywords to try, in order")
    imagetyp: dict[str, FrameType] = doc(
        "raw IMAGETYP value (case- and space-insensitive) -> frame type")
    filter: dict[str, str] = doc(
        "raw FILTER value -> canonical band (exact match first, then case-insensitive)")
    object: dict[str, str] = doc("raw OBJECT value -> canonical name", default_factory=dict)
    classify: list[ClassifyRule] = doc(
        "type overrides by file name, header values or pixel statistics, first match wins",
        default_factory=list)


@dataclass(frozen=True)
class Dialect:
    """What this observatory's software writes; the simulator writes the same."""

    imagetyp: dict[str, str] = doc("frame type -> IMAGETYP value written (bias, dark, flat, science)")
    file_name: str = doc("file-name template: {object} {filter} {imagetyp} {type} {exptime} "
                         "{seq} {date} {time} {obs}")
    filter: dict[str, str] = doc("canonical band -> FILTER value written (default: the same)",
                                 default_factory=dict)
    coord_format: Literal["sexagesimal", "degrees"] = doc(
        "how RA/Dec pointing is written", default="sexagesimal")
    cards: dict[str, str] = doc("constant header cards written (TELESCOP, INSTRUME, ...)",
                                default_factory=dict)


@dataclass(frozen=True)
class Profile:
    name: str = doc("canonical observatory name, e.g. LOAO")
    description: str = doc("telescope and site in words")
    site: Site = doc("where the telescope is")
    telescope: Telescope = doc("the optics and what the site's sky is like")
    camera: Camera = doc("the detector as used")
    raw: Raw = doc("how raw data arrive")
    reduction: Reduction = doc("calibration choices")
    astrometry: Astrometry = doc("astrometric solution")
    phot: Phot = doc("photometry defaults (legacy phot-configs)")
    transient: Transient = doc("stacks, templates, subtraction")
    header: HeaderRules = doc("header homogenisation rules")
    dialect: Dialect = doc("how this observatory writes headers and file names")
    aliases: list[str] = doc("other names accepted on the command line", default_factory=list)
    active: bool = doc("whether the facility is in operation", default=True)
