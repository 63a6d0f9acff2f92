"""The packaged observatory profiles: they load, they match the legacy tables they were
transcribed from, user files override or add them, and bad files are reported clearly."""

from __future__ import annotations

import os
import subprocess
import tomllib
from pathlib import Path

import pytest

from gppy.obsconfig.command import to_toml
from gppy.obsconfig.headers import filter_alias, imagetyp_alias
from gppy.obsconfig.loader import (PACKAGED_DIR, UnknownObservatory, load_all, load_profile,
                                   profile_as_dict, user_dir)
from gppy.obsconfig.validate import ProfileError

from conftest import SHARED

LEGACY = SHARED / "reference" / "legacy-gppy"

SEVEN_DT = [f"7DT{n:02d}" for n in range(1, 21)]
REQUIRED = ["LOAO", "SOAO", "DOAO", "SAO", "KHAO", "MDFTS", "MAAO", "DNSM", "CBNUO",
            "MCD30INCH", "LSGT", "KCT", "RASA36", *SEVEN_DT, "KMTNET_SSO", "KMTNET_SAAO",
            "KMTNET_CTIO", "FEDER"]

# profile name -> (legacy obs.dat / obs.gpu-branch.dat row, legacy phot-config) it was
# transcribed from. The plain names hold the current camera set-up, which is not always the
# plain legacy row (see the header comment of each profile).
LEGACY_ROWS: dict[str, tuple[str, str]] = {
    "LOAO": ("LOAO", "gphot.loao.config"),
    "LOAO_FLI": ("LOAO_FLI", "gphot.loao_fli.config"),
    "SOAO": ("SOAO", "gphot.soao.config"),
    "DOAO": ("DOAO_C416K", "gphot.doao.config"),
    "DOAO_PISOPHIA": ("DOAO", "gphot.doao.config"),
    "DOAO_FLI": ("DOAO_FLI", "gphot.doao.config"),
    "DOAO_APOGEE": ("DOAO_APOGEE", "gphot.doao.config"),
    "SAO": ("SAO_C5A150M", "gphot.sao_c5a150m.config"),
    "SAO_KL4040": ("SAO_KL4040", "gphot.sao_kl4040.config"),
    "SAO_C361K": ("SAO_C361K", "gphot.sao_c361k.config"),
    "KHAO": ("KHAO", "gphot.khao.config"),
    "MDFTS": ("MDFTS", "gphot.mdfts.config"),
    "MAAO": ("MAAO", "gphot.maao.config"),
    "DNSM": ("DNSM", "gphot.dnsm.config"),
    "CBNUO": ("CBNUO", "gphot.cbnuo.config"),
    "MCD30INCH": ("MCD30INCH", "gphot.config"),       # no site config: the defaults
    "LSGT": ("LSGT_ASI1600MM", "gphot.lsgt_asi1600mm.config"),
    "LSGT_SNUCAMII": ("LSGT", "gphot.lsgt.config"),
    "KCT": ("KCT_STX16803", "gphot.kct_stx16803.config"),
    "KCT_ASI1600MM": ("KCT_ASI1600MM", "gphot.kct_asi1600mm.config"),
    "RASA36": ("RASA36", "gphot.rasa36.config"),
    "KMTNET_SSO": ("KMTNet_SSO", "gphot.kmtnet.config"),
    "KMTNET_SAAO": ("KMTNet_SAAO", "gphot.kmtnet.config"),
    "KMTNET_CTIO": ("KMTNet_CTIO", "gphot.kmtnet.config"),
    # only 7DT01 and 7DT02 had their own config; every unit shares _7dt.toml
    **{n: (n, "gphot.7dt01.config" if n != "7DT02" else "gphot.7dt02.config")
       for n in SEVEN_DT},
}
NOT_LEGACY = {"FEDER", "SBU_STL1001E"}  # profiles with no legacy row (header fixtures, real data)

# legacy gphot.*.config key -> Phot field
PHOT_KEYS = {
    "refcatname": "refcat", "refmaglower": "refmag_bright", "refmagupper": "refmag_faint",
    "refmagerupper": "refmagerr_max", "inmagerupper": "inmagerr_max", "flagcut": "flag_cut",
    "DETECT_THRESH": "detect_thresh_sigma", "DETECT_MINAREA": "detect_minarea_px",
    "DEBLEND_NTHRESH": "deblend_nthresh", "DEBLEND_MINCONT": "deblend_mincont",
    "BACK_SIZE": "back_size_px", "BACK_FILTERSIZE": "back_filtersize",
    "photfraction": "central_fraction", "refqueryradius": "refquery_radius_deg",
}


def legacy_dir() -> Path:
    if not LEGACY.is_dir():
        pytest.skip(f"legacy reference tables {LEGACY} are absent (../shared sits beside the "
                    "repository in CI, not in a fresh clone)")
    return LEGACY


def read_obs_tables(folder: Path) -> dict[str, dict[str, float]]:
    """obs.dat then obs.gpu-branch.dat (its rows win): name -> gain, rdnoise, dark, pixscale, fov."""
    rows: dict[str, dict[str, float]] = {}
    for name in ("obs.dat", "obs.gpu-branch.dat"):
        for line in (folder / name).read_text().splitlines():
            parts = line.split()
            if len(parts) != 7 or line.lstrip().startswith("#") or parts[0] == "obs":
                continue
            gain, rdnoise, dark, pixscale, fov = map(float, parts[2:])
            rows[parts[0]] = dict(gain=gain, rdnoise=rdnoise, dark=dark, pixscale=pixscale,
                                  fov=fov)
    return rows


def read_gphot(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and not parts[0].startswith("#"):
            out[parts[0]] = parts[1]
    return out


@pytest.fixture(scope="module")
def profiles(tmp_path_factory):
    """The packaged profiles only (module scope runs before the per-test isolation)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GPPY_CONFIG_DIR", str(tmp_path_factory.mktemp("no-user-config")))
        good, bad = load_all()
    assert not bad, {stem: err.problems for stem, err in bad.items()}
    return {p.name: p for p in good.values()}


# --- the packaged set -------------------------------------------------------------------

def test_every_packaged_profile_loads_and_the_network_is_there(profiles):
    assert not set(REQUIRED) - set(profiles)
    for name, p in profiles.items():
        assert (PACKAGED_DIR / f"{name.lower()}.toml").exists(), "file stem = lower-case name"


def test_names_resolve_case_insensitively_and_by_alias():
    assert load_profile("loao").name == "LOAO"
    assert load_profile("Loao").name == "LOAO"
    assert load_profile("30inch").name == "MCD30INCH"
    assert load_profile("elsauce").name == "RASA36"
    assert load_profile("7dt05").name == "7DT05"
    assert load_profile("kmtnet_sso").name == "KMTNET_SSO"
    # the legacy names of the current set-ups are aliases of the plain names
    assert load_profile("SAO_C5A150M").name == "SAO"
    assert load_profile("DOAO_C416K").name == "DOAO"
    assert load_profile("lsgt_asi1600mm").name == "LSGT"
    assert load_profile("KCT_STX16803").name == "KCT"
    assert load_profile("SOAO_FLI4k").name == "SOAO"
    with pytest.raises(UnknownObservatory, match="unknown observatory 'NOWHERE'"):
        load_profile("NOWHERE")


def test_superseded_setups_are_inactive_and_one_profile_per_upload_folder(profiles):
    for name in ("LOAO_FLI", "DOAO_PISOPHIA", "DOAO_FLI", "DOAO_APOGEE", "SAO_KL4040",
                 "SAO_C361K", "KCT_ASI1600MM", "LSGT_SNUCAMII"):
        assert profiles[name].active is False, name
    for name in REQUIRED:
        assert profiles[name].active, name
    roots: dict[str, str] = {}
    for p in profiles.values():
        if p.active:
            assert p.raw.root not in roots, (p.name, roots.get(p.raw.root))
            roots[p.raw.root] = p.name


def test_7dt_units_share_one_base(profiles):
    for name in SEVEN_DT:
        p = profiles[name]
        assert p.raw.root == f"/data/obsdata/{name}"
        assert p.raw.night_folder == "{YYYY}-{MM}-{DD}_gain{gain}"
        assert p.camera.gain_mode == "2750" and p.camera.kind == "CMOS"
        assert p.camera.filters == [f"m{w}" for w in range(400, 876, 25)] + list("ugriz")
        assert profile_as_dict(p) | {"name": "", "description": "", "raw": {}} == \
            profile_as_dict(profiles["7DT01"]) | {"name": "", "description": "", "raw": {}}
        text = (PACKAGED_DIR / f"{name.lower()}.toml").read_text()
        assert set(tomllib.loads(text)) == {"extends", "name", "description"}


def test_cmos_cameras_skip_cosmic_rays_and_written_values_read_back(profiles):
    for p in profiles.values():
        if p.camera.kind == "CMOS":
            assert p.reduction.remove_cosmic_rays is False, p.name
        for band in p.camera.filters:  # what the site writes for each band reads back as it
            assert filter_alias(p.header, p.dialect.filter.get(band, band)) == band, (p.name, band)
        ruled = {rule.type for rule in p.header.classify}  # e.g. SBU's flats are 'Light Frame'
        for ftype in ("bias", "dark", "flat", "science"):
            if ftype not in ruled:
                assert imagetyp_alias(p.header, p.dialect.imagetyp[ftype]) == ftype, (p.name, ftype)
        assert p.site.latitude_deg != 0 and p.site.longitude_deg != 0


def test_every_profile_round_trips_through_toml(profiles):
    for p in profiles.values():
        data = profile_as_dict(p)
        assert tomllib.loads(to_toml(data)) == data, p.name


# --- transcription from the legacy tables -----------------------------------------------

def test_camera_values_equal_the_legacy_rows(profiles):
    rows = read_obs_tables(legacy_dir())
    assert set(profiles) - NOT_LEGACY == set(LEGACY_ROWS), "every profile needs its legacy row"
    for name, (row_name, _) in LEGACY_ROWS.items():
        cam, row = profiles[name].camera, rows[row_name]
        assert cam.gain_e_per_adu == pytest.approx(row["gain"]), name
        assert cam.read_noise_e == pytest.approx(row["rdnoise"]), name
        assert cam.dark_e_per_s == pytest.approx(row["dark"]), name
        assert cam.pixscale_arcsec == pytest.approx(row["pixscale"]), name
        if row["fov"] > 0:
            assert cam.fov_arcmin == pytest.approx(row["fov"]), name
        else:  # DOAO_FLI: the legacy table has no FOV; detector x scale instead
            assert cam.fov_arcmin == pytest.approx(
                max(cam.detector_px) * cam.pixscale_arcsec / 60, rel=1e-3), name
    # the gpu-branch revision wins for 7DT
    assert profiles["7DT05"].camera.gain_e_per_adu == 0.8
    assert profiles["7DT05"].camera.pixscale_arcsec == 0.505


def test_phot_values_equal_the_legacy_configs(profiles):
    folder = legacy_dir() / "phot-configs"
    for name, (_, config) in LEGACY_ROWS.items():
        legacy = read_gphot(folder / config)
        phot = profiles[name].phot
        for key, field in PHOT_KEYS.items():
            expected = legacy[key]
            got = getattr(phot, field)
            if isinstance(got, str):
                assert got == expected, (name, field)
            else:
                assert got == pytest.approx(float(expected)), (name, field)
    # and the two profiles with no legacy config use gphot.config
    defaults = read_gphot(folder / "gphot.config")
    for name in NOT_LEGACY:
        assert profiles[name].phot.refmag_faint == float(defaults["refmagupper"])


def test_rasa36_and_lsgt_photometry_spot_checks(profiles):
    rasa = profiles["RASA36"].phot
    assert (rasa.refcat, rasa.refmag_bright, rasa.refmag_faint, rasa.central_fraction) == (
        "APASS", 14.0, 17.0, 0.5)
    assert (profiles["LSGT"].phot.refcat, profiles["LSGT"].phot.flag_cut) == ("APASS", 3)
    assert profiles["SAO_KL4040"].phot.flag_cut == 4
    assert profiles["7DT10"].phot.refquery_radius_deg == 1.5


# --- user files ---------------------------------------------------------------------------

@pytest.fixture
def user(isolated_dirs) -> Path:
    folder = user_dir()
    folder.mkdir(parents=True)
    return folder


def test_user_file_overrides_only_the_keys_it_sets(user):
    packaged = profile_as_dict(load_profile("LOAO"))
    (user / "loao.toml").write_text("[camera]\ngain_e_per_adu = 3.1\n\n"
                                    "[phot]\nrefmag_faint = 19.5\n")
    mine = profile_as_dict(load_profile("loao"))
    assert mine["camera"]["gain_e_per_adu"] == 3.1 and mine["phot"]["refmag_faint"] == 19.5
    mine["camera"]["gain_e_per_adu"] = packaged["camera"]["gain_e_per_adu"]
    mine["phot"]["refmag_faint"] = packaged["phot"]["refmag_faint"]
    assert mine == packaged


def test_user_file_overriding_a_7dt_unit_keeps_its_base(user):
    (user / "7dt05.toml").write_text('[camera]\ngain_mode = "0"\n')
    p = load_profile("7DT05")
    assert p.camera.gain_mode == "0" and p.camera.gain_e_per_adu == 0.8
    assert p.raw.root == "/data/obsdata/7DT05"
    assert load_profile("7DT06").camera.gain_mode == "2750"


NEW_OBS = """\
name = "MYSCOPE"
description = "a backyard telescope"
aliases = ["backyard"]

[site]
latitude_deg = 37.0
longitude_deg = 127.0
height_m = 50.0

[camera]
name = "ZWO ASI2600MM"
kind = "CMOS"
gain_e_per_adu = 0.8
read_noise_e = 1.5
dark_e_per_s = 0.002
pixscale_arcsec = 1.2
fov_arcmin = 125.0
detector_px = [6248, 4176]
saturation_adu = 65535.0
filters = ["g", "r"]

[raw]
root = "~/uploads/{name}"
night_folder = "{YYYY}{MM}{DD}"

[reduction]
remove_cosmic_rays = false
"""


def test_user_file_with_a_new_name_adds_an_observatory(user):
    (user / "myscope.toml").write_text(NEW_OBS)
    p = load_profile("Backyard")
    assert (p.name, p.camera.kind, p.raw.root) == ("MYSCOPE", "CMOS", "~/uploads/MYSCOPE")
    assert p.phot.refcat == "PS1"  # the defaults fill what the file leaves out
    good, bad = load_all()
    assert "myscope" in good and not bad


def _error(user: Path, stem: str, text: str, name: str | None = None) -> str:
    path = user / f"{stem}.toml"
    path.write_text(text)
    with pytest.raises(ProfileError) as exc:
        load_profile(name or stem)
    _, bad = load_all()
    assert stem in bad  # `gppy obs list` reports it too
    message = str(exc.value)
    assert str(path) in message
    return message


@pytest.mark.parametrize("stem,text,key,expected", [
    ("loao", "[camera]\ncolour = \"red\"\n", "camera.colour", "unknown key; expected one of"),
    ("loao", "[camera]\ngain_e_per_adu = \"high\"\n", "camera.gain_e_per_adu",
     "expected a number, got 'high'"),
    ("loao", "[site]\nlatitude_deg = 95.0\n", "site.latitude_deg", "expected a value <= 90"),
    ("loao", "[camera]\nkind = \"CCD-ish\"\n", "camera.kind", "expected one of 'CCD', 'CMOS'"),
    ("loao", "[phot]\nflag_cut = 1.5\n", "phot.flag_cut", "expected an integer"),
    ("myscope", NEW_OBS.replace("gain_e_per_adu = 0.8\n", ""), "camera.gain_e_per_adu",
     "missing; expected conversion gain"),
    ("loao", "[camera]\ngain_e_per_adu = 2.5.1\n", "camera.gain_e_per_adu",
     "not valid TOML"),
    ("myscope", NEW_OBS.replace("[site]\n", "[site\n"), "site", "not valid TOML"),
    ("myscope", 'extends = "_nowhere"\n' + NEW_OBS, "extends",
     "expected the name of a profile or base file, got '_nowhere'"),
])
def test_validation_errors_name_file_key_and_expectation(user, stem, text, key, expected):
    message = _error(user, stem, text, name="MYSCOPE" if stem == "myscope" else None)
    assert f": {key}: " in message, message
    assert expected in message, message


def test_invalid_toml_says_what_was_expected(user):
    message = _error(user, "loao", "[raw]\nnight_folder = {YYYY}_{MM}{DD}\n")
    assert ": raw.night_folder: not valid TOML" in message
    assert "expected `key = value` with a quoted string" in message


def test_every_problem_is_reported_at_once(user):
    message = _error(user, "loao", "[camera]\ngain_e_per_adu = -1\nread_noise_e = \"low\"\n")
    assert "camera.gain_e_per_adu: expected a value > 0" in message
    assert "camera.read_noise_e: expected a number" in message


# --- the command line ---------------------------------------------------------------------

def _gppy(gppy_bin: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(gppy_bin), *args], capture_output=True, text=True,
                          env=os.environ.copy(), timeout=120)


def test_gppy_obs_list(gppy_bin, profiles):
    run = _gppy(gppy_bin, "obs", "list")
    assert run.returncode == 0, run.stderr
    listed = {line.split()[0] for line in run.stdout.splitlines()[1:] if line.strip()}
    assert set(profiles) <= listed
    assert f"{len(profiles)} profiles" in run.stdout


def test_gppy_obs_list_fails_on_a_broken_user_file(gppy_bin, user):
    (user / "loao.toml").write_text("[site]\nlatitude_deg = 95.0\n")
    run = _gppy(gppy_bin, "obs", "list")
    assert run.returncode == 1
    assert "INVALID" in run.stdout and "site.latitude_deg" in run.stdout


def test_gppy_obs_show_prints_the_loaded_profile(gppy_bin):
    run = _gppy(gppy_bin, "obs", "show", "7DT05")
    assert run.returncode == 0, run.stderr
    assert tomllib.loads(run.stdout) == profile_as_dict(load_profile("7DT05"))
    run = _gppy(gppy_bin, "obs", "show", "nowhere")
    assert run.returncode == 2 and "unknown observatory" in run.stderr
