"""`gppy phot FILE... [--obs NAME] [--gain E_PER_ADU] [--filter BAND] [--refcat FILE]
[--colour-term] [--depth] [--out DIR] [--json]`: photometry and zero points of any
FITS image with a celestial WCS. Each image's catalogue goes to --out as
NAME.cat.fits (inputs are never changed); with --json, one JSON object per line
per file (file, zp, zperr, nstars, seeing_arcsec, ul5, filter, aperture, error,
zp_by_aperture, ...). Zero points are AB magnitudes for 1 count per second in the
image's own units (see gppy.phot.calibrate)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

from gppy.errors import InputError
from gppy.fitsio import BadFrame, read_header
from gppy.obsconfig.headers import homogenise
from gppy.obsconfig.loader import default_header_rules, default_phot, load_profile
from gppy.phot.calibrate import catalog_path, photometer, read_image, write_catalog
from gppy.phot.inject import injection_depth
from gppy.phot.stage import reference_source
from gppy.settings import DataDir, load_settings


def register(sub) -> None:
    p = sub.add_parser("phot", help="photometry and zero points of any image with a WCS",
                       description=__doc__)
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--obs", help="observatory profile: photometry settings, gain, header rules")
    p.add_argument("--gain", type=float, metavar="E_PER_ADU",
                   help="gain of images not in electrons (default: header GAIN, else profile)")
    p.add_argument("--filter", metavar="BAND", help="band (default: the homogenised FILTER)")
    p.add_argument("--refcat", metavar="FILE",
                   help="reference catalogue file (default: the profile's catalogue, VizieR)")
    p.add_argument("--colour-term", action="store_true", help="fit a colour term as well")
    p.add_argument("--depth", action="store_true",
                   help="also inject artificial stars: the 50 %% completeness magnitude at S/N 5")
    p.add_argument("--out", default=".", help="folder for the catalogues (default: here)")
    p.add_argument("--data-dir", help="data directory, for the catalogue cache")
    p.add_argument("--json", action="store_true", help="one JSON object per line per file")
    p.set_defaults(func=run)


def run(args) -> int:
    profile = load_profile(args.obs) if args.obs else None
    params = profile.phot if profile else default_phot()
    settings = load_settings().astrometry
    if args.refcat:
        settings = dataclasses.replace(settings, refcat=args.refcat)
    refstars = reference_source(params, settings, DataDir.resolve(args.data_dir).catalog_cache)
    gain = args.gain or (profile.camera.gain_e_per_adu if profile else None)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    status = 0
    for name in args.files:
        row = {"file": name, "zp": None, "zperr": None, "nstars": 0, "seeing_arcsec": None,
               "ul5": None, "filter": None, "aperture": None, "zp_by_aperture": [],
               "error": None}
        try:
            row |= _one(Path(name), profile, params, args, refstars, gain, out_dir)
        except (BadFrame, InputError, OSError) as exc:
            row["error"] = str(exc)
        status = status or (0 if row["zp"] is not None else 1)
        if args.json:
            print(json.dumps(row), flush=True)
        elif row["error"]:
            print(f"{name}: FAILED: {row['error']}", flush=True)
        else:
            print(f"{name}: {row['filter']} ZP {row['zp']:.3f} +- {row['zperr']:.3f} "
                  f"({row['nstars']} stars, aperture {row['aperture']}), seeing "
                  f"{row['seeing_arcsec']:.2f}\", UL5 {row['ul5'] or float('nan'):.2f} "
                  f"-> {row['catalog']}",
                  flush=True)
    return status


def _one(path: Path, profile, params, args, refstars, gain, out_dir: Path) -> dict:
    header, shape = read_header(path)
    band = args.filter or _band(header, path, profile, shape)
    if not band:
        raise InputError(f"{path}: no FILTER in the header: give --filter")
    result = photometer(path, params, band, refstars, gain_e_per_unit=gain,
                        colour_term=args.colour_term)
    out = catalog_path(path, out_dir)
    write_catalog(result, out)
    row = result.summary() | {"catalog": str(out)}
    if args.depth:   # a total magnitude (e-/s): the total zero point in e-/s
        _, image, mask, err, _ = read_image(path, gain)
        depth = injection_depth(image, mask, err, result.catalog, params)
        zp = result.headline()
        row["depth50"] = (None if zp.zp is None else round(
            depth.m50_inst + zp.zp + 2.5 * math.log10(result.gain) - zp.apcor, 3))
    return row


def _band(header, path: Path, profile, shape) -> str | None:
    """The homogenised filter with a profile; without one, the first filter keyword
    of the shared header rules."""
    if profile is not None:
        return homogenise(header, str(path), profile, shape).filter
    keys = default_header_rules().keywords.get("FILTER", ["FILTER"])
    value = next((str(header[k]).strip() for k in keys if k in header), "")
    return value or None
