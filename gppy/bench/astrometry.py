"""`gppy bench astrometry [--json] [--obs KCT] [--size 4096] [--frames 3] [--seed S]`:
time and score gppy's astrometric solution against a plain astrometry.net
`solve-field` run on the image, on the same simulated frames, in one run.

The frames: `gppy simulate` of the profile (default KCT: its full 4096 x 4096
CCD at 0.724"/px, a 49' field) into a temporary folder, one field, one band,
120 s exposures, a fixed seed. Each raw frame, as written by the simulator
(noise, cosmic rays, saturation), is calibrated with the simulator's true bias,
dark and flat (the truth's calib.fits) into electrons, as the calibration stage
does it, with its ERR (Poisson and read noise) and MASK (saturated pixels grown
by one; no cosmic-ray removal), and written as a Calib-like FITS file: the
image in the primary HDU, then MASK and ERR. Both candidates get this file.

  ours: the astrometry stage's path for a frame without a WCS: read the file,
    `gppy.astrometry.solve.solve` (sep detection; solve-field on the xylist, or
    the catalogue pattern match where that fails; TAN-SIP refinement against the
    reference stars), with the profile's [astrometry] options and the settings'
    index folders, cpulimit and timeout. The reference stars (the simulator's
    offline catalogue OUTDIR/refcat.ecsv, to the profile's magnitude limit) are
    loaded before the clock starts, as the stage fetches them once per field.
    (The stage's later night-wide steps, the shared distortion and the outlier
    rule, are not part of it: one frame, one solution.)
  peer: `solve-field IMAGE.fits` with its own source extraction and default
    tweak order (SIP 2), the same hints (pixel scale +- 5 %, --ra/--dec of the
    header pointing, --radius as ours), the same index folders and cpulimit, run
    as an argument list by the runner ours uses (`solvefield._run`: its own
    process group, killed when the group's CPU time passes the cpulimit or the
    wall clock the timeout); output into a temporary folder (no plots, no new
    FITS copy of the image: neither is needed for the WCS). Its time is the wall
    clock of that process.

The scores, the same for both WCS:

  RMS vs the catalogue ("): the detected sources (sep, as ours detects them)
    matched to the same reference stars through the WCS and measured only
    (`gppy.astrometry.refine.refine(..., fit=False)`: the shrinking match radius
    and 3.5 sigma clipping, no fit), pooled over the frames. Ours' own fit RMS is
    in the JSON too (ours_fit_rms_arcsec).
  WCS error vs truth (px): over a 21 x 21 grid spanning the frame, corners
    included, pixel -> sky with the WCS -> pixel with the simulator's true WCS
    (`Truth.wcs_error_px`); the maximum and the rms over all solved frames.

Times are wall-clock seconds per frame on the machine as it is (2 cores here),
frame after frame ours then peer, each in a fresh process (imports not timed);
the ratio is peer / ours. Peak RSS: ours, the high-water mark of its process
(image, mask and error loaded; the largest over the frames); peer, the largest
solve-field process (getrusage of its waited-for children).
"""

from __future__ import annotations

import json
import math
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from gppy.bench import add_benchmark, add_simulation_arguments, in_fresh_process

GB = 1e9
BENCH_OBS = "KCT"              # 4096 x 4096 CCD, 0.724"/px: 49'
GRID_N = 21                    # truth error: GRID_N x GRID_N points over the frame
TARGET_TRUTH_PX = 0.1
SCALE_TOLERANCE = 0.05         # both: pixel scale hint +- 5 %


# --------------------------------------------------------------------------- frames

def write_calibrated(truth, frame: dict, raw_file: Path, profile, out: Path) -> None:
    """The raw file calibrated with the true bias, dark and flat: a Calib-like FITS
    file, image (e-) in the primary HDU, MASK (saturated, grown by one) and ERR (e-)."""
    from astropy.io import fits

    from gppy.reduction.flags import Pixel
    from gppy.reduction.preprocess import load_raw

    raw, saturated = load_raw(raw_file, profile)
    det, t, gain = truth.detector, frame["exptime_s"], truth.gain
    flat = truth.flat(frame["filter"])
    signal = (raw - det.bias_adu - frame["bias_offset_adu"] - det.dark_adu_per_s * t) * gain
    image = signal / flat
    err = np.sqrt(np.maximum(signal, 0) + truth.camera["read_noise_e"] ** 2) / flat
    fits.HDUList([fits.PrimaryHDU(image.astype(np.float32)),
                  fits.ImageHDU(np.where(saturated, Pixel.SATURATED, 0).astype(np.uint16),
                                name="MASK"),
                  fits.ImageHDU(err.astype(np.float32), name="ERR")]).writeto(out, overwrite=True)


def calibrated_frames(tmp: Path, args, profile, band: str):
    """Simulate `args.frames` science frames of `args.obs` in `band` (`args.size`,
    `args.seed`) into `tmp`, saying so, and write each as a Calib-like file
    (`write_calibrated`): (Truth, [(frame record, calibrated file)])."""
    from gppy.bench.cosmics import simulate_frames

    pixscale = profile.camera.pixscale_arcsec
    fov = args.size * pixscale / 60.0
    print(f"simulating {args.frames} {args.obs} {band} science frame(s) of {args.size} x "
          f"{args.size} ({fov:.1f}' at {pixscale}\"/px, seed {args.seed}) in {tmp} ...",
          flush=True)
    truth, frames = simulate_frames(tmp, args.size, args.frames, args.seed, args.obs, band,
                                    processes=2)
    out = []
    for frame in frames:
        image_file = tmp / f"calib-{frame['seq']}.fits"
        write_calibrated(truth, frame, tmp / truth.meta["raw_folder"] / frame["file"], profile,
                         image_file)
        out.append((frame, image_file))
    return truth, out


def field_stars(refcat: Path, ra_deg: float, dec_deg: float, radius_deg: float, profile,
                cache_dir: Path):
    """The reference stars of the field from the simulator's catalogue file."""
    from gppy.astrometry.refcat import reference_stars

    return reference_stars(ra_deg, dec_deg, radius_deg, source=str(refcat), cache_dir=cache_dir,
                           mag_limit=profile.astrometry.refcat_mag_limit)


# --------------------------------------------------------------------------- candidates

def _ours(job: dict) -> tuple[float, int, dict]:
    """In a fresh process: the astrometry stage's solve of the file; (seconds, peak
    RSS bytes, {solved, method, wcs header, ...})."""
    from astropy.io import fits

    from gppy.astrometry.solve import Frame, solve
    from gppy.astrometry.stage import FieldStars, options_for
    from gppy.bench.cosmics import peak_rss_bytes
    from gppy.obsconfig.loader import load_profile
    from gppy.settings import load_settings

    profile = load_profile(job["obs"])
    settings = load_settings().astrometry
    ra, dec, radius = job["ra_deg"], job["dec_deg"], job["radius_deg"]

    def fetch(ra_deg, dec_deg, radius_deg):
        return field_stars(Path(job["refcat"]), ra_deg, dec_deg, radius_deg, profile,
                           Path(job["cache_dir"]))

    refstars = FieldStars(fetch(ra, dec, radius), ra, dec, radius, fetch)
    options = options_for(profile, settings)
    t0 = time.perf_counter()
    with fits.open(job["image"], memmap=False) as hdul:
        frame = Frame(hdul[0].data.astype(np.float32), hdul["MASK"].data, hdul["ERR"].data,
                      profile.camera.pixscale_arcsec, ra, dec)
    result = solve(frame, refstars, options)
    seconds = time.perf_counter() - t0
    out = result.summary()
    out["wcs"] = result.wcs.to_header_string(relax=True) if result.solved else None
    return seconds, peak_rss_bytes(), out


def peer_command(exe: str, image: Path, tmp: Path, config: Path, *, pixscale_arcsec: float,
                 ra_deg: float, dec_deg: float, radius_deg: float, cpulimit_s: float) -> list[str]:
    """A plain solve-field run on the image with the pipeline's hints."""
    lo, hi = pixscale_arcsec * (1 - SCALE_TOLERANCE), pixscale_arcsec * (1 + SCALE_TOLERANCE)
    return [exe, str(image), "--config", str(config), "--cpulimit", str(math.ceil(cpulimit_s)),
            "--scale-units", "arcsecperpix", "--scale-low", f"{lo:.6g}",
            "--scale-high", f"{hi:.6g}", "--ra", f"{ra_deg % 360.0:.8f}",
            "--dec", f"{dec_deg:.8f}", "--radius", f"{radius_deg:.6g}", "--dir", str(tmp), "--out", "field", "--temp-dir", str(tmp), "--overwrite",
            "--no-plots", "--new-fits", "none"]


def _peer(job: dict) -> tuple[float, int, dict]:
    """In a fresh process: solve-field on the image; (seconds, peak RSS bytes of its
    largest process, {solved, wcs header, error, command})."""
    from gppy.astrometry import solvefield
    from gppy.settings import load_settings

    settings = load_settings().astrometry
    exe = shutil.which(solvefield.SOLVE_FIELD)
    if exe is None:
        return 0.0, 0, {"solved": False, "wcs": None, "error": "solve-field is not installed",
                        "command": []}
    with tempfile.TemporaryDirectory(prefix="gppy-bench-solvefield-") as name:
        tmp = Path(name)
        config = tmp / "astrometry.cfg"
        solvefield._write_config(config, [Path(d).expanduser() for d in settings.index_dirs
                                          if Path(d).expanduser().is_dir()], settings.cpulimit_s)
        cmd = peer_command(exe, Path(job["image"]), tmp, config,
                           pixscale_arcsec=job["pixscale_arcsec"], ra_deg=job["ra_deg"],
                           dec_deg=job["dec_deg"], radius_deg=job["radius_deg"],
                           cpulimit_s=settings.cpulimit_s)
        env = dict(os.environ, TMPDIR=str(tmp))
        t0 = time.perf_counter()
        status, output, limit = solvefield._run(cmd, settings.timeout_s, settings.cpulimit_s,
                                                env, tmp / "solve-field.log")
        seconds = time.perf_counter() - t0
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
        out = {"solved": False, "wcs": None, "error": None, "command": cmd}
        if limit == "timeout":
            out["error"] = f"timed out after {settings.timeout_s:g} s"
        elif limit == "cpulimit":
            out["error"] = f"no solution (cpulimit {settings.cpulimit_s:g} s reached)"
        elif status != 0:
            out["error"] = f"solve-field exited with status {status}: {solvefield._tail(output)}"
        elif not (tmp / "field.solved").exists() or not (tmp / "field.wcs").exists():
            out["error"] = "no solution"
        else:
            wcs = solvefield._read_wcs(tmp / "field.wcs", job["shape"])
            out["solved"], out["wcs"] = True, wcs.to_header_string(relax=True)
            out["sip_order"] = 0 if wcs.sip is None else int(wcs.sip.a_order)
    return seconds, peak, out


def _candidate(name: str, job: dict) -> tuple[float, int, dict]:
    return _ours(job) if name == "ours" else _peer(job)


def _wcs(header_text: str, shape: tuple[int, int]):
    from astropy.io import fits
    from astropy.wcs import WCS

    wcs = WCS(fits.Header.fromstring(header_text), relax=True)
    wcs.pixel_shape = (shape[1], shape[0])
    return wcs


# --------------------------------------------------------------------------- command

def register(sub) -> None:
    p = add_benchmark(sub, "astrometry", help="astrometric solution: gppy vs plain solve-field",
                      doc=__doc__, run=run,
                      json_fields="ours_s_per_frame, peer_s_per_frame, ratio, ours_rms_arcsec, "
                                  "peer_rms_arcsec, ours_truth_max_px, peer_truth_max_px, "
                                  "ours_solved, peer_solved, peak_rss_gb, ...")
    add_simulation_arguments(p, frames=3, obs=BENCH_OBS)


def _pooled_rms(values: list[float | None], weights: list[int]) -> float | None:
    pairs = [(v, w) for v, w in zip(values, weights) if v is not None and w > 0]
    if not pairs:
        return None
    return math.sqrt(sum(w * v * v for v, w in pairs) / sum(w for _, w in pairs))


def _r(v, digits: int):
    return None if v is None else round(float(v), digits)


def run(args) -> int:

    from astropy import log
    from astropy.io import fits

    from gppy.astrometry.match import catalog_radius_deg
    from gppy.astrometry.refine import refine
    from gppy.astrometry.sources import detect
    from gppy.obsconfig.loader import load_profile
    from gppy.settings import load_settings
    from gppy.sim.command import default_bands

    log.setLevel("WARNING")
    profile = load_profile(args.obs)
    settings = load_settings().astrometry
    band = default_bands(profile.camera.filters)[-1]
    pixscale = profile.camera.pixscale_arcsec
    names = ("ours", "peer")
    seconds = {n: [] for n in names}
    rss = {n: [] for n in names}
    solved = {n: 0 for n in names}
    rms = {n: [] for n in names}
    nstars = {n: [] for n in names}
    truth_err = {n: [] for n in names}
    per_frame, peer_cmd = [], []
    with tempfile.TemporaryDirectory(prefix="gppy-bench-astrometry-") as tmp:
        tmp = Path(tmp)
        truth, frames = calibrated_frames(tmp, args, profile, band)
        shape = truth.shape
        refcat = tmp / "refcat.ecsv"
        for frame, image_file in frames:
            ra, dec = frame["ra_cmd_deg"], frame["dec_cmd_deg"]
            radius = catalog_radius_deg(shape, pixscale)
            job = {"obs": args.obs, "image": str(image_file), "refcat": str(refcat),
                   "cache_dir": str(tmp / "cache"), "ra_deg": ra, "dec_deg": dec,
                   "radius_deg": radius, "pixscale_arcsec": pixscale, "shape": shape}
            results = {}
            for name in names:
                # A fresh process per candidate and frame: its peak RSS is its own.
                sec, peak, out = in_fresh_process(_candidate, name, job)
                seconds[name].append(sec)
                rss[name].append(peak)
                results[name] = out
            peer_cmd = peer_cmd or results["peer"].get("command", [])
            # The scores, the same for both: our detections, the same reference stars.
            with fits.open(image_file, memmap=False) as hdul:
                sources = detect(hdul[0].data.astype(np.float32), hdul["MASK"].data,
                                 hdul["ERR"].data)
            stars = field_stars(refcat, ra, dec, radius, profile, tmp / "cache")
            line = {"file": frame["file"]}
            for name in names:
                out = results[name]
                entry = {"s": round(seconds[name][-1], 3), "solved": bool(out["solved"])}
                if out["solved"]:
                    wcs = _wcs(out["wcs"], shape)
                    _, st = refine(wcs, sources, stars, shape, sip_order=0, fit=False)
                    err = truth.wcs_error_px(frame["file"], wcs, GRID_N)
                    solved[name] += 1
                    rms[name].append(st.rms_arcsec)
                    nstars[name].append(st.nstars)
                    truth_err[name].append(err)
                    entry |= {"rms_arcsec": _r(st.rms_arcsec, 4), "nstars": st.nstars,
                              "truth_max_px": _r(err.max(), 4),
                              "truth_rms_px": _r(np.sqrt(np.mean(err ** 2)), 4)}
                else:
                    entry["error"] = out.get("error")
                if name == "ours":
                    entry |= {"method": out["method"], "fit_rms_arcsec": out["rms_arcsec"],
                              "sip_order": out["sip_order"]}
                else:
                    entry["sip_order"] = out.get("sip_order")
                line[name] = entry
            per_frame.append(line)
            o, p = line["ours"], line["peer"]

            def said(e):
                if not e["solved"]:
                    return f"UNSOLVED ({e['error']})"
                return (f"rms {e['rms_arcsec']:.3f}\" ({e['nstars']} stars), truth max "
                        f"{e['truth_max_px']:.3f} px")
            print(f"  {frame['file']}: {len(sources)} sources, {len(stars)} catalogue stars; "
                  f"ours {o['s']:.2f} s ({o['method']}) {said(o)}; solve-field {p['s']:.2f} s "
                  f"{said(p)}", flush=True)
            image_file.unlink()
    n = len(frames)
    s_per = {name: float(np.mean(v)) for name, v in seconds.items()}
    rms_all = {name: _pooled_rms(rms[name], nstars[name]) for name in names}
    tmax = {name: float(max(e.max() for e in truth_err[name])) if truth_err[name] else None
            for name in names}
    trms = {name: float(np.sqrt(np.mean(np.concatenate(truth_err[name]) ** 2)))
            if truth_err[name] else None for name in names}
    summary = {
        "ours_s_per_frame": round(s_per["ours"], 3),
        "peer_s_per_frame": round(s_per["peer"], 3),
        "ratio": round(s_per["peer"] / s_per["ours"], 2) if s_per["ours"] > 0 else None,
        "ours_rms_arcsec": _r(rms_all["ours"], 4),
        "peer_rms_arcsec": _r(rms_all["peer"], 4),
        "ours_truth_max_px": _r(tmax["ours"], 4),
        "peer_truth_max_px": _r(tmax["peer"], 4),
        "ours_truth_rms_px": _r(trms["ours"], 4),
        "peer_truth_rms_px": _r(trms["peer"], 4),
        "ours_solved": solved["ours"],
        "peer_solved": solved["peer"],
        "frames": n,
        "peak_rss_gb": round(max(rss["ours"]) / GB, 3),
        "peer_peak_rss_gb": round(max(rss["peer"]) / GB, 3),
        "ours_fit_rms_arcsec": _r(_pooled_rms([f["ours"].get("fit_rms_arcsec") for f in per_frame],
                                              [f["ours"].get("nstars", 0) for f in per_frame]), 4),
        "ours_s": [round(v, 3) for v in seconds["ours"]],
        "peer_s": [round(v, 3) for v in seconds["peer"]],
        "per_frame": per_frame,
        "size": args.size, "seed": args.seed, "obs": args.obs, "band": band,
        "pixscale_arcsec": pixscale, "fov_arcmin": round(args.size * pixscale / 60.0, 2),
        "index_dirs": [str(d) for d in settings.index_dirs], "cpulimit_s": settings.cpulimit_s,
        "timeout_s": settings.timeout_s, "peer_command": " ".join(peer_cmd),
    }

    def fmt(v, unit, digits):
        return "-" if v is None else f"{v:.{digits}f}{unit}"
    arcsec = '"'
    for name, label in (("ours", "gppy (sep + solve-field xylist + TAN-SIP)"),
                        ("peer", "solve-field on the image")):
        print(f"  {label:<42} {s_per[name]:6.2f} s/frame  solved {solved[name]}/{n}  "
              f"rms {fmt(rms_all[name], arcsec, 3)}  vs truth max {fmt(tmax[name], ' px', 3)} "
              f"rms {fmt(trms[name], ' px', 3)}  peak RSS {max(rss[name]) / GB:4.2f} GB")
    print(f"  time ratio solve-field / gppy {summary['ratio']}x")
    checks = [
        (f"solved {solved['ours']}/{n}", f"{n}/{n}", solved["ours"] == n),
        (f"WCS error vs truth, max {fmt(tmax['ours'], ' px', 3)}", f"<= {TARGET_TRUTH_PX:g} px",
         tmax["ours"] is not None and tmax["ours"] <= TARGET_TRUTH_PX),
    ]
    for text, target, ok in checks:
        print(f"  {text}  [target {target}: {'met' if ok else 'MISSED'}]")
    if args.json:
        print(json.dumps(summary))
    return 0
