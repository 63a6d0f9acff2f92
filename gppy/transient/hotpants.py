"""The `hotpants` engine of `gppy.transient.subtract`: the external HOTPANTS program
(Becker's implementation of Alard & Lupton), run when it is on PATH.

Roles as in the legacy gpPy call (`hotpants -c t -n i -iu .. -tu .. -tl .. -v 0
-inim SCI -tmplim REF -outim hd<SCI> -oci hc<SCI>`): the science frame is the
"image" (-inim), the reference the "template" (-tmplim); the template is
convolved (-c t) unless `convolve` says otherwise, and the difference is
normalised to the image (-n i), i.e. it is in the science frame's electrons and
reads science - reference. Here the inputs also carry their noise (-ini/-tni,
1-sigma images) and masks (-imi/-tmi, nonzero = bad), and the outputs include
the noise (-oni) and the output mask (-omi). The valid-data thresholds are set
around the unmasked data so that only the masks decide what is bad.

The program runs from an argument list (no shell) in its own process group in a
temporary folder, with a wall-clock limit: on time-out the whole group is
terminated (then killed). Its outputs are read back into a `Subtraction`: the
difference, the noise, the mask (the inputs' bits, plus NO_DATA where HOTPANTS
flagged a pixel), the convolution direction (CONVOL00) and the kernel sum
(KSUM00). HOTPANTS gives no kernel image: `Subtraction.kernel` is None and
`kernel_info` holds the command, the sum and the header's description.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import numpy as np
from astropy.io import fits

from gppy.errors import InputError

BINARY = "hotpants"
ENV_BINARY = "GPPY_HOTPANTS"       # another name or path for the program
DEFAULT_TIMEOUT_S = 600.0
LEGACY_FLAGS = ("-c", "t", "-n", "i")   # the legacy call's direction and normalisation


class HotpantsMissing(InputError):
    """HOTPANTS is not installed (not on PATH)."""


class HotpantsError(RuntimeError):
    """HOTPANTS failed, timed out or wrote no usable output."""


def find_hotpants(binary: str | None = None) -> str:
    """The path of the HOTPANTS program, or HotpantsMissing."""
    name = binary or os.environ.get(ENV_BINARY) or BINARY
    path = shutil.which(name)
    if path is None:
        raise HotpantsMissing(
            f"the hotpants engine needs the HOTPANTS program, and {name!r} is not on PATH: "
            f"install it (https://github.com/acbecker/hotpants) or set {ENV_BINARY}, "
            f"or use the builtin engine")
    return path


def hotpants_args(binary: str, files: dict[str, str | os.PathLike], *,
                  sci_limits: tuple[float, float], ref_limits: tuple[float, float],
                  convolve: str = "ref", kernel_half_width: int | None = None,
                  gaussians: list[tuple[int, float]] | None = None,
                  regions: tuple[int, int] = (1, 1), kernel_order: int | None = None,
                  bg_order: int | None = None, verbosity: int = 0,
                  extra: tuple[str, ...] | list[str] = ()) -> list[str]:
    """The argument list of one HOTPANTS run.

    files: sci, ref (inputs), sci_noise, ref_noise, sci_mask, ref_mask (optional
    inputs), diff, noise, mask, conv (outputs; diff required). *_limits: (lower,
    upper) valid data values. convolve: "ref" (-c t, the legacy default), "sci"
    (-c i) or "auto" (HOTPANTS decides). gaussians: [(degree, sigma_px), ...]."""
    if convolve not in ("ref", "sci", "auto"):
        raise InputError(f"convolve must be ref, sci or auto, not {convolve!r}")
    for key in ("sci", "ref", "diff"):
        if key not in files:
            raise ValueError(f"hotpants_args: files[{key!r}] is required")
    args = [str(binary),
            "-inim", str(files["sci"]), "-tmplim", str(files["ref"]),
            "-outim", str(files["diff"]),
            "-il", _num(sci_limits[0]), "-iu", _num(sci_limits[1]),
            "-tl", _num(ref_limits[0]), "-tu", _num(ref_limits[1]),
            "-ig", "1", "-tg", "1"]          # the images are in electrons
    for flag, key in (("-ini", "sci_noise"), ("-tni", "ref_noise"), ("-imi", "sci_mask"),
                      ("-tmi", "ref_mask"), ("-oni", "noise"), ("-omi", "mask"),
                      ("-oci", "conv")):
        if files.get(key):
            args += [flag, str(files[key])]
    if convolve != "auto":
        args += ["-c", "t" if convolve == "ref" else "i"]
    args += ["-n", "i"]
    if kernel_half_width:
        args += ["-r", str(int(kernel_half_width))]
    if gaussians:
        args += ["-ng", str(len(gaussians))]
        for degree, sigma in gaussians:
            args += [str(int(degree)), _num(sigma)]
    if tuple(regions) != (1, 1):
        args += ["-nrx", str(int(regions[0])), "-nry", str(int(regions[1]))]
    if kernel_order is not None:
        args += ["-ko", str(int(kernel_order))]
    if bg_order is not None:
        args += ["-bgo", str(int(bg_order))]
    args += ["-v", str(int(verbosity)), *map(str, extra)]
    return args


def _num(value: float) -> str:
    return f"{float(value):.8g}"


def run_command(args: list[str], cwd: str | os.PathLike, timeout_s: float) -> str:
    """Run `args` in its own process group; its output (stdout + stderr), or
    HotpantsError on a non-zero exit or after `timeout_s` (the group terminated)."""
    try:
        proc = subprocess.Popen(args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    except OSError as exc:
        raise HotpantsError(f"cannot run {args[0]}: {exc}") from None
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _stop_group(proc)
        raise HotpantsError(f"{Path(args[0]).name} timed out after {timeout_s:g} s "
                            f"(process group {proc.pid} stopped)") from None
    text = out.decode(errors="replace") if out else ""
    if proc.returncode != 0:
        tail = "\n".join(text.strip().splitlines()[-10:])
        raise HotpantsError(f"{Path(args[0]).name} exited with status {proc.returncode}: {tail}")
    return text


def _stop_group(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    try:   # release the pipe
        proc.communicate(timeout=1.0)
    except (subprocess.TimeoutExpired, ValueError, OSError):
        pass


def _limits(image: np.ndarray, bad: np.ndarray) -> tuple[float, float]:
    """Valid-data limits that exclude nothing unmasked."""
    good = image[~bad]
    if good.size == 0:
        raise InputError("an input image has no unmasked pixel")
    lo, hi = float(good.min()), float(good.max())
    span = max(hi - lo, 1.0)
    return lo - 0.01 * span - 1.0, hi + 0.01 * span + 1.0


def run_hotpants(sci, ref, sci_mask, ref_mask, sci_err, ref_err, *, pair=None,
                 binary: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S,
                 convolve: str = "ref", workdir: str | os.PathLike | None = None,
                 **settings):
    """One subtraction by HOTPANTS (see the module docstring); `settings` go to
    `hotpants_args` (kernel_half_width, gaussians, regions, kernel_order, bg_order,
    verbosity, extra). `pair` (gppy.transient.subtract.Pair) is only used for QA by
    the caller. Raises HotpantsMissing, HotpantsError."""
    from gppy.transient.subtract import NO_DATA, Subtraction

    path = find_hotpants(binary)
    if convolve not in ("ref", "sci", "auto"):
        raise InputError(f"convolve must be ref, sci or auto, not {convolve!r}")
    bad_s, bad_r = sci_mask != 0, ref_mask != 0
    with tempfile.TemporaryDirectory(prefix="gppy-hotpants-", dir=workdir) as tmp:
        tmp = Path(tmp)
        files = {k: tmp / f"{k}.fits" for k in ("sci", "ref", "sci_noise", "ref_noise",
                                                "sci_mask", "ref_mask", "diff", "noise",
                                                "mask", "conv")}
        for key, data in (("sci", np.where(bad_s, 0, sci)), ("ref", np.where(bad_r, 0, ref)),
                          ("sci_noise", np.where(bad_s, 0, sci_err)),
                          ("ref_noise", np.where(bad_r, 0, ref_err))):
            fits.PrimaryHDU(np.asarray(data, np.float32)).writeto(files[key])
        fits.PrimaryHDU(bad_s.astype(np.int16)).writeto(files["sci_mask"])
        fits.PrimaryHDU(bad_r.astype(np.int16)).writeto(files["ref_mask"])
        args = hotpants_args(path, files, sci_limits=_limits(sci, bad_s),
                             ref_limits=_limits(ref, bad_r), convolve=convolve, **settings)
        log = run_command(args, tmp, timeout_s)
        if not files["diff"].exists():
            raise HotpantsError(f"hotpants wrote no difference image; its output: "
                                f"{log.strip()[-500:]}")
        with fits.open(files["diff"]) as hdul:
            header = hdul[0].header.copy()
            diff = np.asarray(hdul[0].data, np.float32)
        noise = (np.asarray(fits.getdata(files["noise"]), np.float32)
                 if files["noise"].exists() else None)
        out_mask = (np.asarray(fits.getdata(files["mask"])) != 0
                    if files["mask"].exists() else None)
    if diff.shape != sci.shape:
        raise HotpantsError(f"hotpants' difference has the shape {diff.shape}, not {sci.shape}")
    if noise is None:   # no noise image: the inputs' noise, the convolution ignored
        noise = np.sqrt(sci_err.astype(np.float32) ** 2 + ref_err.astype(np.float32) ** 2)
    mask = (sci_mask | ref_mask).astype(np.uint16)
    undefined = ~np.isfinite(diff) | ~np.isfinite(noise) | (noise <= 0)
    if out_mask is not None:
        undefined |= out_mask & (mask == 0)
    mask[undefined] |= NO_DATA
    diff = np.where(undefined, 0.0, diff).astype(np.float32)
    noise = np.where(undefined, np.inf, noise).astype(np.float32)
    direction = str(header.get("CONVOL00", "TEMPLATE")).strip().upper()
    convolved = "sci" if direction.startswith("IMAGE") else "ref"
    ksum = header.get("KSUM00")
    info = {"command": args, "kernel_sum": float(ksum) if ksum is not None else None,
            "regions": header.get("NREGION"), "photnorm": header.get("PHOTNORM"),
            "convol": direction}
    qa = {"kernel_sum": info["kernel_sum"]}
    return Subtraction(diff, noise, mask, None, convolved, qa, 0.0, "hotpants", info)
