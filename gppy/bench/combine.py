"""`gppy bench combine [--json] [--n 15] [--size 4096] [--mem-limit GB]`: time the
median master of gppy.reduction.combine against ccdproc.combine (same files,
same memory limit) and numpy.median (stack already in memory).

Each candidate runs in its own fresh process, so its peak RSS is its own; the
times exclude interpreter start-up and imports (and, for numpy, loading the stack).
"""

from __future__ import annotations

import json
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from gppy.bench import add_benchmark, in_fresh_process

GB = 1e9
CANDIDATES = {
    "ours": "gppy.reduction.combine (median, from files)",
    "ccdproc": "ccdproc.combine (median, from files)",
    "numpy": "numpy.median (stack in memory)",
}
TARGET_VS_CCDPROC = 10.0
TARGET_VS_NUMPY = 3.0
RSS_MARGIN_GB = 0.5  # interpreter and libraries, on top of the memory limit
MAX_REL_DIFF = 1e-5
BIAS_ADU, READ_NOISE_ADU, NANS_PER_FRAME = 1000.0, 5.0, 10


def register(sub) -> None:
    p = add_benchmark(sub, "combine", help="median master: gppy vs ccdproc.combine vs numpy.median",
                      doc=__doc__, run=run,
                      json_fields="ours_s, ccdproc_s, numpy_s, ratio_vs_ccdproc, ratio_vs_numpy, "
                                  "peak_rss_gb, max_rel_diff, ...")
    p.add_argument("--n", type=int, default=15, help="frames (default 15)")
    p.add_argument("--size", type=int, default=4096, help="frames are SIZE x SIZE float32 (default 4096)")
    p.add_argument("--mem-limit", type=float, default=2.0, metavar="GB",
                   help="memory limit for gppy and ccdproc (default 2)")
    p.add_argument("--ncores", type=int, default=2, help="threads for gppy (default 2)")


def run(args) -> int:
    with tempfile.TemporaryDirectory(prefix="gppy-bench-combine-") as tmp:
        tmp = Path(tmp)
        print(f"writing {args.n} frames of {args.size} x {args.size} float32 to {tmp} ...", flush=True)
        files = write_frames(tmp, args.n, args.size)
        os.sync()  # so that no candidate competes with the write-back of the frames
        seconds, rss, result = {}, {}, {}
        for name, label in CANDIDATES.items():
            out = tmp / f"{name}.npy"
            # A fresh process per candidate: its peak RSS is its own.
            seconds[name], rss[name] = in_fresh_process(
                _candidate, name, files, args.mem_limit, args.ncores, out)
            result[name] = np.load(out)
            print(f"  {label:<46} {seconds[name]:7.2f} s   peak RSS {rss[name] / GB:5.2f} GB",
                  flush=True)
    diff_ccdproc = max_rel_diff(result["ours"], result["ccdproc"])
    diff_numpy = max_rel_diff(result["ours"], result["numpy"])
    summary = {
        "ours_s": round(seconds["ours"], 3),
        "ccdproc_s": round(seconds["ccdproc"], 3),
        "numpy_s": round(seconds["numpy"], 3),
        "ratio_vs_ccdproc": round(seconds["ccdproc"] / seconds["ours"], 2),
        "ratio_vs_numpy": round(seconds["numpy"] / seconds["ours"], 2),
        "peak_rss_gb": round(rss["ours"] / GB, 3),
        "max_rel_diff": max(diff_ccdproc, diff_numpy),
        "max_rel_diff_vs_ccdproc": diff_ccdproc,
        "max_rel_diff_vs_numpy": diff_numpy,
        "peak_rss_gb_ccdproc": round(rss["ccdproc"] / GB, 3),
        "peak_rss_gb_numpy": round(rss["numpy"] / GB, 3),
        "n": args.n, "size": args.size, "mem_limit_gb": args.mem_limit, "ncores": args.ncores,
    }
    rss_limit = args.mem_limit + RSS_MARGIN_GB
    checks = [
        (f"speed-up over ccdproc.combine {summary['ratio_vs_ccdproc']}x", f">= {TARGET_VS_CCDPROC:g}x",
         summary["ratio_vs_ccdproc"] >= TARGET_VS_CCDPROC),
        (f"speed-up over numpy.median {summary['ratio_vs_numpy']}x", f">= {TARGET_VS_NUMPY:g}x",
         summary["ratio_vs_numpy"] >= TARGET_VS_NUMPY),
        (f"peak RSS {summary['peak_rss_gb']} GB", f"<= {rss_limit:g} GB", summary["peak_rss_gb"] <= rss_limit),
        (f"max relative difference {diff_ccdproc:.2g} vs ccdproc, {diff_numpy:.2g} vs numpy "
         "(where numpy.median is not NaN)", f"<= {MAX_REL_DIFF:g}", summary["max_rel_diff"] <= MAX_REL_DIFF),
    ]
    for text, target, ok in checks:
        print(f"  {text}  [target {target}: {'met' if ok else 'MISSED'}]")
    if args.json:
        print(json.dumps(summary))
    return 0 if summary["max_rel_diff"] <= MAX_REL_DIFF else 1


def write_frames(folder: Path, n: int, size: int, seed: int = 1) -> list[Path]:
    """Bias-like frames: a level with a fixed column pattern, read noise and a few NaNs."""
    from astropy.io import fits

    rng = np.random.default_rng(seed)
    columns = (BIAS_ADU + rng.normal(0, 2, size)).astype(np.float32)
    files = []
    for i in range(n):
        data = rng.standard_normal((size, size), dtype=np.float32)
        data *= READ_NOISE_ADU
        data += columns
        data[rng.integers(0, size, NANS_PER_FRAME), rng.integers(0, size, NANS_PER_FRAME)] = np.nan
        path = folder / f"bias_{i:03d}.fits"
        fits.PrimaryHDU(data, fits.Header({"BUNIT": "adu", "IMAGETYP": "Bias Frame"})).writeto(path)
        files.append(path)
    return files


def max_rel_diff(ours: np.ndarray, ref: np.ndarray) -> float:
    """max |ours - ref| / |ref| over the pixels where ref is finite; inf if ours is
    NaN at one of them."""
    ok = np.isfinite(ref)
    a, b = ours[ok].astype(np.float64), ref[ok].astype(np.float64)
    if np.isnan(a).any():
        return float("inf")
    return float(np.max(np.abs(a - b) / np.abs(b), initial=0.0))


def _candidate(name: str, files: list[Path], mem_limit_gb: float, ncores: int,
               out: Path) -> tuple[float, int]:
    """Run one candidate; save its image to `out`; return (seconds, peak RSS bytes)."""
    if name == "ours":
        from gppy.reduction.combine import combine

        t0 = time.perf_counter()
        image = combine(files, "median", mem_limit_gb=mem_limit_gb, ncores=ncores).image
    elif name == "ccdproc":
        import ccdproc
        from astropy import log

        log.setLevel("WARNING")  # not its "splitting each image into N chunks" on stdout
        t0 = time.perf_counter()
        image = ccdproc.combine([str(f) for f in files], method="median",
                                mem_limit=mem_limit_gb * GB).data
    else:
        from gppy.fitsio import read_header, read_image

        _, shape = read_header(files[0])
        stack = np.empty((len(files),) + shape, np.float32)
        for i, f in enumerate(files):
            stack[i] = read_image(f)
        t0 = time.perf_counter()
        image = np.median(stack, axis=0)
    seconds = time.perf_counter() - t0
    np.save(out, image)
    return seconds, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
