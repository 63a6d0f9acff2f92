"""Simulate whole nights: choose fields, build the sky and the detector, plan
each night, write its truth, then render and write every raw frame (in a
process pool; each frame's noise comes from its own seeded stream, so the bytes
do not depend on the number of processes)."""

from __future__ import annotations

import math
import os
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np
from astropy.table import Table, vstack

from gppy.obsconfig.schema import Profile
from gppy.sim import refcat, sky, writer
from gppy.sim.bands import band, has_band
from gppy.sim.instrument import build_detector, dark_e_per_s, read_noise_e
from gppy.sim.plan import (DITHER_BOX_ARCSEC, POINTING_ERROR_ARCSEC, Frame, RunConfig,
                           SimulationError, choose_fields, nominal_depth, plan_night)
from gppy.sim.render import raw_frame
from gppy.sim.seeds import stream
from gppy.sim.truth import Truth, truth_dir, write_cosmic_masks, write_truth

STAR_DEPTH_MARGIN_MAG = 1.5      # synthetic stars go this much deeper than a frame
GALAXY_DEPTH_MARGIN_MAG = -0.5   # background galaxies stop this much above it
EDGE_MARGIN_PX = 200


def catalogue_bands(profile: Profile, band_names: list[str]) -> list[str]:
    """The profile's filters that have a pass band (the truth and reference
    catalogue give magnitudes in these); every simulated band must be one."""
    for name in band_names:
        if name not in profile.camera.filters:
            raise SimulationError(f"filter {name!r} is not one of {profile.name}'s "
                                  f"camera.filters {profile.camera.filters}")
        band(name)  # UnknownBand names the filter and the known ones
    return [name for name in profile.camera.filters if has_band(name)]


def scene_radii_deg(cfg: RunConfig) -> tuple[float, float]:
    """(radius holding every source that can reach a frame, radius inside which a
    source is on every dithered frame)."""
    ny, nx = cfg.shape
    scale = cfg.profile.camera.pixscale_arcsec / 3600.0
    slop_deg = (DITHER_BOX_ARCSEC / math.sqrt(2) + 3 * POINTING_ERROR_ARCSEC) / 3600.0
    outer = (0.5 * math.hypot(nx, ny) + EDGE_MARGIN_PX) * scale + slop_deg
    half_side = 0.5 * min(nx, ny) * scale
    inner = max(half_side - slop_deg - 20 * scale, 0.25 * half_side)
    return outer, inner


def _camera_meta(cfg: RunConfig, bias_level: float) -> dict:
    cam = cfg.profile.camera
    return {"name": cam.name, "kind": cam.kind, "shape": list(cfg.shape),
            "detector_px": list(cam.detector_px), "pixscale_arcsec": cam.pixscale_arcsec,
            "gain_e_per_adu": cam.gain_e_per_adu, "read_noise_e": read_noise_e(cam),
            "dark_e_per_s": dark_e_per_s(cam), "saturation_adu": cam.saturation_adu,
            "full_well_e": (cam.saturation_adu - bias_level) * cam.gain_e_per_adu,
            "readout_s": cfg.readout_s, "bias_level_adu": bias_level}


_WORKER: dict = {}


def _init_worker(folder: Path, raw_dir: Path, profile: Profile, seed: int,
                 night_index: int) -> None:
    _WORKER.update(truth=Truth.load(folder), raw_dir=raw_dir, profile=profile, seed=seed,
                   night_index=night_index)


def _render_one(frame: dict) -> tuple[str, np.ndarray]:
    w = _WORKER
    rng = stream(w["seed"], "noise", w["night_index"], frame["seq"])
    data, mask = raw_frame(w["truth"], frame, rng)
    header = writer.raw_header(w["profile"], Frame(**frame))
    writer.write_raw(w["raw_dir"] / frame["file"], data, header)
    return frame["file"], np.packbits(mask)


def _render_night(folder: Path, raw_dir: Path, cfg: RunConfig, night_index: int,
                  frames: list[dict], processes: int) -> list[tuple[str, np.ndarray]]:
    init_args = (folder, raw_dir, cfg.profile, cfg.seed, night_index)
    costly_first = sorted(frames, key=lambda f: (f["type"] != "science", f["type"] != "flat",
                                                 f["seq"]))
    if processes <= 1:
        _init_worker(*init_args)
        results = dict(map(_render_one, costly_first))
        _WORKER.clear()
    else:
        import multiprocess

        with multiprocess.Pool(processes, initializer=_init_worker, initargs=init_args) as pool:
            results = dict(pool.imap_unordered(_render_one, costly_first, chunksize=1))
    n = cfg.shape[0] * cfg.shape[1]
    return [(f["file"], np.unpackbits(results[f["file"]], count=n).reshape(cfg.shape).astype(bool))
            for f in frames]


def _transients_tonight(table: Table, cfg: RunConfig, night_index: int,
                        band_names: list[str]) -> Table:
    tonight = table.copy()
    tonight["first_night_folder"] = [writer.night_folder(cfg.profile, cfg.night(int(i)))
                                     for i in tonight["first_night"]]
    mags = sky.transient_magnitudes(tonight, night_index, 1.0, band_names, cfg.profile.camera.kind)
    for j, name in enumerate(band_names):
        tonight[f"mag_{name}"] = mags[:, j]
    return tonight


def simulate(cfg: RunConfig, outdir: str | Path, processes: int | None = None,
             progress: Callable[[str], None] = lambda message: None,
             render: bool = True) -> list[Path]:
    """Write `cfg.n_nights` raw nights, their truth and the reference catalogue
    under `outdir`; return the night folders. With `render=False` only the truth
    and the catalogue are written (for tests that need the sky, not the frames)."""
    outdir = Path(outdir)
    profile, cam = cfg.profile, cfg.profile.camera
    all_bands = catalogue_bands(profile, cfg.bands)
    processes = processes or os.cpu_count() or 1
    fields = choose_fields(cfg, sky.imsng_fields())
    depth = max(nominal_depth(cfg, b) for b in cfg.bands)
    outer, inner = scene_radii_deg(cfg)
    progress(f"fields {', '.join(f.name for f in fields)}; frame depth ~{depth:.1f} mag")

    stars, galaxies, transients = [], [], []
    for fld in fields:
        s = sky.stars(fld, cfg.seed, outer, depth + STAR_DEPTH_MARGIN_MAG, all_bands, cam.kind)
        g = sky.galaxies(fld, cfg.seed, outer, depth + GALAXY_DEPTH_MARGIN_MAG, all_bands, cam.kind)
        t = sky.transients(fld, cfg.seed, s, g, inner, depth, cfg.telescope.seeing_arcsec,
                           cfg.n_nights, cfg.n_transients, cfg.transient_faint_mag)
        stars.append(s)
        galaxies.append(g)
        transients.append(t)
    stars_all, galaxies_all, transients_all = vstack(stars), vstack(galaxies), vstack(transients)
    refcat.write(outdir / "refcat.ecsv", refcat.build(stars, all_bands, cfg.seed))
    detector = build_detector(cfg.seed, cam, cfg.shape, cfg.bands, cfg.optics.axis_offset_px)

    folders = []
    for night_index in range(cfg.n_nights):
        frames = plan_night(cfg, night_index, fields)
        writer.assign_file_names(profile, frames)
        folder_name = writer.night_folder(profile, cfg.night(night_index))
        tdir = truth_dir(outdir, folder_name)
        meta = {"observatory": profile.name, "night": folder_name,
                "date": cfg.night(night_index).isoformat(), "night_index": night_index,
                "seed": cfg.seed, "simulated_bands": cfg.bands, "profile_bands": all_bands,
                "fields": [asdict(f) for f in fields],
                "camera": _camera_meta(cfg, detector.bias_level_adu),
                "telescope": asdict(cfg.telescope), "optics": asdict(cfg.optics),
                "raw_folder": folder_name, "refcat": "../../refcat.ecsv"}
        frame_dicts = [f.as_dict() for f in frames]
        write_truth(tdir, meta, frame_dicts, stars_all, galaxies_all,
                    _transients_tonight(transients_all, cfg, night_index, all_bands), detector)
        raw_dir = outdir / folder_name
        raw_dir.mkdir(parents=True, exist_ok=True)
        masks = _render_night(tdir, raw_dir, cfg, night_index, frame_dicts, processes) \
            if render else []
        write_cosmic_masks(tdir, masks)
        progress(f"{raw_dir}: {len(frames)} frames")
        folders.append(raw_dir)
    return folders
