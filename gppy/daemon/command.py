"""`gppy process OBS NIGHT_DIR [--ncores N] [--force] [--out DIR]`."""

from __future__ import annotations

import dataclasses
import os
import sys
from collections import Counter
from pathlib import Path

from gppy import logs
from gppy.daemon.routine import LAST_STAGE, STAGES, NightResult, process_night
from gppy.errors import InputError
from gppy.obsconfig.loader import load_profile
from gppy.reduction.inventory import group
from gppy.settings import DataDir, load_settings


def register(sub) -> None:
    p = sub.add_parser("process", help="run the night routine on one night folder")
    p.add_argument("obs", help="observatory name (any case)")
    p.add_argument("night_dir", help="the night's raw folder")
    p.add_argument("--ncores", type=int, default=os.cpu_count() or 1,
                   help="worker processes (default: all cores)")
    p.add_argument("--force", action="store_true", help="redo work already done")
    p.add_argument("--out", help="product folder (default: DATA_DIR/products/OBS/NIGHT)")
    p.add_argument("--data-dir", help="data directory (default: $GPPY_DATA_DIR or ~/.gppy)")
    p.add_argument("--refcat", metavar="FILE|gaia|tycho2|auto",
                   help="reference catalogue (default: settings.toml, else auto; a file "
                        "serves the photometry too)")
    p.add_argument("--mem-limit", type=float, metavar="GB",
                   help="working memory for combining masters (default: the profile's, 2 GB)")
    p.add_argument("--until", choices=STAGES, default=LAST_STAGE,
                   help=f"stop after this stage (default {LAST_STAGE})")
    p.add_argument("-v", "--verbose", action="store_true", help="debug events on the console")
    p.set_defaults(func=run)


def run(args) -> int:
    logs.configure(verbose=args.verbose)
    profile = load_profile(args.obs)
    if args.mem_limit is not None:
        if args.mem_limit <= 0:
            raise InputError(f"--mem-limit must be positive, got {args.mem_limit}")
        profile = dataclasses.replace(profile, reduction=dataclasses.replace(
            profile.reduction, mem_limit_gb=args.mem_limit))
    settings = load_settings().astrometry
    if args.refcat:
        settings = dataclasses.replace(settings, refcat=args.refcat)
    try:
        result = process_night(profile, args.night_dir, DataDir.resolve(args.data_dir),
                               ncores=max(1, args.ncores), force=args.force, out=args.out,
                               settings=settings, until=args.until)
    except InputError:
        raise
    except Exception as exc:  # already logged with its traceback by the routine
        print(f"gppy process: the night failed ({type(exc).__name__}: {exc})", file=sys.stderr)
        return 1
    print(summary(result))
    return 0


def _num(value, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def summary(r: NightResult) -> str:
    """The table printed at the end of a run."""
    lines = [
        f"{r.obs} night {r.night}  {r.night_dir}",
        f"{len(r.records)} frames ({r.n_scanned} read, {r.n_unchanged} unchanged since the last "
        f"run), {len(r.plan.skipped)} skipped, {r.seconds:.1f} s on {r.ncores} cores",
        "",
        f"  {'TYPE':<8} {'FILTER':<7} {'EXPTIME':>8}  {'OBJECT':<16} {'N':>4}",
    ]
    order = {"bias": 0, "dark": 1, "flat": 2, "science": 3, "unknown": 4}
    for (ftype, filt, exptime, obj), n in sorted(
            group(r.records).items(),
            key=lambda kv: (order[kv[0][0]], kv[0][1] or "", kv[0][2] or 0, kv[0][3] or "")):
        exp = "-" if exptime is None else f"{exptime:g}s"
        lines.append(f"  {ftype:<8} {filt or '-':<7} {exp:>8}  {obj or '-':<16} {n:>4}")
    p, m, c = r.plan, r.masters, r.calibration
    lines += ["", "Masters:" if p.masters else "Masters: none from tonight's frames"]
    for built in m.built:
        qa = ", ".join(f"{k}={v}" for k, v in built.qa.items())
        lines.append(f"  built   {built.path.name:<34} {len(built.inputs):3d} frames  {qa}")
        lines += [f"          rejected {Path(f).name}: {why}" for f, why in built.rejected.items()]
    lines += [f"  reused  {label} (same frames as before)" for label in m.reused]
    lines += [f"  FAILED  {label}: {why}" for label, why in m.failed.items()]
    lines += [f"  weak    {mp.label}: only {len(mp.files)} frames" for mp in p.masters if mp.weak]
    if p.science:
        lines += ["", f"Science frames: {len(p.science)}: {len(c.calibrated)} calibrated, "
                      f"{c.unchanged} unchanged, {len(c.failed)} failed, "
                      f"{len(c.uncalibrated)} uncalibrated"]
        lines += [f"  borrowed {kind} from night {', '.join(sorted(nights))}"
                  for kind, nights in sorted(c.borrowed.items())]
        lines += [f"  FAILED  {Path(f).name}: {why}" for f, why in sorted(c.failed.items())]
        for why, n in sorted(Counter(c.uncalibrated.values()).items()):
            lines.append(f"  {n:4d} x {why}")
        a = r.astrometry
        if a.solved or a.unsolved:
            rms, seconds = a.median("rms_arcsec"), a.median("seconds")
            methods = Counter(s.get("method") for s in a.solved.values())
            shared = sum(s.get("distortion") == "night" for s in a.solved.values())
            lines += ["", f"Astrometry: {len(a.solved)} solved "
                          f"({', '.join(f'{n} {m}' for m, n in sorted(methods.items()))}), "
                          f"{len(a.unsolved)} unsolved"
                          + (f", median RMS {rms:.3f}\"" if rms else "")
                          + (f", {seconds:.1f} s/frame" if seconds else "")
                          + (f"; {shared} with the night's distortion" if shared else "")]
            lines += [f"  UNSOLVED {Path(f).name}: {why}" for f, why in sorted(a.unsolved.items())]
            lines += [f"  outlier  {Path(f).name}: {why}" for f, why in sorted(a.outliers.items())]
        ph = r.phot
        if ph.measured or ph.failed:
            lines += ["", f"Photometry: {len(ph.measured)} measured ({ph.unchanged} unchanged), "
                          f"{len(ph.failed)} failed; table {r.out_dir / 'phot.ecsv'}"]
            lines += [f"  {s['filter']:<5} {Path(f).name}: ZP {_num(s['zp'], 3)} "
                      f"+- {_num(s['zperr'], 3)} ({s['nstars']} stars), seeing "
                      f"{_num(s['seeing_arcsec'], 2)}\", UL5 {_num(s['ul5'], 2)}"
                      for f, s in sorted(ph.measured.items())]
            lines += [f"  FAILED  {Path(f).name}: {why}" for f, why in sorted(ph.failed.items())]
        t = r.transients
        lines += ["", f"Transients: {len(t.groups)} groups, {len(t.candidates)} candidates"
                      + (f"; table {r.out_dir / 'transients.ecsv'}" if t.groups else "")]
        for g in t.groups:
            what = (f"stack {g['stack']}" if g["stack"] else "single frame")
            diff = (f"difference {g['diff']} (blank-sky residual "
                    f"{_num(g['qa']['resid_std_blank'], 2)}, around stars "
                    f"{_num(g['qa']['resid_std_stars'], 2)}), {g['n_candidates']} candidates"
                    if g["diff"] else g.get("note", ""))
            lines.append(f"  {g['group']:<22} {len(g['frames'])} frames, {what}; {diff}")
            lines += [f"    left out {f}: {why}" for f, why in sorted(g["excluded"].items())]
        lines += [f"  FAILED  {label}: {why}" for label, why in sorted(t.failed.items())]
        lines += [f"  promoted to template: {label} ({why})"
                  for label, why in sorted(t.promoted.items())]
    if p.skipped:
        lines += ["", "Skipped:"] + [f"  {Path(f).name}: {why}" for f, why in sorted(p.skipped.items())]
    lines += ["", f"Products: {r.out_dir}", f"Log:      {r.log_path}"]
    return "\n".join(lines)
