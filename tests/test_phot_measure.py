"""Photometry of simulated LOAO frames against the simulator's truth: seeing and
ellipticity, zero point and the honesty of its error, magnitude errors, colour
term, limiting magnitudes against the true noise and against injected stars,
saturation flags.

The frames (1024 x 1024, two in V and two in R, 120 s) are calibrated with the
true bias, dark and flat (`gppy.bench.cosmics.calibrated_frame`, as the
calibration stage computes it), saturated pixels flagged as the pipeline flags
them, cosmic rays from the truth; written as Calib files with the true WCS, and
measured from the files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from scipy import ndimage

from gppy.bench.cosmics import calibrated_frame, true_sigma_e
from gppy.obsconfig.loader import load_profile
from gppy.phot.apertures import overlap_noise_factor
from gppy.phot.detect import SourceFlag
from gppy.phot.inject import injection_depth
from gppy.phot.limits import empty_distance_px
from gppy.phot.measure import FrameCatalog, measure_file
from gppy.phot.zeropoint import ZeroPoint, calibration_stars, crossmatch, fit_zeropoint
from gppy.reduction.flags import Pixel
from gppy.reduction.preprocess import load_raw
from gppy.sim.psf import PSF

from conftest import simulate_nights

MATCH_ARCSEC = 1.0


@dataclass
class Measured:
    frame: dict                  # the truth's record
    path: Path                   # the Calib file
    cat: FrameCatalog


def _calib_file(out: Path, truth, frame: dict, profile) -> Path:
    cal = calibrated_frame(truth, frame, with_truth=False)
    _, saturated = load_raw(out / truth.meta["raw_folder"] / frame["file"], profile)
    mask = np.zeros(truth.shape, np.uint16)
    mask[cal.bad_mask & ~saturated] |= Pixel.HOT      # the bench's mask: hot or saturated
    mask[saturated] |= Pixel.SATURATED
    mask[truth.cosmic_mask(frame["file"])] |= Pixel.COSMIC
    header = truth.wcs(frame["file"]).to_header(relax=True)
    header["EXPTIME"] = frame["exptime_s"]
    header["BUNIT"] = "electron"
    path = out / f"Calib-{frame['file']}"
    fits.HDUList([fits.PrimaryHDU(cal.image_e, header), fits.ImageHDU(mask, name="MASK"),
                  fits.ImageHDU(np.sqrt(cal.var_e2), name="ERR")]).writeto(path)
    return path


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    out, (truth,) = simulate_nights(tmp_path_factory.mktemp("phot"), "LOAO", 1024, nscience=2)
    profile = load_profile("LOAO")
    measured = []
    for frame in (f for f in truth.frames if f["type"] == "science"):
        path = _calib_file(out, truth, frame, profile)
        measured.append(Measured(frame, path, measure_file(path, profile)))
    return truth, profile, measured


def _matched(truth, m: Measured):
    """(catalogue rows, truth stars) matched by position through the true WCS."""
    stars = truth.stars[truth.stars["field"] == m.frame["field"]]
    i, j, _ = crossmatch(m.cat.table["ra"], m.cat.table["dec"], stars["ra"], stars["dec"],
                         MATCH_ARCSEC)
    return m.cat.table[i], stars[j]


def _zero_point(truth, profile, m: Measured, key: str = "opt", colour=None, offset=0.0
                ) -> tuple[ZeroPoint, np.ndarray]:
    """(the zero point of aperture `key` from the truth magnitudes (+ offset) as
    reference, the stars selected for it among the matched ones)."""
    rows, stars = _matched(truth, m)
    ref = np.asarray(stars[f"mag_{m.frame['filter']}"], float) + offset
    ph = profile.phot
    use = calibration_stars(rows["flags"], ref, np.zeros(len(ref)), rows[f"magerr_{key}"],
                            rows["x"], rows["y"], m.cat.shape,
                            refmag_bright=ph.refmag_bright, refmag_faint=ph.refmag_faint,
                            refmagerr_max=ph.refmagerr_max, inmagerr_max=ph.inmagerr_max,
                            flag_cut=ph.flag_cut, central_fraction=ph.central_fraction)
    col = None if colour is None else np.asarray(colour)[use]
    return fit_zeropoint(rows[f"mag_{key}"][use], rows[f"magerr_{key}"][use], ref[use],
                         np.zeros(use.sum()), colour=col), use


def test_catalogue_layout_and_apertures(sim):
    truth, profile, measured = sim
    scale = profile.camera.pixscale_arcsec
    for m in measured:
        cat = m.cat
        keys = [a.key for a in cat.apertures]
        assert keys == ["opt", "fwhm135", "fwhm200", "fwhm300", "3arcsec", "5arcsec", "auto"]
        for key in keys:
            for prefix in ("flux", "fluxerr", "mag", "magerr"):
                assert f"{prefix}_{key}" in cat.table.colnames
        assert cat.aperture("3arcsec").diameter_arcsec == pytest.approx(3.0, rel=1e-3)
        assert cat.aperture("5arcsec").diameter_arcsec == pytest.approx(5.0, rel=1e-3)
        assert cat.aperture("fwhm200").aperture.diameter_px == pytest.approx(2 * cat.fwhm_px)
        opt = cat.aperture("opt").aperture.diameter_px / cat.fwhm_px
        print(f"{m.frame['file']}: {len(cat.table)} sources, optimum {opt:.2f} FWHM, "
              f"apcorr opt {cat.aperture('opt').apcorr_mag:+.3f}, "
              f"auto {cat.aperture('auto').apcorr_mag:+.3f}")
        assert 1.0 < opt < 2.0      # a Moffat's sky-limited optimum
        assert cat.pixscale_arcsec == pytest.approx(scale, rel=1e-3)
        assert np.all(np.diff(cat.table["flux_auto"][np.isfinite(cat.table["flux_auto"])]) <= 0)


def test_seeing_and_ellipticity_match_the_truth(sim):
    """The seeing within 3 % of the true FWHM (before pixelisation) where the PSF
    stars lie (the field-dependent growth of the PSF is < 1 % here), and of the
    optical axis's; the ellipticity within 0.02."""
    truth, profile, measured = sim
    for m in measured:
        psf = PSF(**m.frame["psf"])
        stars = m.cat.table[np.isin(m.cat.table["id"], m.cat.psf_star_ids)]
        a_major, a_minor, angle = psf.shape_at(stars["x"], stars["y"])
        fwhm_true = (2 * np.sqrt(a_major * a_minor) * np.sqrt(2 ** (1 / psf.beta) - 1)
                     * profile.camera.pixscale_arcsec)
        e = 1 - a_minor / a_major
        e_true = np.hypot(np.mean(e * np.cos(2 * angle)), np.mean(e * np.sin(2 * angle)))
        err_stars = m.cat.seeing_arcsec / np.median(fwhm_true) - 1
        err_axis = m.cat.seeing_arcsec / m.frame["fwhm_arcsec"] - 1
        print(f"{m.frame['file']}: seeing {m.cat.seeing_arcsec:.3f}\" from {m.cat.n_psf_stars} "
              f"stars, true {np.median(fwhm_true):.3f}\" there ({err_stars:+.2%}), "
              f"{m.frame['fwhm_arcsec']:.3f}\" on axis ({err_axis:+.2%}); ellipticity "
              f"{m.cat.ellipticity:.3f} (true {e_true:.3f}); beta {m.cat.psf.beta:.2f} "
              f"(true {psf.beta:.2f})")
        assert m.cat.n_psf_stars >= 10
        assert abs(err_stars) < 0.03 and abs(err_axis) < 0.03
        assert abs(m.cat.ellipticity - e_true) < 0.02


def test_zero_point_matches_the_truth_with_an_honest_error(sim):
    """The optimum aperture's zero point minus its aperture correction is the
    total-flux zero point: within 0.01 mag of the truth's zp_e_mag, and the errors
    (zero point and aperture correction) account for the differences over frames."""
    truth, profile, measured = sim
    pulls = []
    for m in measured:
        zp, _ = _zero_point(truth, profile, m)
        opt = m.cat.aperture("opt")
        total = zp.zp_mag - opt.apcorr_mag
        err = np.hypot(zp.zp_err_mag, opt.apcorr_err_mag)
        diff = total - m.frame["zp_e_mag"]
        pulls.append(diff / err)
        print(f"{m.frame['file']}: ZP(opt) {zp.zp_mag:.4f} +- {zp.zp_err_mag:.4f} "
              f"({zp.n_used} of {zp.n_input} stars, scatter {zp.scatter_mag:.4f}), apcorr "
              f"{opt.apcorr_mag:+.4f} +- {opt.apcorr_err_mag:.4f}: total {total:.4f} +- "
              f"{err:.4f}, truth {m.frame['zp_e_mag']:.4f}, diff {diff:+.4f}")
        assert zp.n_used >= 15
        assert abs(diff) < 0.01
        assert err < 0.01
    chi2 = float(np.mean(np.square(pulls)))
    print(f"chi2 / N over {len(pulls)} frames: {chi2:.2f}")
    assert 0.05 < chi2 < 3.0


def test_magnitude_errors_are_honest(sim):
    """Calibrated magnitudes of unflagged faint stars differ from the truth as
    their errors say: robust std of (mag - true) / magerr within 0.85-1.2."""
    truth, profile, measured = sim
    pulls = []
    for m in measured:
        zp, _ = _zero_point(truth, profile, m)
        rows, stars = _matched(truth, m)
        true_mag = np.asarray(stars[f"mag_{m.frame['filter']}"], float)
        ok = ((rows["flags"] & ~SourceFlag.BLENDED) == 0) & (rows["magerr_opt"] > 0.02) \
            & (rows["magerr_opt"] < 0.2)
        pulls.append((rows["mag_opt"][ok] + zp.zp_mag - true_mag[ok]) / rows["magerr_opt"][ok])
    z = np.concatenate(pulls)
    robust = 1.4826 * np.median(np.abs(z - np.median(z)))
    print(f"{z.size} stars: median pull {np.median(z):+.2f}, robust std {robust:.2f}")
    assert z.size >= 50
    assert 0.85 < robust < 1.2
    assert abs(np.median(z)) < 0.3


def test_colour_term_is_recovered(sim):
    """Reference magnitudes given a colour term of 0.1 (mag_ref = V + 0.1 (B - V)):
    the fit returns it within 3 sigma, and at the stars' mean colour the same
    offset as the colour-free fit plus 0.1 times that colour."""
    truth, profile, measured = sim
    for m in (m for m in measured if m.frame["filter"] == "V"):
        rows, stars = _matched(truth, m)
        colour = np.asarray(stars["mag_B"] - stars["mag_V"], float)
        zp, use = _zero_point(truth, profile, m, colour=colour, offset=0.1 * colour)
        plain, _ = _zero_point(truth, profile, m)
        used_colour = colour[use][zp.used]
        mean_colour = float(np.mean(used_colour))
        at_mean = zp.zp_mag + zp.colour_term * mean_colour
        print(f"{m.frame['file']}: colour term {zp.colour_term:.4f} +- {zp.colour_term_err:.4f} "
              f"({zp.n_used} stars, B-V {used_colour.min():.2f} to "
              f"{used_colour.max():.2f}); at B-V = {mean_colour:.2f}: {at_mean:.4f}, "
              f"expected {plain.zp_mag + 0.1 * mean_colour:.4f}")
        assert abs(zp.colour_term - 0.1) < 3 * zp.colour_term_err
        assert zp.colour_term_err < 0.03
        assert abs(at_mean - (plain.zp_mag + 0.1 * mean_colour)) < 0.005


def test_empty_aperture_noise_is_the_true_noise(sim):
    """The noise in empty apertures equals that of independent pixels of the
    truth's noise (sky, dark, read noise through the flat), within 8 %."""
    truth, _, measured = sim
    for m in measured:
        sigma = true_sigma_e(truth, m.frame)
        with fits.open(m.path) as hdul:
            mask = hdul["MASK"].data
        free = empty_distance_px(mask != 0) > 0
        sigma_px = float(np.sqrt(np.mean(sigma[free] ** 2)))
        for a in m.cat.apertures:
            if a.aperture.kind != "circle":
                continue
            r = a.aperture.diameter_px / 2
            expected = overlap_noise_factor(r) * np.sqrt(np.pi * r * r) * sigma_px
            print(f"{m.frame['file']} {a.key}: empty {a.noise_e:.1f} e-, ERR says "
                  f"{a.noise_err_e:.1f}, truth {expected:.1f} ({a.noise_e / expected - 1:+.1%})")
            assert 0.95 < a.noise_e / expected < 1.08
            assert 0.95 < a.noise_e / a.noise_err_e < 1.08


def test_five_sigma_limit_matches_injected_depth(sim):
    """The 5-sigma limit of the optimum aperture (made total with its aperture
    correction) within 0.15 mag of the magnitude where half of the injected stars
    are detected with S/N >= 5."""
    truth, profile, measured = sim
    for k, m in enumerate(measured):
        with fits.open(m.path) as hdul:
            image, mask, err = hdul[0].data, hdul["MASK"].data, hdul["ERR"].data
        result = injection_depth(image, mask, err, m.cat, profile.phot, seed=k)
        opt = m.cat.aperture("opt")
        ul5_total = opt.ul5_mag + opt.apcorr_mag
        zp_total = m.frame["zp_e_mag"]
        print(f"{m.frame['file']}: UL5 {ul5_total + zp_total:.3f}, injected 50 % "
              f"{result.m50_inst + zp_total:.3f} (width {result.width_mag:.3f}, "
              f"{result.recovered.sum()} of {result.recovered.size}), "
              f"diff {ul5_total - result.m50_inst:+.3f} mag")
        assert result.mag_inst.size >= 400
        assert abs(ul5_total - result.m50_inst) < 0.15
        assert 0.02 < result.width_mag < 0.4


def test_saturated_stars_are_flagged(sim):
    """Every saturated star (a group of SATURATED pixels) is detected as one source
    at its centre, flagged SATURATED, and is no PSF star."""
    truth, profile, measured = sim
    total = 0
    for m in measured:
        with fits.open(m.path) as hdul:
            saturated = (hdul["MASK"].data & Pixel.SATURATED) != 0
        labels, n = ndimage.label(saturated)
        centres = np.array(ndimage.center_of_mass(saturated, labels, range(1, n + 1)))
        table = m.cat.table
        for cy, cx in centres.reshape(-1, 2):
            near = np.hypot(table["x"] - cx, table["y"] - cy) < 2.0
            assert near.sum() == 1, f"saturated star at ({cx:.0f}, {cy:.0f}): {near.sum()} sources"
            assert table["flags"][near][0] & SourceFlag.SATURATED
            assert table["id"][near][0] not in m.cat.psf_star_ids
        total += n
    print(f"{total} saturated stars over {len(measured)} frames")
    assert total >= 4
