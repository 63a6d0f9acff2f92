"""The night routine: everything done to one night folder, with its state in the
ledger so that a re-run does only what is new or changed (unless forced).

Stages so far: inventory (homogenised header of every frame) and the plan of
the later stages. Products go to the night's product folder, events to the
night's JSON log.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from gppy import logs
from gppy.errors import InputError
from gppy.daemon.ledger import Ledger
from gppy.daemon.plan import NightPlan, make_plan
from gppy.fitsio import BadFrame, atomic_open, read_header
from gppy.obsconfig.headers import FrameRecord, homogenise, night_of
from gppy.obsconfig.nights import parse_night
from gppy.obsconfig.schema import Profile
from gppy.progress import Progress
from gppy.reduction.inventory import find_frames, records_table, scan_frames
from gppy.settings import DataDir

INVENTORY_STEP = "inventory"


class NightError(InputError, RuntimeError):
    """A night that cannot be processed at all (not a single bad frame)."""


@dataclass
class NightResult:
    obs: str
    night: str
    night_dir: Path
    out_dir: Path
    log_path: Path
    records: list[FrameRecord]
    n_scanned: int          # frames read this run
    n_unchanged: int        # frames taken from the ledger
    plan: NightPlan
    seconds: float
    ncores: int


def night_label(profile: Profile, night_dir: Path, files: list[Path]) -> str:
    """The night's date: from the folder name when it follows the profile's
    pattern, else from the first readable frame's DATE-OBS at the site."""
    date = parse_night(profile.raw.night_folder, night_dir.name)
    if date is not None:
        return date.isoformat()
    for f in files:
        try:
            header, shape = read_header(f)
        except BadFrame:
            continue
        rec = homogenise(header, str(f), profile, shape)
        if rec.dateobs:
            return night_of(rec.dateobs, profile.site.longitude_deg).isoformat()
    raise NightError(f"{night_dir}: the folder name does not follow {profile.raw.night_folder!r} "
                     f"and no frame has a readable observation time")


def process_night(profile: Profile, night_dir: str | Path, data: DataDir, ncores: int = 1,
                  force: bool = False, out: str | Path | None = None) -> NightResult:
    started = time.monotonic()
    night_dir = Path(night_dir).resolve()
    if not night_dir.is_dir():
        raise NightError(f"{night_dir}: not a folder")
    files = find_frames(night_dir, profile)
    night = night_label(profile, night_dir, files)
    out_dir = Path(out).resolve() if out else data.products(profile.name, night)
    log_file = data.log_file(profile.name, night)
    with Ledger(data.ledger) as ledger, logs.night_log(log_file):
        log = logs.get().bind(obs=profile.name, night=night)
        night_id = ledger.upsert_night(profile.name, night, night_dir, "processing")
        ledger.set_night_status(night_id, "processing", count_attempt=True)
        log.info("night started", path=str(night_dir), frames=len(files), ncores=ncores,
                 force=force)
        try:
            records, n_scanned = _inventory(ledger, night_id, files, profile, ncores, force, log)
            plan = make_plan(records)
            _write_products(ledger, night_id, out_dir, records, plan)
        except Exception as exc:
            ledger.set_night_status(night_id, "failed", error=f"{type(exc).__name__}: {exc}")
            log.exception("night failed")
            raise
        ledger.set_night_status(night_id, "done")
        seconds = time.monotonic() - started
        log.info("night done", seconds=round(seconds, 2), scanned=n_scanned,
                 skipped=len(plan.skipped))
    return NightResult(profile.name, night, night_dir, out_dir, log_file, records, n_scanned,
                       len(records) - n_scanned, plan, seconds, ncores)


def _inventory(ledger: Ledger, night_id: int, files: list[Path], profile: Profile,
               ncores: int, force: bool, log) -> tuple[list[FrameRecord], int]:
    """Records of every frame: unchanged ones (same size and mtime, step done) come
    from the ledger, the rest are read on `ncores` processes."""
    records, todo = [], []
    for path in files:
        st = path.stat()
        row = None if force else ledger.frame_by_path(path)
        if (row is not None and row["size_bytes"] == st.st_size and row["mtime"] == st.st_mtime
                and ledger.step_status(row["id"], INVENTORY_STEP) == "done"):
            records.append(FrameRecord(**json.loads(row["record_json"])))
        else:
            todo.append(path)
    progress = Progress("inventory", len(todo))
    for scanned in scan_frames(todo, profile, ncores):
        rec = scanned.record
        ledger.record_frame(night_id, rec.file, scanned.size_bytes, scanned.mtime, scanned.sha256,
                            rec.as_dict(), INVENTORY_STEP, "failed" if rec.error else "done")
        if rec.error:
            log.warning("frame skipped", file=rec.file, error=rec.error)
        else:
            log.debug("frame", file=rec.file, type=rec.type, reason=rec.reason,
                      filter=rec.filter, exptime=rec.exptime, object=rec.object)
        records.append(rec)
        progress.advance()
    progress.close()
    records.sort(key=lambda r: r.file)
    return records, len(todo)


def _write_products(ledger: Ledger, night_id: int, out_dir: Path,
                    records: list[FrameRecord], plan: NightPlan) -> None:
    inventory_path = out_dir / "inventory.ecsv"
    with atomic_open(inventory_path, "w") as fh:
        records_table(records).write(fh, format="ascii.ecsv")
    plan_path = out_dir / "plan.json"
    with atomic_open(plan_path, "w") as fh:
        json.dump(plan.as_dict(), fh, indent=1)
    ledger.record_product(night_id, "inventory", inventory_path, info={"frames": len(records)})
    ledger.record_product(night_id, "plan", plan_path,
                          info={"masters": len(plan.masters), "science": len(plan.science)})
