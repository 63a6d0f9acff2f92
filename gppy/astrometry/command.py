"""`gppy astrometry FILE... [--obs NAME | --pixscale ARCSEC] [--ra DEG --dec DEG
[--radius DEG]] [--refcat FILE] [--out DIR] [--force] [--json]`: solve frames from
any telescope and write copies with the WCS into --out (inputs are never changed)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
from astropy.io import fits

from gppy.astrometry.refcat import reference_stars
from gppy.astrometry.solve import Frame, Options, solve
from gppy.astrometry.wcsio import celestial_wcs, write_solution
from gppy.errors import InputError
from gppy.fitsio import BadFrame, image_hdu_index, read_header, write_atomic
from gppy.obsconfig.headers import parse_angle
from gppy.obsconfig.loader import default_header_rules, load_profile
from gppy.settings import DataDir, load_settings

ARCSEC_PER_RADIAN_MM_PER_UM = 206.265  # pixel scale "/px = 206.265 * pixel um / focal length mm


def register(sub) -> None:
    p = sub.add_parser("astrometry", help="solve frames from any telescope (WCS into copies)",
                       description=__doc__)
    p.add_argument("files", nargs="+", metavar="FILE")
    scale = p.add_mutually_exclusive_group()
    scale.add_argument("--obs", help="observatory profile: pixel scale, SIP order, header rules")
    scale.add_argument("--pixscale", type=float, metavar="ARCSEC", help="pixel scale (arcsec/pixel)")
    p.add_argument("--ra", type=float, metavar="DEG", help="pointing (default: the header's)")
    p.add_argument("--dec", type=float, metavar="DEG")
    p.add_argument("--radius", type=float, metavar="DEG",
                   help="how far from the pointing the field may be (default: from the field size)")
    p.add_argument("--refcat", metavar="FILE|gaia|tycho2|auto",
                   help="reference catalogue (default: settings.toml, else auto)")
    p.add_argument("--out", default=".", help="folder for the solved copies (default: here)")
    p.add_argument("--force", action="store_true", help="solve even a frame with a good WCS")
    p.add_argument("--data-dir", help="data directory, for the catalogue cache")
    p.add_argument("--json", action="store_true",
                   help="one JSON object per line per file: file, solved, method, rms_arcsec, "
                        "nstars, seconds, error, ...")
    p.set_defaults(func=run)


def _pixscale_from_header(header: fits.Header) -> float | None:
    """Pixel scale from SECPIX/PIXSCALE, or the pixel size and focal length (MaxIm DL)."""
    for key in ("SECPIX", "PIXSCALE", "SCALE", "SECPIX1"):
        if isinstance(header.get(key), (int, float)) and header[key] > 0:
            return float(header[key])
    pixel_um, focal_mm = header.get("XPIXSZ"), header.get("FOCALLEN")
    if isinstance(pixel_um, (int, float)) and isinstance(focal_mm, (int, float)) and focal_mm > 0:
        return ARCSEC_PER_RADIAN_MM_PER_UM * pixel_um / focal_mm
    return None


def _pointing(header: fits.Header, rules) -> tuple[float | None, float | None]:
    values = []
    for name, hours in (("RA", True), ("DEC", False)):
        value = next((header[k] for k in rules.keywords.get(name, [name])
                      if k in header and str(header[k]).strip()), None)
        try:
            values.append(None if value is None else parse_angle(value, hours=hours))
        except ValueError:
            values.append(None)
    return values[0], values[1]


def run(args) -> int:
    if (args.ra is None) != (args.dec is None):
        raise InputError("--ra and --dec go together")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    profile = load_profile(args.obs) if args.obs else None
    rules = profile.header if profile else default_header_rules()
    settings = load_settings().astrometry
    if args.refcat:
        settings = dataclasses.replace(settings, refcat=args.refcat)
    cache = DataDir.resolve(args.data_dir).catalog_cache
    a = profile.astrometry if profile else None
    options = Options(a.sip_order, a.min_stars, a.good_rms_arcsec, settings, force=args.force) \
        if a else Options(settings=settings, force=args.force)

    mag_limit = profile.astrometry.refcat_mag_limit if profile else None

    def refstars(ra, dec, radius):
        return reference_stars(ra, dec, max(radius, args.radius or 0.0), source=settings.refcat,
                               cache_dir=cache, offline=settings.offline,
                               index_dirs=settings.index_dirs, mag_limit=mag_limit)

    status = 0
    for name in args.files:
        path = Path(name)
        row = {"file": str(path), "solved": False, "method": None, "rms_arcsec": None,
               "nstars": 0, "seconds": 0.0, "error": None, "output": None}
        try:
            row |= _one(path, out_dir, profile, rules, args, refstars, options)
        except (BadFrame, InputError, OSError) as exc:
            row["error"] = str(exc)
        status = status or (0 if row["solved"] else 1)
        if args.json:
            print(json.dumps(row), flush=True)
        else:
            what = (f"{row['method']}, {row['nstars']} stars, RMS {row['rms_arcsec']}\""
                    if row["solved"] else f"UNSOLVED: {row['error']}")
            print(f"{path.name}: {what} ({row['seconds']} s)"
                  + (f" -> {row['output']}" if row["output"] else ""), flush=True)
    return status


def _one(path: Path, out_dir: Path, profile, rules, args, refstars, options) -> dict:
    out = out_dir / (path.name[:-3] if path.name.endswith(".gz") else path.name)
    if out.resolve() == path.resolve():
        raise InputError(f"{path}: --out would overwrite the input; choose another folder")
    header, _ = read_header(path)
    with fits.open(path, memmap=False) as hdul:
        hdus = [h.copy() for h in hdul]
    index = image_hdu_index(fits.HDUList(hdus))
    names = [h.name for h in hdus]
    image = np.asarray(hdus[index].data, np.float32)
    mask = hdus[names.index("MASK")].data if "MASK" in names else None
    err = hdus[names.index("ERR")].data if "ERR" in names else None
    ra, dec = (args.ra, args.dec) if args.ra is not None else _pointing(header, rules)
    pixscale = (args.pixscale or (profile.camera.pixscale_arcsec if profile else None)
                or _pixscale_from_header(header))
    existing = celestial_wcs(header)
    if pixscale is None and existing is not None:
        pixscale = float(np.sqrt(abs(np.linalg.det(existing.pixel_scale_matrix)))) * 3600
    result = solve(Frame(image, mask, err, pixscale, ra, dec, existing), refstars, options)
    row = result.summary() | {"file": str(path)}
    if result.solved:
        write_solution(hdus[index].header, result.wcs, result.quality())
        write_atomic(out, fits.HDUList(hdus))
        row["output"] = str(out)
    return row
