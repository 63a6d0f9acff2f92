"""The transient stage of a night: group the measured frames (gppy.transient.groups),
stack each group (on the template's grid when there is a template of the same
pixel scale; its photometry measured like a frame's), subtract the field's
template (gppy.transient.templates), find candidates on the difference (those
on a known asteroid or comet, from SkyBoT unless offline, become "moving"), cut
stamps for them; once every group is done, a candidate absent from the night's
other differences of its field that cover it (other visits, other filters: see
gppy.transient.candidates.mark_absent) becomes "moving" too, its stamps removed
(the difference's SUBNCAND counts the candidates before that); then the night's
stacks are promoted into the template library.

Products, in the night's product folder:
    Calib-...-com.fits (+ .cat.fits)      a group's stack and its catalogue
    hd-<science>.fits                     the difference (image, MASK, ERR, KERNEL)
    hd-<science>.cand.ecsv                every detection on it, with class and reasons
    stamps/<science stem>/cand*.fits|png  stamps of the candidates (class "candidate")
    transients.ecsv                       the night's candidates, best first
A group of one frame is not stacked: the frame itself is subtracted.
"""

from __future__ import annotations

import traceback
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table

from gppy.astrometry.wcsio import celestial_wcs
from gppy.catalogs.tiles import sep_deg
from gppy.errors import InputError, NightInterrupted
from gppy.fitsio import BadFrame, atomic_open
from gppy.obsconfig.schema import Profile
from gppy.phot.stage import measure_calibrated
from gppy.transient.candidates import Epoch, mark_absent
from gppy.transient.command_subtract import candidate_path, difference
from gppy.transient.groups import Group, NightFrame, group_frames
from gppy.transient.skybot import SkybotError, known_movers
from gppy.transient.stack import stack, stack_path
from gppy.transient.stamps import write_stamps
from gppy.transient.templates import TemplateLibrary

TOP_CANDIDATES = 5           # sent with the night's message


@dataclass
class TransientReport:
    groups: list[dict] = field(default_factory=list)       # one summary per group
    failed: dict[str, str] = field(default_factory=dict)   # group label -> why
    promoted: dict[str, str] = field(default_factory=dict)  # group label -> why
    candidates: list[dict] = field(default_factory=list)   # class "candidate", best first

    def top(self, n: int = TOP_CANDIDATES) -> list[dict]:
        return self.candidates[:n]


def night_frames(phot_measured: dict[str, dict], astrometry_solved: dict[str, dict]
                 ) -> list[NightFrame]:
    """The frames that have photometry, as the grouping needs them."""
    frames = []
    for calib, info in phot_measured.items():
        header = fits.getheader(calib)
        frames.append(NightFrame(
            calib, str(header.get("OBJECT") or "?"), str(header.get("FILTER")),
            float(header["MJD-OBS"]), float(header["EXPTIME"]), info.get("seeing_arcsec"),
            info.get("zp"), bool(astrometry_solved.get(calib, {}).get("outlier"))))
    return frames


def run(frames: list[NightFrame], profile: Profile, refstars, library: TemplateLibrary,
        out_dir: Path, log, should_stop, skybot_cache: Path | None = None) -> TransientReport:
    """The stage (module docstring); SkyBoT answers are cached in `skybot_cache`
    (None: SkyBoT is not asked)."""
    report = TransientReport()
    made = []
    for group in group_frames(frames, profile.transient):
        if not group.frames:
            report.failed[group.label] = "every frame left out: " + "; ".join(
                f"{Path(p).name}: {why}" for p, why in group.excluded.items())
            continue
        try:
            summary, science = _group(group, profile, refstars, library, out_dir, log,
                                      skybot_cache)
        except (BadFrame, InputError, OSError) as exc:
            report.failed[group.label] = str(exc)
            log.warning("transient stage failed", group=group.label, error=str(exc))
            continue
        except Exception as exc:  # a bug: keep where it happened, for the log
            where = traceback.extract_tb(exc.__traceback__)[-1]
            report.failed[group.label] = (f"{type(exc).__name__}: {exc} "
                                          f"(at {Path(where.filename).name}:{where.lineno})")
            log.exception("transient stage failed", group=group.label)
            continue
        report.groups.append(summary)
        made.append((group, science))
        if should_stop():
            raise NightInterrupted
    _consult_other_epochs([(g, s) for (g, _), s in zip(made, report.groups)], out_dir, log,
                          report.failed)
    # promoted only now: a stack is never its own night's reference
    for group, science in made:
        why = library.promote(science, group.object, group.filter)
        if why:
            report.promoted[group.label] = why
            log.info("template promoted", group=group.label, file=str(science), why=why)
    rows = [c for g in report.groups for c in g.pop("_candidates")]
    report.candidates = sorted(rows, key=lambda c: -c["score"])
    _write_night_table(report.candidates, out_dir)
    return report


def _group(group: Group, profile: Profile, refstars, library: TemplateLibrary, out_dir: Path,
           log, skybot_cache: Path | None) -> tuple[dict, Path]:
    summary = {"group": group.label, "frames": [Path(p).name for p in group.paths],
               "excluded": {Path(p).name: why for p, why in group.excluded.items()},
               "stack": None, "diff": None, "template": None, "n_candidates": 0,
               "_candidates": []}
    stacked = len(group.frames) > 1
    science = stack_path(group.paths, out_dir) if stacked else Path(group.paths[0])
    template = library.find(group.object, group.filter, science.name)
    if stacked:
        # on the template's grid when it has this camera's pixels: the template is
        # then subtracted as it is, without a second resampling
        grid = _template_grid(template.path, group.paths[0]) if template else None
        science = Path(stack(group.paths, science, reference_wcs=grid).path)
        measure_calibrated(science, group.filter, profile, refstars)
        summary["stack"] = science.name
    if template is None:
        summary["note"] = "no template yet"
        return summary, science
    summary["template"] = str(template.path)
    source = fits.getheader(template.path).get("TMPLSRC", template.path.name)
    movers, summary["skybot"] = _known_movers(science, skybot_cache, log)
    row, pair = difference(science, template.path, engine=profile.transient.engine, out=out_dir,
                           cards=[("TEMPLATE", str(source)[-68:], "reference image subtracted"),
                                  ("TMPLKIND", template.source, "configured or library")],
                           movers=movers)
    summary["diff"] = Path(row["diff"]).name
    summary["qa"] = {k: row.get(k) for k in ("resid_std_blank", "resid_std_stars",
                                             "kernel_sum", "n_dipoles", "seconds")}
    stem = Path(row["diff"]).name.rsplit(".", 1)[0]
    cands = pair.candidates
    good = cands[cands["cls"] == "candidate"]
    summary["n_candidates"] = len(good)
    summary["n_moving"] = row["n_moving"]
    if len(good):
        paths = write_stamps(good, pair.sci, pair.ref, pair.diff, pair.wcs,
                             out_dir / "stamps" / stem)
        for c, (fits_path, png_path) in zip(good, paths):
            summary["_candidates"].append({
                "id": int(c["id"]), "group": group.label, "diff": Path(row["diff"]).name,
                "ra": round(float(c["ra"]), 6), "dec": round(float(c["dec"]), 6),
                "mag": _num(c["mag"]), "magerr": _num(c["magerr"]), "snr": _num(c["snr"]),
                "score": _num(c["score"]), "stamp_fits": str(fits_path),
                "stamp_png": str(png_path)})
    log.info("subtracted", group=group.label, diff=summary["diff"],
             candidates=len(good), **{k: v for k, v in summary["qa"].items() if v is not None})
    return summary, science


def _consult_other_epochs(done: list[tuple[Group, dict]], out_dir: Path, log,
                          failed: dict[str, str]) -> None:
    """Each difference's candidates against the night's other differences of the same
    field (`_against_each_other`); a field where that fails keeps its candidates as
    they were, the reason in `failed`."""
    by_field: dict[str, list[tuple[Group, dict]]] = {}
    for group, summary in done:
        if summary["diff"]:
            by_field.setdefault(group.object, []).append((group, summary))
    for field_name, items in by_field.items():
        if len(items) < 2:
            continue
        try:
            _against_each_other(items, out_dir, log)
        except (InputError, OSError, ValueError, KeyError) as exc:
            failed[f"{field_name}: other epochs"] = str(exc)
            log.warning("other epochs not consulted", field=field_name, error=str(exc))


def _against_each_other(items: list[tuple[Group, dict]], out_dir: Path, log) -> None:
    """`mark_absent` of each difference's candidates against the others (fluxes put on
    one scale by the candidate tables' ZP, EXPTIME and APCORR): those made "moving"
    leave the group's list, their stamps removed and the candidate table rewritten."""
    with ExitStack() as files:
        tables, epochs = [], []
        for group, summary in items:
            diff = out_dir / summary["diff"]
            table = Table.read(candidate_path(diff), format="ascii.ecsv")
            # memory maps, of which only windows are read
            hdul = files.enter_context(fits.open(diff, memmap=True, do_not_scale_image_data=True))
            epochs.append(Epoch(hdul[0].data, hdul["ERR"].data, celestial_wcs(hdul[0].header),
                                _Scaled(hdul["MASK"]), float(table.meta["FWHM_PX"])))
            tables.append(table)
        for k, (group, summary) in enumerate(items):
            others = [_on_scale_of(tables[k], tables[j], epochs[j], group, items[j][0])
                      for j in range(len(items)) if j != k]
            others = [e for e in others if e is not None]
            moved = mark_absent(tables[k], others)
            if not len(moved):
                continue
            with atomic_open(candidate_path(out_dir / summary["diff"]), "w") as fh:
                tables[k].write(fh, format="ascii.ecsv")
            gone = {int(tables[k]["id"][i]) for i in moved}
            for c in summary["_candidates"]:
                if c["id"] in gone:
                    for key in ("stamp_fits", "stamp_png"):
                        Path(c[key]).unlink(missing_ok=True)
            summary["_candidates"] = [c for c in summary["_candidates"]
                                      if c["id"] not in gone]
            cls = tables[k]["cls"]
            summary["n_candidates"] = int(np.count_nonzero(cls == "candidate"))
            summary["n_moving"] = int(np.count_nonzero(cls == "moving"))
            log.info("absent from the night's other differences", group=group.label,
                     moving=len(moved))


class _Scaled:
    """Windows of an integer image HDU opened unscaled (a memory map), scaled on
    reading (the uint16 MASK is stored as int16 + BZERO, which astropy cannot map)."""

    def __init__(self, hdu):
        self.raw = hdu.data
        self.zero, self.scale = hdu.header.get("BZERO", 0), hdu.header.get("BSCALE", 1)

    def __getitem__(self, window):
        return self.raw[window].astype(np.int64) * self.scale + self.zero


def _on_scale_of(mine: Table, theirs: Table, epoch: Epoch, my_group: Group,
                 their_group: Group) -> Epoch | None:
    """`epoch` with the flux scale that puts its PSF-weighted fluxes onto `mine`'s:
    exposure times and aperture corrections, and the zero points (needed across
    filters: without them an epoch in another filter is not used)."""
    a, b = mine.meta, theirs.meta
    same_band = my_group.filter == their_group.filter
    scale = (a["EXPTIME"] / b["EXPTIME"]) * (b["APCORR"] / a["APCORR"])
    zps = (a.get("ZP"), b.get("ZP"))
    if all(z is not None and np.isfinite(z) for z in zps):
        scale *= 10 ** (0.4 * (zps[0] - zps[1]))
    elif not same_band:
        return None
    return replace(epoch, flux_scale=float(scale), same_band=same_band)


def _known_movers(science: Path, cache: Path | None, log):
    """(the known solar-system objects over a frame at its mid-exposure time, or
    None; a note on what SkyBoT said)."""
    if cache is None:
        return None, "not asked (offline)"
    header = fits.getheader(science)
    wcs = celestial_wcs(header)
    if wcs is None:
        return None, "not asked (no WCS)"
    ny, nx = header["NAXIS2"], header["NAXIS1"]
    ra, dec = wcs.all_pix2world([(nx - 1) / 2, 0, nx - 1, 0, nx - 1],
                                [(ny - 1) / 2, 0, 0, ny - 1, ny - 1], 0)
    radius = float(sep_deg(ra[1:], dec[1:], ra[0], dec[0]).max())
    mjd = float(header["MJD-OBS"])
    if "MJD-BEG" not in header:     # a frame's MJD-OBS is its start, a stack's its middle
        mjd += float(header.get("EXPTIME", 0.0)) / 2 / 86400
    try:
        movers = known_movers(float(ra[0]), float(dec[0]), radius, mjd, cache_dir=cache)
    except SkybotError as exc:
        log.warning("SkyBoT not available", frame=science.name, error=str(exc))
        return None, str(exc)
    return movers, f"{len(movers)} known solar-system objects over the frame"


def _template_grid(template: Path, frame: str, max_scale_diff: float = 0.02):
    """The template's WCS (with its pixel shape) as the grid of a stack of frames
    like `frame`, if its pixel scale is the frame's within `max_scale_diff` and the
    frame's centre lies on it; else None (the stack takes its own grid)."""
    ht, hf = fits.getheader(template), fits.getheader(frame)
    wt, wf = celestial_wcs(ht), celestial_wcs(hf)
    if wt is None or wf is None:
        return None
    scale_t, scale_f = (float(np.sqrt(abs(np.linalg.det(w.pixel_scale_matrix))))
                        for w in (wt, wf))
    if abs(scale_t / scale_f - 1.0) > max_scale_diff:
        return None
    ny, nx = hf["NAXIS2"], hf["NAXIS1"]
    ra, dec = wf.all_pix2world((nx - 1) / 2.0, (ny - 1) / 2.0, 0)
    x, y = wt.all_world2pix(ra, dec, 0)
    if not (0 <= x <= ht["NAXIS1"] - 1 and 0 <= y <= ht["NAXIS2"] - 1):
        return None
    wt.pixel_shape = (ht["NAXIS1"], ht["NAXIS2"])
    return wt


def _num(v) -> float | None:
    v = float(v)
    return round(v, 4) if np.isfinite(v) else None


def _write_night_table(candidates: list[dict], out_dir: Path) -> None:
    names = ("group", "diff", "ra", "dec", "mag", "magerr", "snr", "score", "stamp_png")
    table = Table(rows=[[c[k] if c[k] is not None else np.nan for k in names]
                        for c in candidates] or None, names=names)
    with atomic_open(out_dir / "transients.ecsv", "w") as fh:
        table.write(fh, format="ascii.ecsv")
