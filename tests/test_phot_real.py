"""Zero points and colour terms fitted with gppy.phot.zeropoint on real catalogues
(../shared/data/real, see ../shared/data/MANIFEST.md; every test skips when the
folder is absent, as in a user's fresh clone).

* lco_matched_catalogs: two LCO BANZAI source catalogues (sep columns) already
  matched to reference g r i z magnitudes: cpt1m012-fa06 (Sinistro, 1 m, 2752 rows)
  and ogg2m001-ep04 (MuSCAT3, 2 m FTN, 140 rows). The files carry no header at all
  (no FILTER, no EXPTIME, no units): BANZAI writes `flux` (Kron-like, 2.5 Kron
  radii) and `fluxaperN` (N" diameter) in counts (electrons, BANZAI's images are
  gain-normalised) and sep's `flag` bits. The band is therefore found from the data
  (the reference band whose offsets scatter least), and the zero points are for
  counts per exposure; BANZAI's own test (banzai/tests/test_photometry.py) divides by
  an exposure time of 250.032 s and expects 23.1 for the cpt frame.
* ey_uma_catalogs: feder-observatory/stellarphot's aperture photometry of EY UMa on
  2014-12-30 (94 frames of 90 s, all in R, 41 stars each) and an APASS DR9 cut-out
  (10' around 135.5509 +49.8429) read with gppy.phot.catalogs.

Run with -s to see the figures.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pytest
import sep
from astropy.table import Table

from conftest import real_data
from gppy.phot.catalogs import reference_mags
from gppy.phot.detect import SourceFlag
from gppy.phot.zeropoint import calibration_stars, crossmatch, fit_zeropoint

# ---------------------------------------------------------------------------- LCO

LCO = "lco_matched_catalogs"
# file, detector shape (ny, nx) (the x, y span of the catalogue: 4096 Sinistro, 2048
# MuSCAT3), the band the data show (see test_lco_band_is_the_one_the_offsets_follow),
# BANZAI's zero point for counts / 250.032 s (None: not comparable, see there), the
# fewest calibration stars expected (2242 and 118 pass today)
LCO_FRAMES = {
    "cpt1m012-fa06-20200113-0102": ((4096, 4096), "i", 23.1, 2000),
    "ogg2m001-ep04-20201006-0097": ((2048, 2048), "g", None, 100),
}
BANZAI_EXPTIME_S = 250.032          # from BANZAI's test; not in the files
# the selection of the profiles' phot defaults (gppy/obsconfig/profiles/_defaults.toml):
# reference 12-20 mag (the Sinistro saturates near i = 11: peaks up to 172 000 e-),
# errors <= 0.05 mag, no flagged source
SELECTION = dict(refmag_bright=12.0, refmag_faint=20.0, refmagerr_max=0.05,
                 inmagerr_max=0.05, flag_cut=0)
MAD_TO_SIGMA = 1.4826
MEDIAN_EFFICIENCY = 1.2533          # error of a median / error of a mean (Gaussian)


def _gppy_flags(sep_flag: np.ndarray) -> np.ndarray:
    """sep's flag bits as gppy SourceFlag (as gppy.phot.detect maps them).
    APER_NONPOSITIVE has no counterpart: those rows have flux 0 and no magnitude."""
    f = np.asarray(sep_flag)
    out = np.zeros(len(f), np.int32)
    out[(f & sep.OBJ_MERGED) != 0] |= SourceFlag.BLENDED
    out[(f & (sep.OBJ_TRUNC | sep.APER_TRUNC)) != 0] |= SourceFlag.TRUNCATED
    out[(f & (sep.OBJ_DOVERFLOW | sep.OBJ_SINGU)) != 0] |= SourceFlag.OVERFLOW
    out[(f & (sep.APER_HASMASKED | sep.APER_ALLMASKED)) != 0] |= SourceFlag.MASKED
    return out


def _lco(name: str) -> Table:
    return Table.read(real_data(LCO) / f"{name}-matched-cat.fits")


def _instrumental(t: Table, flux: str = "flux", err: str = "fluxerr"):
    """-2.5 log10(counts) and its error; NaN where the flux is not positive."""
    f, e = np.asarray(t[flux], float), np.asarray(t[err], float)
    good = f > 0
    mag, magerr = np.full(len(f), np.nan), np.full(len(f), np.nan)
    mag[good] = -2.5 * np.log10(f[good])
    magerr[good] = 2.5 / np.log(10) * e[good] / f[good]
    return mag, magerr


def _lco_stars(t: Table, band: str, shape):
    """(mag_inst, magerr_inst, mag_ref, magerr_ref, selected) with the Kron flux;
    x, y are 1-based in BANZAI catalogues."""
    mag, magerr = _instrumental(t)
    ref, referr = np.asarray(t[f"{band}mag"], float), np.asarray(t[f"{band}magerr"], float)
    sel = calibration_stars(_gppy_flags(t["flag"]), ref, referr, magerr,
                            np.asarray(t["x"]) - 1, np.asarray(t["y"]) - 1, shape, **SELECTION)
    return mag, magerr, ref, referr, sel


def _robust_sigma(d: np.ndarray) -> float:
    return float(MAD_TO_SIGMA * np.median(np.abs(d - np.median(d))))


@pytest.mark.parametrize("name", LCO_FRAMES)
def test_lco_band_is_the_one_the_offsets_follow(name):
    """The catalogues do not say their filter, so the band is the one whose
    reference magnitudes follow the instrumental ones: the robust scatter of
    mag_ref - mag_inst over the calibration stars is at least twice smaller in it
    than in any other band. cpt1m012-fa06 is i (as BANZAI's test assumes), but
    ogg2m001-ep04 is g, not the i BANZAI's test fits it in."""
    shape, band, _, _ = LCO_FRAMES[name]
    t = _lco(name)
    scatter = {}
    for b in "griz":
        mag, _, ref, _, sel = _lco_stars(t, b, shape)
        scatter[b] = _robust_sigma((ref - mag)[sel])
    print(f"\n{name}: robust scatter of mag_ref - mag_inst by band: "
          + ", ".join(f"{b} {s:.3f}" for b, s in scatter.items()))
    best = min(scatter, key=scatter.get)
    assert best == band
    assert all(scatter[b] >= 2 * scatter[band] for b in scatter if b != band)


@pytest.mark.parametrize("name", LCO_FRAMES)
def test_lco_zeropoint_fit_reproduces_median_offset(name):
    """The weighted, clipped zero point of fit_zeropoint (Kron flux `flux`, in
    counts per exposure) equals the independent estimate, the median of mag_ref -
    mag_inst over the same clean stars (calibration_stars with the profile
    defaults: flag 0, reference 12-20 mag, errors <= 0.05) with error
    1.2533 * 1.4826 MAD / sqrt(N), within their combined error. A weighting or
    clipping bug, or an error that is far off, would show here on 2000+ and on
    ~120 real stars. Also: the fit keeps >= 90 % of the stars, its error (without
    the 0.003 floor) is within a factor 2 of the median's, and for the cpt frame
    the zero point per second matches BANZAI's 23.1 within 0.1 mag."""
    shape, band, banzai_zp, min_stars = LCO_FRAMES[name]
    t = _lco(name)
    mag, magerr, ref, referr, sel = _lco_stars(t, band, shape)
    zp = fit_zeropoint(mag[sel], magerr[sel], ref[sel], referr[sel])
    raw = fit_zeropoint(mag[sel], magerr[sel], ref[sel], referr[sel], floor_mag=0.0)

    d = (ref - mag)[sel]
    n = len(d)
    med = float(np.median(d))
    med_err = MEDIAN_EFFICIENCY * _robust_sigma(d) / np.sqrt(n)
    boot = np.median(np.random.default_rng(3).choice(d, (400, n)), axis=1).std()
    combined = float(np.hypot(zp.zp_err_mag, med_err))
    per_s = zp.zp_mag - 2.5 * np.log10(BANZAI_EXPTIME_S)
    banzai = (f"; ZP for counts / {BANZAI_EXPTIME_S} s {per_s:.3f} (BANZAI {banzai_zp})"
              if banzai_zp is not None else "")
    print(f"\n{name} band {band}: fit ZP {zp.zp_mag:.4f} +- {zp.zp_err_mag:.4f} "
          f"(without the floor {raw.zp_err_mag:.4f}), {zp.n_used} of {zp.n_input} "
          f"used, extra scatter {zp.extra_scatter_mag:.4f}, rms {zp.scatter_mag:.4f}; "
          f"median {med:.4f} +- {med_err:.4f} (bootstrap {boot:.4f}), N {n}; "
          f"difference {zp.zp_mag - med:+.4f} = {(zp.zp_mag - med) / combined:+.2f} combined "
          f"sigma{banzai}")

    assert n >= min_stars
    assert zp.n_used >= 0.9 * n
    assert abs(zp.zp_mag - med) <= combined
    assert 0.5 < raw.zp_err_mag / med_err < 2
    assert zp.extra_scatter_mag < 0.06
    if banzai_zp is not None:
        assert abs(per_s - banzai_zp) < 0.1


def test_crossmatch_real_catalogue_with_negative_ra():
    """The ogg2m001 catalogue has RA from -45.12 to -44.96 deg (not wrapped into
    [0, 360)); crossmatch works on unit vectors, so matching it against itself
    with RA + 360 pairs every row with itself at zero separation."""
    t = _lco("ogg2m001-ep04-20201006-0097")
    ra, dec = np.asarray(t["ra"], float), np.asarray(t["dec"], float)
    assert (ra < 0).all()
    i, j, sep_arcsec = crossmatch(ra, dec, ra + 360.0, dec, 1.0)
    assert len(i) == len(t)
    assert (i == j).all()
    assert sep_arcsec.max() < 1e-3


# ------------------------------------------------------------------------- EY UMa

EY = "ey_uma_catalogs"
APASS_CENTRE = (135.5509, 49.842891)    # the cut-out's centre (its _r column), 10' radius
FEDER_SHAPE = (2048, 3072)              # ny, nx: the table's x, y reach 2944, 1977
GAIN_E_PER_ADU = 1.47                   # what stellarphot used for mag_inst_R (see below)
MATCH_RADIUS_ARCSEC = 2.0
EY_SELECTION = dict(SELECTION)          # the profiles' defaults, flag 0 (no flags here)


def _ey_table() -> Table:
    return Table.read(real_data(EY) / "2014-12-29-ey-uma-9_aperture_photometry.fits")


def _apass(band: str) -> Table:
    """APASS DR9 in `band` (AB) from the cut-out, with its colour (B-V for B V R I)."""
    return reference_mags(*APASS_CENTRE, 0.2, band, catalog="APASS",
                          file=real_data(EY) / "all_apass_ey_uma.ecsv",
                          mag_range=(EY_SELECTION["refmag_bright"], EY_SELECTION["refmag_faint"]),
                          magerr_max=EY_SELECTION["refmagerr_max"])


@lru_cache(maxsize=1)
def _vsx(path) -> Table:
    return Table.read(path)


def _ey_stars(frame: Table, ref: Table):
    """(mag_inst, magerr_inst, mag_ref, magerr_ref, colour, selected, separations,
    names of the VSX variables excluded) of the frame's stars matched to `ref`."""
    vsx = _vsx(real_data(EY) / "clipped_ey_uma_vsx.fits")
    i, j, sep_arcsec = crossmatch(frame["RA"], frame["Dec"], ref["ra"], ref["dec"],
                                  MATCH_RADIUS_ARCSEC)
    vi, vj, _ = crossmatch(np.asarray(ref["ra"])[j], np.asarray(ref["dec"])[j],
                           vsx["ra"], vsx["dec"], 3.0)
    variable = np.zeros(len(j), bool)
    variable[vi] = True
    mag, magerr = np.asarray(frame["mag_inst_R"])[i], np.asarray(frame["mag_error"])[i]
    mref, eref = np.asarray(ref["mag"])[j], np.asarray(ref["magerr"])[j]
    colour = np.asarray(ref["colour"])[j]
    sel = (calibration_stars(np.zeros(len(i), int), mref, eref, magerr,
                             np.asarray(frame["xcenter"])[i], np.asarray(frame["ycenter"])[i],
                             FEDER_SHAPE, **EY_SELECTION)
           & np.isfinite(colour) & ~variable)
    return mag, magerr, mref, eref, colour, sel, sep_arcsec, [str(v) for v in vsx["id"][vj]]


def _lowest_airmass_frame(t: Table) -> Table:
    files = np.asarray(t["file"]).astype(str)
    best = files[np.argmin(np.asarray(t["airmass"]))]
    return t[files == best]


def test_ey_uma_table_is_what_it_says():
    """The photometry table: 94 frames of 41 stars, all R, 90 s; mag_inst_R is
    -2.5 log10(aperture_net_flux * 1.47 / exposure), i.e. electrons per second with
    a gain of 1.47 e-/ADU (gppy's feder.toml says 1.5 for the CG16M), so the zero
    points below are for e-/s in an 18-px-radius aperture."""
    t = _ey_table()
    assert len(t) == 3854
    assert set(np.asarray(t["filter"]).astype(str)) == {"R"}
    assert len(set(np.asarray(t["file"]).astype(str))) == 94
    assert set(np.asarray(t["exposure"])) == {90.0}
    np.testing.assert_allclose(
        t["mag_inst_R"],
        -2.5 * np.log10(np.asarray(t["aperture_net_flux"]) * GAIN_E_PER_ADU
                        / np.asarray(t["exposure"])), atol=1e-9)


def test_ey_uma_colour_term_from_apass():
    """One frame (the one at the lowest airmass, ey-uma-094R.fit, 2014-12-30T07:30:08,
    X = 1.031; filter R, the only one in the table) cross-matched (2") to APASS DR9
    R, computed by gppy.phot.catalogs from r and i (Jordi et al. 2006) with colour
    B-V; known variables (the VSX table) left out (EY UMa itself never gets that
    far: its APASS R error, 0.23 mag, fails the 0.05 cut). fit_zeropoint
    with the colour term: the term and its error are finite, the error positive and
    below 0.2 mag/mag (colours span only ~0.4-0.9 in B-V here), the term itself
    small (an R filter against Johnson-Cousins R); and the zero point without a
    colour term equals the colour-term fit evaluated at the stars' weighted mean
    colour within their combined error (the error there is sqrt(zp_err^2 -
    mean^2 * term_err^2), exact for weighted least squares at the weighted mean)."""
    frame = _lowest_airmass_frame(_ey_table())
    assert str(frame["file"][0]) == "ey-uma-094R.fit"
    ref = _apass("R")
    assert ref.meta["colour_name"] == "B-V"
    mag, magerr, mref, eref, colour, sel, sep_arcsec, variables = _ey_stars(frame, ref)
    assert len(sep_arcsec) >= 20 and sep_arcsec.max() < 1.0     # unambiguous matches
    assert variables                    # Gaia DR3 variables in the field are left out

    z0 = fit_zeropoint(mag[sel], magerr[sel], mref[sel], eref[sel])
    z1 = fit_zeropoint(mag[sel], magerr[sel], mref[sel], eref[sel], colour=colour[sel])
    w = 1.0 / (magerr[sel] ** 2 + eref[sel] ** 2 + z1.extra_scatter_mag ** 2)
    mean_colour = float(np.average(colour[sel][z1.used], weights=w[z1.used]))
    zp_at_mean = z1.zp_mag + z1.colour_term * mean_colour
    err_at_mean = float(np.sqrt(max(z1.zp_err_mag ** 2
                                    - (mean_colour * z1.colour_term_err) ** 2, 0.0)))
    combined = float(np.hypot(z0.zp_err_mag, err_at_mean))
    print(f"\n{frame['file'][0]} {frame['date-obs'][0]} X={frame['airmass'][0]}: "
          f"{len(sep_arcsec)} matched (max {sep_arcsec.max():.2f}\"), variables left out "
          f"{variables}, N {int(sel.sum())}; no colour term: ZP {z0.zp_mag:.4f} +- "
          f"{z0.zp_err_mag:.4f} ({z0.n_used} used); with: ZP {z1.zp_mag:.4f} +- "
          f"{z1.zp_err_mag:.4f}, term {z1.colour_term:+.4f} +- {z1.colour_term_err:.4f} "
          f"({z1.n_used} used, extra scatter {z1.extra_scatter_mag:.4f}); at weighted mean "
          f"B-V {mean_colour:.3f} (plain mean {np.mean(colour[sel]):.3f}): "
          f"{zp_at_mean:.4f} +- {err_at_mean:.4f}")

    assert sel.sum() >= 10 and z1.n_used >= 10
    assert np.isfinite(z1.colour_term) and np.isfinite(z1.colour_term_err)
    assert 0 < z1.colour_term_err < 0.2
    assert abs(z1.colour_term) < 0.2
    assert abs(z0.zp_mag - zp_at_mean) <= combined


def test_ey_uma_colour_term_is_found_when_there_is_one():
    """Positive control for the test above: the same R instrumental magnitudes
    fitted against APASS V instead must show V - R's dependence on B-V, a colour
    term of about +0.5 (V - R ~ 0.5-0.6 (B-V) for these F-K stars), at more than 3
    sigma. A colour term that is always ~0 would pass the test above but not this."""
    frame = _lowest_airmass_frame(_ey_table())
    ref = _apass("V")
    mag, magerr, mref, eref, colour, sel, _, _ = _ey_stars(frame, ref)
    z1 = fit_zeropoint(mag[sel], magerr[sel], mref[sel], eref[sel], colour=colour[sel])
    print(f"\nR instrumental vs APASS V: term {z1.colour_term:+.4f} +- "
          f"{z1.colour_term_err:.4f} in B-V, N {z1.n_used}")
    assert 0.25 < z1.colour_term < 0.7
    assert z1.colour_term > 3 * z1.colour_term_err


def test_ey_uma_zeropoint_follows_airmass():
    """Over the night's 94 frames (X 1.36 -> 1.03) the zero point (no colour term,
    same selection) falls with airmass as extinction makes it: the slope of ZP
    against X is -k with k, the R extinction coefficient, between 0.05 and 0.3
    mag/airmass (typical 0.1-0.2), and every frame has a finite fit."""
    t = _ey_table()
    ref = _apass("R")
    files = np.asarray(t["file"]).astype(str)
    airmass, zps = [], []
    for name in sorted(set(files)):
        frame = t[files == name]
        mag, magerr, mref, eref, _, sel, _, _ = _ey_stars(frame, ref)
        zp = fit_zeropoint(mag[sel], magerr[sel], mref[sel], eref[sel])
        assert zp is not None and np.isfinite(zp.zp_mag)
        airmass.append(float(frame["airmass"][0]))
        zps.append(zp.zp_mag)
    slope, intercept = np.polyfit(airmass, zps, 1)
    resid = np.asarray(zps) - (intercept + slope * np.asarray(airmass))
    print(f"\nZP = {intercept:.3f} {slope:+.3f} X over {len(zps)} frames, rms about the "
          f"line {resid.std():.4f}; ZP {min(zps):.3f} .. {max(zps):.3f}")
    assert 0.05 < -slope < 0.3
