"""The calibration stages of a night: build tonight's masters into the library,
choose each science frame's masters (tonight's, else borrowed from the nearest
night), and calibrate the frames on N processes, one failure never stopping
the others."""

from __future__ import annotations

import hashlib
import traceback
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from gppy import parallel
from gppy.daemon.ledger import Ledger
from gppy.daemon.plan import NightPlan, binning_of, settemp_of
from gppy.errors import InputError
from gppy.fitsio import BadFrame
from gppy.obsconfig.headers import FrameRecord
from gppy.obsconfig.nights import night_fields
from gppy.obsconfig.schema import Profile
from gppy.reduction import library
from gppy.reduction.calibrate import CalibResult, FrameCalibration, calibrate
from gppy.reduction.flags import Cal
from gppy.reduction.library import MasterRef
from gppy.reduction.masters import (Master, MasterError, Setup, build_bias, build_bpm,
                                    build_dark, build_flat, choose_dark, master_name,
                                    read_master)

CALIBRATE_STEP = "calibrate"


def gain_mode_of(profile: Profile, night_dir: Path) -> str:
    """The camera gain setting: from the night folder's name ({gain}), else the profile."""
    fields = night_fields(profile.raw.night_folder, night_dir.name) or {}
    return fields.get("gain") or profile.camera.gain_mode or ""


@dataclass
class MastersReport:
    built: list[Master] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)          # labels, same inputs as before
    failed: dict[str, str] = field(default_factory=dict)     # label -> why


def _nearest_temp(refs: list[MasterRef], ledger: Ledger, setup: Setup) -> MasterRef:
    if setup.settemp_c is None or len(refs) == 1:
        return refs[0]
    temps = {r.path: ledger.db.execute("SELECT settemp_c FROM masters WHERE path = ?",
                                       (str(r.path),)).fetchone()[0] for r in refs}
    return min(refs, key=lambda r: abs((temps[r.path] if temps[r.path] is not None
                                        else setup.settemp_c) - setup.settemp_c))


def build_masters(plan: NightPlan, profile: Profile, ledger: Ledger, night: str,
                  gain_mode: str, out_dir: Path, ncores: int, force: bool, log) -> MastersReport:
    report = MastersReport()
    rebuilt_setups: dict[Setup, bool] = defaultdict(bool)
    for mp in plan.masters:  # biases, then darks, then flats
        setup = Setup(mp.binning, gain_mode, mp.settemp_c)
        path = out_dir / master_name(mp.kind, setup, mp.exptime_s, mp.filter)
        checksums = [ledger.frame_by_path(f)["sha256"] or f for f in mp.files]
        rebuilt_setups.setdefault(setup, False)
        if not force and library.existing(ledger, path, checksums):
            report.reused.append(mp.label)
            continue
        try:
            if mp.kind == "bias":
                master = build_bias(mp.files, profile, setup, night, out_dir, ncores)
            else:
                biases = library.candidates(ledger, profile, "bias", setup, night)
                if not biases:
                    raise MasterError(f"no bias for {mp.label}")
                bias = read_master(_nearest_temp(biases, ledger, setup).path)
                if mp.kind == "dark":
                    master = build_dark(mp.files, mp.exptime_s, bias, profile, setup, night,
                                        out_dir, ncores)
                else:
                    darks = [read_master(r.path) for r in
                             library.candidates(ledger, profile, "dark", setup, night)]
                    master = build_flat(mp.files, mp.filter, mp.exptimes_s, bias, darks, profile,
                                        setup, night, out_dir, ncores)
        except (MasterError, BadFrame) as exc:
            report.failed[mp.label] = str(exc)
            log.warning("master failed", master=mp.label, error=str(exc))
            continue
        library.register(ledger, profile.name, master, checksums)
        report.built.append(master)
        rebuilt_setups[setup] = True
        log.info("master built", master=mp.label, path=str(master.path), **master.qa,
                 rejected=master.rejected or None)
    for setup, rebuilt in rebuilt_setups.items():
        _bad_pixel_mask(profile, ledger, night, setup, out_dir, rebuilt or force, report, log)
    return report


def _bad_pixel_mask(profile: Profile, ledger: Ledger, night: str, setup: Setup, out_dir: Path,
                    rebuild: bool, report: MastersReport, log) -> None:
    """Tonight's bad-pixel mask of a set-up, from tonight's darks and flats."""
    path = out_dir / master_name("bpm", setup)
    label = f"bpm ({setup.tag})"
    if not rebuild and path.exists():
        report.reused.append(label)
        return
    tonight = [r for kind in ("dark", "flat")
               for r in library.candidates(ledger, profile, kind, setup, night) if not r.borrowed]
    darks = [read_master(r.path) for r in tonight if r.exptime_s is not None]
    flats = [read_master(r.path) for r in tonight if r.filter is not None]
    if not darks and not flats:
        return
    try:
        master = build_bpm(darks, flats, profile, setup, night, out_dir)
    except MasterError as exc:
        report.failed[label] = str(exc)
        return
    library.register(ledger, profile.name, master, [str(p) for p in master.inputs])
    report.built.append(master)
    log.info("master built", master=label, path=str(path), **master.qa)


def choose_masters(rec: FrameRecord, profile: Profile, ledger: Ledger, night: str,
                   gain_mode: str) -> FrameCalibration | str:
    """The masters a science frame uses, or why it cannot be calibrated."""
    setup = Setup(binning_of(rec), gain_mode, settemp_of(rec))

    def find(kind: str, **kw) -> list[MasterRef]:
        return library.candidates(ledger, profile, kind, setup, night, **kw)

    biases, flats = find("bias"), find("flat", filter=rec.filter)
    if not biases:
        return "no bias: frame left uncalibrated"
    if not flats:
        return "no flat: frames left uncalibrated"
    bias, flat = _nearest_temp(biases, ledger, setup), flats[0]
    flags = Cal(0)
    nights = {"bias": bias.night, "flat": flat.night}
    flags |= Cal.BIAS_BORROWED if bias.borrowed else 0
    flags |= Cal.FLAT_BORROWED if flat.borrowed else 0
    darks = find("dark")
    choice = choose_dark([d.exptime_s for d in darks], rec.exptime, profile.reduction.dark_policy)
    dark, scale = (darks[choice[0]], choice[1]) if choice else (None, 1.0)
    if dark is None:
        flags |= Cal.NO_DARK
    else:
        nights["dark"] = dark.night
        flags |= Cal.DARK_BORROWED if dark.borrowed else 0
        flags |= Cal.DARK_SCALED if scale != 1.0 else 0
    bpms = find("bpm")
    bpm = bpms[0] if bpms else None
    if bpm is not None and bpm.borrowed:
        flags |= Cal.BPM_BORROWED
    return FrameCalibration(bias.path, flat.path, dark.path if dark else None, scale,
                            bpm.path if bpm else None, flags, nights)


def calibration_signature(ledger: Ledger, cal: FrameCalibration) -> str:
    """Changes when the chosen masters, or the inputs they were built from, change."""
    parts = []
    for path in (cal.bias, cal.dark, cal.flat, cal.bpm):
        row = ledger.db.execute("SELECT inputs_sha FROM masters WHERE path = ?",
                                (str(path),)).fetchone() if path else None
        parts.append(f"{path}:{row[0] if row else ''}")
    parts.append(f"{cal.dark_scale:.9g}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def _calibrate_safely(job: tuple[FrameRecord, FrameCalibration], profile: Profile,
                      out_dir: Path) -> tuple[str, CalibResult | None, str | None]:
    """The worker: one frame, its failure reported rather than raised."""
    rec, cal = job
    try:
        return rec.file, calibrate(rec, cal, profile, out_dir), None
    except (BadFrame, InputError) as exc:
        return rec.file, None, str(exc)
    except Exception as exc:  # a bug: keep where it happened, for the log
        where = traceback.extract_tb(exc.__traceback__)[-1]
        return rec.file, None, (f"{type(exc).__name__}: {exc} "
                                f"(at {Path(where.filename).name}:{where.lineno})")


def calibrate_frames(jobs: list[tuple[FrameRecord, FrameCalibration]], profile: Profile,
                     out_dir: Path, ncores: int) -> Iterator[tuple[str, CalibResult | None, str | None]]:
    """(file, result, error) for each job, in completion order, on `ncores` processes."""
    return parallel.imap(lambda job: _calibrate_safely(job, profile, out_dir), jobs, ncores)
