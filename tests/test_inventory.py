"""Header homogenisation and inventory on real files, and bad files reported and skipped."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from astropy.io import fits

from gppy.obsconfig.headers import parse_angle, parse_dateobs
from gppy.obsconfig.loader import load_profile
from gppy.reduction.inventory import find_frames, group, read_frame

from conftest import real_data

JSON_KEYS = {"file", "type", "reason", "filter", "exptime", "dateobs", "mjd", "object", "ra",
             "dec", "binning", "gain", "rdnoise", "saturation", "error"}


def test_sbu_real_calibration_set_is_classified():
    """Every file of the real STL-1001E set; its flats say IMAGETYP='Light Frame'."""
    folder = real_data("sbu_stl1001e_calib")
    profile = load_profile("SBU_STL1001E")
    files = find_frames(folder, profile)
    assert len(files) == 52
    for f in files:
        rec = read_frame(f, profile)
        expected = {"bias": "bias", "biases": "bias", "darks": "dark", "flat": "flat"}[
            f.name.split("-")[0]]
        assert rec.error is None, rec.error
        assert rec.type == expected, (f.name, rec.type, rec.reason)
        assert rec.filter == "clear" and rec.gain == 2.06
        if expected == "flat":
            assert rec.imagetyp_raw == "Light Frame" and "classify rule" in rec.reason
            assert rec.exptime == 23.0
    counts = group(read_frame(f, profile) for f in files)
    assert counts[("bias", None, None, None)] == 20
    assert counts[("flat", "clear", None, None)] == 10
    assert sum(n for (t, *_), n in counts.items() if t == "dark") == 22


def test_pixel_rule_alone_finds_the_flats(isolated_dirs):
    """With the file-name rule removed, the sky-level rule still recognises the flats,
    and leaves the biases and darks alone."""
    folder = real_data("sbu_stl1001e_calib")
    user = isolated_dirs / "config" / "observatories"
    user.mkdir(parents=True)
    (user / "sbu_stl1001e.toml").write_text(
        '[[header.classify]]\ntype = "flat"\nreason = "sky level"\nif_type = ["science"]\n'
        'exptime_max_s = 60.0\nmedian_adu_min = 10000.0\n')
    profile = load_profile("sbu")
    assert len(profile.header.classify) == 1
    for name, expected in (("flat-expos23s-Neg5-Vis.00000004.FIT.gz", "flat"),
                           ("bias-Neg10-Vis.00000003.BIAS.FIT.gz", "bias"),
                           ("darks-expos300s-Neg5-Vis.00000000.DARK.FIT.gz", "dark")):
        rec = read_frame(folder / name, profile)
        assert rec.type == expected, rec.reason


@pytest.mark.parametrize("name", sorted(p.name for p in (
    Path(__file__).resolve().parents[2] / "shared/data/real/header_fixtures").glob("*.fit")))
def test_header_fixtures_classified_as_their_imagetyp_says(name):
    folder = real_data("header_fixtures")
    rec = read_frame(folder / name, load_profile("FEDER"))
    raw = fits.getheader(folder / name)["IMAGETYP"].strip().upper()
    assert rec.error is None, rec.error
    assert rec.type == {"LIGHT": "science", "BIAS": "bias", "DARK": "dark", "FLAT": "flat"}[raw]
    assert rec.dateobs and rec.exptime is not None


def test_header_fixture_values():
    folder = real_data("header_fixtures")
    profile = load_profile("FEDER")
    rec = read_frame(folder / "maximdl_6_18_header.fit", profile)
    assert (rec.filter, rec.object, rec.exptime) == ("r", "kelt-16-b", 90.0)
    assert rec.ra == pytest.approx(15 * (20 + 57 / 60 + 4.40 / 3600))
    assert rec.dec == pytest.approx(31 + 39 / 60 + 39.6 / 3600)
    assert rec.dateobs == "2018-08-23T08:49:30.000"
    no_filter = read_frame(folder / "uint16_missing_filter.fit", profile)
    assert no_filter.type == "science" and no_filter.filter is None
    no_pointing = read_frame(folder / "uint16_no_pointing.fit", profile)
    assert no_pointing.ra is None and no_pointing.dec is None and no_pointing.error is None


def test_angle_and_date_parsing():
    assert parse_angle("20 57 04.40", hours=True) == pytest.approx(314.268333, abs=1e-6)
    assert parse_angle("-00:18:18", hours=False) == pytest.approx(-0.305)
    assert parse_angle("-0 18 18", hours=False) == pytest.approx(-0.305)
    assert parse_angle(123.5, hours=True) == 123.5
    assert parse_angle("123.5", hours=True) == 123.5
    with pytest.raises(ValueError):
        parse_angle("north", hours=False)
    assert parse_dateobs("2024-02-29", "03:04:05.5").isot == "2024-02-29T03:04:05.500"
    assert parse_dateobs("23/08/18", "08:49:30").isot == "2018-08-23T08:49:30.000"  # MaxIm DL
    assert parse_dateobs("31/12/99", "23:59:59").isot == "1999-12-31T23:59:59.000"


EXPECTED_ERRORS = {
    "empty.fits": r"empty file",
    "notes.fits": r"not a readable FITS file",
    "truncated.fits": r"truncated: 4000 bytes",
    "truncated.fits.gz": r"truncated: 4000 bytes",
    "nodate.fits": r"no observation time \(tried DATE-OBS",
    "noexptime.fits": r"no exposure time \(tried EXPTIME",
    "badra.fits": r"RA is not an angle: 'somewhere'",
}


def test_bad_files_reported_and_skipped(bad_night):
    profile = load_profile("LOAO")
    records = {Path(r.file).name: r for r in map(lambda f: read_frame(f, profile),
                                                  find_frames(bad_night, profile))}
    assert len(records) == 11
    for name, pattern in EXPECTED_ERRORS.items():
        assert records[name].error is not None and re.search(pattern, records[name].error), (
            name, records[name].error)
    assert records["focus.fits"].type == "unknown"
    assert "'Focus' is not a known image type" in records["focus.fits"].reason
    assert records["good2.fits"].filter == "B"  # legacy rewrite B102 -> B
    assert records["bias.fits"].type == "bias" and records["bias.fits"].exptime == 0.0
    for name in ("good1.fits", "good2.fits", "bias.fits", "focus.fits"):
        assert records[name].error is None


def test_inspect_json_one_object_per_file(gppy_bin, bad_night):
    files = sorted(str(p) for p in bad_night.iterdir())
    out = subprocess.run([str(gppy_bin), "inspect", *files, "--obs", "loao", "--json"],
                         capture_output=True, text=True, check=True).stdout
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["file"] for r in rows] == files
    for r in rows:
        assert JSON_KEYS <= r.keys()
        name = Path(r["file"]).name
        if name in EXPECTED_ERRORS:
            assert re.search(EXPECTED_ERRORS[name], r["error"]), r
        else:
            assert r["error"] is None
    good = next(r for r in rows if r["file"].endswith("good1.fits"))
    assert (good["type"], good["filter"], good["exptime"], good["object"]) == (
        "science", "R", 60.0, "NGC0337")
    assert good["dateobs"] == "2025-03-16T03:00:00.000"
    assert good["mjd"] == pytest.approx(60750.125)
    assert good["gain"] == load_profile("LOAO").camera.gain_e_per_adu


def test_inspect_table_on_a_night_folder(gppy_bin):
    folder = real_data("sbu_stl1001e_calib")
    out = subprocess.run([str(gppy_bin), "inspect", str(folder), "--obs", "SBU"],
                         capture_output=True, text=True, check=True).stdout
    assert "52 files:" in out
    assert re.search(r"\b10 flat\s+clear", out)
    assert re.search(r"\b20 bias", out)
