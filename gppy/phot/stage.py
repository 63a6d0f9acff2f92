"""The photometry stage of a night: every solved Calib file measured (N processes),
its zero points fitted against the reference catalogue of its band, its catalogue
written beside it (NAME.cat.fits), its header given ZP, ZPERR, UL5, ... (see
`gppy.phot.calibrate`), a ledger row per frame, and the night's table
(phot.ecsv: one row per frame)."""

from __future__ import annotations

import hashlib
import json
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table

from gppy import parallel
from gppy.errors import InputError, NightInterrupted
from gppy.fitsio import BadFrame, atomic_open, write_atomic
from gppy.obsconfig.headers import FrameRecord
from gppy.obsconfig.schema import Phot, Profile
from gppy.phot.calibrate import catalog_path, photometer, write_catalog, write_header_keys
from gppy.phot.catalogs import choose_catalog, reference_mags
from gppy.settings import AstrometrySettings

PHOT_STEP = "phot"
SUMMARY_COLUMNS = ("file", "filter", "zp", "zperr", "nstars", "ul5", "ul3", "seeing_arcsec",
                   "ellipticity", "sky_e", "skysig_e", "nsources", "refcat")


@dataclass
class PhotReport:
    measured: dict[str, dict] = field(default_factory=dict)   # Calib file -> summary
    failed: dict[str, str] = field(default_factory=dict)      # Calib file -> why
    unchanged: int = 0

    def median(self, key: str) -> float | None:
        values = [s[key] for s in self.measured.values() if s.get(key) is not None]
        return float(np.median(values)) if values else None

    def table(self) -> Table:
        rows = [{k: s.get(k) for k in SUMMARY_COLUMNS} for _, s in sorted(self.measured.items())]
        table = Table(rows=[[r[k] if r[k] is not None else np.nan for k in SUMMARY_COLUMNS]
                            for r in rows] or None, names=SUMMARY_COLUMNS)
        if len(table):
            table["file"] = [Path(f).name for f in table["file"]]
        return table


def reference_source(p: Phot, settings: AstrometrySettings, cache_dir: Path):
    """(ra, dec, radius, band) -> reference magnitudes, as the photometry settings
    `p` and `settings` say: a catalogue file given as the settings' refcat, else the
    profile's catalogue (or the one serving the declination and band) from VizieR
    or the cache."""
    file = settings.refcat if settings.refcat not in ("auto", "gaia", "tycho2") else None

    def refstars(ra_deg, dec_deg, radius_deg, band):
        catalog = "file" if file else choose_catalog(p.refcat, dec_deg, band)
        return reference_mags(ra_deg, dec_deg, radius_deg, band, catalog=catalog,
                              cache_dir=cache_dir, offline=settings.offline, file=file,
                              mag_range=(p.refmag_bright, p.refmag_faint),
                              magerr_max=p.refmagerr_max)
    return refstars


def measure_calibrated(calib: Path, band: str, profile: Profile, refstars) -> dict:
    """Photometry of one Calib file: its catalogue written, its header updated."""
    result = photometer(calib, profile.phot, band, refstars)
    write_catalog(result, catalog_path(calib))
    with fits.open(calib, memmap=False) as hdul:
        hdus = fits.HDUList([h.copy() for h in hdul])
    write_header_keys(hdus[0].header, result)
    write_atomic(calib, hdus)
    return result.summary() | {"catalog": str(catalog_path(calib))}


def _measure_safely(job, profile: Profile, refstars):
    calib, band = job
    try:
        return calib, measure_calibrated(Path(calib), band, profile, refstars), None
    except (BadFrame, InputError, OSError) as exc:
        return calib, None, str(exc)
    except Exception as exc:  # a bug: keep where it happened, for the log
        where = traceback.extract_tb(exc.__traceback__)[-1]
        return calib, None, (f"{type(exc).__name__}: {exc} "
                             f"(at {Path(where.filename).name}:{where.lineno})")


def upstream_signature(astrometry_info: dict) -> str:
    """What a frame's photometry depends on: its astrometric solution."""
    text = json.dumps(astrometry_info, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def run(jobs: list[tuple[int, FrameRecord, Path, str]], profile: Profile,
        settings: AstrometrySettings, cache_dir: Path, ledger, ncores: int, force: bool, log,
        should_stop, out_dir: Path) -> PhotReport:
    """Measure the night's solved frames: (frame id, record, Calib file, signature of
    its astrometry) each; frames measured before on the same solution are skipped."""
    report = PhotReport()
    todo, ids = [], {}
    for frame_id, rec, calib, upstream in jobs:
        ids[str(calib)] = (frame_id, upstream)
        step = ledger.step(frame_id, PHOT_STEP)
        info = json.loads(step["info_json"]) if step is not None and step["info_json"] else {}
        if (not force and step is not None and step["status"] == "done"
                and info.get("signature") == upstream and Path(info.get("catalog", "")).exists()):
            report.unchanged += 1
            report.measured[str(calib)] = info
            continue
        todo.append((str(calib), rec.filter))
    refstars = reference_source(profile.phot, settings, cache_dir)
    for calib, summary, error in parallel.imap(
            lambda job: _measure_safely(job, profile, refstars), todo, ncores):
        frame_id, upstream = ids[calib]
        if summary is None:
            report.failed[calib] = error
            ledger.set_step(frame_id, PHOT_STEP, "failed", error=error)
            log.warning("photometry failed", file=calib, error=error)
        else:
            info = summary | {"signature": upstream}
            report.measured[calib] = info
            ledger.set_step(frame_id, PHOT_STEP, "done", info=info)
            log.debug("photometry", **{k: info[k] for k in SUMMARY_COLUMNS})
        if should_stop():
            raise NightInterrupted
    if report.measured:
        path = out_dir / "phot.ecsv"
        with atomic_open(path, "w") as fh:
            report.table().write(fh, format="ascii.ecsv")
    return report
