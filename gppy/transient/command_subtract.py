"""`gppy subtract SCI REF [--engine builtin|hotpants] [--out PATH] [--gain E_PER_ADU]
[--convolve auto|ref|sci] [--timeout S] [--json]`: the difference SCI - REF of two
frames (see gppy.transient.subtract).

Both frames are read in electrons (a pipeline Calib file as it is; another image
times its gain: header GAIN, else --gain; its ERR estimated from its background
noise and the sources' Poisson noise, its MASK from non-finite pixels and, for
integer raw data, the saturated plateau). When the two frames have celestial
WCSs on different grids, the reference is resampled onto the science grid
(gppy.transient.resample, Lanczos-3); frames without any WCS must have the same
shape and are taken as registered.

The expected flux ratio for the QA comes from the zero points when both headers
have them: the total-flux zero point ZP_n - APCORn of the aperture ZPAPER (else
ZP), in e-/s, times the exposure-time ratio.

Candidates: gppy.transient.candidates on the difference (its PSF's FWHM from the
QA, the science zero point and exposure time; without a WCS, positions in pixels
only and no RA/Dec).

Output (atomically): the difference in the science frame's electrons (primary
HDU, the science header with the QA keywords SUB* and SUBNCAND, the number of
candidates), MASK (flags.Pixel bits), ERR (the difference's 1-sigma noise) and
KERNEL (the kernel at the frame centre, builtin engine), named hd-<science name>
in the current folder, or --out (a file, or an existing folder); beside it
hd-<science stem>.cand.ecsv, every detection with its class and reasons. With
--json the last line of the output is one JSON object: diff, sci, ref, engine,
seconds, resid_std_blank, resid_std_stars, n_candidates (class "candidate"),
n_variables, n_moving, n_bogus, candidates (the .cand.ecsv), and the other QA
values (see gppy.transient.subtract.quality).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table

from gppy.astrometry.wcsio import celestial_wcs
from gppy.errors import InputError
from gppy.fitsio import BadFrame, atomic_open, read_header, write_atomic
from gppy.phot.calibrate import total_zero_point
from gppy.reduction.flags import Pixel
from gppy.transient.skybot import mark_movers


def register(sub) -> None:
    p = sub.add_parser("subtract", help="difference image of two frames (science - reference)",
                       description=__doc__)
    p.add_argument("sci", metavar="SCI", help="science frame")
    p.add_argument("ref", metavar="REF", help="reference frame (resampled onto SCI if needed)")
    p.add_argument("--engine", choices=("builtin", "hotpants"), default="builtin",
                   help="subtraction engine (default builtin; hotpants needs the program)")
    p.add_argument("--out", help="output file, or an existing folder "
                                 "(default ./hd-<science name>)")
    p.add_argument("--gain", type=float, metavar="E_PER_ADU",
                   help="gain of frames not in electrons without a GAIN keyword")
    p.add_argument("--convolve", choices=("auto", "ref", "sci"), default=None,
                   help="which image to convolve (builtin default: the sharper; "
                        "hotpants default: ref, as the legacy pipeline)")
    p.add_argument("--timeout", type=float, default=600.0, metavar="S",
                   help="wall-clock limit of the hotpants program (default 600 s)")
    p.add_argument("--json", action="store_true", help="end with one JSON line of the results")
    p.set_defaults(func=run)


def run(args) -> int:
    from gppy.transient.hotpants import HotpantsError

    try:
        row = subtract_files(Path(args.sci), Path(args.ref), engine=args.engine,
                             out=Path(args.out) if args.out else None, gain=args.gain,
                             convolve=args.convolve, timeout_s=args.timeout)
    except (InputError, HotpantsError) as exc:
        if not args.json:
            if isinstance(exc, InputError):
                raise
            print(f"gppy subtract: {exc}", flush=True)
            return 1
        print(json.dumps({"diff": None, "sci": args.sci, "ref": args.ref,
                          "engine": args.engine, "error": str(exc)}), flush=True)
        return 2 if isinstance(exc, InputError) else 1
    if args.json:
        print(json.dumps(row), flush=True)
    else:
        print(f"{row['diff']}: {row['engine']}, {row['convolved']} convolved, "
              f"residual std {_fmt(row['resid_std_blank'])} (blank sky), "
              f"{_fmt(row['resid_std_stars'])} (stars), flux ratio {_fmt(row.get('flux_ratio'))} "
              f"(expected {_fmt(row.get('flux_ratio_expected'))}, "
              f"{row.get('flux_ratio_source')}), {row['n_candidates']} candidates "
              f"({row['n_variables']} variable stars, {row['n_bogus']} rejected; "
              f"{row['candidates']}), {row['seconds']:.1f} s", flush=True)
    return 0


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def output_path(sci: Path, out: Path | None) -> Path:
    name = sci.name
    for suffix in (".gz", ".fz", ".bz2"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    default = f"hd-{name}"
    if out is None:
        return Path.cwd() / default
    return out / default if out.is_dir() else out


def read_frame(path: Path, gain: float | None):
    """(header, image e-, MASK, ERR e-, gain) of any frame (see the docstring)."""
    from gppy.phot.calibrate import read_image

    try:
        read_header(path)
    except BadFrame as exc:
        raise InputError(str(exc)) from None
    header, image, mask, err, used_gain = read_image(path, gain)
    mask = np.asarray(mask, np.uint16).copy()
    with fits.open(path, memmap=False) as hdul:
        names = [h.name for h in hdul]
        if "MASK" not in names:
            mask |= _saturated(hdul, header, used_gain)
    return header, image, mask, err, used_gain


def _saturated(hdul, header, gain) -> np.ndarray:
    """SATURATED where a frame without MASK reaches its SATURATE keyword or, for
    integer raw data, the plateau at its highest value (grown by one pixel)."""
    from gppy.fitsio import image_hdu_index

    hdu = hdul[image_hdu_index(hdul)]
    data = np.asarray(hdu.data, np.float64)
    level = header.get("SATURATE")
    flag = np.zeros(data.shape, bool)
    if isinstance(level, (int, float)) and level > 0:
        flag = data >= level
    elif header.get("BITPIX", -32) > 0 and data.size:
        top = np.nanmax(data)
        if np.count_nonzero(data == top) >= 4:   # a plateau: the converter's ceiling
            flag = data >= top - 0.02 * abs(top)
    out = np.zeros(data.shape, np.uint16)
    if flag.any():
        from scipy import ndimage

        out[ndimage.binary_dilation(flag, iterations=1)] = Pixel.SATURATED
    return out


def expected_ratio(hs, hr, gain_s, gain_r) -> float | None:
    zs, zr = total_zero_point(hs, gain_s), total_zero_point(hr, gain_r)
    ts, tr = hs.get("EXPTIME"), hr.get("EXPTIME")
    if zs is None or zr is None or not isinstance(ts, (int, float)) \
            or not isinstance(tr, (int, float)) or ts <= 0 or tr <= 0:
        return None
    return 10 ** (0.4 * (zs - zr)) * ts / tr


def candidate_path(diff: Path) -> Path:
    """hd-<science stem>.cand.ecsv beside the difference."""
    return diff.with_name(diff.name.rsplit(".", 1)[0] + ".cand.ecsv")


def same_grid(wcs_s, shape_s, wcs_r, shape_r, tol_px: float = 0.01) -> bool:
    if tuple(shape_s) != tuple(shape_r):
        return False
    ny, nx = shape_s
    x = np.array([0, nx - 1, 0, nx - 1, (nx - 1) / 2, 0, nx - 1, (nx - 1) / 2, (nx - 1) / 2])
    y = np.array([0, 0, ny - 1, ny - 1, (ny - 1) / 2, (ny - 1) / 2, (ny - 1) / 2, 0, ny - 1])
    ra, dec = wcs_s.all_pix2world(x, y, 0)
    X, Y = wcs_r.all_world2pix(ra, dec, 0)
    return bool(np.all(np.hypot(X - x, Y - y) < tol_px))


@dataclass
class OnGrid:
    """A difference with the two frames it came from, all on the science grid."""

    sci: np.ndarray
    ref: np.ndarray           # resampled when the grids differed (not convolved)
    diff: np.ndarray
    noise: np.ndarray
    mask: np.ndarray
    wcs: object               # the science frame's celestial WCS (None without one)
    candidates: Table         # gppy.transient.candidates.find_candidates


def subtract_files(sci: Path, ref: Path, **kwargs) -> dict:
    """Subtract two files and write the difference; the JSON row of the CLI (the
    keywords as for `difference`)."""
    return difference(sci, ref, **kwargs)[0]


def difference(sci: Path, ref: Path, *, engine: str = "builtin", out: Path | None = None,
               gain: float | None = None, convolve: str | None = None,
               timeout_s: float = 600.0, cards: tuple = (),
               movers: Table | None = None) -> tuple[dict, OnGrid]:
    """Subtract two files and write the difference, with `cards` (keyword, value,
    comment) added to its header: (the JSON row of the CLI, the arrays on the
    science grid). `movers`: known solar-system objects (gppy.transient.skybot)
    whose candidates become class "moving"."""
    from gppy.transient.subtract import qa_cards, subtract

    start = time.monotonic()
    hs, s, ms, es, gs = read_frame(sci, gain)
    hr, r, mr, er, gr = read_frame(ref, gain)
    ws, wr = celestial_wcs(hs), celestial_wcs(hr)
    resampled = False
    if ws is None and wr is None:
        if s.shape != r.shape:
            raise InputError(f"{sci} and {ref} have no WCS and different shapes "
                             f"({s.shape}, {r.shape}): cannot put them on one grid")
    elif ws is None or wr is None:
        raise InputError(f"{sci if ws is None else ref} has no celestial WCS "
                         f"(solve it first: gppy astrometry)")
    elif not same_grid(ws, s.shape, wr, r.shape):
        from gppy.transient.resample import resample

        r, mr, er, footprint = resample(r, mr, er, wr, ws, s.shape)
        if not footprint.any():
            raise InputError(f"{ref} does not overlap {sci}")
        resampled = True
    options = {"flux_ratio_expected": expected_ratio(hs, hr, gs, gr)}
    if engine == "hotpants":
        options |= {"timeout_s": timeout_s, "convolve": convolve or "ref"}
    elif convolve:
        options["convolve"] = convolve
    result = subtract(s, r, sci_mask=ms, ref_mask=mr, sci_err=es, ref_err=er, engine=engine,
                      **options)
    path = output_path(sci, out)
    cands = _candidates(result, s, r, ws, hs, gs, sci)
    if movers is not None:
        mark_movers(cands, movers)
    header = hs.copy()
    for key in ("BSCALE", "BZERO", "BLANK"):
        header.remove(key, ignore_missing=True)
    header["BUNIT"] = ("electron", "science - reference, science flux scale")
    header["SUBSCI"] = (sci.name[-68:], "science frame")
    header["SUBREF"] = (ref.name[-68:], "reference frame")
    header["SUBRESAM"] = (resampled, "reference resampled onto the science grid")
    n_cands = int(np.count_nonzero(cands["cls"] == "candidate"))
    header["SUBNCAND"] = (n_cands, "transient candidates (class candidate)")
    for key, value, comment in [*qa_cards(result.qa), *cards]:
        header[key] = (value, comment)
    hdus = [fits.PrimaryHDU(result.diff.astype(np.float32), header=header),
            fits.ImageHDU(result.mask.astype(np.uint16), name="MASK"),
            fits.ImageHDU(result.noise.astype(np.float32), name="ERR")]
    hdus[2].header["BUNIT"] = ("electron", "1-sigma noise of the difference")
    if result.kernel is not None:
        hdus.append(fits.ImageHDU(result.kernel.astype(np.float32), name="KERNEL"))
        hdus[3].header["COMMENT"] = "kernel at the frame centre (convolution)"
    write_atomic(path, fits.HDUList(hdus))
    cand_path = candidate_path(path)
    with atomic_open(cand_path, "w") as fh:
        cands.write(fh, format="ascii.ecsv")
    row = {"diff": str(path), "sci": str(sci), "ref": str(ref), "engine": result.engine,
           "seconds": round(result.seconds, 3), "total_seconds": round(time.monotonic() - start, 3),
           "resampled": resampled, "candidates": str(cand_path), "n_candidates": n_cands,
           "n_variables": int(np.count_nonzero(cands["cls"] == "variable")),
           "n_moving": int(np.count_nonzero(cands["cls"] == "moving")),
           "n_bogus": int(np.count_nonzero(cands["cls"] == "bogus"))}
    for key, value in result.qa.items():
        if key in row:
            continue
        if isinstance(value, (float, np.floating)):
            value = float(value) if np.isfinite(value) else None
        elif isinstance(value, np.integer):
            value = int(value)
        row[key] = value
    for key in ("resid_std_blank", "resid_std_stars"):
        row.setdefault(key, None)
    return row, OnGrid(s, r, result.diff, result.noise, result.mask, ws, cands)


def _candidates(result, sci, ref, wcs, header, gain, sci_path: Path) -> Table:
    """The candidates of a difference, with the science frame's zero point (e-/s).
    The difference's PSF: its FWHM from the QA, else the science SEEING."""
    from gppy.transient.candidates import find_candidates

    fwhm_px = result.qa.get("fwhm_diff_px")
    if (fwhm_px is None or not np.isfinite(fwhm_px) or fwhm_px <= 0) and wcs is not None \
            and isinstance(header.get("SEEING"), (int, float)):
        scale_arcsec = float(np.sqrt(abs(np.linalg.det(wcs.pixel_scale_matrix)))) * 3600.0
        fwhm_px = float(header["SEEING"]) / scale_arcsec
    if fwhm_px is None or not np.isfinite(fwhm_px) or fwhm_px <= 0:
        raise InputError(f"{sci_path}: no stars on the difference's grid to measure its PSF "
                         "and no SEEING keyword: cannot search for candidates")
    exptime = header.get("EXPTIME")
    # the PSF and aperture correction of the candidates are those of the difference:
    # the reference's when the science was convolved to match it
    psf_image = ref if result.convolved == "sci" else sci
    return find_candidates(result.diff, result.noise, psf_image, ref, result.mask, wcs,
                           fwhm_px=float(fwhm_px), zp=total_zero_point(header, gain),
                           exptime_s=float(exptime) if isinstance(exptime, (int, float))
                           and exptime > 0 else 1.0)
