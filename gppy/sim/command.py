"""`gppy simulate OBS OUTDIR`: write synthetic raw nights with their truth."""

from __future__ import annotations

import argparse
import datetime as dt
import time

from gppy.obsconfig.loader import load_profile
from gppy.sim.bands import band, has_band

DEFAULT_DATE = dt.date(2024, 3, 14)
DEFAULT_SEED = 20240314


def default_bands(filters: list[str]) -> list[str]:
    """Two of the camera's filters: those nearest 500 nm and 650 nm (one if it has one)."""
    known = [f for f in filters if has_band(f)]
    if len(known) < 2:
        return known[:1] or filters[:1]
    centre = {f: band(f).centre_nm for f in known}
    first = min(known, key=lambda f: abs(centre[f] - 500))
    second = min((f for f in known if f != first), key=lambda f: abs(centre[f] - 650))
    return sorted([first, second], key=centre.get)


def register(sub) -> None:
    p = sub.add_parser("simulate", help="write synthetic raw nights of an observatory, with truth",
                       description="Write synthetic raw nights of an observatory in its own "
                       "dialect, their truth (OUTDIR/truth/<night>/) and an offline "
                       "reference catalogue (OUTDIR/refcat.ecsv).")
    p.add_argument("obs", metavar="OBS", help="observatory name or alias")
    p.add_argument("outdir", metavar="OUTDIR", help="output folder")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, metavar="S",
                   help=f"random seed (default {DEFAULT_SEED})")
    p.add_argument("--size", type=int, metavar="N",
                   help="simulate an N x N sub-array at the real pixel scale "
                   "(default: the full detector)")
    p.add_argument("--nights", type=int, default=1, metavar="K",
                   help="consecutive nights; transients appear from the second (default 1)")
    p.add_argument("--filters", metavar="B1,B2",
                   help="comma-separated filters (default: two of the camera's)")
    p.add_argument("--date", type=dt.date.fromisoformat, default=DEFAULT_DATE, metavar="YYYY-MM-DD",
                   help=f"local date of the first night (default {DEFAULT_DATE})")
    p.add_argument("--fields", type=int, default=2, metavar="N",
                   help="IMSNG fields observed per night (default 2)")
    p.add_argument("--nscience", type=int, default=3, metavar="N",
                   help="science frames per field and filter (default 3)")
    p.add_argument("--exptime", type=float, default=120.0, metavar="S",
                   help="science exposure time in seconds (default 120)")
    p.add_argument("--transients", type=int, default=8, metavar="N",
                   help="transients per field, from the second night (default 8)")
    p.add_argument("--processes", type=int, metavar="N",
                   help="worker processes (default: all cores)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from gppy.sim.plan import RunConfig, SimulationError
    from gppy.sim.simulate import simulate

    profile = load_profile(args.obs)
    size = (args.size, args.size) if args.size else tuple(reversed(profile.camera.detector_px))
    bands = ([b.strip() for b in args.filters.split(",") if b.strip()] if args.filters
             else default_bands(profile.camera.filters))
    for name, value in (("--size", min(size)), ("--nights", args.nights), ("--fields", args.fields),
                        ("--nscience", args.nscience), ("--exptime", args.exptime)):
        if value <= 0:
            raise SimulationError(f"{name} must be positive")
    if args.transients < 0:
        raise SimulationError("--transients must not be negative")
    cfg = RunConfig(profile=profile, seed=args.seed, shape=size, bands=bands,
                    first_night=args.date, n_nights=args.nights, n_fields=args.fields,
                    nscience=args.nscience, exptime_s=args.exptime,
                    n_transients=args.transients)
    start = time.perf_counter()
    folders = simulate(cfg, args.outdir, args.processes, progress=print)
    print(f"{len(folders)} night(s) in {time.perf_counter() - start:.1f} s; truth in "
          f"{args.outdir}/truth/, reference catalogue {args.outdir}/refcat.ecsv")
    return 0
