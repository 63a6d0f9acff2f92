"""The photometry stage of a whole simulated night (LOAO, full 2048 px frames whose
PSF widens away from the axis), against the simulator's truth: zero points within
0.01 mag with honest errors, seeing within 3 %, every product written (header
keywords, catalogues, the night's table, ledger rows), nothing redone on a rerun;
and `gppy phot` on images that are not pipeline products."""

from __future__ import annotations

import json
import math
import subprocess

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from gppy.daemon.command import summary
from gppy.daemon.ledger import Ledger
from gppy.daemon.routine import process_night
from gppy.sim.psf import PSF

pytestmark = pytest.mark.slow


def _aperture(header: fits.Header, name: str) -> str:
    """The header index n of the aperture called `name` (APNAMEn)."""
    return next(k[6:] for k in header if k.startswith("APNAME") and header[k] == name)


@pytest.fixture
def night(processed_loao_night):
    return processed_loao_night


def test_zero_points_and_seeing_match_the_truth(night):
    out, truth, profile, _, _, result = night
    p = result.phot
    assert len(p.measured) == len(result.astrometry.solved) >= 4 and not p.failed
    diffs, errors = [], []
    for calib, info in sorted(p.measured.items()):
        header = fits.getheader(calib)
        frame = truth.frame(header["RAWFILE"])
        n = _aperture(header, "opt")
        total = header[f"ZP_{n}"] - header[f"APCOR{n}"]   # the zero point of total fluxes
        diffs.append(total - frame["zp_e_mag"])
        errors.append(header["ZPERR"])
        # the true seeing over the central part, where the PSF stars of the fit lie
        psf = PSF(**frame["psf"])
        ny, nx = truth.shape
        gx, gy = np.meshgrid(np.linspace(0.125, 0.875, 9) * nx, np.linspace(0.125, 0.875, 9) * ny)
        a, b, _ = psf.shape_at(gx.ravel(), gy.ravel())
        seeing_true = float(np.median(2 * np.sqrt(a * b) * np.sqrt(2 ** (1 / psf.beta) - 1))
                            * profile.camera.pixscale_arcsec)
        print(f"\n{header['RAWFILE']}: ZP(total) - truth {diffs[-1]:+.4f} +- {header['ZPERR']:.4f} "
              f"({header['NZPSTAR']} stars), seeing {header['SEEING']:.3f}\" vs {seeing_true:.3f}\", "
              f"UL5 {header['UL5']:.2f}")
        assert header["SEEING"] == pytest.approx(seeing_true, rel=0.03)
        assert header["ZP"] == pytest.approx(info["zp"], abs=1e-4)
        assert header["NZPSTAR"] >= 50 and header["PHOTBAND"] == header["FILTER"]
        for key in ("ZPERR", "UL5", "UL3", "ELLIP", "SKYVAL", "SKYSIG", "PHOTCAT"):
            assert key in header, key
    diffs = np.array(diffs)
    print(f"median ZP - truth {np.median(diffs):+.4f}, scatter {np.std(diffs):.4f}, "
          f"median error {np.median(errors):.4f}")
    assert abs(np.median(diffs)) <= 0.01
    # the reported errors account for the scatter (they hold a 0.003 floor)
    assert np.sqrt(np.mean((diffs / np.array(errors)) ** 2)) < 3.0


def test_products_and_a_rerun_that_does_nothing(night):
    out, truth, profile, data, settings, result = night
    table = Table.read(result.out_dir / "phot.ecsv")
    assert len(table) == len(result.phot.measured)
    assert set(table["filter"]) == {s["filter"] for s in result.phot.measured.values()}
    for calib, info in result.phot.measured.items():
        cat = Table.read(info["catalog"], hdu="CATALOG")
        for column in ("ra", "dec", "flags", "mag_opt", "magerr_opt", "magcal_opt",
                       "magcalerr_opt", "magcal_auto", "magcal_5arcsec"):
            assert column in cat.colnames, column
        good = np.isfinite(cat["magcal_opt"])
        assert good.sum() > 100
        with fits.open(info["catalog"]) as hdul:
            assert hdul["CATALOG"].header["ZP"] == pytest.approx(info["zp"], abs=1e-4)
    with Ledger(data.ledger) as ledger:
        steps = ledger.db.execute("SELECT status, COUNT(*) FROM steps WHERE step = 'phot' "
                                  "GROUP BY status").fetchall()
        assert [tuple(s) for s in steps] == [("done", len(result.phot.measured))]
    assert "Photometry:" in summary(result)

    again = process_night(profile, out / truth.dir.name, data, ncores=2, settings=settings)
    assert again.astrometry.unchanged == len(result.astrometry.solved)
    assert again.phot.unchanged == len(result.phot.measured)
    assert again.phot.measured.keys() == result.phot.measured.keys()


def _cli(gppy_bin, *args) -> dict:
    proc = subprocess.run([str(gppy_bin), "phot", *map(str, args), "--json"],
                          capture_output=True, text=True, timeout=600)
    (row,) = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    for key in ("file", "zp", "zperr", "nstars", "seeing_arcsec", "ul5", "filter", "aperture",
                "error", "zp_by_aperture"):
        assert key in row, key
    return row


def test_any_image_in_its_own_units(night, gppy_bin, tmp_path):
    """A plain image in ADU (no MASK, no ERR, no GAIN keyword) with a WCS: the gain
    from --gain, the noise estimated; its zero point is the electrons' one less
    2.5 log10(gain), the limit agrees with injected stars."""
    out, truth, profile, _, _, result = night
    calib, info = sorted(result.phot.measured.items())[0]
    gain = 2.5
    with fits.open(calib) as hdul:
        header = hdul[0].header.copy()
        for key in ("BUNIT", "GAIN"):
            header.remove(key, ignore_missing=True)
        plain = tmp_path / "plain.fits"
        fits.PrimaryHDU((hdul[0].data / gain).astype(np.float32), header).writeto(plain)
    row = _cli(gppy_bin, plain, "--gain", gain, "--filter", header["FILTER"], "--refcat",
               out / "refcat.ecsv", "--depth", "--out", tmp_path)
    print(f"\nplain image: ZP {row['zp']} (electrons {info['zp']}), UL5 {row['ul5']}, "
          f"injection depth {row['depth50']}")
    assert row["error"] is None
    assert row["zp"] == pytest.approx(info["zp"] - 2.5 * math.log10(gain), abs=0.02)
    assert [a["name"] for a in row["zp_by_aperture"]] == ["opt", "fwhm135", "fwhm200",
                                                          "fwhm300", "3arcsec", "5arcsec", "auto"]
    assert abs(row["depth50"] - row["ul5"]) <= 0.15
    # no gain anywhere: a clear error naming the file
    bad = _cli(gppy_bin, plain, "--filter", "R", "--refcat", out / "refcat.ecsv", "--out", tmp_path)
    assert bad["zp"] is None and "plain.fits" in bad["error"] and "gain" in bad["error"]


def test_an_image_without_wcs_is_refused_clearly(gppy_bin, tmp_path):
    path = tmp_path / "nowcs.fits"
    fits.PrimaryHDU(np.zeros((64, 64), np.float32), fits.Header({"EXPTIME": 10.0,
                                                                "GAIN": 1.0})).writeto(path)
    row = _cli(gppy_bin, path, "--filter", "R", "--out", tmp_path)
    assert row["zp"] is None and "nowcs.fits" in row["error"] and "WCS" in row["error"]
