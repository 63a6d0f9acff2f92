"""`gppy bench reduce [--json] [--size 4096] [--frames 10] [--obs LOAO]`: calibrate
simulated science frames with gpPy's calibration stage, with and without
cosmic-ray removal, on 1 and 2 cores, and with a plain ccdproc.ccd_process
chain (bias, scaled dark, flat, gain, read-noise uncertainty, bad-pixel mask,
written to FITS) on the same frames with the same masters, in one run.

The night is simulated into a temporary folder (one field, one filter, a fixed
seed); its masters are built once by the night routine's own stage and are not
timed. Each timing covers reading the raw frames, calibrating and writing the
products; the figure is frames per minute, and the ratio is against ccdproc's.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import resource
import tempfile
import time
from pathlib import Path

from gppy.bench import add_benchmark, add_simulation_arguments

GB = 1e9


def register(sub) -> None:
    p = add_benchmark(sub, "reduce", help="calibration throughput: gppy (1/2 cores, +/- cosmic rays) "
                                          "vs ccdproc.ccd_process", doc=__doc__, run=run,
                      json_fields="frames per minute of each run, ratios, peak RSS")
    add_simulation_arguments(p, frames=10, obs="LOAO", seed=False)


def _night(tmp: Path, obs: str, size: int, n_frames: int):
    """Simulate the night, inventory it and build its masters; return what the
    calibration stage needs: (profile, [(record, FrameCalibration)], bias read noise)."""
    from gppy import logs
    from gppy.daemon.ledger import Ledger
    from gppy.daemon.plan import make_plan
    from gppy.obsconfig.loader import load_profile
    from gppy.reduction.inventory import read_frame
    from gppy.reduction.night import build_masters, choose_masters
    from gppy.sim.command import default_bands
    from gppy.sim.plan import RunConfig
    from gppy.sim.simulate import simulate

    profile = load_profile(obs)
    cfg = RunConfig(profile=profile, seed=11, shape=(size, size),
                    bands=default_bands(profile.camera.filters)[:1],
                    first_night=dt.date(2024, 3, 14), n_nights=1, n_fields=1,
                    nscience=n_frames, exptime_s=120.0)
    (folder,) = simulate(cfg, tmp / "raw", processes=2)
    records = [read_frame(f, profile) for f in sorted(folder.iterdir())]
    plan = make_plan(records)
    night = "2024-03-14"
    with Ledger(tmp / "ledger.sqlite") as ledger:
        night_id = ledger.upsert_night(profile.name, night, folder, "processing")
        for r in records:
            ledger.record_frame(night_id, r.file, 0, 0.0, None, r.as_dict(), "inventory", "done")
        build_masters(plan, profile, ledger, night, "", tmp / "masters", 2, False, logs.get())
        jobs = [(r, choose_masters(r, profile, ledger, night, "")) for r in plan.science]
    return profile, jobs


def _ours(profile, jobs, out: Path, ncores: int) -> float:
    from gppy.reduction.night import calibrate_frames

    t0 = time.perf_counter()
    results = list(calibrate_frames(jobs, profile, out, ncores))
    seconds = time.perf_counter() - t0
    failed = [error for _, _, error in results if error]
    if failed:
        raise RuntimeError(f"calibration failed: {failed[0]}")
    return seconds


def _ccdproc(profile, jobs, out: Path) -> float:
    import astropy.units as u
    import ccdproc
    import numpy as np
    from astropy.nddata import CCDData

    from gppy.reduction.masters import read_master

    def ccd(path, unit="adu"):
        m = read_master(path)
        return CCDData(m.data.astype(np.float32), unit=unit, meta=m.header)

    cal = jobs[0][1]
    bias, dark = ccd(cal.bias), ccd(cal.dark)
    flat = ccd(cal.flat, unit="")
    bpm = read_master(cal.bpm).data != 0 if cal.bpm else None
    gain = profile.camera.gain_e_per_adu * u.electron / u.adu  # masters stay in ADU
    read_noise = float(bias.header["RDNOISE"]) * u.electron
    out.mkdir(parents=True, exist_ok=True)
    logging.getLogger().setLevel(logging.ERROR)  # ccdproc warns of every negative pixel
    t0 = time.perf_counter()
    for rec, _ in jobs:
        raw = CCDData.read(rec.file, unit="adu")
        done = ccdproc.ccd_process(raw, error=True, master_bias=bias, dark_frame=dark,
                                   master_flat=flat, bad_pixel_mask=bpm, gain=gain,
                                   readnoise=read_noise, exposure_key="EXPTIME",
                                   exposure_unit=u.s, dark_scale=True, gain_corrected=False)
        done.write(out / Path(rec.file).name, overwrite=True)
    return time.perf_counter() - t0


def run(args) -> int:
    from astropy import log

    log.setLevel("WARNING")
    with tempfile.TemporaryDirectory(prefix="gppy-bench-reduce-") as tmp:
        tmp = Path(tmp)
        print(f"simulating {args.frames} science frames of {args.size} x {args.size} "
              f"({args.obs}) and building their masters ...", flush=True)
        profile, jobs = _night(tmp, args.obs, args.size, args.frames)
        no_cr = dataclasses.replace(profile, reduction=dataclasses.replace(
            profile.reduction, remove_cosmic_rays=False))
        with_cr = dataclasses.replace(profile, reduction=dataclasses.replace(
            profile.reduction, remove_cosmic_rays=True))
        seconds = {"ccdproc": _ccdproc(profile, jobs, tmp / "ccdproc")}
        for cr_name, variant in (("no_cr", no_cr), ("cr", with_cr)):
            for ncores in (1, 2):
                name = f"ours_{cr_name}_{ncores}core"
                seconds[name] = _ours(variant, jobs, tmp / name, ncores)
    n = len(jobs)
    fpm = {name: round(60.0 * n / s, 2) for name, s in seconds.items()}
    summary = {"frames": n, "size": args.size, "obs": args.obs,
               **{f"{name}_frames_per_min": v for name, v in fpm.items()},
               **{f"{name}_ratio_vs_ccdproc": round(v / fpm["ccdproc"], 2)
                  for name, v in fpm.items() if name != "ccdproc"},
               "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB, 3)}
    labels = {"ccdproc": "ccdproc.ccd_process chain, 1 core, no cosmic rays"}
    for name in fpm:
        label = labels.get(name, name.replace("ours_", "gppy, ").replace("_", " ")
                           .replace("no cr", "no cosmic rays").replace(" cr ", " cosmic rays, "))
        ratio = "" if name == "ccdproc" else f"  {fpm[name] / fpm['ccdproc']:5.2f}x ccdproc"
        print(f"  {label:<48} {fpm[name]:7.2f} frames/min{ratio}")
    print(f"  peak RSS of the benchmark process {summary['peak_rss_gb']} GB")
    if args.json:
        print(json.dumps(summary))
    return 0
