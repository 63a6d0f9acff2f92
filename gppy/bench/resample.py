"""`gppy bench resample [--json] [--size 2048]`: time and score
gppy's resampling (`gppy.transient.resample.resample`) against the `reproject`
package on the same frame, onto the same grid, in one run.

The frame: SIZE x SIZE float32, 300 Gaussian stars (FWHM 2.5 px, fluxes
1e4-1e6, placed with the seed BENCH_SEED, integrated over each pixel, no noise,
no sky) under a TAN-SIP WCS
with a few 1e-3 of distortion at the corners (as the pipeline fits them); the
output grid: TAN without distortion, shifted by (13.37, -7.61) px and rotated by
0.3 deg, the same shape.

The candidates, each in a fresh process (its peak RSS is its own; the frame is
loaded, the WCSs built and the modules imported before the clock starts):
  ours lanczos3  `resample(data, mask, err, ...)`, the pipeline's default: data,
    ERR and MASK
  ours bilinear  the same with kernel="bilinear"
  reproject_interp bilinear / bicubic, reproject_adaptive (conserve_flux=True):
    the data only (reproject propagates neither ERR nor MASK: that would take
    two more calls each)

The scores, the same for every output: around the stars without a neighbour
within 20 px and 20 px inside both frames, the flux in an r = 8 px aperture
after / before (median and std over the stars; flux_conservation = |median - 1|;
`reproject_interp` keeps surface brightness, so the SIP's pixel-area changes
remain in its fluxes), and the RMS offset of the stars' moment centroids from
where the WCS puts them (the centroid's own bias, measured on the input, taken
out).

Times: wall-clock seconds of the one call on the machine as it is (2 cores
here), and its process's CPU seconds beside them; the ratio is the peer's
wall-clock time / ours (Lanczos-3).
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np
from astropy.wcs import WCS, Sip

from gppy.bench import add_benchmark, BENCH_SEED, in_fresh_process

GB = 1e9
OURS = "ours lanczos3"
CANDIDATES = {   # name -> what it computes
    OURS: "gppy resample, Lanczos-3: data, ERR, MASK",
    "ours bilinear": "gppy resample, bilinear: data, ERR, MASK",
    "reproject_interp bilinear": "reproject_interp, bilinear: data",
    "reproject_interp bicubic": "reproject_interp, bicubic: data",
    "reproject_adaptive": "reproject_adaptive, conserve_flux: data",
}
N_STARS = 300
FWHM_PX = 2.5
SHIFT_PX = (13.37, -7.61)
ROTATION_DEG = 0.3
APERTURE_PX = 8.0
ISOLATION_PX = 20.0
TARGET_FLUX = 1e-3               # our flux conservation


def grids(size: int):
    """(input TAN-SIP WCS, output TAN WCS, the rotation matrix) of the benchmark."""
    w_in = synthetic_wcs(size)
    w_out = w_in.deepcopy()
    th = math.radians(ROTATION_DEG)
    rot = np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
    w_out.wcs.cd = rot @ w_in.wcs.cd
    w_out.wcs.crpix = [w_in.wcs.crpix[0] + SHIFT_PX[0], w_in.wcs.crpix[1] + SHIFT_PX[1]]
    w_out.sip = None
    w_out.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    return w_in, w_out, rot


def _candidate(name: str, image_file: Path, size: int, out: Path) -> tuple[float, float, int]:
    """In a fresh process: one candidate's resampling of the frame, saved to `out`;
    (wall seconds, CPU seconds, peak RSS bytes)."""
    from gppy.bench.cosmics import peak_rss_bytes
    from gppy.transient.resample import resample

    image = np.load(image_file)
    w_in, w_out, _ = grids(size)
    if name.startswith("ours"):
        mask = np.zeros(image.shape, np.uint16)
        err = np.ones(image.shape, np.float32)
        kernel = name.split()[-1]

        def call():
            return resample(image, mask, err, w_in, w_out, image.shape, kernel=kernel)[0]
    else:
        from reproject import reproject_adaptive, reproject_interp

        if name == "reproject_adaptive":
            def call():
                return reproject_adaptive((image, w_in), w_out, shape_out=image.shape,
                                          conserve_flux=True)[0]
        else:
            def call():
                return reproject_interp((image, w_in), w_out, shape_out=image.shape,
                                        order=name.split()[-1])[0]
    cpu, wall = time.process_time(), time.perf_counter()
    result = call()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    np.save(out, np.asarray(result, np.float32))
    return wall, cpu, peak_rss_bytes()


# ------------------------------------------------- synthetic frames (also the tests')

def synthetic_wcs(size: int, pixscale_arcsec: float = 0.794) -> WCS:
    """A TAN-SIP grid with a few 1e-3 of distortion at the corners, as the pipeline fits."""
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN-SIP", "DEC--TAN-SIP"]
    w.wcs.crval = [143.72, 21.71]
    w.wcs.crpix = [size / 2 + 0.5, size / 2 + 0.5]
    s = pixscale_arcsec / 3600.0
    w.wcs.cd = [[-s, 0.0], [0.0, s]]
    a = np.zeros((4, 4))
    b = np.zeros((4, 4))
    k = 2048 / size
    a[2, 0], a[0, 2], b[1, 1], a[1, 2] = 4e-7 * k, -2e-7 * k, 3e-7 * k, 1e-10
    ap, bp = -a, -b   # a first-order inverse, refined by astropy's iterative solver
    w.sip = Sip(a, b, ap, bp, w.wcs.crpix)
    return w


def random_stars(size: int, n: int, rng) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x, y, flux) of n stars 24 px or more inside a SIZE x SIZE frame, fluxes 1e4-1e6."""
    edge = 24
    x, y = rng.uniform(edge, size - edge, (2, n))
    return x, y, 10 ** rng.uniform(4, 6, n)


def render_stars(shape, x, y, flux, fwhm_px: float) -> np.ndarray:
    """Gaussian stars integrated over each pixel (exact pixel fluxes)."""
    from scipy.special import erf

    image = np.zeros(shape)
    s = fwhm_px / 2.3548 * math.sqrt(2)   # erf argument: (x - x0) / (sigma sqrt 2)
    r = int(math.ceil(5 * fwhm_px))
    for xi, yi, fi in zip(x, y, flux):
        x0, y0 = int(round(xi)), int(round(yi))
        xs = np.arange(max(0, x0 - r), min(shape[1], x0 + r + 1))
        ys = np.arange(max(0, y0 - r), min(shape[0], y0 + r + 1))
        fx = 0.5 * (erf((xs + 0.5 - xi) / s) - erf((xs - 0.5 - xi) / s))
        fy = 0.5 * (erf((ys + 0.5 - yi) / s) - erf((ys - 0.5 - yi) / s))
        image[ys[0]:ys[-1] + 1, xs[0]:xs[-1] + 1] += fi * np.outer(fy, fx)
    return image


def aperture(image, x, y, r):
    """(sum within r, moment centroid x, y within 4 px) around each (x, y)."""
    yy, xx = np.mgrid[-int(r) - 1:int(r) + 2, -int(r) - 1:int(r) + 2]
    sums, cx, cy = [], [], []
    for xi, yi in zip(x, y):
        x0, y0 = int(round(xi)), int(round(yi))
        patch = image[y0 + yy, x0 + xx]
        inside = (xx + x0 - xi) ** 2 + (yy + y0 - yi) ** 2 <= r * r
        sums.append(patch[inside].sum())
        win = (xx + x0 - xi) ** 2 + (yy + y0 - yi) ** 2 <= 16
        cx.append((patch * (xx + x0))[win].sum() / patch[win].sum())
        cy.append((patch * (yy + y0))[win].sum() / patch[win].sum())
    return np.array(sums), np.array(cx), np.array(cy)


def isolated(x, y, radius):
    """Stars without a neighbour within `radius`."""
    from scipy.spatial import cKDTree

    d, _ = cKDTree(np.c_[x, y]).query(np.c_[x, y], k=2)
    return d[:, 1] > radius


def register(sub) -> None:
    p = add_benchmark(sub, "resample", help="resampling onto another WCS: gppy vs reproject",
                      doc=__doc__, run=run,
                      json_fields="candidates (per candidate: wall_s, cpu_s, peak_rss_gb, "
                                  "flux_ratio_median, flux_ratio_std, flux_conservation, "
                                  "position_rms_px), ratio (per peer), ours_flux_conservation, ...")
    p.add_argument("--size", type=int, default=2048, help="the frame is SIZE x SIZE (default 2048)")


def run(args) -> int:

    size = args.size
    rng = np.random.default_rng(BENCH_SEED)
    w_in, w_out, rot = grids(size)
    x, y, flux = random_stars(size, N_STARS, rng)
    image = render_stars((size, size), x, y, flux, FWHM_PX).astype(np.float32)
    ra, dec = w_in.all_pix2world(x, y, 0)
    xo, yo = w_out.all_world2pix(ra, dec, 0)
    edge = ISOLATION_PX
    ok = ((xo > edge) & (xo < size - edge) & (yo > edge) & (yo < size - edge)
          & isolated(x, y, ISOLATION_PX))
    f_in, cx_in, cy_in = aperture(image, x[ok], y[ok], APERTURE_PX)
    bx, by = cx_in - x[ok], cy_in - y[ok]   # the centroid's own bias, rotated below
    print(f"resampling a {size} x {size} frame of {N_STARS} stars ({ok.sum()} scored), "
          f"shift {SHIFT_PX} px, rotation {ROTATION_DEG} deg:", flush=True)
    rows = {}
    with tempfile.TemporaryDirectory(prefix="gppy-bench-resample-") as tmp:
        tmp = Path(tmp)
        image_file = tmp / "image.npy"
        np.save(image_file, image)
        for name, label in CANDIDATES.items():
            out = tmp / "out.npy"
            # A fresh process per candidate: its peak RSS is its own.
            wall, cpu, peak = in_fresh_process(_candidate, name, image_file, size, out)
            result = np.nan_to_num(np.load(out).astype(np.float64))
            f_out, cx, cy = aperture(result, xo[ok], yo[ok], APERTURE_PX)
            ratio = f_out / f_in
            dx = (cx - xo[ok]) - (rot[0, 0] * bx + rot[0, 1] * by)
            dy = (cy - yo[ok]) - (rot[1, 0] * bx + rot[1, 1] * by)
            med = float(np.median(ratio))
            rows[name] = {"wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
                          "peak_rss_gb": round(peak / GB, 3),
                          "flux_ratio_median": round(med, 6),
                          "flux_ratio_std": round(float(np.std(ratio)), 6),
                          "flux_conservation": float(f"{abs(med - 1.0):.3g}"),
                          "position_rms_px": round(float(np.sqrt(np.mean(dx ** 2 + dy ** 2))), 4)}
            r = rows[name]
            print(f"  {label:<42} {wall:6.2f} s wall ({cpu:6.2f} s CPU)  peak RSS "
                  f"{r['peak_rss_gb']:4.2f} GB  flux {med:.5f} +- {r['flux_ratio_std']:.5f}  "
                  f"position rms {r['position_rms_px']:.4f} px", flush=True)
    ours = rows[OURS]
    ratios = {name: round(r["wall_s"] / ours["wall_s"], 2) for name, r in rows.items()
              if not name.startswith("ours")}
    summary = {"candidates": rows, "ratio": ratios,
               "ours_wall_s": ours["wall_s"], "ours_flux_conservation": ours["flux_conservation"],
               "peak_rss_gb": ours["peak_rss_gb"], "size": size, "seed": BENCH_SEED,
               "stars_scored": int(ok.sum())}
    print("  time ratio peer / ours (Lanczos-3, wall clock): "
          + ", ".join(f"{name} {v}x" for name, v in ratios.items()))
    checks = [
        (f"flux conservation {ours['flux_conservation']:.2g}", f"< {TARGET_FLUX:g}",
         ours["flux_conservation"] < TARGET_FLUX),
    ]
    for text, target, ok_ in checks:
        print(f"  {text}  [target {target}: {'met' if ok_ else 'MISSED'}]")
    if args.json:
        print(json.dumps(summary))
    return 0
