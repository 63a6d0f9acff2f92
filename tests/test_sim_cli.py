"""`gppy simulate` end to end: every observatory's frames read back through the
header homogenisation as the truth says, and the command runs as a real process."""

from __future__ import annotations

import datetime as dt
import json
import subprocess

import numpy as np
import pytest

from gppy.fitsio import read_header, read_image
from gppy.obsconfig.headers import homogenise
from gppy.obsconfig.loader import UnknownObservatory, load_profile
from gppy.obsconfig.nights import parse_night
from gppy.astrometry import tycho
from gppy.sim.command import DEFAULT_DATE, default_bands
from gppy.sim.plan import RunConfig
from gppy.sim.simulate import simulate

pytestmark = pytest.mark.skipif(not (tycho.DEFAULT_INDEX_DIR / tycho.INDEX_NAME).is_file(),
                                reason="astrometry-data-tycho2-07-littleendian is not installed")


def _profile(name):
    try:
        return load_profile(name)
    except UnknownObservatory:
        pytest.skip(f"no {name} profile yet")


@pytest.mark.parametrize("obs", ["LOAO", "SBU_STL1001E", "7DT01", "KCT"])
def test_raw_frames_read_back_as_the_truth_says(tmp_path, obs):
    profile = _profile(obs)
    cfg = RunConfig(profile=profile, seed=11, shape=(128, 128),
                    bands=default_bands(profile.camera.filters), first_night=dt.date(2024, 10, 2),
                    n_nights=1, n_fields=1, nscience=1, exptime_s=60.0)
    [folder] = simulate(cfg, tmp_path, processes=1)
    assert parse_night(profile.raw.night_folder, folder.name) == dt.date(2024, 10, 2)
    truth = json.loads((tmp_path / "truth" / folder.name / "frames.json").read_text())
    assert sorted(p.name for p in folder.iterdir()) == sorted(f["file"] for f in truth["frames"])
    for frame in truth["frames"]:
        path = folder / frame["file"]
        header, shape = read_header(path)
        rec = homogenise(header, str(path), profile, shape,
                         lambda: float(np.median(read_image(path))))
        assert rec.error is None, rec.error
        assert (rec.type, rec.filter) == (frame["type"], frame["filter"]), rec.reason
        assert rec.exptime == frame["exptime_s"]
        assert rec.dateobs.startswith(frame["dateobs"][:19])
        assert rec.binning == list(profile.camera.binning)
        if frame["type"] == "science":
            assert rec.object == frame["field"]
            assert rec.ra == pytest.approx(frame["ra_cmd_deg"], abs=1e-3)
            assert rec.dec == pytest.approx(frame["dec_cmd_deg"], abs=1e-3)


def test_gppy_simulate_runs_as_a_command(tmp_path, gppy_bin):
    out = tmp_path / "sim"
    result = subprocess.run([str(gppy_bin), "simulate", "SBU_STL1001E", str(out), "--size", "128",
                             "--fields", "1", "--nscience", "1", "--processes", "2"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    profile = load_profile("SBU_STL1001E")
    [night] = [p for p in out.iterdir() if p.is_dir() and p.name != "truth"]
    assert parse_night(profile.raw.night_folder, night.name) == DEFAULT_DATE
    assert (out / "truth" / night.name / "frames.json").is_file()
    assert (out / "refcat.ecsv").is_file()
    assert len(list(night.iterdir())) >= 12


def test_gppy_simulate_reports_bad_input_in_one_line(tmp_path, gppy_bin):
    result = subprocess.run([str(gppy_bin), "simulate", "LOAO", str(tmp_path), "--filters", "g"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "not one of LOAO's camera.filters" in result.stderr and "Traceback" not in result.stderr
