"""The astrometry stage of a night: solve every calibrated frame (N processes),
write the WCS and its quality into the Calib file, record each frame in the
ledger; fit one distortion to the frames of the same shape solved in this run
(see `gppy.astrometry.distortion`), kept for each frame whose RMS it leaves
within 10 % of its own fit's; then apply the night's outlier rule: a frame whose
median separation from the catalogue exceeds Q3 + 1.5 IQR of the night's (and
OUTLIER_FLOOR_ARCSEC) is solved again with stricter settings, and left out of
stacks if it is still an outlier."""

from __future__ import annotations

import dataclasses
import json
import traceback
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table

from gppy import parallel
from gppy.astrometry.refcat import reference_stars
from gppy.astrometry.distortion import fit_shared_distortion
from gppy.astrometry.match import catalog_radius_deg
from gppy.astrometry.solve import AstrometryResult, Frame, Options, solve
from gppy.astrometry.wcsio import celestial_wcs, write_solution
from gppy.errors import InputError, NightInterrupted
from gppy.fitsio import BadFrame, write_atomic
from gppy.obsconfig.headers import FrameRecord
from gppy.obsconfig.schema import Profile
from gppy.settings import AstrometrySettings

ASTROMETRY_STEP = "astrometry"
MIN_FRAMES_FOR_OUTLIERS = 4   # an IQR of fewer frames says nothing
# Never an outlier below this median separation: on a night of 0.015" frames, Q3 +
# 1.5 IQR can be 0.02", and a 0.02" frame is no worse for a stack than the others.
OUTLIER_FLOOR_ARCSEC = 0.05
SHARED_RMS_TOLERANCE = 1.1    # a frame keeps the night's distortion up to 10 % more RMS


@dataclass
class AstrometryReport:
    solved: dict[str, dict] = field(default_factory=dict)     # Calib file -> result summary
    unsolved: dict[str, str] = field(default_factory=dict)    # Calib file -> why
    unchanged: int = 0
    outliers: dict[str, str] = field(default_factory=dict)    # Calib file -> what happened
    excluded: list[str] = field(default_factory=list)         # left out of stacks

    def median(self, key: str) -> float | None:
        values = [s[key] for s in self.solved.values() if s.get(key) is not None]
        return float(np.median(values)) if values else None


class FieldStars:
    """Reference stars fetched once for a field (all frames of one target); a cone
    outside it (a blind solution elsewhere) is fetched on demand."""

    def __init__(self, table: Table, ra_deg: float, dec_deg: float, radius_deg: float, fetch):
        self.table, self.center, self.radius, self.fetch = table, (ra_deg, dec_deg), radius_deg, fetch

    def __call__(self, ra_deg: float, dec_deg: float, radius_deg: float) -> Table:
        if _separation_deg(self.center, (ra_deg, dec_deg)) + radius_deg > self.radius:
            return self.fetch(ra_deg, dec_deg, radius_deg)
        near = _separation_deg((ra_deg, dec_deg), (self.table["ra"], self.table["dec"])) <= radius_deg
        return self.table[near]


def _separation_deg(a, b) -> np.ndarray:
    ra1, dec1, ra2, dec2 = map(np.radians, (a[0], a[1], b[0], b[1]))
    cos = np.sin(dec1) * np.sin(dec2) + np.cos(dec1) * np.cos(dec2) * np.cos(ra1 - ra2)
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def options_for(profile: Profile, settings: AstrometrySettings, **kw) -> Options:
    a = profile.astrometry
    return Options(a.sip_order, a.min_stars, a.good_rms_arcsec, settings, **kw)


def solve_calibrated(calib: Path, rec: FrameRecord, profile: Profile, refstars,
                     options: Options) -> AstrometryResult:
    """Solve one Calib file and write its WCS and quality into it (atomically)."""
    hdus = _read(calib)
    frame = Frame(hdus[0].data.astype(np.float32), hdus["MASK"].data, hdus["ERR"].data,
                  profile.camera.pixscale_arcsec, rec.ra, rec.dec, celestial_wcs(hdus[0].header))
    result = solve(frame, refstars, options)
    if result.solved:
        _write(calib, result, hdus)
    return result


def _read(calib: Path) -> fits.HDUList:
    with fits.open(calib, memmap=False) as hdul:
        return fits.HDUList([h.copy() for h in hdul])


def _write(calib: Path, result: AstrometryResult, hdus: fits.HDUList | None = None) -> None:
    """Put `result` into the Calib file's header (`hdus`: the file as read, if at hand)."""
    hdus = hdus if hdus is not None else _read(calib)
    write_solution(hdus[0].header, result.wcs, result.quality())
    write_atomic(calib, hdus)


def _solve_safely(job, profile: Profile, refstars_by_field: dict, options: Options):
    calib, rec, strict = job
    try:
        opts = dataclasses.replace(options, strict=strict, force=options.force or strict)
        return calib, solve_calibrated(Path(calib), rec, profile,
                                       refstars_by_field[_field_key(rec)], opts), None
    except (BadFrame, InputError, OSError) as exc:
        return calib, None, str(exc)
    except Exception as exc:  # a bug: keep where it happened, for the log
        where = traceback.extract_tb(exc.__traceback__)[-1]
        return calib, None, f"{type(exc).__name__}: {exc} (at {Path(where.filename).name}:{where.lineno})"


def _field_key(rec: FrameRecord) -> str:
    return rec.object or f"{rec.ra}:{rec.dec}"


def field_catalogues(records: list[FrameRecord], profile: Profile, settings: AstrometrySettings,
                     cache_dir: Path, log) -> dict[str, FieldStars]:
    """Reference stars per target, each fetched once for all its frames."""
    def fetch(ra, dec, radius):
        return reference_stars(ra, dec, radius, source=settings.refcat, cache_dir=cache_dir,
                               offline=settings.offline, index_dirs=settings.index_dirs,
                               mag_limit=profile.astrometry.refcat_mag_limit)

    groups: dict[str, list[FrameRecord]] = defaultdict(list)
    for rec in records:
        groups[_field_key(rec)].append(rec)
    out = {}
    for key, recs in groups.items():
        pointed = [r for r in recs if r.ra is not None and r.dec is not None]
        if not pointed:
            out[key] = FieldStars(Table({"ra": [], "dec": [], "mag": []}), 0.0, 0.0, 0.0, fetch)
            continue
        ra = float(np.degrees(np.angle(np.mean(np.exp(1j * np.radians([r.ra for r in pointed]))))))
        dec = float(np.mean([r.dec for r in pointed]))
        spread = float(np.max(_separation_deg((ra, dec), ([r.ra for r in pointed],
                                                          [r.dec for r in pointed]))))
        shape = tuple(pointed[0].shape or profile.camera.detector_px[::-1])
        radius = spread + catalog_radius_deg(shape, profile.camera.pixscale_arcsec)
        try:
            table = fetch(ra, dec, radius)
            log.info("reference stars", field=key, catalog=table.meta.get("catalog"),
                     stars=len(table), radius_deg=round(radius, 3))
        except InputError as exc:
            log.warning("no reference stars", field=key, error=str(exc))
            table = Table({"ra": [], "dec": [], "mag": []}, meta={"error": str(exc)})
        out[key] = FieldStars(table, ra, dec, radius if len(table) else 0.0, fetch)
    return out


def run(jobs: list[tuple[int, FrameRecord, Path, str]], profile: Profile,
        settings: AstrometrySettings, cache_dir: Path, ledger, ncores: int, force: bool, log,
        should_stop) -> AstrometryReport:
    """Solve the night's calibrated frames: (frame id, record, Calib file, signature of
    its calibration) each. A frame solved before on the same calibration is not
    solved again (later stages rewrite the Calib file's header, so its own size and
    time say nothing)."""
    report = AstrometryReport()
    options = options_for(profile, settings, force=force)
    todo, ids = [], {}
    for frame_id, rec, calib, upstream in jobs:
        ids[str(calib)] = (frame_id, rec, upstream)
        step = ledger.step(frame_id, ASTROMETRY_STEP)
        info = json.loads(step["info_json"]) if step is not None and step["info_json"] else {}
        if (not force and step is not None and step["status"] == "done"
                and info.get("signature") == upstream):
            report.unchanged += 1
            report.solved[str(calib)] = info
            continue
        todo.append((str(calib), rec, False))
    if not todo:
        return report
    stars = field_catalogues([rec for _, rec, _ in todo], profile, settings, cache_dir, log)
    solved: dict[str, AstrometryResult] = {}
    for calib, result, error in parallel.imap(
            lambda job: _solve_safely(job, profile, stars, options), todo, ncores):
        if result is not None and result.pairs is not None:
            solved[calib] = result
        else:
            _record(ledger, report, ids, calib, result, error, log)
        if should_stop():
            for calib, result in solved.items():
                _record(ledger, report, ids, calib, result, None, log)
            raise NightInterrupted
    _share_distortion(solved, profile.astrometry.sip_order, log)
    for calib, result in solved.items():
        _record(ledger, report, ids, calib, result, None, log)
    _outliers(report, ids, profile, stars, options, ledger, ncores, log)
    return report


def _share_distortion(solved: dict[str, AstrometryResult], sip_order: int, log) -> None:
    """Refit the frames of each shape with one distortion for all, in place (result
    and Calib file), where it leaves a frame's RMS within SHARED_RMS_TOLERANCE."""
    groups: dict[tuple, list[str]] = defaultdict(list)
    for calib, result in solved.items():
        groups[tuple(result.shape)].append(calib)
    for shape, calibs in groups.items():
        shared = fit_shared_distortion([solved[c].pairs for c in calibs],
                                       [solved[c].wcs for c in calibs], shape, sip_order)
        if shared is None:
            continue
        kept = 0
        for calib, fit in zip(calibs, shared):
            result = solved[calib]
            if fit.rms_arcsec > SHARED_RMS_TOLERANCE * result.rms_arcsec:
                continue
            result.wcs, result.nstars, result.distortion = fit.wcs, fit.nstars, "night"
            result.rms_arcsec, result.median_sep_arcsec = fit.rms_arcsec, fit.median_sep_arcsec
            result.sip_order = sip_order
            _write(Path(calib), result)
            kept += 1
        log.info("night distortion", shape=list(shape), frames=len(calibs), kept=kept)


def _record(ledger, report: AstrometryReport, ids: dict, calib: str,
            result: AstrometryResult | None, error: str | None, log, outlier: bool = False) -> None:
    frame_id, _, upstream = ids[calib]
    if result is None or not result.solved:
        why = error or result.error
        report.unsolved[calib] = why
        report.solved.pop(calib, None)
        ledger.set_step(frame_id, ASTROMETRY_STEP, "failed", error=why)
        log.warning("unsolved", file=calib, error=why)
        return
    info = result.summary() | {"signature": upstream, "outlier": outlier}
    report.solved[calib] = info
    ledger.set_step(frame_id, ASTROMETRY_STEP, "done", info=info)
    log.debug("solved", file=calib, **result.summary())


def _outliers(report: AstrometryReport, ids: dict, profile: Profile, stars, options: Options,
              ledger, ncores: int, log) -> None:
    seps = {f: s["median_sep_arcsec"] for f, s in report.solved.items()
            if s.get("median_sep_arcsec") is not None}
    if len(seps) < MIN_FRAMES_FOR_OUTLIERS:
        return
    q1, q3 = np.percentile(list(seps.values()), [25, 75])
    limit = max(q3 + 1.5 * (q3 - q1), OUTLIER_FLOOR_ARCSEC)
    outliers = [f for f, sep in seps.items() if sep > limit]
    if not outliers:
        return
    log.info("astrometric outliers, solving again with stricter settings", frames=len(outliers),
             limit_arcsec=round(float(limit), 4))
    jobs = [(f, ids[f][1], True) for f in outliers]
    for calib, result, error in parallel.imap(
            lambda job: _solve_safely(job, profile, stars, options), jobs, ncores):
        sep = result.median_sep_arcsec if result is not None and result.solved else None
        still = bool(sep is None or sep > limit)
        _record(ledger, report, ids, calib, result, error, log, outlier=still)
        report.outliers[calib] = (f"median separation {seps[calib]:.3f}\" > {limit:.3f}\"; "
                                  + ("still an outlier: left out of stacks" if still
                                     else f"solved again: {sep:.3f}\""))
        if still:
            report.excluded.append(calib)
