"""The night routine: everything done to one night folder, with its state in the
ledger so that a re-run does only what is new or changed (unless forced).

Stages so far: inventory (homogenised header of every frame), the plan, the
masters (into the master library), the calibration of every science frame, its
astrometry and its photometry; then the night's stacks, differences against the
templates and transient candidates.
Products go to the night's product folder, events to the night's JSON log.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from gppy import logs
from gppy.astrometry import stage as astrometry_stage
from gppy.astrometry.stage import ASTROMETRY_STEP, AstrometryReport
from gppy.errors import InputError, NightInterrupted
from gppy.daemon.ledger import Ledger
from gppy.daemon.plan import NightPlan, make_plan
from gppy.reduction.night import (CALIBRATE_STEP, MastersReport, build_masters,
                                  calibrate_frames, calibration_signature, choose_masters,
                                  gain_mode_of)
from gppy.fitsio import BadFrame, atomic_open, read_header
from gppy.obsconfig.headers import FrameRecord, homogenise, night_of
from gppy.obsconfig.nights import parse_night
from gppy.obsconfig.schema import Profile
from gppy.phot import stage as phot_stage
from gppy.phot.stage import PhotReport, reference_source
from gppy.transient import stage as transient_stage
from gppy.transient.stage import TransientReport
from gppy.transient.templates import TemplateLibrary
from gppy.progress import Progress
from gppy.reduction.inventory import find_frames, records_table, scan_frames
from gppy.settings import AstrometrySettings, DataDir, load_settings

INVENTORY_STEP = "inventory"
# Stages after the calibration, in order (`process_night(..., until=...)`).
STAGES = ("calibration", "astrometry", "phot", "transients")
LAST_STAGE = STAGES[-1]


class NightError(InputError, RuntimeError):
    """A night that cannot be processed at all (not a single bad frame)."""


def _never() -> bool:
    return False


def _ignore(kind: str, payload: dict) -> None:
    pass


@dataclass
class CalibrationReport:
    calibrated: list[str] = field(default_factory=list)      # outputs written this run
    unchanged: int = 0                                       # done before, same masters
    failed: dict[str, str] = field(default_factory=dict)     # file -> error
    uncalibrated: dict[str, str] = field(default_factory=dict)  # file -> why no masters
    borrowed: dict[str, set] = field(default_factory=dict)   # kind -> nights borrowed from


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
    masters: MastersReport
    calibration: CalibrationReport
    astrometry: AstrometryReport
    phot: PhotReport
    transients: TransientReport
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
                  force: bool = False, out: str | Path | None = None,
                  should_stop: Callable[[], bool] = _never,
                  on_event: Callable[[str, dict], None] = _ignore,
                  settings: AstrometrySettings | None = None,
                  until: str = LAST_STAGE) -> NightResult:
    """Run the stages on one night folder, up to and including `until` (one of
    STAGES). `should_stop` is asked between frames: when it says so, the night is
    left 'queued' (it resumes from the ledger) and NightInterrupted is raised.
    `on_event("started", ...)` is called once the frames are known, with what the
    daemon reports."""
    if until not in STAGES:
        raise ValueError(f"until: one of {', '.join(STAGES)}, not {until!r}")
    wanted = STAGES[:STAGES.index(until) + 1]
    started = time.monotonic()
    settings = settings or load_settings().astrometry
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
            records, n_scanned = _inventory(ledger, night_id, files, profile, ncores, force, log,
                                            should_stop)
            plan = make_plan(records)
            on_event("started", started_event(records, plan, ncores))
            gain_mode = gain_mode_of(profile, night_dir)
            masters = build_masters(plan, profile, ledger, night, gain_mode,
                                    data.masters(profile.name, night), ncores, force, log)
            calibration = _calibrate(ledger, night_id, plan, profile, night, gain_mode, out_dir,
                                     ncores, force, log, should_stop)
            astrometry, phot, transients = AstrometryReport(), PhotReport(), TransientReport()
            if "astrometry" in wanted:
                astrometry = _astrometry(ledger, plan, profile, settings, data, ncores, force,
                                         log, should_stop)
            if "phot" in wanted:
                phot = _photometry(ledger, plan, profile, settings, data, ncores, force, log,
                                   should_stop, out_dir)
            if "transients" in wanted:
                transients = _transients(phot, astrometry, profile, settings, data, out_dir,
                                         log, should_stop)
            _write_products(ledger, night_id, out_dir, records, plan)
        except NightInterrupted:
            ledger.set_night_status(night_id, "queued", error="interrupted; resumes from the ledger")
            log.warning("night interrupted", seconds=round(time.monotonic() - started, 2))
            raise
        except Exception as exc:
            ledger.set_night_status(night_id, "failed", error=f"{type(exc).__name__}: {exc}")
            log.exception("night failed")
            raise
        ledger.set_night_status(night_id, "done")
        seconds = time.monotonic() - started
        log.info("night done", seconds=round(seconds, 2), scanned=n_scanned,
                 skipped=len(plan.skipped), masters_built=len(masters.built),
                 calibrated=len(calibration.calibrated), failed=len(calibration.failed),
                 uncalibrated=len(calibration.uncalibrated), solved=len(astrometry.solved),
                 unsolved=len(astrometry.unsolved), measured=len(phot.measured),
                 phot_failed=len(phot.failed), candidates=len(transients.candidates))
    return NightResult(profile.name, night, night_dir, out_dir, log_file, records, n_scanned,
                       len(records) - n_scanned, plan, masters, calibration, astrometry, phot,
                       transients, seconds, ncores)


def started_event(records: list[FrameRecord], plan: NightPlan, ncores: int) -> dict:
    """What the daemon announces when a night's processing starts."""
    counts = Counter(r.type if r.error is None else "unreadable" for r in records)
    return {"frames": dict(counts), "objects": sorted({r.object for r in plan.science if r.object}),
            "filters": sorted({r.filter for r in plan.science}), "ncores": ncores,
            "skipped": plan.skipped}


def done_event(r: NightResult) -> dict:
    """What the daemon reports when a night is done."""
    c = r.calibration
    return {"seconds": round(r.seconds, 1), "frames": len(r.records), "ncores": r.ncores,
            "calibrated": len(c.calibrated), "unchanged": c.unchanged, "failed": c.failed,
            "uncalibrated": dict(Counter(c.uncalibrated.values())), "skipped": r.plan.skipped,
            "masters_built": len(r.masters.built), "masters_failed": r.masters.failed,
            "borrowed": {kind: sorted(nights) for kind, nights in c.borrowed.items()},
            "solved": len(r.astrometry.solved), "unsolved": r.astrometry.unsolved,
            "astrometry_rms_arcsec": r.astrometry.median("rms_arcsec"),
            "excluded_from_stacks": r.astrometry.excluded,
            "zp_measured": len(r.phot.measured), "phot_failed": r.phot.failed,
            "seeing_arcsec": r.phot.median("seeing_arcsec"), "ul5": r.phot.median("ul5"),
            "stacks": len(r.transients.groups), "transient_failed": r.transients.failed,
            "n_candidates": len(r.transients.candidates),
            "top_candidates": r.transients.top(),
            "products": str(r.out_dir), "log": str(r.log_path)}


def _inventory(ledger: Ledger, night_id: int, files: list[Path], profile: Profile,
               ncores: int, force: bool, log,
               should_stop: Callable[[], bool]) -> tuple[list[FrameRecord], int]:
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
        if should_stop():
            raise NightInterrupted
    progress.close()
    records.sort(key=lambda r: r.file)
    return records, len(todo)


def _calibrate(ledger: Ledger, night_id: int, plan: NightPlan, profile: Profile, night: str,
               gain_mode: str, out_dir: Path, ncores: int, force: bool, log,
               should_stop: Callable[[], bool]) -> CalibrationReport:
    """Calibrate every science frame whose masters (or their inputs) changed since
    it was last calibrated, or all with `force`."""
    report = CalibrationReport()
    jobs, signatures, frame_ids = [], {}, {}
    for rec in plan.science:
        frame_ids[rec.file] = frame_id = ledger.frame_by_path(rec.file)["id"]
        choice = choose_masters(rec, profile, ledger, night, gain_mode)
        if isinstance(choice, str):
            report.uncalibrated[rec.file] = choice
            ledger.set_step(frame_id, CALIBRATE_STEP, "skipped", error=choice)
            continue
        for kind, source in choice.nights.items():
            if source != night:
                report.borrowed.setdefault(kind, set()).add(source)
        signatures[rec.file] = signature = calibration_signature(ledger, choice)
        step = ledger.step(frame_id, CALIBRATE_STEP)
        info = json.loads(step["info_json"]) if step is not None and step["info_json"] else {}
        if (not force and step is not None and step["status"] == "done"
                and info.get("signature") == signature and Path(info.get("output", "")).exists()):
            report.unchanged += 1
            continue
        jobs.append((rec, choice))
    progress = Progress("calibrate", len(jobs))
    for file, result, error in calibrate_frames(jobs, profile, out_dir, ncores):
        if error is not None:
            report.failed[file] = error
            ledger.set_step(frame_ids[file], CALIBRATE_STEP, "failed", error=error)
            log.warning("calibration failed", file=file, error=error)
        else:
            info = {"output": str(result.output), "signature": signatures[file],
                    "ncosmic": result.ncosmic, "nmasked": result.nbad, "calflag": result.calflag}
            ledger.set_step(frame_ids[file], CALIBRATE_STEP, "done", info=info)
            ledger.record_product(night_id, "calibrated", result.output, frame_id=frame_ids[file],
                                  info=info)
            report.calibrated.append(str(result.output))
            log.debug("calibrated", file=file, **info)
        progress.advance()
        if should_stop():
            raise NightInterrupted
    progress.close()
    return report


def _done_after(ledger: Ledger, plan: NightPlan, step_name: str
                ) -> list[tuple[int, FrameRecord, Path, dict]]:
    """(frame id, record, Calib file, the step's info) of the science frames whose
    `step_name` is done and whose Calib file exists."""
    out = []
    for rec in plan.science:
        frame_id = ledger.frame_by_path(rec.file)["id"]
        calib, step = ledger.step(frame_id, CALIBRATE_STEP), ledger.step(frame_id, step_name)
        if step is not None and step["status"] == "done" and calib is not None:
            output = Path(json.loads(calib["info_json"])["output"])
            if output.exists():
                out.append((frame_id, rec, output, json.loads(step["info_json"])))
    return out


def _astrometry(ledger: Ledger, plan: NightPlan, profile: Profile, settings: AstrometrySettings,
                data: DataDir, ncores: int, force: bool, log,
                should_stop: Callable[[], bool]) -> AstrometryReport:
    """Solve every calibrated science frame (see gppy.astrometry.stage)."""
    jobs = [(frame_id, rec, calib, info["signature"])
            for frame_id, rec, calib, info in _done_after(ledger, plan, CALIBRATE_STEP)]
    return astrometry_stage.run(jobs, profile, settings, data.catalog_cache, ledger, ncores,
                                force, log, should_stop)


def _photometry(ledger: Ledger, plan: NightPlan, profile: Profile, settings: AstrometrySettings,
                data: DataDir, ncores: int, force: bool, log, should_stop: Callable[[], bool],
                out_dir: Path) -> PhotReport:
    """Measure every solved frame (see gppy.phot.stage)."""
    jobs = [(frame_id, rec, calib, phot_stage.upstream_signature(info))
            for frame_id, rec, calib, info in _done_after(ledger, plan, ASTROMETRY_STEP)]
    return phot_stage.run(jobs, profile, settings, data.catalog_cache, ledger, ncores, force,
                          log, should_stop, out_dir)


def _transients(phot: PhotReport, astrometry: AstrometryReport, profile: Profile,
                settings: AstrometrySettings, data: DataDir, out_dir: Path, log,
                should_stop: Callable[[], bool]) -> TransientReport:
    """Stacks, differences and candidates (see gppy.transient.stage)."""
    frames = transient_stage.night_frames(phot.measured, astrometry.solved)
    library = TemplateLibrary(data.templates, profile.name, profile.transient.template_dir)
    refstars = reference_source(profile.phot, settings, data.catalog_cache)
    return transient_stage.run(frames, profile, refstars, library, out_dir, log, should_stop,
                               skybot_cache=None if settings.offline else data.catalog_cache)


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
