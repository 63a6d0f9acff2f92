"""`gppy status [OBS] [--json]`: the nights in the ledger and their states."""

from __future__ import annotations

import json
import sys

from gppy.daemon.ledger import Ledger
from gppy.settings import DataDir

# A frame is failed when any of its steps failed, done when all are done or skipped.
_QUERY = """
SELECT n.obs, n.night, n.status AS state, n.attempts, n.error, n.path, n.updated_utc,
  (SELECT COUNT(*) FROM frames f WHERE f.night_id = n.id AND NOT EXISTS
     (SELECT 1 FROM steps s WHERE s.frame_id = f.id AND s.status NOT IN ('done', 'skipped'))
  ) AS frames_done,
  (SELECT COUNT(*) FROM frames f WHERE f.night_id = n.id AND EXISTS
     (SELECT 1 FROM steps s WHERE s.frame_id = f.id AND s.status = 'failed')
  ) AS frames_failed
FROM nights n {where} ORDER BY n.obs, n.night, n.path
"""


def register(sub) -> None:
    p = sub.add_parser("status", help="nights in the ledger and their states")
    p.add_argument("obs", nargs="?", help="only this observatory (any case)")
    p.add_argument("--json", action="store_true",
                   help="one JSON object per night: obs, night, state, attempts, frames_done, "
                        "frames_failed, error, path, updated_utc")
    p.add_argument("--data-dir", help="data directory (default: $GPPY_DATA_DIR or ~/.gppy)")
    p.set_defaults(func=run)


def nights(data: DataDir, obs: str | None = None) -> list[dict]:
    if not data.ledger.exists():
        return []
    with Ledger(data.ledger) as ledger:
        where, args = ("WHERE lower(n.obs) = lower(?)", (obs,)) if obs else ("", ())
        return [dict(r) for r in ledger.db.execute(_QUERY.format(where=where), args)]


def run(args) -> int:
    rows = nights(DataDir.resolve(args.data_dir), args.obs)
    if args.json:
        for r in rows:
            print(json.dumps(r))
        return 0
    if not rows:
        print("no nights in the ledger" + (f" for {args.obs}" if args.obs else ""), file=sys.stderr)
        return 0
    print(f"{'OBS':<12} {'NIGHT':<10} {'STATE':<10} {'TRIES':>5} {'DONE':>5} {'FAILED':>6}  ERROR")
    for r in rows:
        print(f"{r['obs']:<12} {r['night']:<10} {r['state']:<10} {r['attempts']:>5} "
              f"{r['frames_done']:>5} {r['frames_failed']:>6}  {r['error'] or ''}")
    return 0
