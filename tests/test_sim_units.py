"""The simulator's building blocks: pass bands, PSF and galaxy normalisation,
the true WCS, ephemerides, detector and file naming."""

from __future__ import annotations

import dataclasses
import datetime as dt

import numpy as np
import pytest

from gppy.sim import bands, ephem, instrument, psf, writer
from gppy.sim.command import default_bands
from gppy.sim.plan import Frame, SimulationError
from gppy.sim.pointing import Optics, true_wcs_cards, wcs_from_cards
from gppy.obsconfig.loader import load_profile
from gppy.sim.telescope import zero_point_e_mag


def test_colour_model_is_anchored_at_550nm_and_ordered_by_temperature():
    offsets = bands.colour_offsets(["m550", "B", "R", "m400", "m875"],
                                   np.array([3500, 5800, 20000]), "CCD")
    assert np.allclose(offsets[:, 0], 0.0, atol=0.01)        # a 25 nm band at the anchor
    assert (np.diff(offsets[:, 1]) < 0).all()               # hotter is bluer: B - V falls
    assert offsets[0, 3] > offsets[0, 4] and offsets[2, 3] < offsets[2, 4]


def test_unknown_band_is_a_clear_error():
    with pytest.raises(bands.UnknownBand, match="no pass band for filter 'Halpha'"):
        bands.band("Halpha")


def test_zero_point_scales_with_collecting_area():
    big, small = load_profile("LOAO").telescope, load_profile("SBU_STL1001E").telescope
    diff = zero_point_e_mag(big, "V", "CCD") - zero_point_e_mag(small, "V", "CCD")
    assert diff == pytest.approx(2.5 * np.log10(big.area_m2 / small.area_m2))
    assert 23.5 < zero_point_e_mag(big, "V", "CCD") < 24.5  # 1 m telescope, V, e-/s


@pytest.fixture
def frame_psf():
    return psf.PSF(fwhm_px=2.6, beta=3.3, ellipticity=0.06, theta_deg=25.0, field_growth=0.08,
                   field_ellipticity=0.04, axis_x=100.0, axis_y=90.0, norm_radius_px=300.0)


def test_point_source_flux_and_centroid_are_exact(frame_psf):
    image = np.zeros((200, 200))
    psf.render_points(image, frame_psf, [60.3, 140.75], [50.6, 150.2], [1000.0, 5e5])
    yy, xx = np.mgrid[:100, :100]
    star = image[:100, :100]
    a_maj = frame_psf.shape_at(60.3, 50.6)[0]
    radius = psf.stamp_radius(frame_psf, 2e-5, a_maj)
    kept = 1 - frame_psf.tail_fraction(radius, a_maj)
    assert star.sum() == pytest.approx(1000.0 * kept, rel=1e-12)
    assert star.sum() > 1000.0 * (1 - 2e-5)
    assert (star * xx).sum() / star.sum() == pytest.approx(60.3, abs=0.01)
    assert (star * yy).sum() / star.sum() == pytest.approx(50.6, abs=0.01)


@pytest.mark.parametrize("n, r_eff_px, q", [(1, 2.0, 0.5), (4, 1.0, 0.8), (1, 30.0, 0.7),
                                            (4, 6.0, 0.9), (1, 0.4, 0.3)])
def test_sersic_light_matches_its_magnitude(frame_psf, n, r_eff_px, q):
    pad = psf.kernel_radius(frame_psf, (400, 400))
    layer = np.zeros((400 + 2 * pad, 400 + 2 * pad))
    psf.render_sersic(layer, 200.3 + pad, 199.6 + pad, 1000.0, n, r_eff_px, q, 0.4)
    convolved = psf.convolve_tiles(layer, frame_psf, pad, tile_px=128)
    expected = 1000.0 * float(psf.sersic_extent(n)[1])
    assert layer.sum() == pytest.approx(expected, rel=5e-3)
    assert convolved.sum() == pytest.approx(layer.sum(), rel=1e-4)  # a little light spills off


def test_true_wcs_has_sip_and_round_trips():
    optics = Optics.draw(np.random.default_rng(3), [2048, 2048])
    cards = true_wcs_cards(optics, 0.8, (1024, 1024), 150.0, 20.0)
    assert cards["CTYPE1"] == "RA---TAN-SIP" and cards["A_ORDER"] == 3
    wcs = wcs_from_cards(cards)
    x, y = np.array([0.0, 511.5, 1023.0]), np.array([1023.0, 511.5, 0.0])
    ra, dec = wcs.all_pix2world(x, y, 0)
    back = wcs.all_world2pix(ra, dec, 0, tolerance=1e-10)
    assert np.allclose(back, [x, y], atol=1e-6)
    linear = wcs.wcs_pix2world(x, y, 0)
    shift_px = np.hypot((ra - linear[0]) * np.cos(np.radians(dec)), dec - linear[1]) * 3600 / 0.8
    assert 0.01 < shift_px.max() < 3.0   # a real but small distortion


def test_sunset_matches_astropy():
    from astropy.coordinates import AltAz, EarthLocation, get_sun
    from astropy.time import Time
    from astropy.utils import iers

    jd = ephem.evening_crossing_jd(dt.date(2024, 3, 14), 32.442, -110.7893, -6.0)
    t = Time(jd, format="jd")
    with iers.conf.set_temp("auto_download", False), iers.conf.set_temp("auto_max_age", None):
        location = EarthLocation(lat=32.442, lon=-110.7893, height=2776)
        alt = get_sun(t).transform_to(AltAz(obstime=t, location=location)).alt.deg
    assert alt == pytest.approx(-6.0, abs=0.05)


def test_detector_defects_differ_between_ccd_and_cmos():
    ccd, cmos = load_profile("LOAO").camera, load_profile("7DT01").camera
    a = instrument.build_detector(5, ccd, (256, 256), ["V"])
    b = instrument.build_detector(5, cmos, (256, 256), ["m500"])
    for det in (a, b):
        flat = next(iter(det.flats.values()))
        assert np.median(flat) == pytest.approx(1.0, abs=1e-6)
        assert det.bias_adu.dtype == np.float32

    def hot_pixel_fraction(det):
        hot = det.dark_adu_per_s > 20 * np.median(det.dark_adu_per_s)
        alone = hot & ~np.roll(hot, 1, axis=0) & ~np.roll(hot, -1, axis=0)  # not the hot column
        return alone.mean()

    assert hot_pixel_fraction(b) > 2 * hot_pixel_fraction(a) > 0
    column_spread = lambda det: np.std(np.median(det.flats[next(iter(det.flats))], axis=0))
    assert column_spread(a) > column_spread(b)      # the CCD's low-sensitivity column


def test_cosmic_rays_and_blooming_conserve_charge():
    rng = np.random.default_rng(1)
    deposit = instrument.cosmic_rays(rng, (512, 512), "CCD", 600.0)
    assert deposit.sum() > 0 and (deposit > 0).mean() < 0.01
    electrons = np.zeros((100, 5))
    electrons[50, 2] = 1e6
    instrument.bloom(electrons, 1e5)
    assert electrons.sum() == pytest.approx(1e6)
    assert electrons.max() == 1e5 and np.count_nonzero(electrons[:, 2]) == 11
    assert np.count_nonzero(electrons) == 11                                # along the column only
    assert electrons[:50, 2].sum() == pytest.approx(electrons[51:, 2].sum())  # both ways


def test_default_bands_pick_two_of_the_camera_filters():
    assert default_bands(["B", "V", "R", "I"]) == ["V", "R"]
    assert default_bands([f"m{c}" for c in range(400, 900, 25)]) == ["m500", "m650"]
    assert default_bands(["clear"]) == ["clear"]


def _frame(ftype, seq=1):
    return Frame(seq=seq, type=ftype, filter="clear", exptime_s=23.0,
                 dateobs="2024-03-15T01:02:03.000", mjd=0.0, ccd_temp_c=-10.0,
                 bias_offset_adu=0.0, sun_alt_deg=-5.0)


def test_file_names_follow_the_dialect():
    sbu = load_profile("SBU_STL1001E")
    frames = [_frame("flat", 1), _frame("flat", 2)]
    writer.assign_file_names(sbu, frames)
    assert [f.file for f in frames] == ["flat-expos23s.00000001.FIT", "flat-expos23s.00000002.FIT"]
    assert writer.night_folder(load_profile("7DT01"), dt.date(2024, 3, 14)) == "2024-03-14_gain2750"


def test_file_names_must_be_unique():
    sbu = load_profile("SBU_STL1001E")
    bad = dataclasses.replace(sbu, dialect=dataclasses.replace(sbu.dialect, file_name="{type}.FIT"))
    with pytest.raises(SimulationError, match="same name"):
        writer.assign_file_names(bad, [_frame("flat", 1), _frame("flat", 2)])
