"""Masters and calibration: accurate against the simulator's truth, right on real
frames, borrowing masters across nights within the profile's limits, and clear
about input that cannot be calibrated."""

from __future__ import annotations

import math

import hashlib
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from gppy.bench.cosmics import (CalibratedFrame, frame_truth, replay_raw, score,
                                summarise)
from gppy.daemon.ledger import Ledger
from gppy.daemon.routine import process_night
from gppy.obsconfig.loader import load_profile
from gppy.reduction.calibrate import FrameCalibration, calibrate
from gppy.reduction.flags import Cal, Pixel
from gppy.reduction.inventory import read_frame
from gppy.reduction.masters import MasterError, Setup, build_bias, build_dark, read_master
from gppy.reduction.preprocess import preprocess
from gppy.settings import DataDir

from conftest import real_data, simulate_nights


def _fingerprint(folder: Path) -> dict:
    return {p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    """A simulated LOAO night (1024 x 1024), processed."""
    out, (truth,) = simulate_nights(tmp_path_factory.mktemp("sim"), "LOAO", 1024, nscience=3)
    folder = out / truth.meta["raw_folder"]
    before = _fingerprint(folder)
    data = DataDir(tmp_path_factory.mktemp("data"))
    result = process_night(load_profile("LOAO"), folder, data, ncores=2)
    return truth, data, result, folder, before


def _calibrated(result) -> list[tuple[Path, str]]:
    """(Calib file, raw file name) of every calibrated frame."""
    with Ledger(result.log_path.parents[2] / "ledger.sqlite") as ledger:
        rows = ledger.db.execute(
            "SELECT p.path, f.path FROM products p JOIN frames f ON f.id = p.frame_id "
            "WHERE p.kind = 'calibrated'").fetchall()
    return [(Path(a), Path(b).name) for a, b in rows]


def test_every_science_frame_is_calibrated(sim):
    truth, data, result, folder, before = sim
    science = [f for f in truth.frames if f["type"] == "science"]
    assert len(result.calibration.calibrated) == len(science) == 6
    assert not result.calibration.failed and not result.calibration.uncalibrated
    assert _fingerprint(folder) == before  # raw data untouched


def test_normalised_residuals_against_the_noise_free_truth(sim):
    """(calibrated - noise-free truth) / ERR has a standard deviation in 0.95-1.10."""
    truth, _, result, _, _ = sim
    for calib, raw_name in _calibrated(result):
        with fits.open(calib) as hdul:
            image, mask, err = hdul[0].data, hdul["MASK"].data, hdul["ERR"].data
        expected_e = truth.noise_free(raw_name) * truth.gain
        good = (mask == 0) & ~truth.cosmic_mask(raw_name)
        z = ((image - expected_e) / err)[good]
        print(f"{calib.name}: std {z.std():.3f}, mean {z.mean():+.3f}, {good.mean():.2%} unmasked")
        assert 0.95 <= z.std() <= 1.10
        # the simulated bias level wanders by 0.5 ADU rms from frame to frame (no overscan
        # to follow it), about 0.07 sigma of sky noise here
        assert abs(z.mean()) < 0.2
        assert good.mean() > 0.99


def test_cosmic_rays_are_flagged_and_star_cores_are_not(sim):
    """>= 90 % of the injected cosmic rays with a peak above 10 sigma are flagged
    COSMIC in the calibrated frames, and < 0.1 % of star-core pixels (metrics of
    gppy.bench.cosmics, scored on the pipeline's own MASK)."""
    truth, _, result, _, _ = sim
    scores = []
    for calib, raw_name in _calibrated(result):
        frame = truth.frame(raw_name)
        _, deposit = replay_raw(truth, frame)
        with fits.open(calib) as hdul:
            mask = hdul["MASK"].data
        cosmic = (mask & Pixel.COSMIC) != 0
        masked_before = (mask & ~Pixel.COSMIC) != 0  # bad or saturated: never reported
        ours = CalibratedFrame(raw_name, None, None, masked_before, 0.0, 0.0, 0.0)
        scores.append(score(cosmic, frame_truth(truth, frame, ours, deposit)))
    t = summarise(scores)
    print({k: t[k] for k in ("strong_crs", "recovery", "crs_whole", "star_core_px", "star_core")})
    assert t["strong_crs"] >= 20 and t["star_core_px"] >= 500
    assert t["recovery"] >= 0.90 and t["crs_whole"] >= 0.90
    assert t["star_core"] < 0.001


def test_master_flat_matches_the_true_flat(sim):
    truth, data, _, _, _ = sim
    for band in truth.meta["simulated_bands"]:
        (path,) = (data.masters("LOAO", truth.meta["date"])).glob(f"flat_{band}_*.fits")
        master = read_master(path)
        ratio = master.data / truth.flat(band)
        rms = np.std(ratio / np.median(ratio))
        print(f"flat {band}: master / true rms {rms:.3%}")
        assert rms < 0.003
        assert master.header["NCOMBINE"] == 5


def test_calibrated_file_layout_and_header(sim):
    truth, _, result, _, _ = sim
    calib, raw_name = _calibrated(result)[0]
    assert re.fullmatch(r"Calib-LOAO-[A-Za-z0-9+.-]+-\d{8}-\d{6}-[BVRI]-120\.fits", calib.name)
    with fits.open(calib) as hdul:
        assert [h.name for h in hdul] == ["PRIMARY", "MASK", "ERR"]
        h = hdul[0].header
        assert hdul[0].header["BITPIX"] == -32 and hdul["MASK"].header["BITPIX"] == 16
    raw_header = fits.getheader(Path(result.night_dir) / raw_name)
    assert h["TELESCOP"] == raw_header["TELESCOP"] and h["DATE-OBS"].startswith(raw_header["DATE-OBS"])
    assert h["BUNIT"] == "electron" and h["GAIN"] == 1.0
    assert h["RAWGAIN"] == load_profile("LOAO").camera.gain_e_per_adu
    assert h["CALFLAG"] == 0 and h["FLATNITE"] == truth.meta["date"]
    assert h["BIASFILE"].startswith("bias_2x2") and h["DARKFILE"].startswith("dark_120s")
    assert 3 < h["RDNOISE"] < 8  # measured from the biases (the simulator's 4.84 e- camera)


def test_rerun_does_nothing_and_force_redoes(sim):
    truth, data, _, folder, _ = sim
    again = process_night(load_profile("LOAO"), folder, data, ncores=2)
    assert again.calibration.calibrated == [] and again.calibration.unchanged == 6
    # bias, darks of 10, 60 and 120 s, flats in two filters, the bad-pixel mask
    assert again.masters.built == [] and len(again.masters.reused) == 7
    forced = process_night(load_profile("LOAO"), folder, data, ncores=2, force=True)
    assert len(forced.calibration.calibrated) == 6 and len(forced.masters.built) == 7


# --- real frames ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sbu(tmp_path_factory):
    folder = real_data("sbu_stl1001e_calib")
    data = DataDir(tmp_path_factory.mktemp("sbu"))
    result = process_night(load_profile("SBU_STL1001E"), folder, data, ncores=2)
    return folder, data, result


def test_real_masters_build_and_the_flats_are_flats(sbu):
    folder, data, result = sbu
    assert not result.masters.failed
    names = sorted(m.path.name for m in result.masters.built)
    assert "bias_1x1_m10C.fits" in names and "bias_1x1_m5C.fits" in names
    assert "flat_clear_1x1_m5C.fits" in names and "bpm_1x1_m5C.fits" in names
    flat = read_master(data.masters("SBU_STL1001E", "2017-09-08") / "flat_clear_1x1_m5C.fits")
    inputs = [v for k, v in flat.header.items() if k.startswith("INPUT")]
    assert len(inputs) == 10 and all(name.startswith("flat-expos23s") for name in inputs)
    assert flat.header["NREJECT"] == 0 and 15000 < flat.header["FLATLEV"] < 25000
    assert np.median(flat.data) == pytest.approx(1.0, abs=1e-6)


def test_real_dark_ramp_gives_a_linear_dark_current(sbu):
    """Bias-subtracted master darks of 10-300 s at both set-points: the fitted slope
    is the dark current (e-/s/pixel), positive, and larger at -5 C than at -10 C."""
    _, data, _ = sbu
    gain = load_profile("SBU_STL1001E").camera.gain_e_per_adu
    current = {}
    for tag, temp in (("m5C", -5), ("m10C", -10)):
        points = []
        for path in sorted(data.masters("SBU_STL1001E", "2017-09-08").glob(f"dark_*_1x1_{tag}.fits")):
            dark = read_master(path)
            points.append((dark.header["EXPTIME"], float(np.median(dark.data)) * gain))
        t, e = np.array(points).T
        slope, intercept = np.polyfit(t, e, 1)
        residual = e - (slope * t + intercept)
        print(f"{temp:+d} C: dark current {slope:.4f} e-/s/pixel (intercept {intercept:+.2f} e-, "
              f"{len(t)} exposure times, rms residual {residual.std():.2f} e-)")
        assert len(t) == 6 and slope > 0
        assert residual.std() < 0.05 * slope * t.max()  # linear
        current[temp] = slope
    assert current[-5] > current[-10]


def test_real_hot_pixels_land_in_the_bad_pixel_mask(sbu):
    """Pixels that are clearly hot in the raw 300 s dark (independently of the
    pipeline: raw minus the median of the raw biases) carry the HOT flag."""
    folder, data, _ = sbu
    biases = np.median([fits.getdata(p).astype(float)
                        for p in sorted(folder.glob("biases-Neg5-*.FIT.gz"))], axis=0)
    dark = fits.getdata(folder / "darks-expos300s-Neg5-Vis.00000000.DARK.FIT.gz") - biases
    med = np.median(dark)
    sigma = 1.4826 * np.median(np.abs(dark - med))
    hot = dark > med + 20 * sigma
    bpm = read_master(data.masters("SBU_STL1001E", "2017-09-08") / "bpm_1x1_m5C.fits").data
    print(f"{hot.sum()} clearly hot pixels, {np.count_nonzero(bpm & Pixel.HOT)} flagged HOT")
    assert hot.sum() > 10
    assert np.mean((bpm[hot] & Pixel.HOT) != 0) > 0.99


# --- borrowing, walls and bad input ---------------------------------------------------------

@pytest.fixture(scope="module")
def two_nights(tmp_path_factory):
    out, truths = simulate_nights(tmp_path_factory.mktemp("two"), "LOAO", 512, nights=2,
                                  nscience=1)
    return out, truths


def _without_flats(src: Path, dest: Path) -> Path:
    dest.mkdir(parents=True)
    profile = load_profile("LOAO")
    for f in src.iterdir():
        if read_frame(f, profile).type != "flat":
            shutil.copy2(f, dest / f.name)
    return dest


def test_a_night_without_flats_borrows_the_nearest(two_nights, tmp_path):
    out, (first, second) = two_nights
    data = DataDir(tmp_path / "data")
    profile = load_profile("LOAO")
    process_night(profile, out / first.meta["raw_folder"], data, ncores=2)
    night2 = _without_flats(out / second.meta["raw_folder"], tmp_path / "raw" / second.meta["raw_folder"])
    result = process_night(profile, night2, data, ncores=2)
    assert len(result.calibration.calibrated) == 2
    assert result.calibration.borrowed == {"flat": {first.meta["date"]}}
    header = fits.getheader(result.calibration.calibrated[0])
    assert header["CALFLAG"] & Cal.FLAT_BORROWED
    assert header["FLATNITE"] == first.meta["date"] and header["BIASNITE"] == second.meta["date"]


@pytest.mark.parametrize("override", ['camera_walls = ["{night2}"]', "master_max_age_days = 0.5"])
def test_no_borrowing_across_a_wall_or_beyond_the_age_limit(two_nights, tmp_path, isolated_dirs,
                                                            override):
    out, (first, second) = two_nights
    user = isolated_dirs / "config" / "observatories"
    user.mkdir(parents=True, exist_ok=True)
    (user / "loao.toml").write_text(
        "[reduction]\n" + override.format(night2=second.meta["date"]) + "\n")
    profile = load_profile("LOAO")
    data = DataDir(tmp_path / "data")
    process_night(profile, out / first.meta["raw_folder"], data, ncores=2)
    night2 = _without_flats(out / second.meta["raw_folder"], tmp_path / "raw" / second.meta["raw_folder"])
    result = process_night(profile, night2, data, ncores=2)
    assert result.calibration.calibrated == []
    assert set(result.calibration.uncalibrated.values()) == {"no flat: frames left uncalibrated"}


def test_rejected_flats_are_listed_and_the_night_goes_on(two_nights, tmp_path, isolated_dirs):
    out, (first, _) = two_nights
    user = isolated_dirs / "config" / "observatories"
    user.mkdir(parents=True, exist_ok=True)
    (user / "loao.toml").write_text("[reduction]\nflat_min_adu = 60000.0\n")
    result = process_night(load_profile("LOAO"), out / first.meta["raw_folder"],
                           DataDir(tmp_path / "data"), ncores=2)
    assert {label.split(" (")[0] for label in result.masters.failed} == {
        f"flat {b}" for b in first.meta["simulated_bands"]}
    assert all("too faint: median" in why for why in result.masters.failed.values())
    assert set(result.calibration.uncalibrated.values()) == {"no flat: frames left uncalibrated"}


def test_masters_of_another_shape_are_refused(two_nights, tmp_path):
    out, (first, _) = two_nights
    folder = out / first.meta["raw_folder"]
    profile = load_profile("LOAO")
    records = [read_frame(f, profile) for f in sorted(folder.iterdir())]
    bias_files = [r.file for r in records if r.type == "bias"]
    science = next(r for r in records if r.type == "science")
    setup = Setup("2x2")
    small = tmp_path / "small"
    fits.PrimaryHDU(np.zeros((256, 256), np.uint16)).writeto(tmp_path / "b1.fits")
    bias = read_master(build_bias(bias_files, profile, setup, "2024-03-14", tmp_path, 1).path)
    wrong = read_master(build_bias([str(tmp_path / "b1.fits")], profile, setup, "x",
                                   small, 1).path)
    dark_files = [r.file for r in records if r.type == "dark"][:1]
    with pytest.raises(MasterError, match=r"bias_2x2\.fits: master of shape 256x256 cannot "
                                          r"calibrate darks .* of shape 512x512"):
        build_dark(dark_files, 10.0, wrong, profile, setup, "x", small, 1)
    cal = FrameCalibration(bias=bias.path, flat=wrong.path)
    with pytest.raises(MasterError, match=rf"master of shape 256x256 does not match "
                                          rf"{re.escape(Path(science.file).name)} \(512x512"):
        calibrate(science, cal, profile, tmp_path / "out")


def test_frames_of_another_binning_get_no_masters(tmp_path):
    """Masters are chosen by binning: 1x1 science frames in a night of 2x2
    calibrations are left uncalibrated with the reason, and the night completes."""
    night = tmp_path / "2025_0315"
    night.mkdir()
    rng = np.random.default_rng(1)
    common = {"DATE-OBS": "2025-03-16T01:00:00", "FILTER": "R"}
    for i in range(3):
        for kind, level, exptime, binning, shape in (("Bias Frame", 1000, 0.0, 2, 64),
                                                     ("Flat Field", 20000, 5.0, 2, 64),
                                                     ("Light Frame", 1500, 60.0, 1, 128)):
            hdu = fits.PrimaryHDU(rng.normal(level, 10, (shape, shape)).astype(np.uint16))
            hdu.header.update(common | {"IMAGETYP": kind, "EXPTIME": exptime,
                                        "XBINNING": binning, "YBINNING": binning,
                                        "OBJECT": "NGC0337"})
            hdu.writeto(night / f"{kind.split()[0]}{i}.fits")
    result = process_night(load_profile("LOAO"), night, DataDir(tmp_path / "data"))
    assert {m.path.name for m in result.masters.built} >= {"bias_2x2.fits", "flat_R_2x2.fits"}
    assert set(result.calibration.uncalibrated.values()) == {"no bias: frame left uncalibrated"}
    assert len(result.calibration.uncalibrated) == 3


def test_err_holds_the_poisson_noise_of_the_dark_current(tmp_path):
    """Where the dark current is strong (an amplifier glow, a warm region), its
    electrons are subtracted but their Poisson noise stays: ERR says so, and the
    calibrated sky scatters by ERR there as elsewhere."""
    night = tmp_path / "2025_0315"
    night.mkdir()
    profile = load_profile("LOAO")
    gain, rn_e = profile.camera.gain_e_per_adu, 5.0
    rng = np.random.default_rng(2)
    glow = np.zeros((64, 64))
    glow[:, :32] = 4000.0                     # e- in 60 s over the left half
    common = {"DATE-OBS": "2025-03-16T01:00:00", "FILTER": "R", "OBJECT": "NGC0337"}

    def frame(kind: str, exptime: float, electrons) -> fits.PrimaryHDU:
        e = rng.poisson(np.broadcast_to(electrons, (64, 64))) + rng.normal(0, rn_e, (64, 64))
        hdu = fits.PrimaryHDU(np.round(1000.0 + e / gain).astype(np.uint16))
        hdu.header.update(common | {"IMAGETYP": kind, "EXPTIME": exptime})
        return hdu

    for i in range(5):
        frame("Bias Frame", 0.0, 0.0).writeto(night / f"bias{i}.fits")
        frame("Dark Frame", 60.0, glow).writeto(night / f"dark{i}.fits")
        frame("Flat Field", 5.0, 40000.0 + glow / 12).writeto(night / f"flat{i}.fits")
    sky_e = 800.0
    frame("Light Frame", 60.0, sky_e + glow).writeto(night / "science.fits")
    result = process_night(profile, night, DataDir(tmp_path / "data"))
    (calib,) = result.calibration.calibrated
    with fits.open(calib) as hdul:
        image, err, mask = hdul[0].data, hdul["ERR"].data, hdul["MASK"].data
    for columns, electrons in ((slice(2, 30), sky_e + 4000.0), (slice(34, 62), sky_e)):
        good = mask[2:62, columns] == 0
        z = ((image[2:62, columns] - sky_e) / err[2:62, columns])[good]
        # the Poisson noise of what arrived, plus read noise and the masters' errors
        assert np.median(err[2:62, columns][good]) > math.sqrt(electrons)
        assert 0.9 <= z.std() <= 1.1, (electrons, z.std())


def test_overscan_is_removed_row_by_row_and_the_frame_trimmed(isolated_dirs):
    user = isolated_dirs / "config" / "observatories"
    user.mkdir(parents=True, exist_ok=True)
    (user / "loao.toml").write_text('[reduction]\nbiassec = "[101:110,1:50]"\n'
                                    'trimsec = "[1:100,1:50]"\n')
    profile = load_profile("LOAO")
    rows = np.arange(50, dtype=float)[:, None]
    raw = np.full((50, 110), 5000.0) + 100.0 + 2.0 * rows  # a level drifting along the rows
    raw[:, 100:] = 1000.0 + 2.0 * rows                     # the overscan follows the drift
    raw[10, 20] = 70000.0
    image, saturated = preprocess(raw, profile)
    assert image.shape == saturated.shape == (50, 100)
    expected = np.full((50, 100), 4100.0)
    expected[10, 20] = 69000.0 - 20.0
    assert np.allclose(image, expected)
    assert saturated[9:12, 19:22].all() and saturated.sum() == 9


def test_a_frame_failing_calibration_does_not_stop_the_others(two_nights, tmp_path):
    """A science frame whose data do not match tonight's masters (a sub-frame read
    out by mistake) fails alone, named with the reason; the others are calibrated."""
    out, (first, _) = two_nights
    night = tmp_path / first.meta["raw_folder"]
    shutil.copytree(out / first.meta["raw_folder"], night)
    profile = load_profile("LOAO")
    science = sorted(f for f in night.iterdir() if read_frame(f, profile).type == "science")
    with fits.open(science[0]) as hdul:
        fits.PrimaryHDU(hdul[0].data[:256, :256], hdul[0].header).writeto(
            night / "subframe.fits")
    result = process_night(profile, night, DataDir(tmp_path / "data"), ncores=2)
    assert len(result.calibration.calibrated) == len(science)
    (failed, why), = result.calibration.failed.items()
    assert failed.endswith("subframe.fits")
    assert "does not match subframe.fits (256x256" in why
