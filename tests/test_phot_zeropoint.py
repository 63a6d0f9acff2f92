"""Zero-point fitting and cross-matching against known truth: synthetic stars with
stated errors, extra scatter and outliers, many realisations, so that the fitted
zero point, colour term and their errors can be checked statistically (the
simulated frames are in tests/test_phot_measure.py)."""

from __future__ import annotations

import numpy as np
import pytest

from gppy.phot.detect import SourceFlag
from gppy.phot.zeropoint import calibration_stars, crossmatch, fit_zeropoint

ZP_TRUE = 24.3
COLOUR_TERM_TRUE = -0.07


def _stars(rng, n=60, extra_scatter=0.0, outliers=0.0, colour_term=0.0):
    """(mag_inst, magerr_inst, mag_ref, magerr_ref, colour) of n stars whose
    errors are what the stated ones say (plus extra_scatter for all, and a
    fraction of outliers off by 0.1-0.5 mag)."""
    mag_ref_true = rng.uniform(13, 19, n)
    colour = rng.uniform(-0.2, 1.6, n)
    magerr_inst = 0.002 + 0.03 * 10 ** (0.4 * (mag_ref_true - 19))     # faint: larger
    magerr_ref = rng.uniform(0.005, 0.03, n)
    mag_inst = (mag_ref_true - ZP_TRUE - colour_term * colour
                + rng.normal(0, 1, n) * np.hypot(magerr_inst, extra_scatter))
    mag_ref = mag_ref_true + rng.normal(0, 1, n) * magerr_ref
    bad = rng.random(n) < outliers
    offset = np.zeros(n)
    offset[bad] = rng.uniform(0.1, 0.5, bad.sum()) * rng.choice([-1, 1], bad.sum())
    mag_inst += offset
    # how many sigma each outlier is off
    sigmas_off = np.abs(offset) / np.sqrt(magerr_inst ** 2 + magerr_ref ** 2 + extra_scatter ** 2)
    return mag_inst, magerr_inst, mag_ref, magerr_ref, colour, sigmas_off


@pytest.mark.parametrize("extra_scatter, outliers", [(0.0, 0.0), (0.02, 0.0), (0.01, 0.08)])
def test_zero_point_error_is_honest_over_many_realisations(extra_scatter, outliers):
    """Over 400 fields the zero point is unbiased and (zp - truth) / zp_err has a
    standard deviation of 1 within 12 %: the stated error is the real one, whether
    the stars' errors explain their scatter or not and with outliers about, every
    one of those more than 8 sigma off rejected."""
    rng = np.random.default_rng(11)
    pulls, extra, outliers_kept, outliers_total = [], [], 0, 0
    for _ in range(400):
        mag_inst, magerr_inst, mag_ref, magerr_ref, _, off = _stars(rng, 60, extra_scatter,
                                                                    outliers)
        bad = off > 8
        zp = fit_zeropoint(mag_inst, magerr_inst, mag_ref, magerr_ref, floor_mag=0.0)
        pulls.append((zp.zp_mag - ZP_TRUE) / zp.zp_err_mag)
        outliers_kept += int((zp.used & bad).sum())
        outliers_total += int(bad.sum())
        extra.append(zp.extra_scatter_mag)
    pulls = np.array(pulls)
    print(f"extra scatter {extra_scatter}, outliers {outliers:.0%}: pull mean {pulls.mean():+.3f}, "
          f"std {pulls.std():.3f}; extra scatter found {np.median(extra):.4f} (median); "
          f"outliers > 8 sigma kept {outliers_kept} of {outliers_total}")
    assert abs(pulls.mean()) < 0.15
    assert 0.88 < pulls.std() < 1.12
    assert outliers_kept == 0
    assert np.median(extra) == pytest.approx(extra_scatter, abs=0.004)


def test_colour_term_and_its_error_are_honest():
    rng = np.random.default_rng(5)
    pulls_c, pulls_zp = [], []
    for _ in range(300):
        mag_inst, magerr_inst, mag_ref, magerr_ref, colour, _ = _stars(
            rng, 80, 0.01, 0.0, COLOUR_TERM_TRUE)
        zp = fit_zeropoint(mag_inst, magerr_inst, mag_ref, magerr_ref, colour=colour,
                           floor_mag=0.0)
        pulls_c.append((zp.colour_term - COLOUR_TERM_TRUE) / zp.colour_term_err)
        pulls_zp.append((zp.zp_mag - ZP_TRUE) / zp.zp_err_mag)
    pulls_c, pulls_zp = np.array(pulls_c), np.array(pulls_zp)
    print(f"colour term pulls: mean {pulls_c.mean():+.3f} std {pulls_c.std():.3f}; "
          f"zp pulls: mean {pulls_zp.mean():+.3f} std {pulls_zp.std():.3f}")
    for p in (pulls_c, pulls_zp):
        assert abs(p.mean()) < 0.15 and 0.88 < p.std() < 1.12


def test_error_floor_and_too_few_stars():
    rng = np.random.default_rng(2)
    mag_inst, magerr_inst, mag_ref, magerr_ref, _, _ = _stars(rng, 500)
    zp = fit_zeropoint(mag_inst, magerr_inst, mag_ref, magerr_ref, floor_mag=0.004)
    assert zp.zp_err_mag == 0.004 and zp.n_input == 500 and zp.n_used >= 495
    assert fit_zeropoint(mag_inst[:2], magerr_inst[:2], mag_ref[:2], magerr_ref[:2]) is None
    nan_ref = np.full(10, np.nan)
    assert fit_zeropoint(mag_inst[:10], magerr_inst[:10], nan_ref, magerr_ref[:10]) is None


def test_calibration_star_selection():
    flags = np.array([0, 0, SourceFlag.BLENDED, SourceFlag.NEIGHBOUR, SourceFlag.SATURATED,
                      0, 0, 0, 0])
    mag_ref = np.array([15.0, 11.0, 15.0, 15.0, 15.0, 15.0, 15.0, 21.0, 15.0])
    magerr_ref = np.array([0.01, 0.01, 0.01, 0.01, 0.01, 0.09, 0.01, 0.01, 0.01])
    magerr_inst = np.array([0.01, 0.01, 0.01, 0.01, 0.01, 0.01, 0.08, 0.01, 0.01])
    x = np.array([500, 500, 500, 500, 500, 500, 500, 500, 20.0])
    y = np.full(9, 500.0)
    kw = dict(refmag_bright=12, refmag_faint=20, refmagerr_max=0.05, inmagerr_max=0.05,
              central_fraction=0.75)
    strict = calibration_stars(flags, mag_ref, magerr_ref, magerr_inst, x, y, (1000, 1000),
                               flag_cut=0, **kw)
    assert strict.tolist() == [True] + [False] * 8
    legacy = calibration_stars(flags, mag_ref, magerr_ref, magerr_inst, x, y, (1000, 1000),
                               flag_cut=2, **kw)
    # flag_cut 2 lets blends through; a neighbour or saturation never
    assert legacy.tolist() == [True, False, True] + [False] * 6


def test_crossmatch_pairs_each_reference_star_once():
    rng = np.random.default_rng(8)
    n = 300
    ra0, dec0 = 359.95, 30.0        # across RA = 0
    ref_ra = (ra0 + rng.uniform(-0.1, 0.1, n)) % 360
    ref_dec = dec0 + rng.uniform(-0.1, 0.1, n)
    shift_arcsec = rng.normal(0, 0.3, (n, 2))
    det_ra = (ref_ra + shift_arcsec[:, 0] / 3600 / np.cos(np.radians(ref_dec))) % 360
    det_dec = ref_dec + shift_arcsec[:, 1] / 3600
    order = rng.permutation(n)
    # a second, farther detection beside star 0, and one with no star near
    beside = ref_ra[0] + 1.2 / 3600 / np.cos(np.radians(ref_dec[0]))
    det_ra = np.concatenate([det_ra[order], [beside], [ra0 + 0.5]])
    det_dec = np.concatenate([det_dec[order], [ref_dec[0]], [dec0]])
    i, j, sep = crossmatch(det_ra, det_dec, ref_ra, ref_dec, radius_arcsec=2.0)
    assert len(np.unique(j)) == len(j) == n
    assert np.all(order[i[i < n]] == j[i < n])
    assert n not in i and n + 1 not in i
    expected = np.hypot(*shift_arcsec[order[i], :].T)
    assert np.allclose(sep, expected, atol=1e-3)
    i2, _, _ = crossmatch(det_ra, det_dec, ref_ra, ref_dec, radius_arcsec=0.2)
    assert len(i2) < n / 2
