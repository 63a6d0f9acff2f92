"""`gppy simulate OBS OUTDIR`: write synthetic raw nights with their truth."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time

from gppy.obsconfig.loader import UnknownObservatory, load_profile
from gppy.obsconfig.validate import ProfileError
from gppy.sim.bands import UnknownBand, band
from gppy.sim.tycho import TychoIndexMissing

DEFAULT_DATE = dt.date(2024, 3, 14)
DEFAULT_SEED = 20240314


def default_bands(filters: list[str]) -> list[str]:
    """Two of the camera's filters: those nearest 500 nm and 650 nm (one if it has one)."""
    known = [f for f in filters if _centre(f) is not None]
    if len(known) < 2:
        return known[:1] or filters[:1]
    first = min(known, key=lambda f: abs(_centre(f) - 500))
    second = min((f for f in known if f != first), key=lambda f: abs(_centre(f) - 650))
    return sorted([first, second], key=_centre)


def _centre(name: str) -> float | None:
    try:
        return band(name).centre_nm
    except UnknownBand:
        return None


def register(sub) -> None:
    p = sub.add_parser("simulate", help="write synthetic raw nights of an observatory, with truth",
                       description=__doc__)
    p.add_argument("obs", help="observatory name or alias")
    p.add_argument("outdir", help="output folder: night folders, truth/, refcat.ecsv")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"random seed (default {DEFAULT_SEED})")
    p.add_argument("--size", type=int, help="simulate an N x N sub-array (default: the full detector)")
    p.add_argument("--nights", type=int, default=1, help="consecutive nights (transients need 2+)")
    p.add_argument("--filters", help="comma-separated filters (default: two of the camera's)")
    p.add_argument("--date", type=dt.date.fromisoformat, default=DEFAULT_DATE,
                   help=f"local date of the first night (default {DEFAULT_DATE})")
    p.add_argument("--fields", type=int, default=2, help="IMSNG fields observed per night")
    p.add_argument("--nscience", type=int, default=3, help="frames per field and filter")
    p.add_argument("--exptime", type=float, default=120.0, help="science exposure time, s")
    p.add_argument("--processes", type=int, help="worker processes (default: all cores)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from gppy.sim.plan import RunConfig, SimulationError
    from gppy.sim.simulate import simulate

    try:
        profile = load_profile(args.obs)
    except (UnknownObservatory, ProfileError) as exc:
        print(f"gppy simulate: {exc}", file=sys.stderr)
        return 2
    size = (args.size, args.size) if args.size else tuple(reversed(profile.camera.detector_px))
    bands = args.filters.split(",") if args.filters else default_bands(profile.camera.filters)
    for name, value in (("--size", min(size)), ("--nights", args.nights), ("--fields", args.fields),
                        ("--nscience", args.nscience), ("--exptime", args.exptime)):
        if value <= 0:
            print(f"gppy simulate: {name} must be positive", file=sys.stderr)
            return 2
    cfg = RunConfig(profile=profile, seed=args.seed, shape=size, bands=bands,
                    first_night=args.date, n_nights=args.nights, n_fields=args.fields,
                    nscience=args.nscience, exptime_s=args.exptime)
    start = time.perf_counter()
    try:
        folders = simulate(cfg, args.outdir, args.processes, progress=print)
    except (TychoIndexMissing, UnknownBand, SimulationError) as exc:
        print(f"gppy simulate: {exc}", file=sys.stderr)
        return 2
    print(f"{len(folders)} night(s) in {time.perf_counter() - start:.1f} s; truth in "
          f"{args.outdir}/truth/, reference catalogue {args.outdir}/refcat.ecsv")
    return 0
