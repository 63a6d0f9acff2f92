"""Simulated nights are honest: calibrating a raw frame with the true bias, dark
and flat and measuring it recovers the catalogue, the zero point, the WCS, the
seeing and the noise the truth declares; Tycho-2 stars and transients are where
the truth puts them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import sep
from astropy.io import fits
from astropy.table import Table
from scipy.ndimage import binary_dilation
from scipy.optimize import curve_fit

from gppy.astrometry import tycho
from gppy.sim.psf import PSF
from gppy.sim.truth import Truth

from conftest import simulate_nights

pytestmark = pytest.mark.skipif(not (tycho.DEFAULT_INDEX_DIR / tycho.INDEX_NAME).is_file(),
                                reason="astrometry-data-tycho2-07-littleendian is not installed")


@pytest.fixture(scope="module")
def loao(tmp_path_factory):
    """LOAO, 1024 x 1024, two nights, one field, two frames per filter."""
    return simulate_nights(tmp_path_factory.mktemp("LOAO"), "LOAO", 1024, nights=2, nscience=2)


@pytest.fixture(scope="module")
def sbu(tmp_path_factory):
    """SBU STL-1001E, its full 1024 x 1024 (23.7 arcmin): several Tycho-2 stars."""
    return simulate_nights(tmp_path_factory.mktemp("SBU"), "SBU_STL1001E", None, nights=1,
                           nscience=1)


def raw_path(out, truth: Truth, frame: dict):
    return out / truth.meta["raw_folder"] / frame["file"]


def calibrate(out, truth: Truth, frame: dict):
    """(raw, calibrated, variance) using the true bias, dark and flat."""
    raw = fits.getdata(raw_path(out, truth, frame)).astype(np.float64)
    det = truth.detector
    flat = truth.flat(frame["filter"]).astype(np.float64)
    bias = det.bias_adu + frame["bias_offset_adu"]
    cal = (raw - bias - det.dark_adu_per_s * frame["exptime_s"]) / flat
    gain, rn = truth.gain, truth.camera["read_noise_e"]
    var = (np.maximum(raw - bias, 0) / gain + (rn / gain) ** 2 + 1 / 12) / flat ** 2
    return raw, cal, var


def isolated_stars(truth: Truth, frame: dict, cal, mag_range, radius_px):
    """Truth stars on the frame with no comparable neighbour (star or galaxy) near
    them: (rows, x, y)."""
    wcs = truth.wcs(frame["file"])
    col = f"mag_{frame['filter']}"
    stars = truth.stars[truth.stars["field"] == frame["field"]]
    x, y = wcs.all_world2pix(stars["ra"], stars["dec"], 0)
    gal = truth.galaxies[truth.galaxies["field"] == frame["field"]]
    gx, gy = wcs.all_world2pix(gal["ra"], gal["dec"], 0)
    r_eff_px = gal["r_eff_arcsec"] / truth.camera["pixscale_arcsec"]
    reach = r_eff_px * np.where(gal["sersic_n"] > 2, 10, 5)
    fwhm = frame["psf"]["fwhm_px"]
    ny, nx = cal.shape
    keep = []
    for i in np.nonzero((stars[col] > mag_range[0]) & (stars[col] < mag_range[1]))[0]:
        if not (radius_px < x[i] < nx - radius_px and radius_px < y[i] < ny - radius_px):
            continue
        d = np.hypot(x - x[i], y - y[i])
        d[i] = np.inf
        if np.any((d < radius_px + 3 * fwhm) & (stars[col] < stars[col][i] + 7)):
            continue
        near = np.hypot(gx - x[i], gy - y[i]) < radius_px + reach
        if np.any(near & (gal[col] < stars[col][i] + 5)):
            continue
        keep.append(i)
    return stars[keep], x[keep], y[keep]


def _clean(raw, truth, frame, x, y, radius_px):
    """Unsaturated and free of cosmic rays within `radius_px`."""
    mask = truth.cosmic_mask(frame["file"])
    ok = []
    for xi, yi in zip(x, y):
        box = (slice(int(yi - radius_px), int(yi + radius_px) + 1),
               slice(int(xi - radius_px), int(xi + radius_px) + 1))
        ok.append(raw[box].max() < 0.7 * truth.camera["saturation_adu"] and not mask[box].any())
    return np.array(ok, dtype=bool)


def aperture_photometry(cal, var, x, y, r_ap, r_in, r_out):
    """Aperture sums with the local background as the median of an annulus; errors
    from the variance plane, including the background's own error."""
    flux, err = [], []
    ny, nx = cal.shape
    for xi, yi in zip(x, y):
        y0, y1 = int(yi - r_out) - 1, int(yi + r_out) + 2
        x0, x1 = int(xi - r_out) - 1, int(xi + r_out) + 2
        r = np.hypot(*np.meshgrid(np.arange(x0, x1) - xi, np.arange(y0, y1) - yi))
        annulus = (r >= r_in) & (r < r_out)
        sky = np.median(cal[y0:y1, x0:x1][annulus])
        sky_var = np.pi / 2 * var[y0:y1, x0:x1][annulus].mean() / annulus.sum()
        f, ferr, _ = sep.sum_circle(np.ascontiguousarray(cal - sky), [xi], [yi], r_ap, var=var,
                                    subpix=0)
        area = np.pi * r_ap ** 2
        flux.append(f[0])
        err.append(np.hypot(ferr[0], area * np.sqrt(sky_var)))
    return np.array(flux), np.array(err)


def moffat(dx, dy, a_major, a_minor, angle, beta):
    """An elliptical Moffat profile, unnormalised (written here independently of gppy.sim)."""
    u = (dx * np.cos(angle) + dy * np.sin(angle)) / a_major
    v = (-dx * np.sin(angle) + dy * np.cos(angle)) / a_minor
    return (1 + u ** 2 + v ** 2) ** -beta


def model_aperture_fraction(psf: PSF, x: float, y: float, r_ap: float, subsample: int = 9) -> float:
    """The fraction of a star's light that `sep.sum_circle` finds in radius r_ap,
    from the truth's PSF: the Moffat integrated over pixels by brute force,
    normalised by its analytic total, measured like the data."""
    a_major, a_minor, angle = (float(v) for v in psf.shape_at(x, y))
    half = int(r_ap) + 3
    cx, cy = int(round(x)), int(round(y))
    yy, xx = np.mgrid[cy - half:cy + half + 1, cx - half:cx + half + 1].astype(float)
    sub = (np.arange(subsample) + 0.5) / subsample - 0.5
    image = sum(moffat(xx + sx - x, yy + sy - y, a_major, a_minor, angle, psf.beta)
                for sx in sub for sy in sub) / subsample ** 2
    total = np.pi * a_major * a_minor / (psf.beta - 1)
    inside, _, _ = sep.sum_circle(image, [x - cx + half], [y - cy + half], r_ap, subpix=0)
    return float(inside[0]) / total


def test_photometry_matches_catalogue_and_zero_point(loao):
    """Calibrate with the true bias/dark/flat, measure isolated unsaturated stars
    in a 3-FWHM aperture with a local (annulus median) background, correct by
    the truth PSF's aperture fraction: the catalogue magnitudes and the true zero
    point are recovered within the noise."""
    out, (night, _) = loao
    dm, sigma = [], []
    for frame in (f for f in night.frames if f["type"] == "science"):
        raw, cal, var = calibrate(out, night, frame)
        psf = PSF(**frame["psf"])
        r_ap = 3.0 * psf.fwhm_px
        r_in, r_out = 6.0 * psf.fwhm_px, 9.0 * psf.fwhm_px
        stars, x, y = isolated_stars(night, frame, cal, (13.5, 19.5), r_out + 2)
        ok = _clean(raw, night, frame, x, y, r_out + 2)
        stars, x, y = stars[ok], x[ok], y[ok]
        flux, err = aperture_photometry(cal, var, x, y, r_ap, r_in, r_out)
        inside = np.array([model_aperture_fraction(psf, xi, yi, r_ap) for xi, yi in zip(x, y)])
        mag = stars[f"mag_{frame['filter']}"]
        expected = 10 ** (-0.4 * (mag - frame["zp_mag"])) * frame["exptime_s"] * inside
        dm.append(-2.5 * np.log10(flux / expected))
        sigma.append(1.0857 * err / flux)
    dm, sigma = np.concatenate(dm), np.concatenate(sigma)
    assert dm.size >= 20, f"only {dm.size} isolated stars measured"
    weights = sigma ** -2
    mean = np.sum(dm * weights) / weights.sum()
    mean_err = weights.sum() ** -0.5
    chi2 = np.mean((dm / sigma) ** 2)
    assert abs(mean) < 3 * mean_err, f"zero-point offset {mean:.4f} +- {mean_err:.4f} mag"
    assert abs(mean) < 0.01
    assert 0.5 < chi2 < 1.6, f"scatter is {np.sqrt(chi2):.2f} x the expected noise"


def test_true_wcs_puts_catalogue_stars_on_their_centroids(loao):
    out, (night, _) = loao
    offsets = []
    for frame in (f for f in night.frames if f["type"] == "science"):
        raw, cal, var = calibrate(out, night, frame)
        stars, x, y = isolated_stars(night, frame, cal, (13.5, 18.5), 15)
        ok = _clean(raw, night, frame, x, y, 15)
        back = sep.Background(np.ascontiguousarray(cal))
        sigma = frame["psf"]["fwhm_px"] / 2.3548
        xw, yw, flag = sep.winpos(np.ascontiguousarray(cal - back.back()), x[ok], y[ok], sigma)
        offsets.append(np.hypot(xw - x[ok], yw - y[ok])[flag == 0])
    offsets = np.concatenate(offsets)
    assert offsets.size >= 20
    assert np.median(offsets) < 0.1


def _pixel_moffat(xy, amplitude, x0, y0, alpha, beta, sky, subsample=5):
    x, y = xy
    sub = (np.arange(subsample) + 0.5) / subsample - 0.5
    light = sum(moffat(x + sx - x0, y + sy - y0, alpha, alpha, 0.0, beta)
                for sx in sub for sy in sub)
    return sky + amplitude * light / subsample ** 2


def test_seeing_in_the_truth_is_what_a_psf_fit_measures(loao):
    """The truth's FWHM is that of the PSF before pixelisation: a Moffat integrated
    over pixels and fitted to bright stars gives it back (the FWHM varies by a few
    percent across the frame; the fit is circular, the truth a geometric mean)."""
    out, (night, _) = loao
    frame = next(f for f in night.frames if f["type"] == "science")
    raw, cal, var = calibrate(out, night, frame)
    psf = PSF(**frame["psf"])
    stars, x, y = isolated_stars(night, frame, cal, (13.0, 17.0), 12)
    ok = _clean(raw, night, frame, x, y, 12)
    ratios = []
    for xi, yi in zip(x[ok], y[ok]):
        cx, cy = int(round(xi)), int(round(yi))
        box = (slice(cy - 8, cy + 9), slice(cx - 8, cx + 9))
        yy, xx = np.mgrid[box]
        start = (cal[box].max(), xi, yi, psf.alpha(psf.fwhm_px), psf.beta, np.median(cal))
        p, _ = curve_fit(_pixel_moffat, (xx.ravel(), yy.ravel()), cal[box].ravel(), p0=start,
                         sigma=np.sqrt(var[box]).ravel())
        fwhm = 2 * abs(p[3]) * np.sqrt(2 ** (1 / p[4]) - 1)
        a_major, a_minor, _ = psf.shape_at(xi, yi)
        ratios.append(fwhm / (2 * np.sqrt(a_major * a_minor) * np.sqrt(2 ** (1 / psf.beta) - 1)))
    assert len(ratios) >= 3
    assert np.median(ratios) == pytest.approx(1.0, abs=0.03)
    assert frame["fwhm_arcsec"] == pytest.approx(psf.fwhm_px * night.camera["pixscale_arcsec"])


def _normalised_residuals(out, truth, frame):
    raw = fits.getdata(raw_path(out, truth, frame)).astype(np.float64)
    expected = truth.noise_free(frame["file"], calibrated=False)
    bias = truth.detector.bias_adu + frame["bias_offset_adu"]
    gain, rn = truth.gain, truth.camera["read_noise_e"]
    sigma = np.sqrt(np.maximum(expected - bias, 0) / gain + (rn / gain) ** 2 + 1 / 12)
    saturated = expected > 0.8 * truth.camera["saturation_adu"]
    bleeding = np.convolve(saturated.any(axis=0), np.ones(5), "same") > 0
    bad = binary_dilation(truth.cosmic_mask(frame["file"]), iterations=2) | bleeding[None, :]
    return ((raw - expected) / sigma)[~bad]


@pytest.mark.parametrize("ftype", ["bias", "dark", "flat", "science"])
def test_noise_free_truth_explains_the_raw_frame(loao, ftype):
    """(raw - noise-free raw) / sigma is a unit normal deviate: the declared
    bias, dark, flat, sky, sources, gain and read noise are the real ones."""
    out, (night, _) = loao
    frame = [f for f in night.frames if f["type"] == ftype][-1]
    z = _normalised_residuals(out, night, frame)
    assert abs(z.mean()) < 0.02
    assert z.std() == pytest.approx(1.0, abs=0.03)


def test_calibrated_noise_free_frame_is_sky_plus_sources(loao):
    out, (night, _) = loao
    frame = next(f for f in night.frames if f["type"] == "science")
    model = night.noise_free(frame["file"])
    sky = frame["sky_adu_per_s"] * frame["exptime_s"]
    assert np.median(model) == pytest.approx(sky, rel=0.02)
    assert frame["zp_mag"] == pytest.approx(frame["zp_e_mag"] - 2.5 * np.log10(night.gain))


def test_brightest_stars_are_real_tycho_stars_and_visible(sbu):
    out, (night,) = sbu
    frame = next(f for f in night.frames if f["type"] == "science")
    wcs = night.wcs(frame["file"])
    stars = night.stars[night.stars["field"] == frame["field"]]
    x, y = wcs.all_world2pix(stars["ra"], stars["dec"], 0)
    ny, nx = night.shape
    on = stars[(x > 5) & (x < nx - 5) & (y > 5) & (y < ny - 5)]
    brightest = on[on["vmag_ab"] < 11.5]
    assert len(brightest) >= 2
    assert brightest["is_tycho"].all()
    real = tycho.cone(float(np.mean(on["ra"])), float(np.mean(on["dec"])), 1.0)
    for star in brightest:
        row = np.nonzero(real.index == star["tycho_row"])[0]
        assert row.size == 1
        assert real.ra_deg[row[0]] == star["ra"] and real.dec_deg[row[0]] == star["dec"]
        assert real.vt_mag[row[0]] == pytest.approx(star["vmag_ab"])
    raw, cal, var = calibrate(out, night, frame)
    bx, by = wcs.all_world2pix(brightest["ra"], brightest["dec"], 0)
    noise = np.sqrt(np.median(var))
    for xi, yi in zip(bx, by):
        cx, cy = int(round(xi)), int(round(yi))
        peak = cal[cy - 2:cy + 3, cx - 2:cx + 3].max()
        assert peak - np.median(cal) > 100 * noise


def test_transients_appear_on_the_second_night_only(loao):
    """The transients in empty sky: nothing on night 1, the truth's flux on night 2."""
    out, (first, second) = loao
    assert np.isnan(first.transients["mag_V"]).all()
    assert np.isfinite(second.transients["mag_V"]).all()
    assert set(second.transients["kind"]) == {"galaxy", "star", "field"}
    lonely = second.transients[second.transients["kind"] == "field"]
    for night in (first, second):
        frame = next(f for f in night.frames if f["type"] == "science" and f["filter"] == "V")
        raw, cal, var = calibrate(out, night, frame)
        x, y = night.wcs(frame["file"]).all_world2pix(lonely["ra"], lonely["dec"], 0)
        psf = PSF(**frame["psf"])
        r_ap = 3 * psf.fwhm_px
        flux, err = aperture_photometry(cal, var, x, y, r_ap, 2 * r_ap, 3 * r_ap)
        inside = np.array([model_aperture_fraction(psf, xi, yi, r_ap) for xi, yi in zip(x, y)])
        expected = 10 ** (-0.4 * (lonely["mag_V"] - frame["zp_mag"])) * frame["exptime_s"] * inside
        if night is first:
            assert (np.abs(flux) < 5 * err).all()                # nothing there yet
        else:
            assert (np.abs(flux - expected) < 5 * err).all()     # as bright as the truth says
            assert (flux > 10 * err).all()


def test_truth_is_complete_and_outside_the_night_folder(loao):
    out, (night, _) = loao
    folder = out / night.meta["raw_folder"]
    assert {p.suffix for p in folder.iterdir()} == {".fits"}
    assert (out / "truth" / folder.name / "frames.json").is_file()
    doc = json.loads((out / "truth" / folder.name / "frames.json").read_text())
    assert "1 ADU/s" in doc["zp_definition"]
    types = [f["type"] for f in night.frames]
    assert types.count("bias") >= 3 and types.count("science") == 4
    dark_times = {f["exptime_s"] for f in night.frames if f["type"] == "dark"}
    assert {f["exptime_s"] for f in night.frames if f["type"] == "science"} <= dark_times
    assert len(dark_times) >= 3
    for band in ("V", "R"):
        flats = [f for f in night.frames if f["type"] == "flat" and f["filter"] == band]
        levels = [np.median(fits.getdata(folder / f["file"])) for f in flats]
        assert len(set(np.round(levels, -1))) == len(levels) >= 3      # different levels
        assert all(len(f["point_sources"]) >= 2 for f in flats)
        assert np.median(night.flat(band)) == pytest.approx(1.0, abs=1e-6)
    assert not np.array_equal(night.flat("V"), night.flat("R"))
    for column in ("mag_B", "mag_V", "mag_R", "mag_I", "is_tycho", "ra", "dec"):
        assert column in night.stars.colnames
    assert {"disk", "bulge", "single"} <= set(night.galaxies["component"])
    for frame in night.frames:
        assert night.cosmic_mask(frame["file"]).shape == night.shape
        header = fits.getheader(folder / frame["file"])
        wcs_keys = ("CTYPE", "CRVAL", "CRPIX", "CD1_", "CD2_", "A_", "B_", "PV")
        assert not any(k.startswith(wcs_keys) for k in header)
        assert header["DATE-OBS"] == frame["dateobs"]
        if frame["type"] == "science":
            centre = night.wcs(frame["file"]).all_pix2world([[511.5, 511.5]], 0)[0]
            miss = np.hypot((centre[0] - frame["ra_cmd_deg"]) * np.cos(np.radians(centre[1])),
                            centre[1] - frame["dec_cmd_deg"]) * 3600
            assert 1.0 < miss < 150.0           # a realistic pointing error


def test_reference_catalogue_agrees_with_the_truth_within_its_errors(loao):
    out, (night, _) = loao
    ref = Table.read(out / "refcat.ecsv", format="ascii.ecsv")
    truth = night.stars
    truth = truth[np.isin(truth["id"], ref["id"])]
    assert len(ref) == len(truth) > 100
    ref.sort("id")
    truth.sort("id")
    for band in ("B", "V", "R", "I"):
        good = np.isfinite(ref[f"mag_{band}"])
        z = (ref[f"mag_{band}"] - truth[f"mag_{band}"])[good] / ref[f"magerr_{band}"][good]
        assert np.mean(z ** 2) == pytest.approx(1.0, abs=0.2)
        assert np.nanmax(ref[f"mag_{band}"]) < 22.5
    offset = np.hypot((ref["ra"] - truth["ra"]) * np.cos(np.radians(truth["dec"])),
                      ref["dec"] - truth["dec"])
    assert np.median(offset) * 3600 < 0.05
