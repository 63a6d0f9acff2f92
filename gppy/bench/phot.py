"""`gppy bench phot [--json] [--obs LOAO] [--size 4096] [--frames 2] [--seed S]`:
time gppy's photometry of a frame (detection, PSF, apertures, limits and the
zero point) against the same circular-aperture measurement done with photutils
on the same positions, in one run, and check that the two agree.

The frames: `gppy simulate` of the profile (default LOAO at 0.794"/px, here
with a 4096 x 4096 CCD: a 54' field) into a temporary folder, one field, one
band (the profile's redder default band), 120 s exposures, a fixed seed. Each
raw frame is calibrated with the simulator's true bias, dark and flat
(`gppy.bench.astrometry.write_calibrated`: image in e-, MASK of saturated pixels
grown by one, ERR from Poisson and read noise; no cosmic-ray removal) into a
Calib-like file. The WCS is the simulator's true one (no astrometry); the
reference stars are the simulator's catalogue OUTDIR/refcat.ecsv (the frame's
band, finite magnitudes), read before any clock starts. Both candidates read
the same file; reading it is not timed for either.

  ours: `gppy.phot.measure.measure` (sep background, two passes and the mean
    offset; detection and deblending; flags; PSF fit and seeing; windowed
    centroids; the growth-curve optimum; the six circular apertures and the Kron
    aperture with errors; aperture corrections; random empty apertures and the
    limiting magnitudes; half-light radii; RA/Dec from the WCS), then the zero
    points as `gppy.phot.calibrate.photometer` fits them: `crossmatch` of the
    detections to the reference stars (within 1 FWHM, at least 1"), and for each
    of the catalogue's seven apertures `calibration_stars` (the profile's [phot]
    cuts) and `fit_zeropoint` (no colour term). Not timed: the injection-recovery
    depth (`gppy.phot.inject`), which measure() does not run; reading the file
    and the reference catalogue.
  peer: photutils, on the same positions (our final x, y: the windowed
    centroids) and the same circular apertures (the six diameters our
    FrameCatalog reports; not the Kron ellipses): its background, `Background2D`
    with our mesh ([phot] back_size_px boxes, back_filtersize filter, the
    SExtractor estimator, MASK != 0 masked), subtracted from the image; then one
    `aperture_photometry` call with a `CircularAperture` per diameter,
    method='exact', error=ERR, mask=MASK != 0. The apertures are summed in the
    background-subtracted image ours used (sep's, kept from ours' run: the
    `extract` result that measure() made, saved after ours' clock stopped), so
    that the agreement check compares the aperture sums, not two sky
    estimates; the timed Background2D map is only compared with ours' (median
    and 99th percentile |difference| in sky sigma). Its time is Background2D
    plus the subtraction plus aperture_photometry.

Agreement, per frame and pooled: for every circular aperture and every
detection with no masked pixel within its largest circle (not flagged MASKED or
SATURATED: sep scales a sum with masked pixels up by the lost area, photutils
leaves them out), |flux_ours - flux_photutils| / fluxerr_ours, its median and
maximum; and the errors: ours is photutils' sqrt(sum w ERR^2) times
`overlap_noise_factor` (see gppy.phot.apertures), the largest relative
departure from that is reported. Also shown, not checked: the zero point of
the "opt" aperture, and ZP - APCOR of it (a point source's total flux) next to
the simulator's true zero point of the frame.

Times are wall-clock seconds per frame on the machine as it is (2 cores here),
frame after frame ours then peer, each in a fresh process (imports not timed);
the ratio is peer / ours. Peak RSS: each process's own high-water mark (VmHWM,
the frame loaded included), the largest over the frames.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np

from gppy.bench import add_benchmark, add_simulation_arguments, in_fresh_process

GB = 1e9
BENCH_OBS = "LOAO"
MATCH_RADIUS_FWHM = 1.0        # detections to reference stars: within 1 FWHM, at least 1"
MATCH_MIN_ARCSEC = 1.0         # (as gppy.phot.calibrate.photometer)
TARGET_MEDIAN = 1e-3           # median |flux difference| / error
TARGET_MAX = 1e-2              # max |flux difference| / error
TARGET_ERR = 1e-4              # max |ours' error / (photutils' error x overlap factor) - 1|


# --------------------------------------------------------------------------- candidates

def _load(path: str):
    from astropy.io import fits

    with fits.open(path, memmap=False) as hdul:
        return hdul[0].data, hdul["MASK"].data, hdul["ERR"].data


def zero_points(cat, ref_ra, ref_dec, ref_mag, ref_magerr, phot) -> dict:
    """{aperture key: ZeroPoint or None}: the detections matched to the reference
    stars, and per aperture the calibration stars and the fit."""
    from gppy.phot.zeropoint import calibration_stars, crossmatch, fit_zeropoint

    t = cat.table
    radius = max(MATCH_MIN_ARCSEC, MATCH_RADIUS_FWHM * cat.seeing_arcsec)
    i, j, _ = crossmatch(np.asarray(t["ra"]), np.asarray(t["dec"]), ref_ra, ref_dec, radius)
    rows = t[i]
    mag, magerr = ref_mag[j], ref_magerr[j]
    magerr = np.where(np.isfinite(magerr), magerr, 0.0)
    out = {}
    for ap in cat.apertures:
        k = ap.key
        inst, inst_err = np.asarray(rows[f"mag_{k}"]), np.asarray(rows[f"magerr_{k}"])
        use = calibration_stars(rows["flags"], mag, magerr, inst_err, rows["x"], rows["y"],
                                cat.shape, refmag_bright=phot.refmag_bright,
                                refmag_faint=phot.refmag_faint, refmagerr_max=phot.refmagerr_max,
                                inmagerr_max=phot.inmagerr_max, flag_cut=phot.flag_cut,
                                central_fraction=phot.central_fraction)
        out[k] = fit_zeropoint(inst[use], inst_err[use], mag[use], magerr[use])
    return out


def _ours(job: dict) -> tuple[float, int, dict]:
    """In a fresh process: measure() and the zero points; (seconds, peak RSS bytes,
    {...}). Saves the circular apertures' fluxes, positions and flags, and the
    background-subtracted image and background map of its extraction."""
    from astropy.io import fits
    from astropy.table import Table
    from astropy.wcs import WCS

    import gppy.phot.measure as measure_mod
    from gppy.bench.cosmics import peak_rss_bytes
    from gppy.obsconfig.loader import load_profile

    profile = load_profile(job["obs"])
    wcs = WCS(fits.Header.fromstring(job["wcs"]))
    pixscale = float(np.sqrt(abs(np.linalg.det(wcs.pixel_scale_matrix)))) * 3600.0
    ref = Table.read(job["refcat"], format="ascii.ecsv")
    mcol, ecol = f"mag_{job['band']}", f"magerr_{job['band']}"
    ref = ref[np.isfinite(ref[mcol])]
    ref_ra, ref_dec = np.asarray(ref["ra"], float), np.asarray(ref["dec"], float)
    ref_mag, ref_magerr = np.asarray(ref[mcol], float), np.asarray(ref[ecol], float)
    image, mask, err = _load(job["image"])

    kept = {}
    extract = measure_mod.extract

    def extract_kept(*a, **k):        # the extraction measure() makes, kept for the peer
        kept["ext"] = extract(*a, **k)
        return kept["ext"]
    measure_mod.extract = extract_kept

    t0 = time.perf_counter()
    cat = measure_mod.measure(image, mask, err, wcs, pixscale, profile.phot, job["exptime_s"],
                              seed=job["seed"])
    t1 = time.perf_counter()
    zps = zero_points(cat, ref_ra, ref_dec, ref_mag, ref_magerr, profile.phot)
    t2 = time.perf_counter()

    ext = kept["ext"]
    np.save(job["sub"], ext.sub)
    np.save(job["back"], ext.back.astype(np.float32))
    t = cat.table
    circles = [a for a in cat.apertures if a.aperture.kind == "circle"]
    np.savez(job["ours_out"], x=np.asarray(t["x"]), y=np.asarray(t["y"]),
             flags=np.asarray(t["flags"]),
             **{f"flux_{a.key}": np.asarray(t[f"flux_{a.key}"]) for a in circles},
             **{f"fluxerr_{a.key}": np.asarray(t[f"fluxerr_{a.key}"]) for a in circles})
    out = {"measure_s": t1 - t0, "zp_s": t2 - t1, "n_sources": len(t),
           "fwhm_px": cat.fwhm_px, "seeing_arcsec": cat.seeing_arcsec,
           "sky_sigma_e": cat.sky_sigma_e, "n_psf_stars": cat.n_psf_stars,
           "apertures": {a.key: a.aperture.diameter_px for a in circles},
           "apcorr_mag": {a.key: a.apcorr_mag for a in cat.apertures},
           "zp": {k: None if z is None else {"zp_mag": z.zp_mag, "zp_err_mag": z.zp_err_mag,
                                             "n_used": z.n_used, "n_input": z.n_input}
                  for k, z in zps.items()}}
    return t2 - t0, peak_rss_bytes(), out


def _peer(job: dict) -> tuple[float, int, dict]:
    """In a fresh process: photutils' Background2D and aperture_photometry; (seconds,
    peak RSS bytes, {...}). Saves its sums and errors and its background map."""
    from photutils.aperture import CircularAperture, aperture_photometry
    from photutils.background import Background2D, SExtractorBackground

    from gppy.bench.cosmics import peak_rss_bytes
    from gppy.obsconfig.loader import load_profile

    phot = load_profile(job["obs"]).phot
    image, mask, err = _load(job["image"])
    bad = mask != 0
    with np.load(job["ours_out"]) as z:
        xy = np.column_stack([z["x"], z["y"]])
    sub = np.load(job["sub"])
    radii = {k: d / 2.0 for k, d in job["apertures"].items()}

    t0 = time.perf_counter()
    bkg = Background2D(image, phot.back_size_px, mask=bad,
                       filter_size=(phot.back_filtersize, phot.back_filtersize),
                       bkg_estimator=SExtractorBackground())
    own_sub = image - bkg.background
    t1 = time.perf_counter()
    table = aperture_photometry(sub, [CircularAperture(xy, r=r) for r in radii.values()],
                                error=err, mask=bad, method="exact")
    t2 = time.perf_counter()
    del own_sub

    names = {k: (f"aperture_sum_{i}", f"aperture_sum_err_{i}") for i, k in enumerate(radii)}
    np.savez(job["peer_out"], **{f"flux_{k}": np.asarray(table[s]) for k, (s, _) in names.items()},
             **{f"fluxerr_{k}": np.asarray(table[e]) for k, (_, e) in names.items()})
    np.save(job["peer_back"], bkg.background.astype(np.float32))
    return t2 - t0, peak_rss_bytes(), {"background_s": t1 - t0, "apertures_s": t2 - t1}


def _candidate(name: str, job: dict) -> tuple[float, int, dict]:
    return _ours(job) if name == "ours" else _peer(job)


# --------------------------------------------------------------------------- agreement

def agreement(ours: dict, peer: dict, radii: dict) -> dict:
    """|flux_ours - flux_peer| / fluxerr_ours over the detections without masked
    pixels in their apertures, all circular apertures pooled; and the largest
    |fluxerr_ours / (fluxerr_peer x overlap_noise_factor) - 1|."""
    from gppy.phot.apertures import overlap_noise_factor
    from gppy.phot.detect import SourceFlag

    clean = (ours["flags"] & (SourceFlag.MASKED | SourceFlag.SATURATED)) == 0
    dev, err_dev, per_key = [], [], {}
    for k, r in radii.items():
        fo, eo = ours[f"flux_{k}"][clean], ours[f"fluxerr_{k}"][clean]
        fp, ep = peer[f"flux_{k}"][clean], peer[f"fluxerr_{k}"][clean]
        d = np.abs(fo - fp) / eo
        e = np.abs(eo / (ep * overlap_noise_factor(round(float(r), 4))) - 1)
        dev.append(d)
        err_dev.append(e)
        per_key[k] = float(np.max(d, initial=0.0))
    dev, err_dev = np.concatenate(dev), np.concatenate(err_dev)
    return {"n_compared": int(clean.sum()), "n_sources": int(clean.size), "dev": dev,
            "err_dev": err_dev, "max_by_aperture": per_key}


def _stat(values: list[np.ndarray], how) -> float:
    v = np.concatenate(values) if values else np.empty(0)
    return float(how(v)) if v.size else float("nan")


def _or_nan(v) -> float:
    return float("nan") if v is None else v


def _finite(v) -> bool:
    return v is not None and np.isfinite(v)


# --------------------------------------------------------------------------- command

def register(sub) -> None:
    p = add_benchmark(sub, "phot", help="photometry: gppy (detection, apertures, zero point) vs "
                                        "photutils aperture_photometry on the same positions",
                      doc=__doc__, run=run,
                      json_fields="ours_s_per_frame, peer_s_per_frame, ratio, flux_dev_median, "
                                  "flux_dev_max, fluxerr_dev_max, zp_mag, peak_rss_gb, "
                                  "peer_peak_rss_gb, per_frame, ...")
    add_simulation_arguments(p, frames=2, obs=BENCH_OBS)


def run(args) -> int:

    from astropy import log

    from gppy.bench.astrometry import calibrated_frames
    from gppy.obsconfig.loader import load_profile
    from gppy.sim.command import default_bands

    log.setLevel("WARNING")
    profile = load_profile(args.obs)
    band = default_bands(profile.camera.filters)[-1]
    pixscale = profile.camera.pixscale_arcsec
    names = ("ours", "peer")
    seconds = {n: [] for n in names}
    rss = {n: [] for n in names}
    devs, err_devs, sky_devs, per_frame = [], [], [], []
    with tempfile.TemporaryDirectory(prefix="gppy-bench-phot-") as tmp:
        tmp = Path(tmp)
        truth, frames = calibrated_frames(tmp, args, profile, band)
        for frame, image_file in frames:
            job = {"obs": args.obs, "image": str(image_file), "refcat": str(tmp / "refcat.ecsv"),
                   "band": frame["filter"], "exptime_s": float(frame["exptime_s"]),
                   "wcs": truth.wcs(frame["file"]).to_header_string(relax=True),
                   "seed": args.seed, "sub": str(tmp / "sub.npy"), "back": str(tmp / "back.npy"),
                   "ours_out": str(tmp / "ours.npz"), "peer_out": str(tmp / "peer.npz"),
                   "peer_back": str(tmp / "peer_back.npy")}
            results = {}
            for name in names:
                # A fresh process per candidate and frame: its peak RSS is its own.
                sec, peak, out = in_fresh_process(_candidate, name, job)
                seconds[name].append(sec)
                rss[name].append(peak)
                results[name] = out
                if name == "ours":
                    job["apertures"] = out["apertures"]
            o, p = results["ours"], results["peer"]
            radii = {k: d / 2.0 for k, d in o["apertures"].items()}
            with np.load(job["ours_out"]) as zo, np.load(job["peer_out"]) as zp:
                agree = agreement(dict(zo), dict(zp), radii)
            sky = np.abs(np.load(job["back"]) - np.load(job["peer_back"])) / o["sky_sigma_e"]
            devs.append(agree["dev"])
            err_devs.append(agree["err_dev"])
            sky_devs.append(np.percentile(sky, [50, 99]))
            zp_opt = o["zp"]["opt"]
            zp_total = (zp_opt["zp_mag"] - o["apcorr_mag"]["opt"]) if zp_opt else None
            line = {"file": frame["file"], "n_sources": o["n_sources"],
                    "n_compared": agree["n_compared"], "fwhm_px": round(o["fwhm_px"], 3),
                    "seeing_arcsec": round(o["seeing_arcsec"], 3),
                    "ours_s": round(seconds["ours"][-1], 3),
                    "ours_measure_s": round(o["measure_s"], 3), "ours_zp_s": round(o["zp_s"], 4),
                    "peer_s": round(seconds["peer"][-1], 3),
                    "peer_background_s": round(p["background_s"], 3),
                    "peer_apertures_s": round(p["apertures_s"], 3),
                    "flux_dev_median": (float(np.median(agree["dev"])) if agree["dev"].size
                                        else None),
                    "flux_dev_max": float(np.max(agree["dev"], initial=0.0)),
                    "flux_dev_max_by_aperture": agree["max_by_aperture"],
                    "fluxerr_dev_max": float(np.max(agree["err_dev"], initial=0.0)),
                    "sky_diff_median_sigma": round(float(sky_devs[-1][0]), 4),
                    "sky_diff_p99_sigma": round(float(sky_devs[-1][1]), 4),
                    "aperture_diameters_px": {k: round(v, 3) for k, v in o["apertures"].items()},
                    "zp": o["zp"], "zp_total_mag": zp_total,
                    "zp_true_mag": float(frame["zp_e_mag"])}
            per_frame.append(line)
            zp_text = ("no zero point" if zp_opt is None else
                       f"ZP(opt) {zp_opt['zp_mag']:.4f} +- {zp_opt['zp_err_mag']:.4f} "
                       f"({zp_opt['n_used']} stars; total {zp_total:.4f}, true "
                       f"{frame['zp_e_mag']:.4f})")
            print(f"  {frame['file']}: {o['n_sources']} sources, FWHM {o['fwhm_px']:.2f} px; "
                  f"ours {line['ours_s']:.2f} s (measure {line['ours_measure_s']:.2f}, zero points "
                  f"{line['ours_zp_s']:.3f}); photutils {line['peer_s']:.2f} s (Background2D "
                  f"{line['peer_background_s']:.2f}, apertures {line['peer_apertures_s']:.2f}); "
                  f"|dflux|/err median {_or_nan(line['flux_dev_median']):.2g} max "
                  f"{line['flux_dev_max']:.2g} over {agree['n_compared']} sources; {zp_text}",
                  flush=True)
            image_file.unlink()
    n = len(frames)
    s_per = {name: float(np.mean(v)) for name, v in seconds.items()}
    dev_median, dev_max = _stat(devs, np.median), _stat(devs, np.max)
    err_max = _stat(err_devs, np.max)
    zps = [f["zp"]["opt"]["zp_mag"] if f["zp"]["opt"] else None for f in per_frame]
    zp_ok = all(_finite(z) for z in zps)
    summary = {
        "ours_s_per_frame": round(s_per["ours"], 3),
        "peer_s_per_frame": round(s_per["peer"], 3),
        "ratio": round(s_per["peer"] / s_per["ours"], 2) if s_per["ours"] > 0 else None,
        "ours_measure_s_per_frame": round(float(np.mean([f["ours_measure_s"]
                                                         for f in per_frame])), 3),
        "ours_zp_s_per_frame": round(float(np.mean([f["ours_zp_s"] for f in per_frame])), 4),
        "peer_background_s_per_frame": round(float(np.mean([f["peer_background_s"]
                                                            for f in per_frame])), 3),
        "peer_apertures_s_per_frame": round(float(np.mean([f["peer_apertures_s"]
                                                           for f in per_frame])), 3),
        "flux_dev_median": dev_median,
        "flux_dev_max": dev_max,
        "fluxerr_dev_max": err_max,
        "n_compared": int(sum(f["n_compared"] for f in per_frame)),
        "n_sources": int(sum(f["n_sources"] for f in per_frame)),
        "apertures": list(per_frame[0]["aperture_diameters_px"]) if per_frame else [],
        "zp_mag": zps,
        "zp_err_mag": [f["zp"]["opt"]["zp_err_mag"] if f["zp"]["opt"] else None
                       for f in per_frame],
        "zp_aperture": "opt",
        "sky_diff_median_sigma": round(max(float(s[0]) for s in sky_devs), 4),
        "sky_diff_p99_sigma": round(max(float(s[1]) for s in sky_devs), 4),
        "frames": n,
        "peak_rss_gb": round(max(rss["ours"]) / GB, 3),
        "peer_peak_rss_gb": round(max(rss["peer"]) / GB, 3),
        "ours_s": [round(v, 3) for v in seconds["ours"]],
        "peer_s": [round(v, 3) for v in seconds["peer"]],
        "per_frame": per_frame,
        "size": args.size, "seed": args.seed, "obs": args.obs, "band": band,
        "pixscale_arcsec": pixscale,
    }
    for name, label in (("ours", "gppy measure + zero points"),
                        ("peer", "photutils Background2D + aperture_photometry")):
        print(f"  {label:<46} {s_per[name]:6.2f} s/frame  peak RSS {max(rss[name]) / GB:4.2f} GB")
    print(f"  time ratio photutils / gppy {summary['ratio']}x (photutils does circular apertures "
          f"and a background only)")
    print(f"  sky maps: Background2D - ours, median {summary['sky_diff_median_sigma']:.3f} sigma, "
          f"99th percentile {summary['sky_diff_p99_sigma']:.3f} sigma (not in the flux check)")
    checks = [
        (f"median |flux difference| / error {dev_median:.2g} ({summary['n_compared']} of "
         f"{summary['n_sources']} sources x {len(summary['apertures'])} apertures)",
         f"<= {TARGET_MEDIAN:g}", dev_median <= TARGET_MEDIAN),
        (f"max |flux difference| / error {dev_max:.2g}", f"<= {TARGET_MAX:g}",
         dev_max <= TARGET_MAX),
        (f"max |error / (photutils error x overlap factor) - 1| {err_max:.2g}",
         f"<= {TARGET_ERR:g}", err_max <= TARGET_ERR),
        ("zero points " + ", ".join("-" if z is None else f"{z:.4f}" for z in zps),
         "finite", zp_ok),
    ]
    for text, target, ok in checks:
        print(f"  {text}  [target {target}: {'met' if ok else 'MISSED'}]")
    if args.json:
        print(json.dumps(summary))
    return 0
