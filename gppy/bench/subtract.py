"""`gppy bench subtract [--json] [--sizes 2048,4096] [--seed S]`: time and score the
built-in image subtraction (`gppy.transient.subtract`, engine "builtin") against
HOTPANTS (the "hotpants" engine's program) when it is on PATH, on the same
simulated pairs, in one run.

The pairs (`simulated_pair`, one per size, SIZE x SIZE, seed BENCH_SEED unless
--seed): a science / reference pair in electrons on one pixel grid (made so,
not resampled), with MASK and ERR, as the subtraction stage is handed them.
  Scene: stars with magnitudes drawn from dN/dm ~ 10^(0.3 m) between 10 and 21.5
    (a few of the brightest saturate), 8 500 per 1024 x 1024 px of which ~2 % reach an
    S/N of 30 in the reference (stamp stars); 200 Sérsic galaxies per
    1024 x 1024 px (n 0.7-4, r_eff 1-5 px, axis ratio 0.3-1, magnitudes 15-22);
    10 point transients per 1024 px of side (20 at 2048) in the science frame
    only, half of them on galaxies (offset by up to 1.5 r_eff), their fluxes set
    for an optimal S/N of 8-40 on the difference.
  Images: Moffat PSFs (gppy.sim.psf) that differ between the two and grow across
    the frame differently (science FWHM 3.5 px, beta 2.9, reference FWHM 2.7 px,
    beta 3.6, other ellipticities and angles), so the reference is the one
    convolved; the science at 0.9 times the reference's flux scale (the expected
    flux ratio handed to every engine, as the pipeline's zero points would give
    it); skies of 1080 and 900 e- with opposite gradients; Poisson and 6 e- read
    noise; saturation at 60 000 e- (clipped, MASK SATURATED); a few hot pixels in
    the science and a bad column segment in the reference (MASK). ERR is the true
    noise of each pixel.

The engines, each in a fresh process (its peak RSS is its own; the pair is
loaded and the modules imported before the clock starts):
  builtin: the whole `gppy.transient.subtract.subtract` call, as the pipeline
    makes it (source detection in both images, the kernel fit, the convolution,
    the noise and mask, and its own QA), default options.
  hotpants: `gppy.transient.hotpants.run_hotpants` with the engine's defaults
    (the legacy call: the reference convolved, HOTPANTS' own kernel and stamp
    settings): writing its input FITS files, the program, reading its outputs
    back. Not the source detection and QA that subtract(engine="hotpants") adds.
    Its peak RSS is that of the Python process plus that of the program (they
    are resident together). Without the program on PATH (or GPPY_HOTPANTS) it
    is not run, and the ratio is null.
  Not run (`PEERS_NOT_RUN`, said in the output): ZOGY as properimage 0.7.2 does
    not install with pip from the package index (its dependency tinynpydb 0.1.2
    is a source package whose setup downloads setuptools while it builds); with a
    hand-built wheel it took 416 s and 2.2 GB on the 2048 px pair (its D image:
    blank-sky std 1.00 by construction, 80 S/N >= 5 blobs for 20 transients).
    SFFT installs, but its subtraction packets want SExtractor (not installed)
    or masked images made by the caller, which this benchmark does not make.

The scores, computed here in the parent process by the same functions for every
engine's difference, noise and mask:
  `gppy.transient.subtract.quality` (against one `analyse_pair` of the inputs):
    resid_std_blank (std of diff/noise on blank sky, 1 for a perfect
    subtraction), resid_std_stars (median over bright stars of the rms of
    diff/noise within 1.5 FWHM) and its 90th percentile, flux ratio, S/N >= 5
    blobs, dipoles.
  recovered: injected transients whose matched-filter S/N (the map
    `gppy.transient.candidates` detects on: a Gaussian of the broader FWHM,
    masked pixels unweighted, divided by the map's robust width where that
    exceeds 1, for correlated noise) reaches 5 within 1.5 px of the truth.

Times are wall-clock seconds on the machine as it is (2 cores here); the ratio
is HOTPANTS / builtin (above 1: the built-in engine is faster). Target: the
built-in engine at least as fast as HOTPANTS with residuals as good: |resid_std
- 1|, on blank sky and at stars, at most HOTPANTS' + 0.02.

Measured here (2 cores; HOTPANTS 5.1.11 built from its source), `gppy bench
subtract`: 2048 px, builtin 6.1 s and 0.72 GB, HOTPANTS 7.2 s and 0.61 GB
(1.19x); 4096 px, 20.2 s and 1.87 GB against 24.4 s and 1.68 GB (1.21x; 1.19x
to 1.36x over three runs). Residual std on blank sky 1.000 for both, at stars
1.003 against 1.006 (p90 1.083 against 1.090), the 40 transients found by both;
the blank-sky mean +0.0001 against -0.0375. This pair's science PSF is clearly
the broader. Where both PSFs have about the same width and differ in shape (the
LOAO stacks of tests/test_transient_night.py, 3.0 and 3.1 px), HOTPANTS left
1.49-1.77 (V) and 1.39-4.9 (R) around stars against our 1.29 and 1.05.
"""

from __future__ import annotations

import json
import math
import resource
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gppy.bench import add_benchmark, BENCH_SEED, in_fresh_process

GB = 1e9
DEFAULT_SIZES = (2048, 4096)
ENGINES = ("builtin", "hotpants")
PEERS_NOT_RUN = {
    "zogy": "properimage does not install with pip from the package index (see the docstring)",
    "sfft": "its packets need SExtractor or caller-made masked images (see the docstring)",
}
RECOVERY_SNR = 5.0
RECOVERY_RADIUS_PX = 1.5
TARGET_RATIO = 1.0
RESIDUAL_TOLERANCE = 0.02      # "as good": |resid_std - 1| at most HOTPANTS' + this

# the scene
READ_NOISE_E = 6.0
SATURATION_E = 60_000.0
ZP_E = 25.0                    # magnitude of 1 e- in the reference
FLUX_SCALE = 0.9               # science / reference
SKY_SCI_E, SKY_REF_E = 1080.0, 900.0
STARS_PER_MPX = 8_500          # per 1024 x 1024 px, magnitudes STAR_MAGS
STAR_MAGS = (10.0, 21.5)
STAR_SLOPE = 0.3               # dN/dm ~ 10^(STAR_SLOPE m)
GALAXIES_PER_MPX = 200
GALAXY_MAGS = (15.0, 22.0)
TRANSIENTS_PER_1024 = 10       # per 1024 px of side
TRANSIENT_SNR = (8.0, 40.0)
EDGE_PX = 50                   # transients this far from the border at least


# --------------------------------------------------------------------------- the pair

@dataclass
class SimulatedPair:
    """A simulated registered pair in electrons and its truth."""

    sci: np.ndarray
    sci_mask: np.ndarray
    sci_err: np.ndarray
    ref: np.ndarray
    ref_mask: np.ndarray
    ref_err: np.ndarray
    flux_ratio: float          # science / reference
    transients: np.ndarray     # (n, 3): x, y, flux (e-, science frame)
    n_stars: int
    n_galaxies: int

    def save(self, path: Path) -> None:
        np.savez(path, sci=self.sci, sci_mask=self.sci_mask, sci_err=self.sci_err, ref=self.ref,
                 ref_mask=self.ref_mask, ref_err=self.ref_err, flux_ratio=self.flux_ratio,
                 transients=self.transients, n_stars=self.n_stars, n_galaxies=self.n_galaxies)

    @classmethod
    def load(cls, path: Path) -> "SimulatedPair":
        with np.load(path) as z:
            return cls(z["sci"], z["sci_mask"], z["sci_err"], z["ref"], z["ref_mask"],
                       z["ref_err"], float(z["flux_ratio"]), z["transients"], int(z["n_stars"]),
                       int(z["n_galaxies"]))

    def images(self) -> dict:
        """The keyword arguments of `subtract` for the pair's images."""
        return dict(sci_mask=self.sci_mask, ref_mask=self.ref_mask, sci_err=self.sci_err,
                    ref_err=self.ref_err)


def frame_psf(shape, fwhm_px: float, beta: float, ellipticity: float, theta_deg: float,
              growth: float):
    """A Moffat PSF over a frame of `shape`, its optical axis off the centre, growing
    by `growth` of its FWHM at the corners."""
    from gppy.sim.psf import PSF

    ny, nx = shape
    return PSF(fwhm_px=fwhm_px, beta=beta, ellipticity=ellipticity, theta_deg=theta_deg,
               field_growth=growth, field_ellipticity=0.04, axis_x=(nx - 1) / 2 + 0.04 * nx,
               axis_y=(ny - 1) / 2 - 0.03 * ny, norm_radius_px=0.5 * math.hypot(nx, ny))


def observe(rng, light: np.ndarray, sky_e: float, slope: float, read_noise_e: float):
    """A noisy frame of `light` (e-) on a sky of `sky_e` e- with a gradient `slope`
    across x: (data float32, MASK uint16 of zeros, ERR float32, the expectation)."""
    ny, nx = light.shape
    gradient = (np.arange(nx) - nx / 2) / nx
    model = light + sky_e * (1 + slope * gradient)[None, :]
    data = rng.poisson(model) + rng.normal(0.0, read_noise_e, light.shape)
    err = np.sqrt(model + read_noise_e ** 2)
    return data.astype(np.float32), np.zeros(light.shape, np.uint16), err.astype(np.float32), model


def _magnitudes(rng, n: int, lo: float, hi: float, slope: float) -> np.ndarray:
    """n magnitudes in [lo, hi] with dN/dm ~ 10^(slope m)."""
    a, b = 10 ** (slope * lo), 10 ** (slope * hi)
    return np.log10(a + rng.uniform(0, 1, n) * (b - a)) / slope


def _transient_fluxes(rng, psf, x, y, sky_var: float) -> np.ndarray:
    """Fluxes whose optimal S/N on the difference (sky and read noise of both
    images, the source's own) is drawn log-uniformly from TRANSIENT_SNR."""
    from gppy.sim.psf import psf_kernel

    snr = np.exp(rng.uniform(*np.log(TRANSIENT_SNR), len(x)))
    n_eff = np.array([1.0 / np.sum(psf_kernel(psf, xi, yi) ** 2) for xi, yi in zip(x, y)])
    b = n_eff * sky_var
    return 0.5 * (snr ** 2 + np.sqrt(snr ** 4 + 4 * snr ** 2 * b))


def simulated_pair(size: int, seed: int = BENCH_SEED, *,
                   transients_per_1024: int = TRANSIENTS_PER_1024) -> SimulatedPair:
    """The benchmark's science / reference pair of SIZE x SIZE (see the module
    docstring)."""
    from gppy.reduction.flags import Pixel
    from gppy.sim.psf import convolve_tiles, kernel_radius, render_points, render_sersic

    rng = np.random.default_rng(seed)
    shape = (size, size)
    area = size * size / 1024 ** 2
    sci_psf = frame_psf(shape, 3.5, 2.9, 0.07, 115.0, 0.30)
    ref_psf = frame_psf(shape, 2.7, 3.6, 0.03, 20.0, 0.10)
    # stars: reference e-
    n_stars = int(round(STARS_PER_MPX * area))
    sx, sy = rng.uniform(-10, size + 10, (2, n_stars))
    s_flux = 10 ** (-0.4 * (_magnitudes(rng, n_stars, *STAR_MAGS, STAR_SLOPE) - ZP_E))
    # galaxies: intrinsic light, rendered once, convolved with each PSF
    n_gal = int(round(GALAXIES_PER_MPX * area))
    gx, gy = rng.uniform(0, size, (2, n_gal))
    g_flux = 10 ** (-0.4 * (rng.uniform(*GALAXY_MAGS, n_gal) - ZP_E))
    g_n = rng.uniform(0.7, 4.0, n_gal)
    g_reff = np.exp(rng.uniform(math.log(1.0), math.log(5.0), n_gal))
    g_q = rng.uniform(0.3, 1.0, n_gal)
    g_pa = rng.uniform(0, math.pi, n_gal)
    pad = max(kernel_radius(sci_psf, shape), kernel_radius(ref_psf, shape))
    layer = np.zeros((size + 2 * pad, size + 2 * pad))
    for i in range(n_gal):
        render_sersic(layer, gx[i] + pad, gy[i] + pad, float(g_flux[i]), float(g_n[i]),
                      float(g_reff[i]), float(g_q[i]), float(g_pa[i]))
    # transients: half on galaxies brighter than magnitude 20, half anywhere
    n_tr = max(1, int(round(transients_per_1024 * size / 1024)))
    hosts = np.flatnonzero((g_flux > 10 ** (-0.4 * (20.0 - ZP_E)))
                           & (gx > EDGE_PX + 10) & (gx < size - EDGE_PX - 10)
                           & (gy > EDGE_PX + 10) & (gy < size - EDGE_PX - 10))
    n_host = min(n_tr // 2, len(hosts))
    host = rng.choice(hosts, n_host, replace=False)
    offset = rng.uniform(0.0, 1.5, n_host) * g_reff[host]
    angle = rng.uniform(0, 2 * math.pi, n_host)
    tx = np.r_[gx[host] + offset * np.cos(angle), rng.uniform(EDGE_PX, size - EDGE_PX,
                                                               n_tr - n_host)]
    ty = np.r_[gy[host] + offset * np.sin(angle), rng.uniform(EDGE_PX, size - EDGE_PX,
                                                               n_tr - n_host)]
    sky_var = (SKY_SCI_E + READ_NOISE_E ** 2) + FLUX_SCALE ** 2 * (SKY_REF_E + READ_NOISE_E ** 2)
    t_flux = _transient_fluxes(rng, sci_psf, tx, ty, sky_var)

    frames = []
    for psf, scale, sky, slope, extra in ((sci_psf, FLUX_SCALE, SKY_SCI_E, 0.05, True),
                                          (ref_psf, 1.0, SKY_REF_E, -0.03, False)):
        light = convolve_tiles(layer, psf, pad) * scale
        render_points(light, psf, sx, sy, s_flux * scale)
        if extra:
            render_points(light, psf, tx, ty, t_flux)
        data, mask, err, model = observe(rng, light, sky, slope, READ_NOISE_E)
        del light
        saturated = model >= SATURATION_E
        data[saturated] = SATURATION_E
        mask[saturated] |= Pixel.SATURATED
        frames.append((data, mask, err))
    (sci, sci_mask, sci_err), (ref, ref_mask, ref_err) = frames
    hot = rng.integers(0, size, (2, 10 * max(1, int(area))))
    sci_mask[hot[1], hot[0]] |= Pixel.HOT
    sci[hot[1], hot[0]] += np.float32(5000.0)
    col, y0 = int(rng.integers(size // 4, 3 * size // 4)), int(rng.integers(0, size // 2))
    ref_mask[y0:y0 + size // 8, col] |= Pixel.BADCOL
    ref[y0:y0 + size // 8, col] += np.float32(300.0)
    return SimulatedPair(sci, sci_mask, sci_err, ref, ref_mask, ref_err, FLUX_SCALE,
                         np.c_[tx, ty, t_flux], n_stars, n_gal)


# --------------------------------------------------------------------------- engines

def _candidate(engine: str, pair_file: Path, out: Path) -> tuple[float, int]:
    """In a fresh process: load the pair, run one engine on it (see the module
    docstring), save its difference, noise and mask to `out`; return (seconds, peak
    RSS bytes: this process's, plus its largest child's for an external program)."""
    from gppy.bench.cosmics import peak_rss_bytes
    from gppy.transient.hotpants import run_hotpants
    from gppy.transient.subtract import subtract

    pair = SimulatedPair.load(pair_file)
    t0 = time.perf_counter()
    if engine == "builtin":
        res = subtract(pair.sci, pair.ref, flux_ratio_expected=pair.flux_ratio, **pair.images())
    else:
        res = run_hotpants(pair.sci, pair.ref, pair.sci_mask, pair.ref_mask, pair.sci_err,
                           pair.ref_err)
    seconds = time.perf_counter() - t0
    ksum = res.kernel_info.get("kernel_sum")
    np.savez(out, diff=res.diff, noise=res.noise, mask=res.mask, convolved=res.convolved,
             kernel_sum=math.nan if ksum is None else float(ksum))
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    return seconds, peak_rss_bytes() + children


def hotpants_path() -> str | None:
    from gppy.transient.hotpants import HotpantsMissing, find_hotpants

    try:
        return find_hotpants()
    except HotpantsMissing:
        return None


# --------------------------------------------------------------------------- scores

def recovered(diff, noise, mask, transients: np.ndarray, fwhm_px: float) -> np.ndarray:
    """The largest matched-filter S/N within RECOVERY_RADIUS_PX of each transient, on
    the map `gppy.transient.candidates` detects on (scaled to unit width where
    correlated noise makes it wider)."""
    from gppy.transient.candidates import snr_image

    snr = snr_image(diff, noise, mask, fwhm_px)
    r = int(math.ceil(RECOVERY_RADIUS_PX))
    off = np.arange(-r, r + 1)
    ny, nx = snr.shape
    best = np.zeros(len(transients))
    for k, (x, y, _) in enumerate(transients):
        xi, yi = int(round(x)), int(round(y))
        xs, ys = xi + off[None, :], yi + off[:, None]
        near = ((xs - x) ** 2 + (ys - y) ** 2 <= RECOVERY_RADIUS_PX ** 2)
        near &= (xs >= 0) & (xs < nx) & (ys >= 0) & (ys < ny)
        values = snr[np.clip(ys, 0, ny - 1), np.clip(xs, 0, nx - 1)][near]
        best[k] = values.max() if values.size else 0.0
    return best


def score(out: Path, pair: SimulatedPair, analysed, seconds: float, peak: int) -> dict:
    """The figures of one engine's run from its saved difference (see the module
    docstring)."""
    from gppy.transient.subtract import Subtraction, quality

    with np.load(out, allow_pickle=False) as z:
        diff, noise, mask = z["diff"], z["noise"], z["mask"]
        convolved, ksum = str(z["convolved"]), float(z["kernel_sum"])
    ksum = ksum if math.isfinite(ksum) else None
    res = Subtraction(diff, noise, mask, None, convolved, {}, seconds, "",
                      {"kernel_sum": ksum})
    qa = quality(res, analysed, pair.flux_ratio)
    snr = recovered(diff, noise, mask, pair.transients,
                    max(analysed.fwhm_sci, analysed.fwhm_ref))
    return {"seconds": round(seconds, 3), "peak_rss_gb": round(peak / GB, 3),
            "resid_std_blank": qa["resid_std_blank"], "resid_std_stars": qa["resid_std_stars"],
            "resid_std_stars_p90": qa["resid_std_stars_p90"], "n_qa_stars": qa["n_qa_stars"],
            "resid_mean_blank": qa["resid_mean_blank"], "flux_ratio": qa.get("flux_ratio"),
            "flux_ratio_offset": qa["flux_ratio_offset"], "n_dipoles": qa["n_dipoles"],
            "n_blobs": qa.get("n_blobs"), "n_negative": qa["n_negative"],
            "convolved": convolved,
            "recovered": int(np.sum(snr >= RECOVERY_SNR)), "injected": len(pair.transients),
            "transient_snr_median": round(float(np.median(snr)), 2)}


# --------------------------------------------------------------------------- command

def register(sub) -> None:
    p = add_benchmark(sub, "subtract", help="image subtraction: the built-in engine vs HOTPANTS",
                      doc=__doc__, run=run,
                      json_fields="sizes, engines (per size, per engine: seconds, peak_rss_gb, "
                                  "resid_std_blank, resid_std_stars, recovered, injected, ...; "
                                  "null for an engine not run), ratio_hotpants, "
                                  "hotpants_available, ...")
    p.add_argument("--sizes", type=_sizes, default=DEFAULT_SIZES, metavar="N,N",
                   help="pairs of N x N px, comma-separated (default "
                        f"{','.join(map(str, DEFAULT_SIZES))})")
    p.add_argument("--seed", type=int, default=BENCH_SEED,
                   help=f"simulation seed (default {BENCH_SEED})")


def _sizes(text: str) -> tuple[int, ...]:
    import argparse

    try:
        sizes = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of sizes: {text!r}") from None
    if not sizes or min(sizes) < 256:
        raise argparse.ArgumentTypeError(f"sizes must be 256 px or more: {text!r}")
    return sizes


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def run(args) -> int:

    from gppy.transient.subtract import DEFAULTS, analyse_pair

    exe = hotpants_path()
    engines = [e for e in ENGINES if e == "builtin" or exe]
    per_size, ratios, scene = {}, {}, {}
    with tempfile.TemporaryDirectory(prefix="gppy-bench-subtract-") as tmp:
        tmp = Path(tmp)
        for size in args.sizes:
            print(f"simulating a {size} x {size} pair (seed {args.seed}) ...", flush=True)
            t0 = time.perf_counter()
            pair = simulated_pair(size, args.seed)
            pair_file = tmp / "pair.npz"
            pair.save(pair_file)
            simulate_s = time.perf_counter() - t0
            analysed = analyse_pair(pair.sci, pair.ref, pair.sci_mask, pair.ref_mask,
                                    pair.sci_err, pair.ref_err, DEFAULTS)
            scene[str(size)] = {"stars": pair.n_stars, "galaxies": pair.n_galaxies,
                                "transients": len(pair.transients),
                                "fwhm_sci_px": round(analysed.fwhm_sci, 3),
                                "fwhm_ref_px": round(analysed.fwhm_ref, 3),
                                "simulate_s": round(simulate_s, 1)}
            print(f"  {pair.n_stars} stars, {pair.n_galaxies} galaxies, {len(pair.transients)} "
                  f"transients; FWHM science {analysed.fwhm_sci:.2f} px, reference "
                  f"{analysed.fwhm_ref:.2f} px ({simulate_s:.0f} s)", flush=True)
            rows = {}
            for engine in ENGINES:
                if engine not in engines:
                    rows[engine] = None
                    continue
                out = tmp / f"{engine}.npz"
                # A fresh process per engine and size: its peak RSS is its own.
                seconds, peak = in_fresh_process(_candidate, engine, pair_file, out)
                rows[engine] = score(out, pair, analysed, seconds, peak)
                out.unlink()
                r = rows[engine]
                print(f"  {engine:<9} {r['seconds']:7.2f} s  peak RSS {r['peak_rss_gb']:5.2f} GB  "
                      f"resid std blank {_fmt(r['resid_std_blank'], '.3f')} stars "
                      f"{_fmt(r['resid_std_stars'], '.3f')} (p90 "
                      f"{_fmt(r['resid_std_stars_p90'], '.3f')}, {r['n_qa_stars']} stars)  "
                      f"transients {r['recovered']}/{r['injected']} at S/N >= {RECOVERY_SNR:g}",
                      flush=True)
            per_size[str(size)] = rows
            if rows["hotpants"] is not None:
                ratios[str(size)] = round(rows["hotpants"]["seconds"] / rows["builtin"]["seconds"],
                                          2)
            del pair, analysed
    summary = {
        "sizes": list(args.sizes),
        "engines": per_size,
        "ratio_hotpants": ratios or None,
        "hotpants_available": exe is not None,
        "hotpants_path": exe,
        "peers_not_run": PEERS_NOT_RUN,
        "scene": scene,
        "seed": args.seed,
        "recovery_snr": RECOVERY_SNR,
    }
    if exe is None:
        print("  hotpants: not on PATH (nor GPPY_HOTPANTS): no ratio, gppy's own figures only")
    for name, why in PEERS_NOT_RUN.items():
        print(f"  {name}: not run: {why}")
    checks = []
    for size, rows in per_size.items():
        ours, peer = rows["builtin"], rows["hotpants"]
        if peer is None:
            continue
        checks.append((f"{size} px: speed-up over HOTPANTS {ratios[size]}x", f">= {TARGET_RATIO:g}x",
                       ratios[size] >= TARGET_RATIO))
        for key in ("resid_std_blank", "resid_std_stars"):
            ok = (ours[key] is not None and peer[key] is not None
                  and abs(ours[key] - 1) <= abs(peer[key] - 1) + RESIDUAL_TOLERANCE)
            checks.append((f"{size} px: {key} {ours[key]} vs HOTPANTS {peer[key]}",
                           f"|x - 1| <= HOTPANTS' + {RESIDUAL_TOLERANCE:g}", ok))
    for text, target, ok in checks:
        print(f"  {text}  [target {target}: {'met' if ok else 'MISSED'}]")
    if args.json:
        print(json.dumps(summary))
    return 0
