"""Pattern matching and WCS refinement on simulated frames, against the
simulator's true TAN-SIP WCS: from the header pointing and the profile's pixel
scale only, the refined WCS must agree with the truth to 0.1 pixel over the whole
frame, corners included (pixel -> sky with ours -> pixel with the truth), for very
different cameras; large pointing errors, any rotation, a mirror image, sparse
fields and outliers are handled; hopeless cases fail fast with None."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table, vstack
from astropy.wcs import WCS

from gppy.astrometry import tycho
from gppy.astrometry.match import catalog_radius_deg, match_pattern
from gppy.astrometry.refcat import reference_stars
from gppy.astrometry.refine import centroid_errors, refine
from gppy.astrometry.sources import detect
from gppy.obsconfig.loader import load_profile
from gppy.sim.pointing import offset_arcsec
from gppy.sim.truth import wcs_error_px

from conftest import SimulatedFrame, noisy, simulate_nights

pytestmark = pytest.mark.skipif(not (tycho.DEFAULT_INDEX_DIR / tycho.INDEX_NAME).is_file(),
                                reason="astrometry-data-tycho2-07-littleendian is not installed")

TARGET_PX = 0.1
# profile, simulated size (None: the full detector), simulation seed
CASES = {"LOAO": (None, 11),              # 2048 px at 0.794" = 27'
         "KCT_ASI1600MM": (None, 3),      # 4656 x 3520 at 0.306" = 24' x 18', CMOS
         "RASA36": (2048, 2)}             # 2048 px at 2.36" = 80'


@dataclass
class Case(SimulatedFrame):
    obs: str
    sources: Table
    catalog: Table
    pixscale: float
    refcat_path: Path


class _Cases:
    """Simulated frames, made on first use. Only the truth is needed (the images are
    its noise-free frames plus noise), so the raw frames are not rendered."""

    def __init__(self, base: Path):
        self.base = base
        self.cases: dict[str, Case] = {}

    def __getitem__(self, obs: str) -> Case:
        if obs not in self.cases:
            size, seed = CASES[obs]
            out, (truth,) = simulate_nights(self.base / obs, obs, size, nights=1, nscience=1,
                                            seed=seed, render=False)
            frame = next(f for f in truth.frames if f["type"] == "science")
            image = noisy(truth, frame, seed)
            pixscale = load_profile(obs).camera.pixscale_arcsec
            refcat_path = out / "refcat.ecsv"
            catalog = reference_stars(frame["ra_cmd_deg"], frame["dec_cmd_deg"],
                                      catalog_radius_deg(truth.shape, pixscale),
                                      source=str(refcat_path), cache_dir=self.base / "cache")
            self.cases[obs] = Case(truth, frame, obs, detect(image), catalog, pixscale,
                                   refcat_path)
        return self.cases[obs]


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> _Cases:
    return _Cases(tmp_path_factory.mktemp("astrometry"))


def solve(case: Case, sources=None, pointing=None, **kw):
    sources = case.sources if sources is None else sources
    t0 = time.perf_counter()
    result = match_pattern(sources, case.catalog, pointing or case.pointing, case.pixscale,
                           case.shape, **kw)
    t1 = time.perf_counter()
    if result is None:
        return None, None, None, (t1 - t0, 0.0)
    wcs, stats = refine(result.wcs, sources, case.catalog, case.shape, sip_order=3)
    return result, wcs, stats, (t1 - t0, time.perf_counter() - t1)


# ----------------------------------------------------------------------- accuracy

@pytest.mark.parametrize("obs", list(CASES))
def test_solves_from_the_header_pointing_to_a_tenth_of_a_pixel(cases, obs):
    case = cases[obs]
    result, wcs, stats, (t_match, t_refine) = solve(case)
    assert result is not None, f"{obs}: no match"
    err = wcs_error_px(wcs, case.true_wcs, case.shape)
    corners = err.reshape(21, 21)[[0, 0, -1, -1], [0, -1, 0, -1]]
    print(f"\n{obs} {case.shape}: {len(case.sources)} sources, {len(case.catalog)} catalogue stars;"
          f" match {result.n_matches} ({result.n_verified} >= {result.n_required}) in "
          f"{t_match:.2f} s, refine {stats.nstars} stars (SIP {stats.sip_order}, rejected "
          f"{stats.n_rejected}) rms {stats.rms_arcsec:.3f}\" in {t_refine:.2f} s; vs truth: max "
          f"{err.max():.3f} px, rms {np.sqrt(np.mean(err ** 2)):.3f} px, corners "
          f"{np.round(corners, 3).tolist()}")
    assert err.max() <= TARGET_PX
    profile = load_profile(obs)
    assert stats.ok and stats.converged
    assert stats.nstars >= profile.astrometry.min_stars
    assert stats.rms_arcsec < profile.astrometry.good_rms_arcsec
    assert stats.median_sep_arcsec <= stats.rms_arcsec
    assert stats.sip_order_requested == 3
    assert stats.noise_model is not None and stats.predicted_err_px < TARGET_PX
    assert not result.flipped
    true_scale = math.sqrt(abs(np.linalg.det(case.true_wcs.wcs.cd))) * 3600
    assert result.scale_arcsec == pytest.approx(true_scale, rel=2e-3)
    assert t_match + t_refine < 5.0
    r = stats.residuals
    assert len(r) == stats.n_matched and r["used"].sum() == stats.nstars
    assert np.sqrt(np.mean(r["sep_arcsec"][r["used"]] ** 2)) == pytest.approx(stats.rms_arcsec)


def test_the_fitted_wcs_is_a_complete_tan_sip_header(cases):
    case = cases["LOAO"]
    _, wcs, stats, _ = solve(case)
    header = wcs.to_header(relax=True)
    assert header["CTYPE1"] == "RA---TAN-SIP" and header["A_ORDER"] == 3
    assert header["AP_ORDER"] == 4 and stats.inverse_max_err_px < 0.01
    ny, nx = case.shape
    assert (header["CRPIX1"], header["CRPIX2"]) == ((nx + 1) / 2, (ny + 1) / 2)
    again = WCS(header, relax=True)
    xy = np.array([[0.0, 0.0], [nx - 1.0, ny - 1.0], [100.5, 1800.25]])
    assert np.allclose(again.all_pix2world(xy, 0), wcs.all_pix2world(xy, 0), rtol=0, atol=1e-10)
    back = wcs.all_world2pix(wcs.all_pix2world(xy, 0), 0, tolerance=1e-10)
    assert np.abs(back - xy).max() < 1e-6
    # AP/BP alone (as other tools use them) invert the distortion to 0.01 px
    foc = wcs.sip_pix2foc(xy, 1)
    assert np.abs(wcs.sip_foc2pix(foc, 1) - xy).max() < 0.01


# ------------------------------------------------------------------ hard starts

def test_a_pointing_off_by_much_of_the_field_still_matches(cases):
    case = cases["LOAO"]
    fov_arcsec = max(case.shape) * case.pixscale
    ra, dec = offset_arcsec(*case.pointing, 0.45 * fov_arcsec, -0.35 * fov_arcsec)  # 0.57 FOV
    catalog = reference_stars(ra, dec, catalog_radius_deg(case.shape, case.pixscale),
                              source=str(case.refcat_path), cache_dir=Path("unused"))
    shifted = Case(**{**case.__dict__, "catalog": catalog})
    result, wcs, stats, _ = solve(shifted, pointing=(ra, dec))
    assert result is not None
    assert result.offset_arcsec == pytest.approx(0.57 * fov_arcsec, rel=0.05)
    assert wcs_error_px(wcs, case.true_wcs, case.shape).max() <= TARGET_PX


def test_a_pointing_off_by_twice_the_field_fails_fast(cases):
    case = cases["LOAO"]
    fov_arcsec = max(case.shape) * case.pixscale
    ra, dec = offset_arcsec(*case.pointing, 0.0, 2.0 * fov_arcsec)
    catalog = reference_stars(ra, dec, catalog_radius_deg(case.shape, case.pixscale),
                              source=str(case.refcat_path), cache_dir=Path("unused"))
    t0 = time.perf_counter()
    assert match_pattern(case.sources, catalog, (ra, dec), case.pixscale, case.shape) is None
    assert time.perf_counter() - t0 < 3.0


def test_a_catalogue_of_another_field_gives_none(cases):
    kct, loao = cases["KCT_ASI1600MM"], cases["LOAO"]
    t0 = time.perf_counter()
    assert match_pattern(kct.sources, loao.catalog, loao.pointing, kct.pixscale, kct.shape) is None
    assert match_pattern(loao.sources, kct.catalog, kct.pointing, loao.pixscale, loao.shape) is None
    assert time.perf_counter() - t0 < 3.0


def test_spurious_bright_detections_are_survived(cases):
    """A third of the 150 brightest 'detections' are junk (hot pixels, satellites)."""
    case = cases["LOAO"]
    rng = np.random.default_rng(8)
    ny, nx = case.shape
    junk = Table({"x": rng.uniform(10, nx - 10, 50), "y": rng.uniform(10, ny - 10, 50),
                  "flux": np.full(50, 1e9), "flux_err": np.full(50, 1.0),
                  "fwhm_px": np.full(50, 1.0)})
    sources = vstack([junk, case.sources[["x", "y", "flux", "flux_err", "fwhm_px"]]])
    result, wcs, stats, _ = solve(case, sources=sources)
    assert result is not None and result.attempt > 0
    assert not set(range(50)) & set(stats.residuals["det"][stats.residuals["used"]].tolist())
    assert wcs_error_px(wcs, case.true_wcs, case.shape).max() <= TARGET_PX


def _rotate_flip(sources: Table, shape, angle_deg: float, flip: bool):
    """Detections as a camera rotated by angle_deg (and mirrored) would see them, kept
    inside the frame; and the map from those pixels back to the original frame."""
    ny, nx = shape
    cx, cy = (nx - 1) / 2, (ny - 1) / 2
    c, s = math.cos(math.radians(angle_deg)), math.sin(math.radians(angle_deg))

    def forward(x, y):
        x = 2 * cx - x if flip else x
        return cx + c * (x - cx) - s * (y - cy), cy + s * (x - cx) + c * (y - cy)

    def backward(x, y):
        u, v = c * (x - cx) + s * (y - cy), -s * (x - cx) + c * (y - cy)
        u = -u if flip else u
        return cx + u, cy + v

    out = sources.copy()
    out["x"], out["y"] = forward(np.asarray(sources["x"]), np.asarray(sources["y"]))
    inside = (out["x"] > 5) & (out["x"] < nx - 6) & (out["y"] > 5) & (out["y"] < ny - 6)
    return out[inside], backward


@pytest.mark.parametrize("angle, flip", [(137.0, True), (-61.0, False)])
def test_any_rotation_and_a_mirror_image(cases, angle, flip):
    case = cases["LOAO"]
    sources, back = _rotate_flip(case.sources, case.shape, angle, flip)
    result, wcs, stats, _ = solve(case, sources=sources)
    assert result is not None and result.flipped == flip
    # the new frame's +y axis, in the original frame, then on the sky (east, north)
    a = math.radians(angle)
    d = np.array([-math.sin(a) if flip else math.sin(a), math.cos(a)])
    east, north = case.true_wcs.wcs.cd @ d
    expected = math.degrees(math.atan2(east, north))
    diff = (result.rotation_deg - expected + 180.0) % 360.0 - 180.0
    assert abs(diff) < 0.2
    # inside the disc the rotated frame shares with the original
    err = wcs_error_px(wcs, case.true_wcs, case.shape, grid=31, transform=back)
    ny, nx = case.shape
    gx, gy = np.meshgrid(np.linspace(0, nx - 1, 31), np.linspace(0, ny - 1, 31))
    common = np.hypot(gx.ravel() - (nx - 1) / 2, gy.ravel() - (ny - 1) / 2) < 0.5 * min(nx, ny)
    assert err[common].max() <= TARGET_PX


def test_a_mirror_image_is_not_matched_when_flips_are_not_allowed(cases):
    case = cases["LOAO"]
    sources, _ = _rotate_flip(case.sources, case.shape, 0.0, True)
    assert match_pattern(sources, case.catalog, case.pointing, case.pixscale, case.shape,
                         allow_flip=False) is None
    assert match_pattern(sources, case.catalog, case.pointing, case.pixscale, case.shape,
                         allow_flip=True).flipped


def test_the_pixel_scale_tolerance(cases):
    case = cases["RASA36"]
    near = match_pattern(case.sources, case.catalog, case.pointing, case.pixscale * 1.03,
                         case.shape)
    assert near is not None
    assert near.scale_arcsec == pytest.approx(case.pixscale, rel=3e-3)
    t0 = time.perf_counter()
    assert match_pattern(case.sources, case.catalog, case.pointing, case.pixscale * 1.12,
                         case.shape, scale_tolerance=0.05) is None
    assert time.perf_counter() - t0 < 3.0


def test_a_wide_field_solves_with_tycho2_alone(cases, tmp_path):
    case = cases["RASA36"]
    catalog = reference_stars(*case.pointing, catalog_radius_deg(case.shape, case.pixscale),
                              source="tycho2", cache_dir=tmp_path)
    result = match_pattern(case.sources, catalog, case.pointing, case.pixscale, case.shape)
    assert result is not None
    wcs, stats = refine(result.wcs, case.sources, catalog, case.shape, 3)
    assert stats.nstars > 50
    assert wcs_error_px(wcs, case.true_wcs, case.shape).max() <= TARGET_PX


# ------------------------------------------------------------------------- refine

def test_refine_from_a_sip_wcs_slightly_off(cases):
    """Like solve-field's answer: a TAN-SIP WCS a few pixels and a little rotation off."""
    case = cases["KCT_ASI1600MM"]
    start = case.true_wcs.deepcopy()
    start.wcs.crval = [start.wcs.crval[0] + 1.0 / 3600, start.wcs.crval[1] - 0.6 / 3600]
    t = math.radians(0.02)
    rotation = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    start.wcs.cd = rotation @ start.wcs.cd
    start.wcs.set()
    wcs, stats = refine(start, case.sources, case.catalog, case.shape, 3)
    assert stats.ok and stats.sip_order == 3
    assert wcs_error_px(wcs, case.true_wcs, case.shape).max() <= TARGET_PX


def test_checking_a_wcs_without_fitting_it(cases):
    case = cases["LOAO"]
    true = case.true_wcs
    good, stats = refine(true, case.sources, case.catalog, case.shape, 3, fit=False)
    assert good is true and stats.ok and stats.sip_order == 3
    assert stats.nstars > 200 and stats.rms_arcsec < 0.1
    assert "checked only" in stats.notes[0]
    off = case.true_wcs.deepcopy()          # 2.4" (3 px) off: few stars within 5 px agree
    off.wcs.crval = [off.wcs.crval[0], off.wcs.crval[1] + 2.4 / 3600]
    off.wcs.set()
    _, bad = refine(off, case.sources, case.catalog, case.shape, 3, fit=False)
    assert not bad.ok or bad.rms_arcsec > 2.0


def test_sparse_fields_lower_the_sip_order(cases):
    case = cases["LOAO"]
    result = match_pattern(case.sources, case.catalog, case.pointing, case.pixscale, case.shape)
    few = case.sources[:20]
    wcs, stats = refine(result.wcs, few, case.catalog, case.shape, 3)
    assert stats.ok and stats.nstars <= 20 and stats.sip_order < 3
    assert any("SIP order lowered from 3" in note for note in stats.notes)
    # still a usable WCS (the true distortion is ~1 px at the corners)
    assert wcs_error_px(wcs, case.true_wcs, case.shape).max() < 2.0
    unchanged, stats = refine(result.wcs, case.sources[:3], case.catalog, case.shape, 3)
    assert unchanged is result.wcs and not stats.ok and "nothing fitted" in stats.notes[0]


def test_refine_rejects_outliers(cases):
    case = cases["LOAO"]
    rng = np.random.default_rng(3)
    ny, nx = case.shape
    catalog = case.catalog.copy()
    _, _, baseline, _ = solve(case)
    used = baseline.residuals["cat"][baseline.residuals["used"]]
    bad = rng.choice(np.asarray(used), 25, replace=False)         # wrong catalogue positions
    catalog["dec"][bad] += rng.choice([-1, 1], 25) * 0.4 / 3600.0    # 0.5 px, 10 sigma
    junk = Table({"x": rng.uniform(10, nx - 10, 100), "y": rng.uniform(10, ny - 10, 100),
                  "flux": np.full(100, 1e3), "flux_err": np.full(100, 10.0),
                  "fwhm_px": np.full(100, 2.5)})                    # spurious detections
    sources = vstack([case.sources[["x", "y", "flux", "flux_err", "fwhm_px"]], junk])
    result = match_pattern(sources, catalog, case.pointing, case.pixscale, case.shape)
    wcs, stats = refine(result.wcs, sources, catalog, case.shape, 3)
    rejected = set(stats.residuals["cat"][~stats.residuals["used"]].tolist())
    matched_bad = set(bad.tolist()) & set(stats.residuals["cat"].tolist())
    assert len(matched_bad) >= 20 and matched_bad <= rejected
    assert wcs_error_px(wcs, case.true_wcs, case.shape).max() <= TARGET_PX


def test_centroid_errors_follow_the_signal_to_noise(cases):
    sources = cases["LOAO"].sources                  # brightest first
    err = centroid_errors(sources)
    assert np.all(err > 0) and err[:20].mean() < 0.1 * err[-20:].mean()
