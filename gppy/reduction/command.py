"""`gppy inspect FILE_OR_NIGHT_DIR... --obs NAME [--json]`: homogenised headers."""

from __future__ import annotations

import json
from pathlib import Path

from gppy.obsconfig.loader import load_profile
from gppy.reduction.inventory import find_frames, group, read_frame

JSON_KEYS = ("file", "type", "reason", "filter", "exptime", "dateobs", "mjd", "object", "ra",
             "dec", "binning", "gain", "rdnoise", "saturation", "error")


def register(sub) -> None:
    p = sub.add_parser("inspect", help="classify frames and show their homogenised headers")
    p.add_argument("paths", nargs="+", metavar="FILE", help="raw frames, or night folders")
    p.add_argument("--obs", required=True, help="observatory profile whose header rules apply")
    p.add_argument("--json", action="store_true",
                   help="one JSON object per line per file (keys: " + ", ".join(JSON_KEYS) + ", ...)")
    p.set_defaults(func=run)


def run(args) -> int:
    profile = load_profile(args.obs)
    files: list[Path] = []
    for p in map(Path, args.paths):
        files.extend(find_frames(p, profile) if p.is_dir() else [p])
    records = []
    for f in files:
        rec = read_frame(f, profile)
        records.append(rec)
        if args.json:
            print(json.dumps(rec.as_dict()), flush=True)
        else:
            print(_line(rec))
    if not args.json:
        print(f"\n{len(records)} files:")
        for (ftype, filt, exptime, obj), n in sorted(group(records).items(), key=str):
            print(f"  {n:4d} {ftype:<8} {filt or '-':<6} "
                  f"{'-' if exptime is None else f'{exptime:g}s':<7} {obj or ''}")
        bad = sum(r.error is not None for r in records)
        if bad:
            print(f"  {bad:4d} skipped (see the error column)")
    return 0


def _line(rec) -> str:
    if rec.error:
        return f"{Path(rec.file).name:<40} SKIPPED {rec.error}"
    exptime = "-" if rec.exptime is None else f"{rec.exptime:g}s"
    return (f"{Path(rec.file).name:<40} {rec.type:<8} {rec.filter or '-':<6} {exptime:<7} "
            f"{rec.dateobs or '-':<23} {rec.object or '-':<14} {rec.reason}")
