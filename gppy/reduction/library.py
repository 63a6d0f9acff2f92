"""The master library: masters on disk under DATA_DIR/masters/OBS/NIGHT/, indexed
in the ledger's `masters` table, and the query that picks the master a frame
uses: tonight's, else the nearest night's of the same observatory and set-up
(binning, gain mode, set-point, filter) within the profile's age limit and
never across a camera change ("wall") the profile declares.
"""

from __future__ import annotations

import bisect
import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from gppy.daemon.ledger import Ledger, utc_now
from gppy.obsconfig.schema import Profile
from gppy.reduction.masters import Master, Setup


@dataclass(frozen=True)
class MasterRef:
    """A master chosen for some frames."""

    path: Path
    night: str
    borrowed: bool     # from another night
    exptime_s: float | None = None
    filter: str | None = None


def inputs_sha(checksums: list[str]) -> str:
    return hashlib.sha256("\n".join(sorted(checksums)).encode()).hexdigest()


def register(ledger: Ledger, obs: str, master: Master, checksums: list[str]) -> None:
    """Record a master (replacing the row of the same path)."""
    s = master.setup
    with ledger.transaction() as db:
        db.execute("DELETE FROM masters WHERE path = ?", (str(master.path),))
        db.execute(
            "INSERT INTO masters (obs, night, kind, binning, gain_mode, settemp_c, exptime_s, "
            "filter, shape, path, n_frames, inputs_sha, qa_json, created_utc) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (obs, master.night, master.kind, s.binning, s.gain_mode, s.settemp_c,
             master.exptime_s, master.filter, "x".join(map(str, master.shape)),
             str(master.path), len(master.inputs), inputs_sha(checksums),
             json.dumps(master.qa), utc_now()))


def existing(ledger: Ledger, path: Path, checksums: list[str]) -> bool:
    """True if this master was already built from exactly these inputs."""
    row = ledger.db.execute("SELECT inputs_sha FROM masters WHERE path = ?",
                            (str(path),)).fetchone()
    return row is not None and row[0] == inputs_sha(checksums) and path.exists()


def _segment(walls: list[str], night: str) -> int:
    return bisect.bisect_right(sorted(walls), night)


def _days(a: str, b: str) -> int:
    return abs((dt.date.fromisoformat(a) - dt.date.fromisoformat(b)).days)


def candidates(ledger: Ledger, profile: Profile, kind: str, setup: Setup, night: str,
               filter: str | None = None) -> list[MasterRef]:
    """Masters of `kind` usable on `night`, all from one night: tonight's if any, else
    the nearest (earlier on a tie) within reduction.master_max_age_days and the same
    camera-wall segment. Empty if there is none."""
    red = profile.reduction
    rows = ledger.db.execute(
        "SELECT * FROM masters WHERE obs = ? AND kind = ? AND binning = ? AND gain_mode = ?"
        + (" AND filter = ?" if filter is not None else ""),
        (profile.name, kind, setup.binning, setup.gain_mode)
        + ((filter,) if filter is not None else ())).fetchall()
    segment = _segment(red.camera_walls, night)
    usable = [r for r in rows
              if _days(r["night"], night) <= red.master_max_age_days
              and _segment(red.camera_walls, r["night"]) == segment
              and (setup.settemp_c is None or r["settemp_c"] is None
                   or abs(r["settemp_c"] - setup.settemp_c) <= red.dark_temp_tolerance_c)
              and Path(r["path"]).exists()]
    if not usable:
        return []
    best = min(usable, key=lambda r: (_days(r["night"], night), r["night"] > night))["night"]
    return [MasterRef(Path(r["path"]), r["night"], r["night"] != night, r["exptime_s"],
                      r["filter"]) for r in usable if r["night"] == best]
