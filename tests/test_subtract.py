"""Image subtraction: the built-in Alard-Lupton engine, the HOTPANTS wrapper and
`gppy subtract`.

* A synthetic pair (Moffat PSFs of different widths, betas and shapes, each
  varying differently across the frame; the science broader, so the reference is
  convolved): QA targets and a transient's flux.
* HOTPANTS: the argument list keeps the legacy roles, a missing program is a clear
  error, outputs of a stand-in program are parsed, a time-out stops the process
  group; a real run only when the program is installed.
* The Bosque Alegre pair (real, registered, 74 s apart, no transient): the residual
  figures and the few S/N >= 5 blobs.
* A simulated LOAO two-night pair (1024 px, pipeline Calib files; the reference
  resampled onto the science grid; the science is the sharper here, so it is the
  one convolved): QA targets, a truth transient at S/N ~ 20 at its flux; the same
  against the mean of two first-night frames, and against a gppy.transient.stack
  stack of them; the CLI's --json line.

Run with -s to see the figures.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS

from conftest import real_data, simulate_nights, wait_for
from gppy.errors import InputError
from gppy.sim.psf import PSF, render_points
from gppy.transient import hotpants as hp
from gppy.transient.subtract import NO_DATA, Subtraction, qa_cards, subtract

BLANK_RANGE = (0.95, 1.10)      # normalised residual std on blank sky (issue 7 item 4)
STARS_MAX = 1.3                 # ... around stars


def _print_qa(label: str, qa: dict) -> None:
    keys = ("convolved", "fwhm_sci_px", "fwhm_ref_px", "n_stamps_used", "spatial_degree",
            "resid_std_blank", "resid_std_stars", "resid_std_stars_p90", "n_qa_stars",
            "flux_ratio", "flux_ratio_expected", "flux_ratio_source", "n_blobs",
            "n_negative", "n_dipoles", "n_candidates", "n_variables", "n_bogus",
            "aperture_noise_factor", "seconds")
    print(f"\n{label}: " + ", ".join(f"{k} {qa.get(k)}" for k in keys))


def psf_flux(diff, noise, mask, psf, x: float, y: float, fwhm_px: float,
             psf_at=None) -> tuple[float, float]:
    """(flux, error) of a point source at (x, y) fitted over the unmasked pixels within
    2 FWHM with `psf` (a PSF, its shape taken at `psf_at`, default (x, y)), or with the
    mean of several: `psf` a list of PSFs and `psf_at` the list of their positions."""
    psfs = psf if isinstance(psf, list) else [psf]
    places = psf_at if isinstance(psf_at, list) else [psf_at] * len(psfs)
    r = int(math.ceil(2 * fwhm_px))
    xi, yi = int(round(x)), int(round(y))
    sl = (slice(yi - r, yi + r + 1), slice(xi - r, xi + r + 1))
    model = np.zeros((2 * r + 1, 2 * r + 1))
    for one, at in zip(psfs, places):
        ax, ay = at if at is not None else (x, y)
        # rendered on a stamp whose origin is (xi - r, yi - r): the optical axis moves so
        # that the shape there is the one at (ax, ay) of its frame
        moved = PSF(**(one.as_dict() | {"axis_x": one.axis_x - (ax - x) - (xi - r),
                                        "axis_y": one.axis_y - (ay - y) - (yi - r)}))
        render_points(model, moved, [x - (xi - r)], [y - (yi - r)], [1.0 / len(psfs)])
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    use = (mask[sl] == 0) & (xx ** 2 + yy ** 2 <= r * r) & np.isfinite(noise[sl])
    w = 1.0 / noise[sl][use].astype(float) ** 2
    p, d = model[use], diff[sl][use].astype(float)
    norm = np.sum(p * p * w)
    return float(np.sum(p * d * w) / norm), float(1.0 / math.sqrt(norm))


# ------------------------------------------------------------------------ synthetic pair

SHAPE = (512, 512)
TRANSIENT = (301.3, 203.6, 6000.0)     # x, y, e- in the science frame


def _psf(fwhm, beta, ellipticity, theta, growth) -> PSF:
    ny, nx = SHAPE
    return PSF(fwhm_px=fwhm, beta=beta, ellipticity=ellipticity, theta_deg=theta,
               field_growth=growth, field_ellipticity=0.04, axis_x=(nx - 1) / 2 + 40,
               axis_y=(ny - 1) / 2 - 30, norm_radius_px=0.5 * math.hypot(nx, ny))


@pytest.fixture(scope="module")
def synthetic():
    rng = np.random.default_rng(11)
    ny, nx = SHAPE
    n = 450
    x, y = rng.uniform(-10, nx + 10, n), rng.uniform(-10, ny + 10, n)
    flux = 10 ** rng.uniform(2.8, 5.6, n)
    sky, read_noise = 900.0, 6.0
    ref_psf = _psf(2.7, 3.6, 0.03, 20.0, 0.10)
    sci_psf = _psf(3.5, 2.9, 0.07, 115.0, 0.30)
    gy, gx = np.mgrid[0:ny, 0:nx]

    def frame(psf, scale, sky_level, slope, extra=None):
        img = np.zeros(SHAPE)
        render_points(img, psf, x, y, flux * scale)
        if extra is not None:
            render_points(img, psf, *extra)
        model = img + sky_level * (1 + slope * (gx - nx / 2) / nx)
        data = rng.poisson(model) + rng.normal(0.0, read_noise, SHAPE)
        err = np.sqrt(model + read_noise ** 2)
        mask = np.zeros(SHAPE, np.uint16)
        return data.astype(np.float32), mask, err.astype(np.float32)

    tx, ty, tflux = TRANSIENT
    sci = frame(sci_psf, 0.9, sky * 1.2, 0.05, ([tx], [ty], [tflux]))
    ref = frame(ref_psf, 1.0, sky, -0.03)
    sci[1][100:103, 50:52] = 1          # a few bad pixels (hot) in each
    ref[1][400:460, 200] = 4            # a bad column segment
    return sci, ref, sci_psf, ref_psf


def test_builtin_engine_on_a_synthetic_pair(synthetic):
    (s, sm, se), (r, rm, re_), sci_psf, _ = synthetic
    res = subtract(s, r, sci_mask=sm, ref_mask=rm, sci_err=se, ref_err=re_,
                   flux_ratio_expected=0.9)
    _print_qa("synthetic 512 px", res.qa)
    assert isinstance(res, Subtraction) and res.engine == "builtin"
    assert res.convolved == "ref"                        # the sharper one
    assert res.diff.shape == res.noise.shape == res.mask.shape == SHAPE
    assert res.diff.dtype == np.float32 and res.mask.dtype == np.uint16
    assert BLANK_RANGE[0] <= res.qa["resid_std_blank"] <= BLANK_RANGE[1]
    assert res.qa["resid_std_stars"] <= STARS_MAX
    # the science's Moffat has the lower beta: ~1 % of its light lies in wings beyond the
    # kernel's reach, and the kernel sum falls short of the total flux ratio by that much
    assert res.qa["flux_ratio"] == pytest.approx(0.9, rel=0.02)
    assert abs(res.qa["flux_ratio_offset"]) < 0.02 and res.qa["flux_ratio_source"] == "zp"
    # what the kernel cannot move, the stamps' background took up: without the sky
    # fitted again on blank sky, its mean was -0.043 sigma
    assert abs(res.qa["resid_mean_blank"]) < 0.01 and res.qa["residual_sky_e"] < 0
    assert res.qa["n_dipoles"] == 0 and res.qa["n_blobs"] <= 3
    # the kernel: an image summing to the flux ratio; masks grown, border NO_DATA
    assert res.kernel.ndim == 2 and res.kernel.shape[0] % 2 == 1
    assert res.kernel.sum() == pytest.approx(res.qa["kernel_sum"], rel=1e-4)
    assert (res.mask[400:460, 199:202] & 4).all() and (res.mask[101, 51] & 1)
    h = res.kernel_info["half_width_px"]
    assert (res.mask[:h] & NO_DATA).all() and np.isinf(res.noise[:h]).all()
    # the transient: at its place, at its flux
    tx, ty, tflux = TRANSIENT
    snr = res.snr()
    iy, ix = np.unravel_index(np.argmax(snr[int(ty) - 3:int(ty) + 4, int(tx) - 3:int(tx) + 4]),
                              (7, 7))
    assert abs(ix - 3 + int(tx) - tx) <= 1.5 and abs(iy - 3 + int(ty) - ty) <= 1.5
    flux, err = psf_flux(res.diff, res.noise, res.mask, sci_psf, tx, ty, 3.5)
    print(f"transient: {flux:.0f} +- {err:.0f} e- (true {tflux:.0f}, S/N {flux / err:.1f})")
    assert 12 < flux / err < 40
    assert flux == pytest.approx(tflux, rel=0.10)
    assert res.qa["n_blobs"] >= 1
    # the header cards
    cards = {k: v for k, v, _ in qa_cards(res.qa)}
    assert cards["SUBENGIN"] == "builtin" and cards["SUBCONV"] == "ref"
    assert all(len(k) <= 8 for k in cards)


def test_inputs_are_checked(synthetic):
    (s, sm, se), (r, rm, re_), _, _ = synthetic
    with pytest.raises(InputError, match="same pixel grid"):
        subtract(s, r[:-1], sci_err=se, ref_err=re_[:-1])
    with pytest.raises(InputError, match="unknown subtraction engine"):
        subtract(s, r, sci_err=se, ref_err=re_, engine="zogy")
    with pytest.raises(InputError, match="unknown option"):
        subtract(s, r, sci_err=se, ref_err=re_, kernel_size=3)
    with pytest.raises(InputError, match="too few sources|clean stars"):
        flat = np.full(SHAPE, 100.0, np.float32)
        subtract(flat, flat, sci_err=np.full(SHAPE, 10.0), ref_err=np.full(SHAPE, 10.0))


# ----------------------------------------------------------------------------- hotpants

def test_hotpants_arguments_keep_the_legacy_roles(tmp_path):
    files = {k: tmp_path / f"{k}.fits" for k in ("sci", "ref", "sci_noise", "ref_noise",
                                                 "sci_mask", "ref_mask", "diff", "noise",
                                                 "mask", "conv")}
    args = hp.hotpants_args("/opt/bin/hotpants", files, sci_limits=(-500.0, 2e5),
                            ref_limits=(-400.0, 3e5), kernel_half_width=12,
                            gaussians=[(6, 0.7), (4, 1.5), (2, 3.0)], regions=(2, 2))
    assert args[0] == "/opt/bin/hotpants" and all(isinstance(a, str) for a in args)

    def value(flag, n=1):
        i = args.index(flag)
        return args[i + 1] if n == 1 else args[i + 1:i + 1 + n]

    # the legacy call: science = image, reference = template, template convolved,
    # normalised to the image; outputs hd (difference) and hc (convolved)
    assert value("-inim") == str(files["sci"]) and value("-tmplim") == str(files["ref"])
    assert value("-c") == "t" and value("-n") == "i" and value("-v") == "0"
    assert value("-outim") == str(files["diff"]) and value("-oci") == str(files["conv"])
    assert value("-ini") == str(files["sci_noise"]) and value("-tni") == str(files["ref_noise"])
    assert value("-imi") == str(files["sci_mask"]) and value("-tmi") == str(files["ref_mask"])
    assert value("-oni") == str(files["noise"]) and value("-omi") == str(files["mask"])
    assert float(value("-il")) == -500 and float(value("-iu")) == 2e5
    assert float(value("-tl")) == -400 and float(value("-tu")) == 3e5
    assert value("-r") == "12" and value("-ng", 7) == ["3", "6", "0.7", "4", "1.5", "2", "3"]
    assert value("-nrx") == "2" and value("-nry") == "2"
    other = hp.hotpants_args("hotpants", {"sci": "a.fits", "ref": "b.fits", "diff": "d.fits"},
                             sci_limits=(0, 1), ref_limits=(0, 1), convolve="sci")
    assert other[other.index("-c") + 1] == "i" and "-oni" not in other
    assert "-c" not in hp.hotpants_args("hotpants", {"sci": "a", "ref": "b", "diff": "d"},
                                        sci_limits=(0, 1), ref_limits=(0, 1), convolve="auto")
    with pytest.raises(InputError):
        hp.hotpants_args("hotpants", files, sci_limits=(0, 1), ref_limits=(0, 1),
                         convolve="both")


def test_missing_hotpants_is_a_clear_error(synthetic, tmp_path, monkeypatch):
    (s, sm, se), (r, rm, re_), _, _ = synthetic
    monkeypatch.setenv("PATH", str(tmp_path))          # nothing there
    monkeypatch.delenv(hp.ENV_BINARY, raising=False)
    with pytest.raises(hp.HotpantsMissing, match="not on PATH") as info:
        subtract(s, r, sci_mask=sm, ref_mask=rm, sci_err=se, ref_err=re_, engine="hotpants")
    assert "hotpants" in str(info.value) and "builtin" in str(info.value)
    assert isinstance(info.value, InputError)


FAKE_HOTPANTS = """\
#!{python}
# A stand-in for HOTPANTS: difference = image - template (no convolution), noise in
# quadrature, mask = either mask; the header cards HOTPANTS writes.
import json, sys
import numpy as np
from astropy.io import fits
a = sys.argv[1:]
opt = {{a[i]: a[i + 1] for i in range(len(a) - 1) if a[i].startswith("-")}}
json.dump(a, open("{log}", "w"))
im, tm = fits.getdata(opt["-inim"]), fits.getdata(opt["-tmplim"])
ni, nt = fits.getdata(opt["-ini"]), fits.getdata(opt["-tni"])
mi, mt = fits.getdata(opt["-imi"]), fits.getdata(opt["-tmi"])
h = fits.Header({{"CONVOL00": "TEMPLATE", "KSUM00": 0.98765, "NREGION": 1, "PHOTNORM": "i"}})
fits.PrimaryHDU((im - tm).astype(np.float32), h).writeto(opt["-outim"])
fits.PrimaryHDU(np.hypot(ni, nt).astype(np.float32)).writeto(opt["-oni"])
fits.PrimaryHDU(((mi != 0) | (mt != 0)).astype(np.int16)).writeto(opt["-omi"])
"""


def test_hotpants_outputs_are_parsed(synthetic, tmp_path):
    (s, sm, se), _, _, _ = synthetic
    # the same scene twice, with independent noise: a fake without convolution suffices
    rng = np.random.default_rng(5)
    r = (s + rng.normal(0.0, 1.0, s.shape) * se).astype(np.float32)
    fake, log = tmp_path / "hotpants", tmp_path / "argv.json"
    fake.write_text(FAKE_HOTPANTS.format(python=sys.executable, log=log))
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    ref_mask = np.zeros(s.shape, np.uint16)
    ref_mask[10:12, 20:22] = 8
    half = (se / np.sqrt(2)).astype(np.float32)      # s - r has the noise se: share it
    res = subtract(s, r, sci_mask=sm, ref_mask=ref_mask, sci_err=half, ref_err=half,
                   engine="hotpants", binary=str(fake), timeout_s=120)
    _print_qa("stand-in hotpants", res.qa)
    argv = json.loads(log.read_text())
    assert argv[argv.index("-c") + 1] == "t" and argv[argv.index("-n") + 1] == "i"
    assert res.engine == "hotpants" and res.convolved == "ref" and res.kernel is None
    assert res.kernel_info["kernel_sum"] == pytest.approx(0.98765)
    assert res.qa["flux_ratio"] == pytest.approx(0.98765)
    good = res.mask == 0
    assert np.allclose(res.diff[good], (s - r)[good], atol=1e-2)
    assert np.allclose(res.noise[good], se[good], rtol=1e-5)
    assert (res.mask[10:12, 20:22] & 8).all()
    assert 0.95 <= res.qa["resid_std_blank"] <= 1.05


def _live_members(pgid: int) -> list[int]:
    """Processes of group `pgid` still running (zombies awaiting their reaper excluded)."""
    pids = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(stat_file.parent.name))
    return pids


def test_hotpants_timeout_stops_its_process_group(tmp_path):
    fake = tmp_path / "slow"
    fake.write_text("#!/bin/sh\nsleep 60 &\nsleep 60\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    with pytest.raises(hp.HotpantsError, match="timed out") as info:
        hp.run_command([str(fake)], tmp_path, timeout_s=1.0)
    pgid = int(re.search(r"process group (\d+)", str(info.value)).group(1))
    wait_for(lambda: not _live_members(pgid), 5.0, f"process group {pgid} to end")
    failing = tmp_path / "failing"
    failing.write_text("#!/bin/sh\necho 'bad kernel fit' >&2\nexit 3\n")
    failing.chmod(failing.stat().st_mode | stat.S_IXUSR)
    with pytest.raises(hp.HotpantsError, match="status 3: bad kernel fit"):
        hp.run_command([str(failing)], tmp_path, timeout_s=10.0)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("hotpants") is None, reason="HOTPANTS is not installed")
def test_real_hotpants_run(synthetic):
    (s, sm, se), (r, rm, re_), _, _ = synthetic
    res = subtract(s, r, sci_mask=sm, ref_mask=rm, sci_err=se, ref_err=re_, engine="hotpants",
                   flux_ratio_expected=0.9)
    _print_qa("hotpants", res.qa)
    assert res.convolved == "ref"
    assert res.qa["flux_ratio"] == pytest.approx(0.9, rel=0.02)
    assert res.qa["resid_std_blank"] < 1.3


# -------------------------------------------------------------------- real: Bosque Alegre

def test_bosque_alegre_pair_leaves_noise(tmp_path):
    """Two registered 60 s frames, 74 s apart: no transient. Raw ADU without ERR or
    GAIN: 1.5 e-/ADU (the manifest: 1-2), ERR estimated from the image."""
    from gppy.transient.command_subtract import subtract_files

    folder = real_data("bosque_alegre_pair")
    row = subtract_files(folder / "aligned_eso085-030-005.fit",
                         folder / "aligned_eso085-030-004.fit", gain=1.5, out=tmp_path)
    _print_qa("Bosque Alegre pair", row)
    assert not row["resampled"]
    assert 0.85 <= row["resid_std_blank"] <= 1.15
    assert row["resid_std_stars"] <= 1.6
    assert row["n_blobs"] <= 5 and row["n_negative"] <= 8
    assert row["flux_ratio"] == pytest.approx(row["flux_ratio_stars"], rel=0.02)
    with fits.open(row["diff"]) as hdul:
        assert [h.name for h in hdul] == ["PRIMARY", "MASK", "ERR", "KERNEL"]
        assert (hdul["MASK"].data & 8).any()             # the saturated stars
        assert hdul[0].header["SUBNCAND"] == row["n_candidates"]
    # issue 7: the candidate list is empty or nearly so
    cands = Table.read(row["candidates"])
    print(f"Bosque Alegre pair: {row['n_candidates']} candidates, {row['n_variables']} "
          f"variable stars, {row['n_bogus']} rejected detections")
    for c in cands:
        print(f"  {c['cls']} x {c['x']:.1f} y {c['y']:.1f} S/N {c['snr']:.1f} {c['reasons']}")
    assert len(cands) == row["n_candidates"] + row["n_variables"] + row["n_bogus"]
    assert row["n_candidates"] <= 1


# ------------------------------------------------------------------ simulated LOAO nights

@pytest.fixture(scope="module")
def loao(tmp_path_factory):
    from gppy.daemon.routine import process_night
    from gppy.obsconfig.loader import load_profile
    from gppy.settings import AstrometrySettings, DataDir

    out, truths = simulate_nights(tmp_path_factory.mktemp("loao-sub"), "LOAO", 1024, nights=2,
                                  nscience=2, seed=7)
    data = DataDir(out / "data")
    settings = AstrometrySettings(refcat=str(out / "refcat.ecsv"))
    calibs = []
    for truth in truths:
        result = process_night(load_profile("LOAO"), out / truth.dir.name, data, ncores=2,
                               settings=settings, until="phot")
        calibs.append(sorted(p for p in result.out_dir.glob("Calib-*-R-*.fits")  # frames,
                             if not p.name.endswith((".cat.fits", "-com.fits"))))  # no stacks
    return truths, calibs


def _read(path: Path):
    with fits.open(path) as hdul:
        return (hdul[0].header, hdul[0].data.astype(np.float32),
                hdul["MASK"].data.astype(np.uint16), hdul["ERR"].data.astype(np.float32))


def _onto(path: Path, header_out, shape):
    from gppy.transient.resample import resample

    h, d, m, e = _read(path)
    d, m, e, _ = resample(d, m, e, WCS(h), WCS(header_out), shape)
    return h, d, m, e


def _check_transients(res: Subtraction, sci_header, ref_files: list[str], truths,
                      label: str) -> None:
    """The truth transient with the predicted S/N nearest 20: at its place and flux."""
    first, second = truths
    frame = second.frame(sci_header["RAWFILE"])
    t = second.transients[np.isfinite(second.transients["mag_R"])]
    x, y = second.wcs(frame["file"]).all_world2pix(t["ra"], t["dec"], 0)
    true_flux = frame["exptime_s"] * 10 ** (-0.4 * (np.asarray(t["mag_R"]) - frame["zp_e_mag"]))
    # the difference's PSF is that of the image not convolved (a mean stack: the mean PSF)
    if res.convolved == "ref":
        psfs, fwhm = [PSF(**frame["psf"])], frame["psf"]["fwhm_px"]
    else:
        psfs = [PSF(**first.frame(f)["psf"]) for f in ref_files]
        fwhm = max(p.fwhm_px for p in psfs)
    rows = []
    ny, nx = res.diff.shape
    for i in range(len(t)):
        if not (30 < x[i] < nx - 30 and 30 < y[i] < ny - 30):
            continue
        places = None
        if res.convolved == "sci":
            places = [tuple(first.wcs(f).all_world2pix([[t["ra"][i], t["dec"][i]]], 0)[0])
                      for f in ref_files]
        flux, err = psf_flux(res.diff, res.noise, res.mask, psfs, x[i], y[i], fwhm, places)
        rows.append((true_flux[i] / err, flux, err, true_flux[i], x[i], y[i], t["kind"][i]))
        print(f"{label}: transient {t['id'][i]} ({t['kind'][i]}) at {x[i]:.1f},{y[i]:.1f}: "
              f"{flux:.0f} +- {err:.0f} e- vs {true_flux[i]:.0f} (S/N {true_flux[i] / err:.1f})")
    assert rows
    snr, flux, err, truth_flux, tx, ty, kind = min(rows, key=lambda r: abs(r[0] - 20))
    assert 10 <= snr <= 40
    assert flux == pytest.approx(truth_flux, rel=0.10)
    s = res.snr()
    box = s[int(round(ty)) - 2:int(round(ty)) + 3, int(round(tx)) - 2:int(round(tx)) + 3]
    assert box.max() >= 5.0
    iy, ix = np.unravel_index(np.argmax(box), box.shape)
    assert math.hypot(ix - 2 + round(tx) - tx, iy - 2 + round(ty) - ty) <= 1.6


@pytest.mark.slow
def test_simulated_pair_meets_the_targets(loao):
    truths, (refs, scis) = loao
    hs, s, sm, se = _read(scis[0])
    hr, r, rm, re_ = _onto(refs[0], hs, s.shape)
    first, second = truths
    fs, fr = second.frame(hs["RAWFILE"]), first.frame(hr["RAWFILE"])
    print(f"\nscience {fs['file']} FWHM {fs['fwhm_arcsec']:.2f}\", reference {fr['file']} "
          f"FWHM {fr['fwhm_arcsec']:.2f}\"")
    assert abs(fs["fwhm_arcsec"] - fr["fwhm_arcsec"]) > 0.1      # the PSFs differ
    true_ratio = 10 ** (0.4 * (fs["zp_e_mag"] - fr["zp_e_mag"]))
    res = subtract(s, r, sci_mask=sm, ref_mask=rm, sci_err=se, ref_err=re_,
                   flux_ratio_expected=true_ratio)
    _print_qa("LOAO 1024 px, one reference frame", res.qa)
    assert BLANK_RANGE[0] <= res.qa["resid_std_blank"] <= BLANK_RANGE[1]
    assert res.qa["resid_std_stars"] <= STARS_MAX
    assert abs(res.qa["flux_ratio_offset"]) < 0.01
    assert res.qa["n_dipoles"] <= 1
    assert res.qa["seconds"] < 30
    _check_transients(res, hs, [hr["RAWFILE"]], truths, "one reference")


@pytest.mark.slow
def test_simulated_pair_against_a_stack_of_two(loao):
    truths, (refs, scis) = loao
    hs, s, sm, se = _read(scis[0])      # the science of the single-reference test
    parts = [_onto(p, hs, s.shape) for p in refs[:2]]
    ref = np.mean([p[1] for p in parts], axis=0)
    ref_mask = parts[0][2] | parts[1][2]
    ref_err = np.sqrt(parts[0][3] ** 2 + parts[1][3] ** 2) / 2
    res = subtract(s, ref, sci_mask=sm, ref_mask=ref_mask, sci_err=se, ref_err=ref_err)
    _print_qa("LOAO 1024 px, mean of two reference frames", res.qa)
    assert BLANK_RANGE[0] <= res.qa["resid_std_blank"] <= BLANK_RANGE[1]
    assert res.qa["resid_std_stars"] <= STARS_MAX
    assert res.qa["flux_ratio"] == pytest.approx(res.qa["flux_ratio_stars"], rel=0.02)
    _check_transients(res, hs, [p[0]["RAWFILE"] for p in parts], truths, "stack reference")


@pytest.mark.slow
def test_against_a_pipeline_stack(loao, tmp_path):
    """The reference made by gppy.transient.stack (two first-night frames onto the
    science grid, total-flux zero point, 240 s): the expected flux ratio from the
    zero points, no resampling needed."""
    stack_mod = pytest.importorskip("gppy.transient.stack")
    from gppy.transient.command_subtract import subtract_files

    truths, (refs, scis) = loao
    header = fits.getheader(scis[0])
    grid = WCS(header)
    grid.pixel_shape = (header["NAXIS1"], header["NAXIS2"])
    ref = tmp_path / "ref-stack.fits"
    stack_mod.stack(refs[:2], ref, reference_wcs=grid)
    row = subtract_files(scis[0], ref, out=tmp_path)
    _print_qa("LOAO 1024 px, gppy.transient.stack reference", row)
    assert row["resampled"] is False and row["flux_ratio_source"] == "zp"
    assert BLANK_RANGE[0] <= row["resid_std_blank"] <= BLANK_RANGE[1]
    assert row["resid_std_stars"] <= STARS_MAX
    assert abs(row["flux_ratio_offset"]) < 0.03      # the pipeline's zero points: ~0.01 mag
    assert row["n_candidates"] >= 3


def test_candidate_on_a_known_asteroid_is_moving(loao, tmp_path):
    """`difference(movers=...)`: the candidate where SkyBoT puts a known object
    becomes class "moving" (gppy.transient.skybot; here the object is placed on the
    second night's brightest transient)."""
    from gppy.transient.command_subtract import difference
    from gppy.transient.skybot import COLUMNS

    truths, (refs, scis) = loao
    row, pair = difference(scis[0], refs[0], out=tmp_path)
    cands = pair.candidates
    best = cands[cands["cls"] == "candidate"][0]          # the highest S/N
    movers = Table(rows=[("2024 AB", best["ra"], best["dec"] + 1.0 / 3600, 19.5, 0.3, 1.8,
                          "MB>Inner")], names=COLUMNS)
    row, pair = difference(scis[0], refs[0], out=tmp_path, movers=movers)
    on = pair.candidates[np.argmin(np.hypot(pair.candidates["x"] - best["x"],
                                            pair.candidates["y"] - best["y"]))]
    assert on["cls"] == "moving" and on["reasons"] == "skybot:2024 AB"
    assert on["sso_name"] == "2024 AB"
    n_before = int(np.count_nonzero(cands["cls"] == "candidate"))
    assert row["n_moving"] == 1 and row["n_candidates"] == n_before - 1
    written = Table.read(row["candidates"])
    assert list(written["cls"]).count("moving") == 1


@pytest.mark.slow
def test_cli_json_line(loao, gppy_bin, tmp_path):
    truths, (refs, scis) = loao
    proc = subprocess.run([str(gppy_bin), "subtract", str(scis[0]), str(refs[0]), "--json",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"\ngppy subtract --json: {row}")
    for key in ("diff", "engine", "seconds", "resid_std_blank", "resid_std_stars",
                "n_candidates"):
        assert key in row, key
    assert row["engine"] == "builtin" and row["resampled"] is True
    assert Path(row["diff"]) == tmp_path / f"hd-{scis[0].name}"
    assert BLANK_RANGE[0] <= row["resid_std_blank"] <= BLANK_RANGE[1]
    assert row["resid_std_stars"] <= STARS_MAX
    assert row["flux_ratio_source"] == "zp" and abs(row["flux_ratio_offset"]) < 0.03
    assert row["n_candidates"] >= 3                      # the second night's transients
    with fits.open(row["diff"]) as hdul:
        h = hdul[0].header
        assert h["SUBENGIN"] == "builtin" and h["SUBRSBLK"] == pytest.approx(
            row["resid_std_blank"], abs=1e-4)
        assert WCS(h).has_celestial and hdul["ERR"].data.shape == hdul[0].data.shape
    # hotpants absent: a clear error on the JSON line, exit 2
    if shutil.which("hotpants") is None:
        env = dict(os.environ, PATH=str(Path(gppy_bin).parent))
        proc = subprocess.run([str(gppy_bin), "subtract", str(scis[0]), str(refs[0]), "--json",
                               "--engine", "hotpants", "--out", str(tmp_path)],
                              capture_output=True, text=True, timeout=120, env=env)
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        assert proc.returncode == 2 and "not on PATH" in row["error"]
