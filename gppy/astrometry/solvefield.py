"""astrometry.net's `solve-field` run on a source list, with a wall-clock limit.

The pipeline detects stars itself (`gppy.astrometry.sources.detect`, sep) and
hands solve-field that list as an *xylist* (a FITS table X, Y, FLUX, brightest
first), so solve-field never detects again: a hinted solve of a 49-55' field
takes about a second instead of 9-17 s on the image. Everything solve-field
writes goes into a private temporary folder that is removed afterwards.

A frame can never hang or crash the pipeline from here: a missing binary, no
usable index file, a crash, a timeout or no solution all come back as a
`SolveFieldResult` with `wcs=None` and a one-line `error`.

Limits. solve-field's own `--cpulimit` bounds neither wall time nor the total CPU
time: astrometry-engine restarts its CPU clock for every index and every depth
step (10 sources), so a hopeless search with 300 sources and `--cpulimit 20` was
measured still running after 78 s of CPU. Both limits are therefore enforced
here: the CPU time of the whole process group (solve-field, its shell and its
astrometry-engine child; read from /proc, so on Linux only) against
`cpulimit_s`, the wall clock against `timeout_s`, and the whole group is killed
when either runs out.

Coordinates. The xylist is written in the FITS convention (first pixel centre
at 1, 1) from the 0-based sep positions, and the returned WCS is a standard FITS
WCS read from solve-field's .wcs file (CRPIX 1-based, at the frame centre with
`--crpix-center`). Use it as every astropy WCS: `wcs.all_pix2world(x, y, 0)`,
`wcs.pixel_to_world(x, y)` or `wcs.world_to_pixel(...)` take and give 0-based
(numpy, sep) pixel positions; `wcs.to_header()` is right for a FITS file.

What the WCS is. A TAN projection fitted to the few index (Tycho-2) stars of
the match, with a linear tweak only (`tweak_order=1`, the default; the SIP
terms of order 1 are all zero and are dropped, so `wcs.sip` is None). It ignores
the field distortion (up to ~2 px at the corners of a 4k frame) and is good to
about a pixel over the frame: a starting point for the refinement stage, which
fits a SIP polynomial against a dense catalogue. With `tweak_order >= 2` the
SIP polynomial fitted by astrometry.net is kept, but it over-fits sparse
matches (0.33" maximum error, against 0.027" with order 1, on a 55' field).
`wcs.pixel_shape` is (width, height).
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS

from gppy import logs

SOLVE_FIELD = "solve-field"
RAD_TO_ARCMIN = 180.0 * 60.0 / math.pi
MIN_SOURCES = 4          # a quad: fewer sources can never solve
KILL_WAIT_S = 5.0        # after killing the process group, how long to wait for it
POLL_S = 0.1             # how often the wall clock and the group's CPU time are checked
TAIL_LINES = 4           # output lines kept in `error`
# The smallest field an index can solve: SCALE_L / CAN_SOLVE_FRACTION (see can_solve).
CAN_SOLVE_FRACTION = 0.8

log = logs.get(__name__)


@dataclass
class SolveFieldResult:
    """What one solve-field run gave: `wcs` when solved, else why not in `error`."""

    wcs: WCS | None                 # None when not solved
    seconds: float                  # wall clock of the whole call
    error: str | None               # why not solved; None when solved
    command: list[str] = field(default_factory=list)  # the argument list run ([] if none)

    @property
    def solved(self) -> bool:
        return self.wcs is not None


def available() -> bool:
    """Whether `solve-field` is on PATH (checked at every call: PATH may change)."""
    return shutil.which(SOLVE_FIELD) is not None


# ---------------------------------------------------------------------------------------------
# index files

_SCALE_CACHE: dict[tuple[str, int, int], tuple[float, float] | None] = {}
_SCALE_LOCK = threading.Lock()


def _index_scale(path: Path) -> tuple[float, float] | None:
    """(SCALE_L, SCALE_U) of an astrometry.net index file in arcmin, or None if the
    file is not one (or cannot be read). Cached by (path, size, mtime)."""
    try:
        st = path.stat()
    except OSError:
        return None
    key = (str(path), st.st_size, st.st_mtime_ns)
    with _SCALE_LOCK:
        if key in _SCALE_CACHE:
            return _SCALE_CACHE[key]
    scale = None
    try:
        with open(path, "rb") as fh:
            if fh.read(9) == b"SIMPLE  =":
                fh.seek(0)
                header = fits.Header.fromfile(fh)
                low, high = header.get("SCALE_L"), header.get("SCALE_U")
                if isinstance(low, (int, float)) and isinstance(high, (int, float)):
                    scale = (float(low) * RAD_TO_ARCMIN, float(high) * RAD_TO_ARCMIN)
    except (OSError, ValueError, EOFError):
        scale = None
    with _SCALE_LOCK:
        _SCALE_CACHE[key] = scale
    return scale


def _scan_index_dirs(index_dirs: Iterable[str | os.PathLike]
                     ) -> tuple[list[tuple[Path, tuple[float, float]]], list[str]]:
    """Index files found as astrometry.net's `autoindex` would (every file directly in
    each folder whose primary header has SCALE_L/SCALE_U), and one problem per folder
    that gave none ('/x: no such folder', ...)."""
    found: list[tuple[Path, tuple[float, float]]] = []
    problems: list[str] = []
    for folder in index_dirs:
        folder = Path(folder).expanduser()
        try:
            entries = sorted(p for p in folder.iterdir() if p.is_file())
        except FileNotFoundError:
            problems.append(f"{folder}: no such folder")
            continue
        except NotADirectoryError:
            problems.append(f"{folder}: not a folder")
            continue
        except OSError as exc:
            problems.append(f"{folder}: cannot be read ({exc.strerror})")
            continue
        n = len(found)
        for path in entries:
            if not os.access(path, os.R_OK):
                continue
            scale = _index_scale(path)
            if scale is not None:
                found.append((path, scale))
        if len(found) == n:
            problems.append(f"{folder}: no astrometry.net index file")
    return found, problems


def index_scales_arcmin(index_dirs: Iterable[str | os.PathLike]) -> list[tuple[float, float]]:
    """(low, high) quad scale in arcmin of every index file in `index_dirs`, smallest
    first; missing or unreadable folders and non-index files are skipped. Each file's
    header is read once (cached by path, size and modification time)."""
    found, _ = _scan_index_dirs(index_dirs)
    return sorted(scale for _, scale in found)


def can_solve(fov_arcmin: float, index_dirs: Iterable[str | os.PathLike]) -> bool:
    """Whether an installed index has quads small enough for a field `fov_arcmin` wide
    (give the shorter side of the field).

    Rule: some index has SCALE_L <= 0.8 x fov_arcmin, i.e. its smallest quads (the
    distance between a quad's two outer stars) fit in 80% of the field's width, so
    that several whole quads of the index's stars can lie inside the field. With the
    apt Tycho-2 indexes (smallest SCALE_L 22') this needs a field of 27.5' or wider;
    measured: 25' fields did not solve, 31' fields did with a hint (see
    tests/test_solvefield.py and the report of the task that added this module).
    """
    if not fov_arcmin or fov_arcmin <= 0 or not math.isfinite(fov_arcmin):
        return False
    return any(low <= CAN_SOLVE_FRACTION * fov_arcmin
               for low, _ in index_scales_arcmin(index_dirs))


# ---------------------------------------------------------------------------------------------
# solving

def _usable(sources: Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x, y (0-based) and flux of the sources with all three finite (without a flux
    column, a decreasing flux that keeps the given order)."""
    if len(sources) == 0:
        return np.empty(0), np.empty(0), np.empty(0)
    x = np.asarray(sources["x"], dtype=np.float64)
    y = np.asarray(sources["y"], dtype=np.float64)
    flux = (np.asarray(sources["flux"], dtype=np.float64) if "flux" in sources.colnames
            else np.arange(len(x), 0, -1, dtype=np.float64))   # keep the given order
    good = np.isfinite(x) & np.isfinite(y) & np.isfinite(flux)
    return x[good], y[good], flux[good]


def _write_xylist(path: Path, x: np.ndarray, y: np.ndarray, flux: np.ndarray,
                  shape: tuple[int, int], max_sources: int) -> int:
    """X, Y (FITS 1-based) and FLUX of the `max_sources` brightest sources."""
    order = np.argsort(-flux, kind="stable")[:max(0, int(max_sources))]
    cols = [fits.Column(name="X", format="D", array=x[order] + 1.0),
            fits.Column(name="Y", format="D", array=y[order] + 1.0),
            fits.Column(name="FLUX", format="D", array=flux[order])]
    hdu = fits.BinTableHDU.from_columns(cols)
    ny, nx = shape
    hdu.header["IMAGEW"] = (int(nx), "image width (px)")
    hdu.header["IMAGEH"] = (int(ny), "image height (px)")
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path)
    return len(order)


def _write_config(path: Path, index_dirs: Iterable[Path], cpulimit_s: float) -> None:
    # No `inparallel`: on this 2-core machine it made hinted solves no faster and
    # blind ones slower (it loads every index, 290 MB for Tycho-2, before starting).
    lines = [f"add_path {d}" for d in index_dirs]
    lines += ["autoindex", f"cpulimit {math.ceil(cpulimit_s)}"]
    path.write_text("\n".join(lines) + "\n")


def _command(exe: str, tmp: Path, xylist: Path, config: Path, shape: tuple[int, int], *,
             pixscale_arcsec, scale_tolerance, ra_deg, dec_deg, radius_deg, cpulimit_s,
             tweak_order) -> list[str]:
    ny, nx = shape
    out = lambda suffix: str(tmp / f"field.{suffix}")  # noqa: E731
    cmd = [exe, str(xylist), "--config", str(config),
           "--width", str(int(nx)), "--height", str(int(ny)),
           "--x-column", "X", "--y-column", "Y",
           "--cpulimit", str(math.ceil(cpulimit_s)),
           "--no-plots", "--overwrite",
           "--dir", str(tmp), "--out", "field", "--temp-dir", str(tmp),
           "--no-remove-lines", "--uniformize", "0",
           "--crpix-center"]
    if tweak_order and tweak_order > 0:
        cmd += ["--tweak-order", str(int(tweak_order))]
    else:
        cmd += ["--no-tweak"]
    if pixscale_arcsec is not None:
        lo = pixscale_arcsec * (1.0 - scale_tolerance)
        hi = pixscale_arcsec * (1.0 + scale_tolerance)
        cmd += ["--scale-units", "arcsecperpix", "--scale-low", f"{lo:.6g}",
                "--scale-high", f"{hi:.6g}"]
    if ra_deg is not None and dec_deg is not None:
        cmd += ["--ra", f"{float(ra_deg) % 360.0:.8f}", "--dec", f"{float(dec_deg):.8f}"]
        if radius_deg is not None:
            cmd += ["--radius", f"{float(radius_deg):.6g}"]
    # every output file named explicitly ("none": not written), all inside tmp
    cmd += ["--wcs", out("wcs"), "--solved", out("solved"), "--axy", out("axy"),
            "--match", "none", "--rdls", "none", "--corr", "none", "--index-xyls", "none",
            "--new-fits", "none"]
    return cmd


def _tail(output: str, n: int = TAIL_LINES) -> str:
    """The last `n` informative lines of solve-field's output, joined by ' | '."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower() or "fail" in ln.lower()]
    picked = errors[-n:] if errors else lines[-n:]
    return " | ".join(picked)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
# /proc/<pid>/task/<tid>/children lists a thread's children (Linux >= 3.5 with
# CONFIG_PROC_CHILDREN); without it the whole of /proc is scanned for the group.
_PROC_CHILDREN = Path(f"/proc/self/task/{os.getpid()}/children").exists()


def _cpu_ticks(pid: int | str) -> tuple[int, int]:
    """(process group, CPU clock ticks: user + system, with those of waited-for
    children) of a live process, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat", "rb") as fh:
        stat = fh.read()
    # after "pid (comm) ": state ppid pgrp ... utime stime cutime cstime (fields 3-17)
    fields = stat[stat.rfind(b")") + 2:].split()
    return int(fields[2]), sum(int(v) for v in fields[11:15])


def _group_cpu_s(pgid: int) -> float | None:
    """CPU seconds used so far by the live processes of the group that process
    `pgid` leads (solve-field, its shell, astrometry-engine), from /proc: its
    process tree when the kernel lists children, else every process in /proc;
    None without /proc."""
    ticks = 0
    if _PROC_CHILDREN:
        todo, seen = [pgid], set()
        while todo:
            pid = todo.pop()
            if pid in seen:
                continue
            seen.add(pid)
            try:
                group, used = _cpu_ticks(pid)
                if group == pgid:
                    ticks += used
                for task in os.listdir(f"/proc/{pid}/task"):
                    with open(f"/proc/{pid}/task/{task}/children", "rb") as fh:
                        todo.extend(int(c) for c in fh.read().split())
            except (OSError, ValueError, IndexError):   # gone meanwhile, or unreadable
                continue
        return ticks / _CLK_TCK
    try:
        pids = [e for e in os.listdir("/proc") if e.isdigit()]
    except OSError:
        return None
    for pid in pids:
        try:
            group, used = _cpu_ticks(pid)
        except (OSError, ValueError, IndexError):
            continue
        if group == pgid:
            ticks += used
    return ticks / _CLK_TCK


def _run(cmd: list[str], timeout_s: float, cpulimit_s: float, env: dict,
         log_path: Path) -> tuple[int | None, str, str | None]:
    """(exit status, output, limit) of `cmd` run in its own process group with its
    output in `log_path`. When the group has used `cpulimit_s` of CPU time or
    `timeout_s` of wall clock it is killed: status None, limit 'cpulimit' or
    'timeout' (else None). The group is killed on any exit from here, so nothing
    (astrometry-engine included) outlives the call."""
    deadline = time.monotonic() + max(0.0, timeout_s)
    with open(log_path, "wb") as log_fh:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log_fh,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)
    limit = None
    try:
        while True:
            try:
                proc.wait(timeout=max(0.0, min(POLL_S, deadline - time.monotonic())))
                break
            except subprocess.TimeoutExpired:
                pass
            if time.monotonic() >= deadline:
                limit = "timeout"
            else:
                cpu = _group_cpu_s(proc.pid)
                if cpu is not None and cpu > cpulimit_s:
                    limit = "cpulimit"
            if limit:
                _kill_group(proc)
                try:
                    proc.wait(timeout=KILL_WAIT_S)
                except subprocess.TimeoutExpired:
                    pass
                break
    finally:
        # After a normal exit too: a crashed solve-field can leave astrometry-engine behind.
        _kill_group(proc)
        if proc.poll() is None:   # interrupted (KeyboardInterrupt, ...): leave nothing behind
            proc.wait()
    try:
        output = log_path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        output = ""
    return (None if limit else proc.returncode), output, limit


def _read_wcs(path: Path, shape: tuple[int, int]) -> WCS:
    header = fits.getheader(path)
    for key in ("NAXIS", "NAXIS1", "NAXIS2"):   # a header-only HDU says NAXIS = 0
        header.remove(key, ignore_missing=True)
    sip_order = max(int(header.get("A_ORDER", 0)), int(header.get("B_ORDER", 0)))
    if sip_order < 2:  # order-1 "SIP" is all zeros after a linear tweak: plain TAN
        for key in list(header.keys()):
            if key.split("_")[0] in ("A", "B", "AP", "BP") and "_" in key:
                del header[key]
        header["CTYPE1"], header["CTYPE2"] = "RA---TAN", "DEC--TAN"
    wcs = WCS(header, relax=True)
    ny, nx = shape
    wcs.pixel_shape = (int(nx), int(ny))
    return wcs


def solve_field(sources: Table, shape: tuple[int, int], *, pixscale_arcsec: float | None,
                scale_tolerance: float = 0.05, ra_deg: float | None = None,
                dec_deg: float | None = None, radius_deg: float | None = None,
                index_dirs: Iterable[str | os.PathLike], cpulimit_s: float, timeout_s: float,
                tweak_order: int = 1, max_sources: int = 300) -> SolveFieldResult:
    """Solve a frame of `shape` (ny, nx) from its `sources` (columns x, y 0-based as
    sep gives them, and flux; brightest first or not), with solve-field.

    Hints: `pixscale_arcsec` +- `scale_tolerance` (a fraction; None: any scale), and
    the pointing `ra_deg`, `dec_deg` within `radius_deg` (all None: blind). Solving
    stops after `cpulimit_s` of CPU time (of solve-field and astrometry-engine
    together) or `timeout_s` of wall clock, whichever comes first. Sources with a
    non-finite x, y or flux are ignored. Never raises for anything the frame,
    the installation or solve-field does: the result says what went wrong.
    """
    t0 = time.monotonic()
    cmd: list[str] = []

    def result(wcs: WCS | None, error: str | None) -> SolveFieldResult:
        res = SolveFieldResult(wcs, time.monotonic() - t0, error, cmd)
        log.debug("solve-field", solved=wcs is not None, error=error,
                  seconds=round(res.seconds, 2), command=" ".join(cmd))
        return res

    exe = shutil.which(SOLVE_FIELD)
    if exe is None:
        return result(None, "solve-field not installed (not on PATH)")
    if (ra_deg is None) != (dec_deg is None):
        raise ValueError("give both ra_deg and dec_deg, or neither")
    index_dirs = [Path(d).expanduser() for d in index_dirs]
    found, problems = _scan_index_dirs(index_dirs)
    if not found:
        where = "; ".join(problems) if problems else "no index folder given"
        return result(None, f"no astrometry.net index files ({where})")
    usable = [d for d in index_dirs if any(p.parent == d for p, _ in found)]
    if problems:
        log.warning("astrometry index folders skipped", problems=problems)
    x, y, flux = _usable(sources)
    if len(x) < MIN_SOURCES:
        return result(None, f"too few sources to solve ({len(x)} with finite x, y and flux)")

    try:
        tmpdir = tempfile.TemporaryDirectory(prefix="gppy-solvefield-")
    except OSError as exc:
        return result(None, f"cannot create a temporary folder ({exc})")
    with tmpdir as name:
        tmp = Path(name)
        xylist, config = tmp / "sources.xyls", tmp / "astrometry.cfg"
        try:
            _write_xylist(xylist, x, y, flux, shape, max_sources)
            _write_config(config, usable, cpulimit_s)
        except OSError as exc:
            return result(None, f"cannot write the source list ({exc})")
        cmd = _command(exe, tmp, xylist, config, shape, pixscale_arcsec=pixscale_arcsec,
                       scale_tolerance=scale_tolerance, ra_deg=ra_deg, dec_deg=dec_deg,
                       radius_deg=radius_deg, cpulimit_s=cpulimit_s, tweak_order=tweak_order)
        env = dict(os.environ, TMPDIR=str(tmp))
        no_solution_cpu = f"no solution (cpulimit {cpulimit_s:g} s reached)"
        try:
            status, output, limit = _run(cmd, timeout_s - (time.monotonic() - t0), cpulimit_s,
                                         env, tmp / "solve-field.log")
        except OSError as exc:   # not executable, vanished since `which`, ...
            return result(None, f"solve-field could not be run ({exc})")
        if limit == "timeout":
            return result(None, f"timed out after {timeout_s:g} s")
        if limit == "cpulimit":
            return result(None, no_solution_cpu)
        wcs_file = tmp / "field.wcs"
        if status != 0:
            how = (f"killed by signal {-status}" if status < 0 else f"exited with status {status}")
            return result(None, f"solve-field {how}: {_tail(output)}")
        if not (tmp / "field.solved").exists() or not wcs_file.exists():
            if "cpu time limit" in output.lower() or "cpu limit" in output.lower():
                return result(None, no_solution_cpu)
            return result(None, "no solution")
        try:
            wcs = _read_wcs(wcs_file, shape)
        except (OSError, ValueError, KeyError) as exc:
            return result(None, f"unreadable WCS from solve-field ({exc})")
        return result(wcs, None)
