"""Master calibration frames: bias, dark per exposure time, flat per filter, and
the bad-pixel mask, each a FITS file with its provenance (inputs, method,
counts) and QA numbers in the header and, for images, an ERR extension (the
1-sigma error of the master itself, in ADU; relative for flats).

Masters are combined with `gppy.reduction.combine` (row blocks, bounded memory).
Darks are bias-subtracted and kept for their own exposure time; flats are bias-
and dark-subtracted, each divided by its median, median-combined and normalised
to median 1.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import bottleneck as bn
import numpy as np
from astropy.io import fits

from gppy.errors import InputError
from gppy.fitsio import BadFrame, write_atomic
from gppy.obsconfig.schema import Profile
from gppy.reduction.combine import combine
from gppy.reduction.flags import Pixel
from gppy.reduction.preprocess import load_raw, needs_preprocessing

# Variance of the median of N normal values relative to their mean (N > 2); a
# median of 1 or 2 values is their mean.
MEDIAN_VARIANCE_FACTOR = math.pi / 2
ROBUST_SIGMA_PER_MAD = 1.4826


class MasterError(InputError):
    """A master that cannot be built or used (no usable input, mismatched set-up)."""


@dataclass(frozen=True)
class Setup:
    """What must match between a master and the frames it calibrates."""

    binning: str                   # e.g. "2x2"
    gain_mode: str = ""
    settemp_c: float | None = None

    @property
    def tag(self) -> str:
        parts = [self.binning]
        if self.gain_mode:
            parts.append(f"gain{self.gain_mode}")
        if self.settemp_c is not None:
            t = round(self.settemp_c)
            parts.append(f"{'m' if t < 0 else 'p'}{abs(t)}C")
        return "_".join(parts)


@dataclass
class Master:
    """A master on disk and what it was made of."""

    kind: str                      # bias | dark | flat | bpm
    path: Path
    night: str
    setup: Setup
    shape: tuple[int, int]
    inputs: list[str]
    qa: dict[str, float | int]
    exptime_s: float | None = None
    filter: str | None = None
    rejected: dict[str, str] = field(default_factory=dict)


@dataclass
class MasterData:
    """A master read back: data, its 1-sigma error (None for a mask), header."""

    path: Path
    data: np.ndarray
    err: np.ndarray | None
    header: fits.Header

    @property
    def night(self) -> str:
        return self.header["NIGHT"]


def master_name(kind: str, setup: Setup, exptime_s: float | None = None,
                filter: str | None = None) -> str:
    parts = [kind]
    if kind == "dark":
        parts.append(f"{exptime_s:g}s")
    if kind == "flat":
        parts.append(filter)
    return "_".join(parts + [setup.tag]) + ".fits"


def read_master(path: str | os.PathLike) -> MasterData:
    with fits.open(path, memmap=False) as hdul:
        err = np.asarray(hdul["ERR"].data, np.float32) if "ERR" in hdul else None
        return MasterData(Path(path), np.asarray(hdul[0].data), err, hdul[0].header.copy())


def _median_variance_factor(n: int) -> float:
    return 1.0 if n <= 2 else MEDIAN_VARIANCE_FACTOR


def _robust_sigma(values: np.ndarray) -> float:
    v = values[np.isfinite(values)]
    return float(ROBUST_SIGMA_PER_MAD * np.median(np.abs(v - np.median(v))))


def _central(image: np.ndarray) -> np.ndarray:
    ny, nx = image.shape
    return image[ny // 4: 3 * ny // 4, nx // 4: 3 * nx // 4]


def _write(m: Master, data: np.ndarray, err: np.ndarray | None, profile: Profile) -> Master:
    header = fits.Header()
    header["MASTER"] = (m.kind, "master calibration frame")
    header["OBSERVAT"] = (profile.name, "observatory profile")
    header["NIGHT"] = (m.night, "night whose frames made it")
    header["BINNING"] = (m.setup.binning, "binning x by y")
    header["GAINMODE"] = (m.setup.gain_mode, "camera gain setting")
    if m.setup.settemp_c is not None:
        header["SET-TEMP"] = (m.setup.settemp_c, "[C] cooler set-point")
    if m.exptime_s is not None:
        header["EXPTIME"] = (m.exptime_s, "[s] exposure time of the dark")
    if m.filter is not None:
        header["FILTER"] = (m.filter, "filter")
    header["NCOMBINE"] = (len(m.inputs), "frames combined")
    header["COMBMETH"] = ("median" if m.kind != "bpm" else "flags", "how")
    for key, value in m.qa.items():
        header[key] = value
    for i, name in enumerate(m.inputs, 1):
        header[f"INPUT{i:03d}"] = Path(name).name
    for name, why in m.rejected.items():
        header.add_history(f"rejected {Path(name).name}: {why}")
    hdus = [fits.PrimaryHDU(data, header)]
    if err is not None:
        hdus.append(fits.ImageHDU(err.astype(np.float32), name="ERR"))
    write_atomic(m.path, fits.HDUList(hdus))
    return m


def _prepared(files: Sequence[str], profile: Profile, tmp: Path,
              transform: Callable[[np.ndarray], np.ndarray] | None = None) -> list[str]:
    """Inputs for `combine`: the raw files themselves, or preprocessed copies when
    the profile trims / removes overscan or a per-frame `transform` applies."""
    if transform is None and not needs_preprocessing(profile):
        return list(files)
    out = []
    for i, f in enumerate(files):
        image, _ = load_raw(f, profile)
        if transform is not None:
            image = transform(image)
        path = tmp / f"{i:04d}.fits"
        fits.PrimaryHDU(image.astype(np.float32)).writeto(path)
        out.append(str(path))
    return out


def _check_shapes(masters: Sequence[MasterData], shape: tuple[int, int], what: str) -> None:
    for m in masters:
        if m.data.shape != shape:
            raise MasterError(f"{m.path}: master of shape {m.data.shape[0]}x{m.data.shape[1]} "
                              f"cannot calibrate {what} of shape {shape[0]}x{shape[1]}")


def build_bias(files: Sequence[str], profile: Profile, setup: Setup, night: str,
               out_dir: Path, ncores: int) -> Master:
    """Median of the biases; QA: level, single-frame noise (the read noise)."""
    red, gain = profile.reduction, profile.camera.gain_e_per_adu
    with tempfile.TemporaryDirectory() as tmp:
        inputs = _prepared(files, profile, Path(tmp))
        result = combine(inputs, "median", mem_limit_gb=red.mem_limit_gb, ncores=ncores)
        if len(files) >= 2:  # the read noise, from the difference of two biases
            a, _ = load_raw(files[0], profile)
            b, _ = load_raw(files[1], profile)
            noise_adu = _robust_sigma(_central(a - b)) / math.sqrt(2)
        else:
            noise_adu = profile.camera.read_noise_e / gain
    n = len(files)
    err = np.full(result.image.shape, noise_adu * math.sqrt(_median_variance_factor(n) / n),
                  np.float32)
    qa = {"BIASLEV": round(float(bn.nanmedian(result.image)), 3),
          "BIASNOIS": round(noise_adu, 4), "RDNOISE": round(noise_adu * gain, 3)}
    m = Master("bias", out_dir / master_name("bias", setup), night, setup, result.image.shape,
               list(files), qa)
    return _write(m, result.image, err, profile)


def build_dark(files: Sequence[str], exptime_s: float, bias: MasterData, profile: Profile,
               setup: Setup, night: str, out_dir: Path, ncores: int) -> Master:
    """Median of the darks minus the master bias, kept for its exposure time;
    QA: median dark current (e-/s) and hot-pixel count."""
    red, gain = profile.reduction, profile.camera.gain_e_per_adu
    with tempfile.TemporaryDirectory() as tmp:
        inputs = _prepared(files, profile, Path(tmp))
        result = combine(inputs, "median", mem_limit_gb=red.mem_limit_gb, ncores=ncores)
    _check_shapes([bias], result.image.shape, f"darks {Path(files[0]).name}...")
    dark = result.image - bias.data
    read_adu = bias.header["BIASNOIS"]
    n = len(files)
    var = (_median_variance_factor(n) * (read_adu ** 2 + np.maximum(dark, 0) / gain) / n
           + bias.err.astype(np.float64) ** 2)
    rate = dark * gain / exptime_s if exptime_s > 0 else dark * 0
    qa = {"DARKCUR": round(float(bn.nanmedian(rate)), 5),
          "NHOT": int(np.count_nonzero(_hot(dark, red.hot_pixel_sigma)))}
    m = Master("dark", out_dir / master_name("dark", setup, exptime_s), night, setup,
               dark.shape, list(files), qa, exptime_s=exptime_s)
    return _write(m, dark.astype(np.float32), np.sqrt(var), profile)


def _hot(dark: np.ndarray, nsigma: float) -> np.ndarray:
    med = bn.nanmedian(dark)
    return dark > med + nsigma * max(_robust_sigma(_central(dark)), 1e-6)


def choose_dark(exptimes_s: Sequence[float], exptime_s: float,
                policy: str) -> tuple[int, float] | None:
    """(index of the dark to use, factor to scale it by) for a frame of `exptime_s`:
    an exact match, else by policy the nearest or the longest exposure, scaled;
    None under policy 'exact' or with no dark of positive exposure."""
    if exptime_s in exptimes_s:
        return list(exptimes_s).index(exptime_s), 1.0
    usable = [i for i, t in enumerate(exptimes_s) if t > 0]
    if policy == "exact" or not usable:
        return None
    if policy == "longest":
        i = max(usable, key=lambda i: exptimes_s[i])
    else:  # nearest; the longer of two equally near (better signal-to-noise)
        i = min(usable, key=lambda i: (abs(exptimes_s[i] - exptime_s), -exptimes_s[i]))
    return i, exptime_s / exptimes_s[i]


def build_flat(files: Sequence[str], filter: str, exptimes_s: Sequence[float],
               bias: MasterData, darks: Sequence[MasterData], profile: Profile, setup: Setup,
               night: str, out_dir: Path, ncores: int) -> Master:
    """Flats minus bias and (scaled) dark, each divided by its median, median-combined
    and normalised to median 1. Flats too faint or too close to saturation by the
    profile's thresholds are rejected and listed; none left raises MasterError."""
    red, cam = profile.reduction, profile.camera
    gain = cam.gain_e_per_adu
    max_level = red.flat_max_fraction * cam.saturation_adu
    levels, accepted, rejected = [], [], {}
    with tempfile.TemporaryDirectory() as tmp:
        prepared = []
        for f, t in zip(files, exptimes_s):
            try:
                image, _ = load_raw(f, profile)
            except BadFrame as exc:
                rejected[f] = exc.problem
                continue
            _check_shapes([bias, *darks], image.shape, f"flat {Path(f).name}")
            raw_level = float(bn.nanmedian(_central(image)))
            image -= bias.data
            chosen = choose_dark([d.header["EXPTIME"] for d in darks], t, red.dark_policy)
            if chosen is not None:
                image -= darks[chosen[0]].data * chosen[1]
            level = float(bn.nanmedian(_central(image)))
            if raw_level > max_level:
                rejected[f] = f"saturated: median {raw_level:.0f} ADU > {max_level:.0f} ADU"
            elif level < red.flat_min_adu:
                rejected[f] = f"too faint: median {level:.0f} ADU < {red.flat_min_adu:.0f} ADU"
            else:
                path = Path(tmp) / f"{len(prepared):04d}.fits"
                fits.PrimaryHDU(image.astype(np.float32)).writeto(path)
                prepared.append(str(path))
                accepted.append(f)
                levels.append(level)
        if not prepared:
            raise MasterError(f"no usable flat in {filter}: " + "; ".join(
                f"{Path(f).name}: {why}" for f, why in rejected.items()))
        result = combine(prepared, "median", scale=[1.0 / lv for lv in levels],
                         mem_limit_gb=red.mem_limit_gb, ncores=ncores)
    norm = float(bn.nanmedian(result.image))
    flat = result.image / norm
    n, mean_level = len(prepared), float(np.mean(levels))
    read_adu = bias.header["BIASNOIS"]
    rel_var = (_median_variance_factor(n) * (np.maximum(flat, 0) * mean_level / gain + read_adu ** 2)
               / (n * mean_level ** 2))
    qa = {"FLATLEV": round(mean_level, 1), "FLATMIN": round(min(levels), 1),
          "FLATMAX": round(max(levels), 1), "NREJECT": len(rejected),
          "FLATRMS": round(_robust_sigma(_central(flat)), 5)}
    m = Master("flat", out_dir / master_name("flat", setup, filter=filter), night, setup,
               flat.shape, accepted, qa, filter=filter, rejected=rejected)
    return _write(m, flat.astype(np.float32), np.sqrt(rel_var), profile)


def build_bpm(darks: Sequence[MasterData], flats: Sequence[MasterData], profile: Profile,
              setup: Setup, night: str, out_dir: Path) -> Master:
    """Bit flags (gppy.reduction.flags.Pixel): HOT from the longest dark, LOW from
    every flat, BADCOL where a column holds too many of either."""
    red = profile.reduction
    sources = [*darks, *flats]
    if not sources:
        raise MasterError("a bad-pixel mask needs at least one dark or flat")
    shape = sources[0].data.shape
    _check_shapes(sources, shape, "the bad-pixel mask")
    bpm = np.zeros(shape, np.uint16)
    usable = [d for d in darks if d.header["EXPTIME"] > 0]
    if usable:
        longest = max(usable, key=lambda d: d.header["EXPTIME"])
        bpm[_hot(longest.data, red.hot_pixel_sigma)] |= Pixel.HOT
    for flat in flats:
        bpm[~(flat.data >= red.low_flat_response)] |= Pixel.LOW  # NaN counts as low
    bad_fraction = np.count_nonzero(bpm, axis=0) / shape[0]
    bpm[:, bad_fraction > red.bad_column_fraction] |= Pixel.BADCOL
    qa = {"NHOT": int(np.count_nonzero(bpm & Pixel.HOT)),
          "NLOW": int(np.count_nonzero(bpm & Pixel.LOW)),
          "NBADCOL": int(np.count_nonzero(bad_fraction > red.bad_column_fraction))}
    m = Master("bpm", out_dir / master_name("bpm", setup), night, setup, shape,
               [str(s.path) for s in sources], qa)
    return _write(m, bpm, None, profile)
