"""Stacking (gppy.transient.stack, `gppy stack`) of four simulated LOAO frames
(1024 px, R, 120 s each) calibrated, solved and measured by the night routine: the
stack's zero point holds for its own photometry, it is deeper by 2.5 log10 sqrt(4),
its header has the mid time and the total exposure, and cosmic rays or masked
pixels of one frame do not reach it."""

from __future__ import annotations

import datetime as dt
import json
import math
import shutil

import numpy as np
import pytest
from astropy.io import fits
from astropy.time import Time

from gppy.astrometry.wcsio import celestial_wcs
from gppy.cli import main as gppy_main
from gppy.daemon.routine import process_night
from gppy.errors import InputError
from gppy.obsconfig.loader import load_profile
from gppy.phot.calibrate import photometer, total_zero_point
from gppy.phot.stage import reference_source
from gppy.reduction.flags import Pixel
from gppy.settings import AstrometrySettings, DataDir
from gppy.transient.stack import stack

pytestmark = pytest.mark.slow

NFRAMES = 4


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    """Four R frames of one field, from the simulator through the night routine."""
    from gppy.sim.plan import RunConfig
    from gppy.sim.simulate import simulate
    from gppy.sim.truth import Truth, truth_dir

    out = tmp_path_factory.mktemp("stack")
    profile = load_profile("LOAO")
    cfg = RunConfig(profile=profile, seed=7, shape=(1024, 1024), bands=["R"],
                    first_night=dt.date(2024, 3, 14), n_nights=1, n_fields=1,
                    nscience=NFRAMES, exptime_s=120.0)
    (folder,) = simulate(cfg, out, processes=2, render=True)
    truth = Truth.load(truth_dir(out, folder.name))
    settings = AstrometrySettings(refcat=str(out / "refcat.ecsv"))
    result = process_night(profile, out / truth.dir.name, DataDir(out / "data"), ncores=2,
                           settings=settings, until="phot")
    files = sorted(result.phot.measured)
    assert len(files) == NFRAMES
    return out, profile, settings, files


@pytest.fixture(scope="module")
def clean(frames, tmp_path_factory):
    out, _, _, files = frames
    result = stack(files, tmp_path_factory.mktemp("clean"))
    return result


def test_zero_point_depth_and_header(frames, clean):
    out, profile, settings, files = frames
    headers = [fits.getheader(f) for f in files]
    header = fits.getheader(clean.path)
    # the legacy name, with the mean mid-exposure time and the total exposure
    mids = [h["MJD-OBS"] + h["EXPTIME"] / 2 / 86400 for h in headers]
    mid = Time(np.mean(mids), format="mjd", scale="utc").to_datetime()
    assert clean.path.name == f"Calib-LOAO-NGC2916-{mid:%Y%m%d-%H%M%S}-R-480-com.fits"
    assert header["EXPTIME"] == 480.0 and header["NCOMBINE"] == NFRAMES
    assert header["MJD-OBS"] == pytest.approx(np.mean(mids), abs=1e-8)
    assert abs(Time(header["DATE-OBS"], scale="utc").mjd - np.mean(mids)) * 86400 < 0.002
    assert header["MJD-BEG"] == pytest.approx(min(h["MJD-OBS"] for h in headers), abs=1e-8)
    assert [header[f"IMCMB{i:03d}"] for i in range(1, NFRAMES + 1)] == [f.split("/")[-1]
                                                                        for f in files]
    assert header["ZP"] == pytest.approx(np.median([total_zero_point(h) for h in headers]),
                                         abs=1e-5)
    assert header["SEEING"] == pytest.approx(np.median([h["SEEING"] for h in headers]), abs=1e-3)
    assert celestial_wcs(header) is not None and header["CTYPE1"] == "RA---TAN"
    with fits.open(clean.path) as hdul:
        assert [h.name for h in hdul] == ["PRIMARY", "MASK", "ERR"]
        assert hdul["MASK"].data.dtype == np.uint16 and hdul[0].header["BITPIX"] == -32

    # the stack's own photometry against the simulator's catalogue
    refstars = reference_source(profile.phot, settings, out / "cache")
    res = photometer(clean.path, profile.phot, "R", refstars)
    opt = res.headline()
    total = opt.zp - opt.apcor                 # the stack's total-flux zero point
    ul5_frames = float(np.median([h["UL5"] for h in headers]))
    gain, expected = opt.ul5 - ul5_frames, 2.5 * math.log10(math.sqrt(NFRAMES))
    seeing_in = float(np.median([h["SEEING"] for h in headers]))
    print(f"\nstack ZP {header['ZP']:.4f}, measured {total:.4f} ({opt.nstars} stars); UL5 "
          f"{opt.ul5:.3f} vs frames {ul5_frames:.3f}: {gain:+.3f} (expected {expected:.3f}); "
          f"seeing {res.catalog.seeing_arcsec:.3f}\" vs {seeing_in:.3f}\"; "
          f"{clean.seconds:.1f} s, {clean.clipped_fraction:.2e} clipped")
    assert abs(total - header["ZP"]) < 0.02 and opt.nstars >= 20
    assert abs(gain - expected) < 0.2
    assert res.catalog.seeing_arcsec < 1.08 * seeing_in   # aligned: barely broader


def _sky_spot(image, err, mask, avoid, rng):
    """A pixel of the stack far from sources and from `avoid`."""
    ny, nx = image.shape
    sky, sig = np.median(image), np.median(err)
    while True:
        y, x = rng.integers(60, ny - 60), rng.integers(60, nx - 60)
        patch = image[y - 6:y + 7, x - 6:x + 7]
        if (np.abs(patch - sky) < 4 * sig).all() and not mask[y - 6:y + 7, x - 6:x + 7].any() \
                and all(abs(y - a) > 20 or abs(x - b) > 20 for a, b in avoid):
            return int(y), int(x)


def test_cosmic_rays_and_masked_pixels_do_not_reach_the_stack(frames, clean, tmp_path):
    out, _, _, files = frames
    with fits.open(clean.path) as hdul:
        ref, ref_mask, ref_err = hdul[0].data, hdul["MASK"].data, hdul["ERR"].data
        grid = celestial_wcs(hdul[0].header)
    rng = np.random.default_rng(11)
    spots = []
    for _ in range(4):
        spots.append(_sky_spot(ref, ref_err, ref_mask, spots, rng))
    (masked_cr, loose_cr, bad_everywhere, bad_once) = spots
    copies = []
    for i, f in enumerate(files):
        copy = tmp_path / f.split("/")[-1]
        shutil.copy(f, copy)
        with fits.open(copy, mode="update") as hdul:
            w = celestial_wcs(hdul[0].header)

            def at(spot):
                x, y = w.all_world2pix(grid.all_pix2world([[spot[1], spot[0]]], 0), 0)[0]
                return int(round(y)), int(round(x))
            if i == 1:   # a flagged cosmic ray, 3 x 3 px of 20000 e-, and an unflagged one
                y, x = at(masked_cr)
                hdul[0].data[y - 1:y + 2, x - 1:x + 2] += 20000.0
                hdul["MASK"].data[y - 1:y + 2, x - 1:x + 2] |= Pixel.COSMIC
                y, x = at(loose_cr)
                hdul[0].data[y, x] += 20000.0
            if i == 2:   # one frame's bad pixel
                y, x = at(bad_once)
                hdul["MASK"].data[y, x] |= Pixel.HOT
            y, x = at(bad_everywhere)   # bad in every frame: saturated
            hdul["MASK"].data[y - 2:y + 3, x - 2:x + 3] |= Pixel.SATURATED
        copies.append(copy)
    result = stack(copies, tmp_path / "cr.fits")
    with fits.open(result.path) as hdul:
        image, mask, err = hdul[0].data, hdul["MASK"].data, hdul["ERR"].data
    for name, (y, x) in (("flagged cosmic ray", masked_cr), ("unflagged cosmic ray", loose_cr),
                         ("one frame's bad pixel", bad_once)):
        box = (slice(y - 5, y + 6), slice(x - 5, x + 6))
        excess = (image[box] - ref[box]) / err[box]
        print(f"\n{name}: worst excess {np.abs(excess).max():.2f} sigma, "
              f"sum {(image[box] - ref[box]).sum():.0f} e-")
        # what is left is the noise of one frame fewer (and of which tail the 3-sigma
        # clipping cuts then), not the cosmic ray: 20000 e- x 4 (the flux scale) / 4 frames
        assert not mask[box].any(), name
        assert np.abs(excess).max() < 4.0, name
        assert abs((image[box] - ref[box]).sum()) < 0.01 * 20000 * 9, name
    y, x = bad_everywhere
    assert (mask[y - 1:y + 2, x - 1:x + 2] & Pixel.SATURATED).all()
    assert (image[y - 1:y + 2, x - 1:x + 2] == 0).all()
    # elsewhere the two stacks agree
    same = (mask == 0) & (ref_mask == 0)
    for y, x in spots:
        same[y - 8:y + 9, x - 8:x + 9] = False
    assert np.allclose(image[same], ref[same], atol=1e-3 * np.median(err))


def test_cli_median_and_reference_grid(frames, clean, tmp_path, capsys):
    out, _, _, files = frames
    code = gppy_main(["stack", *files, "--out", str(tmp_path), "--combine", "median", "--json"])
    row = json.loads(capsys.readouterr().out)
    assert code == 0 and row["error"] is None
    assert row["n"] == NFRAMES and row["exptime"] == 480.0 and row["seconds"] > 0
    assert row["zp"] == pytest.approx(clean.zp, abs=1e-5)
    assert row["out"].endswith("-R-480-com.fits")
    header = fits.getheader(row["out"])
    assert header["COMBINE"] == "median"
    with fits.open(row["out"]) as hdul, fits.open(clean.path) as ref:
        good = (hdul["MASK"].data == 0) & (ref["MASK"].data == 0)
        sky = ref[0].data < np.percentile(ref[0].data[good], 60)
        ratio = np.median(hdul["ERR"].data[good & sky] / ref["ERR"].data[good & sky])
        # the median's error: sqrt(pi/2) times the mean's for equal weights
        assert ratio == pytest.approx(math.sqrt(math.pi / 2), rel=0.05)
    # onto another grid: a 400 x 300 cut of the second frame's
    reference = tmp_path / "reference.fits"
    with fits.open(files[1]) as hdul:
        w = celestial_wcs(hdul[0].header)[100:400, 200:600]
        cut = fits.PrimaryHDU(np.zeros((300, 400), np.float32), w.to_header(relax=True))
        cut.header["DATE-OBS"] = "2020-01-01T00:00:00"    # a template's own date
        cut.writeto(reference)
    code = gppy_main(["stack", *files, "--out", str(tmp_path / "cut.fits"), "--reference",
                      str(reference), "--json"])
    row = json.loads(capsys.readouterr().out)
    assert code == 0 and row["shape"] == [300, 400]
    cut_header = fits.getheader(tmp_path / "cut.fits")
    assert cut_header["CRPIX1"] == pytest.approx(fits.getheader(reference)["CRPIX1"])
    # the grid's WCS brings no dates: the stack keeps its inputs' mid-time
    assert cut_header["DATE-OBS"] == header["DATE-OBS"]
    assert cut_header["MJD-OBS"] == pytest.approx(header["MJD-OBS"], abs=1e-9)


def test_refusals(frames, tmp_path, capsys):
    _, _, _, files = frames
    other = tmp_path / "other.fits"
    shutil.copy(files[0], other)
    with fits.open(other, mode="update") as hdul:
        hdul[0].header["FILTER"] = "B"
    with pytest.raises(InputError, match="different filters"):
        stack([files[1], other], tmp_path)
    with fits.open(other, mode="update") as hdul:
        hdul[0].header["FILTER"] = "R"
        del hdul[0].header["ZP"]
    with pytest.raises(InputError, match="no ZP in other.fits"):
        stack([files[1], other], tmp_path)
    code = gppy_main(["stack", files[1], str(other), "--out", str(tmp_path), "--json"])
    row = json.loads(capsys.readouterr().out)
    assert code == 1 and "other.fits" in row["error"] and row["out"] is None
