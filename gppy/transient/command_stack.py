"""`gppy stack FILE... [--out PATH] [--combine mean|median] [--clip SIGMA] [--zp MAG]
[--reference FILE] [--json]`: stack calibrated frames of one field and band
(pipeline Calib files with MASK, ERR, a WCS and, for the flux scale, ZP) onto a
common grid: the first frame's, or --reference's. The stack goes to --out (a file,
or a folder for the legacy name Calib-OBS-OBJECT-YYYYMMDD-HHMMSS-FILTER-EXPTIME-com.fits
with the mid time and the total exposure; default: beside the first frame). With
--json, one JSON object: out, n, exptime, zp, zperr, date_obs, seconds, error, ...
See gppy.transient.stack for units, weights and clipping."""

from __future__ import annotations

import json
from pathlib import Path

from gppy.astrometry.wcsio import celestial_wcs
from gppy.errors import InputError
from gppy.fitsio import BadFrame, read_header
from gppy.transient.stack import COMBINES, stack


def register(sub) -> None:
    p = sub.add_parser("stack", help="stack calibrated frames onto a common grid",
                       description=__doc__)
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--out", help="output file, or folder for the legacy name "
                                 "(default: beside the first frame)")
    p.add_argument("--combine", choices=COMBINES, default="mean",
                   help="sigma-clipped weighted mean (default) or median")
    p.add_argument("--clip", type=float, default=3.0, metavar="SIGMA",
                   help="rejection threshold of the mean, in sigma (0: none; default 3)")
    p.add_argument("--zp", type=float, metavar="MAG",
                   help="common total-flux zero point (default: the frames' median)")
    p.add_argument("--reference", metavar="FILE",
                   help="stack onto this image's grid (its WCS and shape)")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.set_defaults(func=run)


def run(args) -> int:
    row = {"out": None, "n": len(args.files), "exptime": None, "zp": None, "seconds": None,
           "error": None}
    try:
        reference, shape = None, None
        if args.reference:
            header, shape = read_header(args.reference)
            reference = celestial_wcs(header)
            if reference is None:
                raise InputError(f"{args.reference}: no celestial WCS to stack onto")
        result = stack(args.files, args.out, reference_wcs=reference, shape=shape,
                       combine=args.combine, clip_sigma=args.clip or None, zp_common=args.zp)
        row = result.summary()
    except (BadFrame, InputError, OSError) as exc:
        if not args.json:
            raise InputError(str(exc)) from None
        row["error"] = str(exc)
    if args.json:
        print(json.dumps(row), flush=True)
    else:
        zp = "no ZP" if row["zp"] is None else f"ZP {row['zp']:.3f}" + (
            f" +- {row['zperr']:.3f}" if row["zperr"] is not None else "")
        print(f"{Path(row['out']).name}: {row['n']} frames, {row['exptime']:g} s, {zp}, "
              f"mid {row['date_obs']} ({row['seconds']} s) -> {row['out']}", flush=True)
    return 0 if row["error"] is None else 1
