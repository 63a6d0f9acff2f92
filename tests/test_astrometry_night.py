"""The astrometry stage of whole simulated nights, against the simulator's true WCS,
for three very different cameras: every frame solved, the WCS right to 0.1 pixel
over the whole frame (corners included), the seconds per frame printed. Also the
night's outlier rule, the blind retry from a pointing two fields off, and the
`gppy astrometry` command on its own (JSON lines, a PinPoint WCS kept)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from gppy.astrometry import solvefield
from gppy.daemon.command import summary
from gppy.daemon.routine import process_night
from gppy.obsconfig.loader import load_profile
from gppy.settings import AstrometrySettings, DataDir

from conftest import real_data, simulate_nights

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not solvefield.available(), reason="solve-field is not installed")]

TARGET_PX = 0.1
# profile -> simulated size (None: the full detector), science frames per field and filter,
# filters
NIGHTS = {"LOAO": (None, 2, 2),           # 2048 px at 0.794" = 27': catalogue match
          "KCT_ASI1600MM": (None, 3, 1),  # 4656 x 3520 at 0.306" = 24' x 18', CMOS: catalogue
          "RASA36": (2048, 4, 1)}         # 2048 px at 2.36" = 80': solve-field on Tycho-2


def _night(tmp_path_factory, obs: str, size, nscience: int = 2, n_bands: int = 2):
    out, (truth,) = simulate_nights(tmp_path_factory.mktemp(obs), obs, size, nscience=nscience,
                                    n_bands=n_bands)
    return out, truth, out / truth.dir.name


def _process(obs: str, out: Path, night: Path, data: Path):
    settings = AstrometrySettings(refcat=str(out / "refcat.ecsv"))
    return process_night(load_profile(obs), night, DataDir(data), ncores=2, settings=settings,
                         until="astrometry")


def _errors_px(truth, calib: str) -> np.ndarray:
    header = fits.getheader(calib)
    return truth.wcs_error_px(header["RAWFILE"], WCS(header))


@pytest.mark.parametrize("obs", list(NIGHTS))
def test_every_frame_solved_to_a_tenth_of_a_pixel(tmp_path_factory, processed_loao_night, obs):
    if obs == "LOAO":   # the shared night (see conftest)
        _, truth, _, _, _, result = processed_loao_night
    else:
        out, truth, night = _night(tmp_path_factory, obs, *NIGHTS[obs])
        result = _process(obs, out, night, out / "data")
    a = result.astrometry
    n = len(result.calibration.calibrated)
    assert n >= 3 and not a.unsolved, a.unsolved
    assert len(a.solved) / n >= 0.99
    worst = {Path(c).name: float(_errors_px(truth, c).max()) for c in a.solved}
    seconds = [s["seconds"] for s in a.solved.values()]
    print(f"\n{obs}: {len(a.solved)}/{n} solved "
          f"({', '.join(sorted({s['method'] for s in a.solved.values()}))}), "
          f"median RMS {a.median('rms_arcsec'):.3f}\", worst error vs truth "
          f"{max(worst.values()):.4f} px, {np.median(seconds):.1f} s/frame")
    assert max(worst.values()) <= TARGET_PX, worst
    for calib, info in a.solved.items():
        header = fits.getheader(calib)
        assert header["ASTRNSTR"] == info["nstars"] >= 20
        assert header["ASTRRMS"] == pytest.approx(info["rms_arcsec"], abs=1e-4)
        assert header["ASTRMETH"] == info["method"] and "ASTRMSEP" in header
    # every frame of the night shares one distortion (see gppy.astrometry.distortion)
    assert {s["distortion"] for s in a.solved.values()} == {"night"}


@pytest.fixture(scope="module")
def smeared_night(tmp_path_factory):
    """A LOAO night whose first science frame has its stars smeared by a tracking
    error, processed: (outdir, truth, smeared raw file, NightResult)."""
    out, truth, night = _night(tmp_path_factory, "LOAO", 1024, nscience=3)
    smeared = night / sorted(f["file"] for f in truth.frames if f.get("wcs"))[0]
    with fits.open(smeared) as hdul:
        data = hdul[0].data.astype(np.float64)
        trail = sum(np.roll(data, k, axis=1) for k in range(-15, 16)) / 31.0
        hdul[0].data = trail.astype(hdul[0].data.dtype)
        hdul.writeto(smeared, overwrite=True)
    return out, truth, smeared, _process("LOAO", out, night, out / "data")


def test_an_outlier_is_solved_again_and_left_out_of_stacks_if_still_bad(smeared_night):
    """The smeared frame (a 24" trail) sits above the night's median separations (Q3 +
    1.5 IQR, and the 0.05" floor): it is solved again with stricter settings and, if still an outlier, left out of
    stacks; the summary says which."""
    out, truth, smeared, result = smeared_night
    a = result.astrometry
    seps = {fits.getheader(c)["RAWFILE"]: s["median_sep_arcsec"] for c, s in a.solved.items()}
    print("\nmedian separations (arcsec):", seps)
    bad = next(c for c in list(a.solved) + list(a.unsolved)
               if fits.getheader(c)["RAWFILE"] == smeared.name)
    assert set(a.outliers) == {bad}, a.outliers
    still = "still an outlier" in a.outliers[bad]
    assert (bad in a.excluded) == still
    assert f"outlier  {Path(bad).name}" in summary(result)


def _cli(gppy_bin, *args) -> list[dict]:
    # a hopeless hinted solve-field gives up after 10 s of CPU (30 by default), to keep
    # the tests short; the solutions themselves take well under a second of it
    settings = Path(os.environ["GPPY_CONFIG_DIR"]) / "settings.toml"
    settings.parent.mkdir(parents=True, exist_ok=True)
    settings.write_text("[astrometry]\ncpulimit_s = 10\n")
    proc = subprocess.run([str(gppy_bin), "astrometry", *map(str, args), "--json"],
                          capture_output=True, text=True, timeout=600)
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert rows, proc.stderr
    for row in rows:
        assert {"file", "solved", "method", "rms_arcsec", "nstars", "seconds", "error"} <= set(row)
    return rows


@pytest.fixture(scope="module")
def rasa_night(tmp_path_factory):
    out, truth, night = _night(tmp_path_factory, "RASA36", 2048, n_bands=1)
    result = _process("RASA36", out, night, out / "data")
    return out, truth, sorted(result.calibration.calibrated)


@pytest.mark.parametrize("fields_off, methods", [(2, {"solve-field", "blind"}), (5, {"blind"})])
def test_a_pointing_fields_off_is_solved(rasa_night, gppy_bin, tmp_path, fields_off, methods):
    """Two fields off is still inside the hinted search (its radius allows one field
    of pointing error beyond the frame) or found by the blind retry; five fields off
    only by the blind retry."""
    out, truth, calibs = rasa_night
    header = fits.getheader(calibs[0])
    fov_deg = 2048 * 2.36 / 3600.0
    (row,) = _cli(gppy_bin, calibs[0], "--obs", "RASA36", "--refcat", out / "refcat.ecsv",
                  "--ra", header["CRVAL1"], "--dec", header["CRVAL2"] + fields_off * fov_deg,
                  "--force", "--out", tmp_path)
    print(f"\n{fields_off} fields off: {row['method']} in {row['seconds']} s, error {row['error']}")
    assert row["solved"] and row["method"] in methods
    errors = truth.wcs_error_px(header["RAWFILE"], WCS(fits.getheader(row["output"])))
    assert errors.max() <= TARGET_PX


def test_a_narrow_field_two_fields_off_is_clearly_reported(smeared_night, gppy_bin, tmp_path):
    """LOAO's field (here 1024 px, 13.6') is too narrow for the installed Tycho-2
    indexes: no blind retry is possible, and the error says so."""
    out, truth, smeared, result = smeared_night
    calib = next(c for c in sorted(result.astrometry.solved)
                 if fits.getheader(c)["RAWFILE"] != smeared.name)
    header = fits.getheader(calib)
    (row,) = _cli(gppy_bin, calib, "--obs", "LOAO", "--refcat", out / "refcat.ecsv",
                  "--ra", header["CRVAL1"], "--dec", header["CRVAL2"] + 2 * 1024 * 0.794 / 3600,
                  "--force", "--out", tmp_path)
    assert not row["solved"] and row["output"] is None
    assert "no match" in row["error"] and "no blind retry" in row["error"], row["error"]
    # without --force the frame's own (good) WCS is checked against the catalogue and kept
    (kept,) = _cli(gppy_bin, calib, "--obs", "LOAO", "--refcat", out / "refcat.ecsv",
                   "--out", tmp_path / "kept")
    assert kept["solved"] and kept["method"] == "existing" and kept["nstars"] >= 20
    assert kept["rms_arcsec"] < 0.1


def test_a_pinpoint_wcs_is_kept_without_force(gppy_bin, tmp_path):
    source = real_data("header_fixtures") / "maximdl_6_18_header.fit"
    (row,) = _cli(gppy_bin, source, "--out", tmp_path)
    assert row["solved"] and row["method"] == "existing", row
    before, after = fits.getheader(source), fits.getheader(row["output"])
    for key in [k for k in before if k.startswith(("CRVAL", "CRPIX", "CDELT", "CROTA", "CD1_",
                                                   "CD2_", "CTYPE"))]:
        assert after[key] == before[key], key
    assert after["ASTRMETH"] == "existing"
