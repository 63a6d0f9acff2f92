"""Photometric reference catalogues: every catalogue through a local VizieR stand-in
answering with VOTables built from real catalogue cut-outs (the real astroquery HTTP
exchange happens), the tile cache (a field is queried once), offline mode, files
with and without a column mapping, the PS1 -> BVRI transformation against the legacy
system's table, and the choice of catalogue by declination. No network."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table

from gppy.catalogs import tiles
from gppy.errors import InputError
from gppy.phot import transforms
from gppy.phot.catalogs import (CATALOGS, PhotCatalogError, catalog_stars, choose_catalog,
                                read_catalog_file, reference_mags)

from vizier_standin import VizierStandIn

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
PS1_LEGACY = REAL / "ps1_ngc5350" / "ps1-Tonry-NGC5350.cat"
APASS_EY_UMA = REAL / "ey_uma_catalogs" / "all_apass_ey_uma.ecsv"
APASS_EY_UMA_FITS = REAL / "ey_uma_catalogs" / "low_error_apass_ey_uma_sorted_ra_first_20.fits"
REFCAT2_EY_UMA = REAL / "ey_uma_catalogs" / "all_refcat2_ey_uma.ecsv"
LCO_MATCHED = REAL / "lco_matched_catalogs" / "ogg2m001-ep04-20201006-0097-matched-cat.fits"
needs_real = pytest.mark.skipif(not (REAL / "ps1_ngc5350").is_dir() or
                                not (REAL / "ey_uma_catalogs").is_dir(),
                                reason="the shared real catalogue cut-outs (../shared/data/real) "
                                       "are not present")

NGC5350 = (208.34, 40.28)      # the legacy PS1 table's field
EY_UMA = (135.5509, 49.8429)   # the APASS / ATLAS-RefCat2 cut-outs' field


@pytest.fixture(autouse=True)
def _fresh_failures():
    tiles.forget_failures()
    yield
    tiles.forget_failures()


def _sep_deg(ra1, dec1, ra2, dec2):
    return tiles.sep_deg(np.asarray(ra1, float), np.asarray(dec1, float), ra2, dec2)


# ------------------------------------------------------ canned VizieR tables (real data)

def _legacy_ps1() -> Table:
    return Table.read(PS1_LEGACY, format="ascii.commented_header")


def _ps1_vizier() -> Table:
    """II/349/ps1 rows from the legacy PS1 table. Qual is real (its Q); the file has no
    Nd or iKmag: Nd is 12 but 1 for every 25th star, iKmag = imag but 0.3 mag brighter
    (extended) for every 30th."""
    t = _legacy_ps1()
    k = np.arange(len(t))
    out = Table({"RAJ2000": t["ra"], "DEJ2000": t["dec"], "Qual": t["Q"].astype(np.int16),
                 "Nd": np.where(k % 25 == 3, 1, 12).astype(np.int16)})
    for b in "grizy":
        out[f"{b}mag"], out[f"e_{b}mag"] = t[b], t[f"{b}err"]
    out["iKmag"] = np.where(k % 30 == 7, t["i"] - 0.3, t["i"])
    return out


def _apass_vizier() -> Table:
    t = Table.read(APASS_EY_UMA)
    t.remove_column("_r")
    return t


def _refcat2() -> Table:
    return Table.read(REFCAT2_EY_UMA)


def _tmass_vizier() -> Table:
    """II/246/out rows from the ATLAS-RefCat2 cut-out's 2MASS J H K; Qflg is set to B
    for a band whose error exceeds 0.1 mag, Cflg is 000."""
    t = _refcat2()
    keep = ~np.asarray(t["Jmag"].mask)
    t = t[keep]
    qflg = ["".join("B" if (not np.ma.is_masked(row[f"e_{b}mag"]) and row[f"e_{b}mag"] > 0.1)
                    else "A" for b in "JHK") for row in t]
    out = Table({"RAJ2000": t["RA_ICRS"], "DEJ2000": t["DE_ICRS"]})
    for b in "JHK":
        out[f"{b}mag"], out[f"e_{b}mag"] = t[f"{b}mag"], t[f"e_{b}mag"]
    out["Qflg"], out["Cflg"] = qflg, ["000"] * len(t)
    return out


def _gaia_vizier() -> Table:
    """I/355/gaiadr3 rows from the ATLAS-RefCat2 cut-out's Gaia G BP RP; RUWE is 1.0
    but 2.0 for every 10th star."""
    t = _refcat2()
    out = Table({"RA_ICRS": t["RA_ICRS"], "DE_ICRS": t["DE_ICRS"]})
    for b in ("G", "BP", "RP"):
        out[f"{b}mag"], out[f"e_{b}mag"] = t[f"{b}mag"], t[f"e_{b}mag"]
    out["RUWE"] = np.where(np.arange(len(t)) % 10 == 4, 2.0, 1.0)
    return out


def _sdss_vizier() -> Table:
    """V/147/sdss12-shaped rows at the PS1 stars' places (g r i z from PS1, u = g + 1);
    every 20th is a galaxy (class 3)."""
    t = _legacy_ps1()
    k = np.arange(len(t))
    out = Table({"RA_ICRS": t["ra"], "DE_ICRS": t["dec"],
                 "mode": np.ones(len(t), np.int16),
                 "q_mode": ["+"] * len(t),
                 "class": np.where(k % 20 == 5, 3, 6).astype(np.int16),
                 "umag": t["g"] + 1.0, "e_umag": t["gerr"] * 3})
    for b in "griz":
        out[f"{b}mag"], out[f"e_{b}mag"] = t[b], t[f"{b}err"]
    return out


def _skymapper_vizier() -> Table:
    """II/379/smssdr4-shaped rows at the PS1 stars' places; every 15th is flagged 8."""
    t = _legacy_ps1()
    k = np.arange(len(t))
    out = Table({"RAICRS": t["ra"], "DEICRS": t["dec"],
                 "flags": np.where(k % 15 == 2, 8, 0).astype(np.int32),
                 "ClassStar": np.full(len(t), 0.98)})
    for b in "uvgriz":
        src = {"u": "g", "v": "g"}.get(b, b)
        out[f"{b}PSF"], out[f"e_{b}PSF"] = t[src], t[f"{src}err"]
    return out


CANNED = {"II/349/ps1": (_ps1_vizier, "RAJ2000", "DEJ2000"),
          "II/336/apass9": (_apass_vizier, "RAJ2000", "DEJ2000"),
          "II/246/out": (_tmass_vizier, "RAJ2000", "DEJ2000"),
          "I/355/gaiadr3": (_gaia_vizier, "RA_ICRS", "DE_ICRS"),
          "V/147/sdss12": (_sdss_vizier, "RA_ICRS", "DE_ICRS"),
          "II/379/smssdr4": (_skymapper_vizier, "RAICRS", "DEICRS")}


@pytest.fixture(scope="module")
def _stand_in():
    stand_in = VizierStandIn(CANNED)
    yield stand_in
    stand_in.close()


@pytest.fixture
def vizier(_stand_in):
    """The module's stand-in, its request log emptied (the canned tables are built once)."""
    _stand_in.requests.clear()
    return _stand_in


# ----------------------------------------------------------- catalogues through VizieR

@needs_real
@pytest.mark.parametrize("key, centre, radius", [
    ("PS1", NGC5350, 0.2), ("SDSS", NGC5350, 0.2), ("SkyMapper", NGC5350, 0.2),
    ("APASS", EY_UMA, 0.15), ("2MASS", EY_UMA, 0.15), ("GaiaDR3", EY_UMA, 0.15)])
def test_each_catalogue_maps_to_the_common_table(tmp_path, vizier, key, centre, radius):
    cat = CATALOGS[key]
    got = catalog_stars(key, *centre, radius, cache_dir=tmp_path, vizier_server=vizier.url)
    assert got.meta["catalog"] == f"{cat.title} (VizieR {cat.vizier})"
    assert vizier.count(cat.vizier) == len(got.meta["tiles"]["tiles"]) >= 4
    assert got.colnames == (["ra", "dec"] + [f"{p}_{b}" for b in cat.bands
                                             for p in ("mag", "magerr")] + ["good"])
    sky = vizier.table(cat.vizier)
    _, ra_col, dec_col = CANNED[cat.vizier]
    inside = _sep_deg(sky[ra_col], sky[dec_col], *centre) <= radius
    assert len(got) == inside.sum() > 10
    # one star, band by band: the catalogue's magnitude plus its offset to AB
    row = sky[inside][0]
    k = int(np.argmin(_sep_deg(got["ra"], got["dec"], row[ra_col], row[dec_col])))
    for band, cols in cat.bands.items():
        if np.ma.is_masked(row[cols.mag]) or not np.isfinite(got[f"mag_{band}"][k]):
            continue
        assert got[f"mag_{band}"][k] == pytest.approx(row[cols.mag] + cols.to_ab_mag, abs=1e-5)
    good = np.asarray(got["good"])
    print(f"{key}: {len(got)} stars in the field, {good.sum()} good; cuts {got.meta['cuts']}")
    if key == "PS1":    # Nd = 1 and iKmag 0.3 brighter are cut; the real Qual flags pass
        rows = sky[inside]
        bad = (np.asarray(rows["Nd"]) < 3) | (np.asarray(rows["imag"] - rows["iKmag"]) > 0.05)
        assert (~good).sum() == bad.sum() > 0
    if key == "SDSS":
        assert (~good).sum() == (np.asarray(sky[inside]["class"]) != 6).sum() > 0
    if key == "2MASS":  # a band with Qflg B has no magnitude; the star stays
        flagged = np.array([q[0] != "A" for q in sky[inside]["Qflg"]])
        assert np.isnan(got["mag_J"]).sum() >= flagged.sum() > 0 and good.all()


@needs_real
def test_a_field_is_queried_once_and_then_served_by_the_cache(tmp_path, vizier):
    kw = dict(catalog="PS1", cache_dir=tmp_path, vizier_server=vizier.url,
              mag_range=(13.0, 21.0), magerr_max=0.1)
    r = reference_mags(*NGC5350, 0.25, "r", **kw)
    n_tiles = len(r.meta["tiles"]["tiles"])
    assert len(vizier.requests) == n_tiles == len(r.meta["tiles"]["queried"])
    files = list((tmp_path / "ps1-dr1").rglob("*.fits"))
    assert len(files) == n_tiles
    # the same field again, another band (transformed), a smaller field inside: no query
    again = reference_mags(*NGC5350, 0.25, "r", **kw)
    b = reference_mags(*NGC5350, 0.25, "B", **kw)
    small = reference_mags(NGC5350[0] + 0.05, NGC5350[1], 0.1, "g", **kw)
    assert len(vizier.requests) == n_tiles
    assert again.meta["tiles"]["queried"] == b.meta["tiles"]["queried"] == []
    assert np.array_equal(again["mag"], r["mag"]) and len(small) > 0
    # offline: the cache serves it
    off = reference_mags(*NGC5350, 0.25, "r", catalog="PS1", cache_dir=tmp_path, offline=True,
                         mag_range=(13.0, 21.0), magerr_max=0.1)
    assert np.array_equal(off["mag"], r["mag"])
    print(f"PS1 field: {n_tiles} tiles queried once; r: {len(r)} stars, B: {len(b)}")


def test_offline_with_an_empty_cache_names_the_catalogue_and_the_field(tmp_path):
    with pytest.raises(PhotCatalogError) as err:
        reference_mags(208.3, 40.3, 0.3, "r", catalog="PS1", cache_dir=tmp_path, offline=True)
    text = str(err.value)
    print(text)
    assert text.startswith("Pan-STARRS1 DR1 (VizieR II/349/ps1) cannot serve the field "
                           "RA 208.3000 Dec +40.3000 radius 0.300 deg: offline, and ")
    assert "sky tiles" in text and "give a catalogue file" in text
    assert isinstance(err.value, InputError)
    with pytest.raises(PhotCatalogError, match=r"APASS DR9 .* Dec -45\.0000 .* offline"):
        reference_mags(10.0, -45.0, 0.5, "V", catalog="APASS", cache_dir=tmp_path, offline=True)


def test_an_unreachable_vizier_is_a_clear_error(tmp_path):
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(PhotCatalogError, match=r"SDSS DR12 .*field RA 150\.0000 .* is "
                                               r"unreachable"):
        reference_mags(150.0, 30.0, 0.2, "g", catalog="SDSS", cache_dir=tmp_path,
                       vizier_server=f"http://127.0.0.1:{port}")


# ------------------------------------------------------------------------------ bands

@needs_real
def test_ps1_to_bvri_reproduces_the_legacy_tonry_table():
    t = _legacy_ps1()
    mags = {b: np.asarray(t[b], float) for b in "gri"}
    errs = {b: np.asarray(t[f"{b}err"], float) for b in "gri"}
    for kind, tolerance in (("quadratic", 0.01), ("linear", 1e-6)):
        for band in "BVRI":
            mag, err = transforms.relation("PS1", band, kind).apply(mags, errs)
            rms = float(np.sqrt(np.mean((mag - np.asarray(t[band])) ** 2)))
            print(f"PS1 -> {band} ({kind}) vs legacy: rms {rms:.2e} mag over {len(t)} stars")
            assert rms < tolerance
            assert np.all(err >= transforms.relation("PS1", band, kind).scatter_mag)
    # first-order propagation (g and r independent) plus Tonry's scatter, e.g. linear B
    _, err = transforms.relation("PS1", "B", "linear").apply(mags, errs)
    assert np.allclose(err, np.hypot(np.hypot(1.587 * errs["g"], 0.587 * errs["r"]), 0.034))


@needs_real
def test_ps1_file_through_the_public_entry_point(tmp_path):
    """The legacy table read as a PS1 cut-out (its columns mapped to VizieR's) gives its
    own B V R I back with the linear relations, and AB g as it is."""
    mapping = {"RAJ2000": "ra", "DEJ2000": "dec", "Qual": "Q",
               **{f"{b}mag": b for b in "grizy"}, **{f"e_{b}mag": f"{b}err" for b in "grizy"}}
    legacy = _legacy_ps1()
    for band in "BVRIg":
        got = reference_mags(*NGC5350, 0.3, band, catalog="PS1", file=PS1_LEGACY,
                             columns=mapping, mag_range=(10.0, 25.0), magerr_max=1.0,
                             ps1_relation="linear")
        assert got.meta["system"] == "AB" and got.meta["colour_name"] == "g-r"
        assert got.meta["cuts"] == ["Qual has 4 (good), none of 1 (extended), 64, 128 "
                                    "(suspect, poor)"]
        k = [int(np.argmin(_sep_deg(legacy["ra"], legacy["dec"], ra, dec)))
             for ra, dec in zip(got["ra"], got["dec"])]
        assert np.allclose(got["mag"], np.asarray(legacy[band])[k], atol=1e-6)
        assert np.allclose(got["colour"], np.asarray(legacy["g"] - legacy["r"])[k])
    assert "Tonry" in got.meta["transform"] or band == "g"


@needs_real
def test_apass_cut_out_as_a_file_and_through_vizier_agree(tmp_path, vizier):
    kw = dict(mag_range=(9.0, 17.0), magerr_max=0.1)
    v_file = reference_mags(*EY_UMA, 0.2, "V", catalog="APASS", file=APASS_EY_UMA, **kw)
    v_viz = reference_mags(*EY_UMA, 0.2, "V", catalog="APASS", cache_dir=tmp_path,
                           vizier_server=vizier.url, **kw)
    assert len(v_file) == len(v_viz) > 10
    assert np.allclose(v_file["mag"], v_viz["mag"], atol=1e-5)    # the cache holds float32
    apass = Table.read(APASS_EY_UMA)
    k = [int(np.argmin(_sep_deg(apass["RAJ2000"], apass["DEJ2000"], ra, dec)))
         for ra, dec in zip(v_file["ra"], v_file["dec"])]
    assert np.allclose(v_file["mag"], np.asarray(apass["Vmag"])[k] + 0.02)     # Vega -> AB
    assert v_file.meta["colour_name"] == "B-V"
    b_v = np.asarray(apass["Bmag"] - apass["Vmag"])[k] - 0.11
    zero_b_error = np.asarray(apass["e_Bmag"].filled(0.0))[k] == 0    # B unknown: no colour
    assert np.array_equal(np.isnan(v_file["colour"]), zero_b_error)
    assert np.allclose(v_file["colour"][~zero_b_error], b_v[~zero_b_error])
    # R and I from r' i' (Jordi et al. 2006), then Vega -> AB
    r_band = reference_mags(*EY_UMA, 0.2, "R", catalog="APASS", file=APASS_EY_UMA, **kw)
    k = [int(np.argmin(_sep_deg(apass["RAJ2000"], apass["DEJ2000"], ra, dec)))
         for ra, dec in zip(r_band["ra"], r_band["dec"])]
    r, i = np.asarray(apass["r'mag"])[k], np.asarray(apass["i'mag"])[k]
    assert np.allclose(r_band["mag"], r - 0.153 * (r - i) - 0.117 + 0.21)
    assert "Jordi" in r_band.meta["transform"]
    # the other cut-out spells the columns g_mag, e_g_mag: found all the same
    g = reference_mags(134.3, 49.9, 0.6, "g", catalog="APASS", file=APASS_EY_UMA_FITS,
                       mag_range=(9.0, 17.0), magerr_max=0.1)
    assert len(g) > 3 and np.all(g["magerr"] > 0)     # zero errors (unknown) are dropped


@needs_real
def test_catalogue_files_with_and_without_a_column_mapping(tmp_path):
    refcat2 = _refcat2()
    mapping = {"ra": "RA_ICRS", "dec": "DE_ICRS", "mag_r": "rmag", "magerr_r": "e_rmag"}
    got = reference_mags(*EY_UMA, 0.2, "r", catalog="file", file=REFCAT2_EY_UMA,
                         columns=mapping, mag_range=(12.0, 19.0), magerr_max=0.05)
    inside = ((_sep_deg(refcat2["RA_ICRS"], refcat2["DE_ICRS"], *EY_UMA) <= 0.2)
              & (refcat2["rmag"] >= 12) & (refcat2["rmag"] <= 19) & (refcat2["e_rmag"] <= 0.05))
    assert len(got) == inside.sum() > 20
    assert np.allclose(np.sort(got["mag"]), np.sort(np.asarray(refcat2["rmag"][inside])))
    assert got.meta["catalog_key"] == "file" and "rmag" in got.meta["transform"]
    # the same file with names found on their own (RA_ICRS, gmag/e_gmag, case-sensitive:
    # Gmag is Gaia's G, not g)
    t = read_catalog_file(REFCAT2_EY_UMA, *EY_UMA, 0.2)
    assert {"mag_g", "mag_r", "mag_G", "mag_BP", "mag_J"} <= set(t.colnames)
    assert np.array_equal(t["mag_G"], refcat2["Gmag"][_sep_deg(refcat2["RA_ICRS"],
                                                             refcat2["DE_ICRS"], *EY_UMA) <= 0.2])
    # a real LCO catalogue (FITS; gmag, gmagerr, ra, dec)
    lco = Table.read(LCO_MATCHED)
    ra0, dec0 = float(np.median(lco["ra"])), float(np.median(lco["dec"]))
    g = reference_mags(ra0, dec0, 0.2, "g", catalog="file", file=LCO_MATCHED,
                       mag_range=(10.0, 20.0), magerr_max=0.1)
    assert len(g) > 20 and g.meta["colour_name"] == "g-r"
    assert "mag_y" not in read_catalog_file(LCO_MATCHED, ra0, dec0, 0.2).colnames  # pixel y
    # mapping keys are the output names for a plain file, VizieR's for a known catalogue
    with pytest.raises(PhotCatalogError, match="mapping keys must be ra, dec, mag_<band>"):
        reference_mags(*EY_UMA, 0.2, "r", catalog="file", file=REFCAT2_EY_UMA,
                       columns={"RAJ2000": "RA_ICRS"})
    with pytest.raises(PhotCatalogError, match="mapping keys must be APASS DR9's VizieR names"):
        reference_mags(*EY_UMA, 0.2, "V", catalog="APASS", file=APASS_EY_UMA,
                       columns={"mag_V": "Vmag"})
    # a mapping naming a column the file lacks, a band the file lacks
    with pytest.raises(PhotCatalogError, match="no column 'nothere'"):
        reference_mags(*EY_UMA, 0.2, "r", catalog="file", file=REFCAT2_EY_UMA,
                       columns={"mag_r": "nothere"})
    with pytest.raises(PhotCatalogError, match="has no band 'm625'"):
        reference_mags(*EY_UMA, 0.2, "m625", catalog="file", file=REFCAT2_EY_UMA)


def test_medium_bands_from_a_synthetic_photometry_file(tmp_path):
    rng = np.random.default_rng(3)
    n = 300
    ra, dec = 150.0 + rng.uniform(-0.3, 0.3, n), 30.0 + rng.uniform(-0.3, 0.3, n)
    t = Table({"ra": ra, "dec": dec})
    for band in ("m400", "m625", "m875"):
        t[f"mag_{band}"] = rng.uniform(11.0, 20.0, n)
        t[f"magerr_{band}"] = np.full(n, 0.01)
    t["mag_g"], t["mag_r"] = t["mag_m400"], t["mag_m625"] - 0.1
    path = tmp_path / "synphot.fits"
    t.write(path)
    assert choose_catalog("PS1", 30.0, "m625") == "file"
    got = reference_mags(150.0, 30.0, 0.2, "m625", catalog="file", file=path)
    inside = (_sep_deg(ra, dec, 150.0, 30.0) <= 0.2) & (t["mag_m625"] >= 12) & (
        t["mag_m625"] <= 20)
    assert len(got) == inside.sum() and got.meta["band"] == "m625"
    assert got.meta["colour_name"] == "g-r"
    k = [int(np.argmin(_sep_deg(ra, dec, a, d))) for a, d in zip(got["ra"], got["dec"])]
    assert np.allclose(got["mag"], np.asarray(t["mag_m625"])[k])
    assert np.allclose(got["colour"], np.asarray(t["mag_g"] - t["mag_r"])[k])
    with pytest.raises(PhotCatalogError, match="a file, and none was given"):
        reference_mags(150.0, 30.0, 0.2, "m625", catalog="file")
    with pytest.raises(PhotCatalogError, match=r"Gaia DR3 \(VizieR I/355/gaiadr3\) has no "
                                               r"band 'V' \(it has G\) and no transformation"):
        reference_mags(150.0, 30.0, 0.2, "V", catalog="GaiaDR3", file=path,
                       columns={"RA_ICRS": "ra", "DE_ICRS": "dec", "Gmag": "mag_g"})


def test_vega_bands_come_out_ab():
    assert CATALOGS["2MASS"].bands["K"].to_ab_mag == 1.85
    assert CATALOGS["APASS"].bands["B"].to_ab_mag == -0.09
    assert CATALOGS["GaiaDR3"].bands["G"].to_ab_mag == pytest.approx(25.8010 - 25.6874)
    assert CATALOGS["SDSS"].bands["u"].to_ab_mag == -0.04
    assert CATALOGS["PS1"].bands["g"].to_ab_mag == 0.0
    rel = transforms.relation("PS1", "V")
    v, _ = rel.apply({"g": np.array([15.5]), "r": np.array([15.0])},
                     {"g": np.array([0.01]), "r": np.array([0.01])})
    assert v[0] == pytest.approx(15.0 + 0.005 + 0.462 * 0.5 + 0.013 * 0.25 + 0.02)


# ----------------------------------------------------------------------------- choice

@pytest.mark.parametrize("profile, dec, band, expected", [
    ("PS1", 40.0, "r", "PS1"), ("PS1", 40.0, "B", "PS1"), ("PS1", -29.0, "V", "PS1"),
    ("PS1", -45.0, "r", "SkyMapper"), ("PS1", -45.0, "B", "APASS"),
    ("PS1", -45.0, "R", "APASS"), ("PS1", 40.0, "u", "SDSS"), ("PS1", -45.0, "u", "SkyMapper"),
    ("PS1", 40.0, "U", "SDSS"), ("PS1", -45.0, "U", None),
    ("APASS", 40.0, "V", "APASS"), ("APASS", 40.0, "z", "PS1"), ("APASS", -60.0, "g", "APASS"),
    ("SkyMapper", -60.0, "i", "SkyMapper"), ("SkyMapper", 40.0, "i", "PS1"),
    ("SDSS", 30.0, "g", "SDSS"), ("2MASS", 10.0, "Ks", "2MASS"), ("PS1", 10.0, "J", "2MASS"),
    ("GaiaDR3", 10.0, "G", "GaiaDR3"), ("GaiaDR3", -70.0, "r", "SkyMapper"),
    ("file", 10.0, "r", "file"), ("PS1", 10.0, "m500", "file"),
])
def test_the_catalogue_is_chosen_by_profile_band_and_declination(profile, dec, band, expected):
    if expected is None:
        with pytest.raises(PhotCatalogError, match="no reference catalogue gives band 'U' at "
                                                   "Dec -45.00"):
            choose_catalog(profile, dec, band)
    else:
        assert choose_catalog(profile, dec, band) == expected
    with pytest.raises(PhotCatalogError, match="unknown reference catalogue 'USNO'"):
        choose_catalog("USNO", 0.0, "r")
