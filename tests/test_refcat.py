"""Reference stars: catalogue files of any common layout, Gaia through a local
VizieR stand-in (tile cache, reuse, magnitude limits, offline mode, epochs),
unreachable or silent servers, Tycho-2 from the astrometry.net index, and the
"auto" fallbacks. Nothing here touches the network."""

from __future__ import annotations

import math
import socket
import time

import numpy as np
import pytest
from astropy import units as u
from astropy.table import Table

from gppy.astrometry import refcat, tycho
from gppy.astrometry.refcat import RefcatError, reference_stars
from gppy.catalogs import tiles
from gppy.errors import InputError
from gppy.sim.pointing import spherical_offset

from vizier_standin import VizierStandIn


@pytest.fixture(autouse=True)
def _fresh_failures():
    refcat.forget_failures()
    yield
    refcat.forget_failures()


HAVE_TYCHO = (tycho.DEFAULT_INDEX_DIR / tycho.INDEX_NAME).is_file()
needs_tycho = pytest.mark.skipif(not HAVE_TYCHO,
                                 reason="astrometry-data-tycho2-07-littleendian is not installed")


def _sky(n: int, ra0: float, dec0: float, half_deg: float, seed: int = 1) -> Table:
    """n random stars in a square patch, with magnitudes and proper motions."""
    rng = np.random.default_rng(seed)
    dec = rng.uniform(dec0 - half_deg, dec0 + half_deg, n)
    ra = ra0 + rng.uniform(-half_deg, half_deg, n) / np.cos(np.radians(dec))
    return Table({"ra": ra % 360.0, "dec": dec, "g": rng.uniform(10.0, 21.0, n),
                  "pmra": rng.normal(0.0, 5.0, n), "pmdec": rng.normal(0.0, 5.0, n)})


def _sep_deg(ra1, dec1, ra2, dec2):
    ra1, dec1, ra2, dec2 = (np.radians(np.asarray(v, float)) for v in (ra1, dec1, ra2, dec2))
    c = np.sin(dec1) * np.sin(dec2) + np.cos(dec1) * np.cos(dec2) * np.cos(ra1 - ra2)
    return np.degrees(np.arccos(np.clip(c, -1, 1)))


# --------------------------------------------------------------------------------- files

def test_the_simulators_refcat_is_read(tmp_path):
    from gppy.sim import refcat as sim_refcat
    sky = _sky(400, 150.0, 30.0, 0.3)
    stars = Table({"id": [f"s{i}" for i in range(len(sky))], "ra": sky["ra"], "dec": sky["dec"],
                   "vmag_ab": sky["g"], "mag_B": sky["g"] + 0.5, "mag_V": sky["g"]})
    path = tmp_path / "refcat.ecsv"
    sim_refcat.write(path, sim_refcat.build([stars], ["B", "V"], seed=3))
    got = reference_stars(150.0, 30.0, 0.2, source=str(path), cache_dir=tmp_path / "cache")
    assert got.meta["source"] == "file" and got.meta["mag_column"] == "mag_V"
    assert got.colnames == ["ra", "dec", "mag"]
    inside = _sep_deg(sky["ra"], sky["dec"], 150.0, 30.0) <= 0.2
    assert len(got) == (inside & (sky["g"] < sim_refcat.FAINT_LIMIT_VMAG)).sum()
    finite = np.isfinite(got["mag"])
    assert list(got["mag"][finite]) == sorted(got["mag"][finite])
    assert not np.isfinite(got["mag"][finite.sum():]).any()     # NaN magnitudes last
    # "auto" prefers a given file
    auto = reference_stars(150.0, 30.0, 0.2, cache_dir=tmp_path / "cache", offline=True,
                           catalog_file=path)
    assert len(auto) == len(got) and auto.meta["source"] == "file"


@pytest.mark.parametrize("fmt, names", [
    ("fits", ("RA_ICRS", "DE_ICRS", "Gmag")),
    ("csv", ("RAJ2000", "DEJ2000", "Vmag")),
    ("ecsv", ("ALPHA_J2000", "DELTA_J2000", "phot_g_mean_mag")),
    ("csv", ("Ra", "Dec", None)),
])
def test_catalogue_files_of_common_layouts(tmp_path, fmt, names):
    sky = _sky(300, 10.0, -45.0, 0.5)
    cols = {names[0]: sky["ra"], names[1]: sky["dec"], "other": np.arange(len(sky))}
    if names[2]:
        cols[names[2]] = sky["g"]
        cols["e_" + names[2]] = np.full(len(sky), 0.01)    # an error column is not the magnitude
    path = tmp_path / f"cat.{fmt}"
    Table(cols).write(path, format={"fits": "fits", "csv": "ascii.csv", "ecsv": "ascii.ecsv"}[fmt])
    got = reference_stars(10.0, -45.0, 0.3, source=str(path), cache_dir=tmp_path, mag_limit=18.0)
    inside = _sep_deg(sky["ra"], sky["dec"], 10.0, -45.0) <= 0.3
    if names[2]:
        assert got.meta["mag_column"] == names[2]
        assert len(got) == (inside & (sky["g"] <= 18.0)).sum()
        assert np.all(np.diff(got["mag"]) >= 0)
    else:   # no magnitude: all stars, NaN magnitudes, catalogue order
        assert got.meta["mag_column"] is None
        assert len(got) == inside.sum() and np.isnan(got["mag"]).all()
    assert np.all(_sep_deg(got["ra"], got["dec"], 10.0, -45.0) <= 0.3)


def test_sexagesimal_columns_and_ra_wrap(tmp_path):
    from astropy.coordinates import SkyCoord
    c = SkyCoord([359.9, 0.05, 180.0], [10.0, 10.02, 10.0], unit="deg")
    Table({"RA": c.ra.to_string(unit=u.hourangle, sep=":", precision=3),
           "DEC": c.dec.to_string(sep=":", precision=2, alwayssign=True),
           "mag": [12.0, 11.0, 10.0]}).write(tmp_path / "s.csv", format="ascii.csv")
    got = reference_stars(0.0, 10.0, 0.2, source=str(tmp_path / "s.csv"), cache_dir=tmp_path)
    assert len(got) == 2
    assert got["ra"][0] == pytest.approx(0.05, abs=1e-5) and got["mag"][0] == 11.0
    assert got["ra"][1] == pytest.approx(359.9, abs=1e-5)


def test_file_errors_are_clear(tmp_path):
    with pytest.raises(RefcatError, match="nothere.ecsv"):
        reference_stars(0, 0, 1, source=str(tmp_path / "nothere.ecsv"), cache_dir=tmp_path)
    Table({"x": [1.0], "y": [2.0]}).write(tmp_path / "xy.csv", format="ascii.csv")
    with pytest.raises(RefcatError, match="no RA/Dec columns"):
        reference_stars(0, 0, 1, source=str(tmp_path / "xy.csv"), cache_dir=tmp_path)
    (tmp_path / "junk.fits").write_text("not a table")
    with pytest.raises(RefcatError, match="cannot be read"):
        reference_stars(0, 0, 1, source=str(tmp_path / "junk.fits"), cache_dir=tmp_path)
    Table({"ra": [100.0], "dec": [5.0]}).write(tmp_path / "far.csv", format="ascii.csv")
    with pytest.raises(RefcatError, match=r"no stars in the field RA 0\.0000 Dec \+0\.0000"):
        reference_stars(0, 0, 1, source=str(tmp_path / "far.csv"), cache_dir=tmp_path)
    assert issubclass(RefcatError, InputError)


# ------------------------------------------------------------------- a VizieR stand-in

GAIA = "I/355/gaiadr3"


def _gaia_stand_in(sky: Table, delay_s: float = 0.0) -> VizierStandIn:
    """A VizieR stand-in serving `sky` (a _sky table) as Gaia DR3, in VizieR's names."""
    gaia = Table({"RA_ICRS": sky["ra"], "DE_ICRS": sky["dec"], "Gmag": sky["g"],
                  "pmRA": sky["pmra"], "pmDE": sky["pmdec"]})
    return VizierStandIn({GAIA: (gaia, "RA_ICRS", "DE_ICRS")}, delay_s=delay_s)


def _inside(vizier: VizierStandIn, ra0: float, dec0: float, radius: float) -> np.ndarray:
    """Which of the stand-in's Gaia stars lie in the cone."""
    sky = vizier.table(GAIA)
    return _sep_deg(sky["RA_ICRS"], sky["DE_ICRS"], ra0, dec0) <= radius


@pytest.fixture
def vizier():
    stand_in = _gaia_stand_in(_sky(20000, 150.0, 30.0, 2.5))
    yield stand_in
    stand_in.close()


def test_gaia_tiles_are_queried_once_and_reused(tmp_path, vizier):
    cache = tmp_path / "cache"
    kw = dict(source="gaia", cache_dir=cache, vizier_server=vizier.url)
    first = reference_stars(150.0, 30.0, 0.4, **kw)
    n_tiles = len(first.meta["tiles"]["tiles"])
    assert first.meta["catalog"] == "Gaia DR3 (VizieR I/355/gaiadr3)" and first.meta["band"] == "G"
    assert len(vizier.requests) == n_tiles == len(first.meta["tiles"]["queried"]) >= 4
    assert all(r["path"] == "/viz-bin/votable" for r in vizier.requests)
    order = first.meta["tiles"]["order"]
    files = sorted((cache / "gaia-dr3" / f"hpx{order}").glob("*-Gall.fits"))
    assert len(files) == n_tiles
    # exactly the stand-in's stars in the cone, sorted
    inside = _inside(vizier, 150.0, 30.0, 0.4)
    assert len(first) == inside.sum()
    assert np.all(np.diff(first["mag"]) >= 0)
    assert first.meta["epoch"] == 2016.0

    again = reference_stars(150.0, 30.0, 0.4, **kw)            # all cached
    assert len(vizier.requests) == n_tiles and again.meta["tiles"]["queried"] == []
    assert np.array_equal(again["ra"], first["ra"])

    # a neighbouring field: only the tiles it adds are queried
    ra1, dec1 = spherical_offset(150.0, 30.0, 90.0, 0.7)
    near = reference_stars(float(ra1), float(dec1), 0.4, **kw)
    new = set(near.meta["tiles"]["tiles"]) - set(first.meta["tiles"]["tiles"])
    assert 0 < len(near.meta["tiles"]["queried"]) == len(new) < len(near.meta["tiles"]["tiles"])
    assert len(vizier.requests) == n_tiles + len(new)

    # offline: the cache serves the cached field, and names what is missing elsewhere
    off = reference_stars(150.0, 30.0, 0.4, source="gaia", cache_dir=cache, offline=True)
    assert len(off) == len(first)
    with pytest.raises(RefcatError, match=r"Gaia DR3 .* field RA 151\.0000 Dec \+31\.0000 "
                                          r"radius 0\.400 deg: offline, and \d+ of \d+ sky tiles"):
        reference_stars(151.0, 31.0, 0.4, source="gaia", cache_dir=cache, offline=True)


def test_finer_and_coarser_requests_reuse_cached_tiles(tmp_path, vizier):
    from astropy_healpix import HEALPix
    cache = tmp_path / "cache"
    big = reference_stars(150.0, 30.0, 1.0, source="gaia", cache_dir=cache,
                          vizier_server=vizier.url)
    n = len(vizier.requests)
    # a small field inside: finer tiles, served by their cached ancestors
    small = reference_stars(150.1, 30.1, 0.1, source="gaia", cache_dir=cache, offline=True)
    assert small.meta["tiles"]["order"] > big.meta["tiles"]["order"]
    inside = _inside(vizier, 150.1, 30.1, 0.1)
    assert len(small) == inside.sum()
    # a coarser request over fine tiles: served when all four children are cached
    fine_cache = tmp_path / "fine"
    order = 8
    hp = HEALPix(2 ** (order - 1), order="nested")
    parent = int(hp.lonlat_to_healpix(150.0 * u.deg, 30.0 * u.deg))
    for child in range(4 * parent, 4 * parent + 4):
        ra_c, dec_c, r = tiles.tile_circle(order, child)
        refcat.from_gaia(ra_c, dec_c, 0.3 * r, cache_dir=fine_cache, vizier_server=vizier.url,
                         order=order)
    assert len(list((fine_cache / "gaia-dr3" / f"hpx{order}").glob("*.fits"))) == 4
    ra_p, dec_p, r_p = tiles.tile_circle(order - 1, parent)
    coarse = refcat.from_gaia(ra_p, dec_p, 0.05, cache_dir=fine_cache, offline=True,
                              order=order - 1)
    inside = _inside(vizier, ra_p, dec_p, 0.05)
    assert len(coarse) == inside.sum() > 0
    assert n == len(vizier.requests) - 4


def test_magnitude_limits_key_the_cache(tmp_path, vizier):
    cache = tmp_path / "cache"
    kw = dict(source="gaia", cache_dir=cache, vizier_server=vizier.url)
    bright = reference_stars(150.0, 30.0, 0.3, mag_limit=15.2, **kw)
    n = len(vizier.requests)
    assert "Gmag=<15.50" in vizier.requests[0]["body"]           # rounded up to 0.5 mag
    assert bright["mag"].max() <= 15.2
    reference_stars(150.0, 30.0, 0.3, mag_limit=15.4, **kw)      # same key: cached
    assert len(vizier.requests) == n
    deeper = reference_stars(150.0, 30.0, 0.3, mag_limit=17.0, **kw)   # deeper: queried
    assert len(vizier.requests) == 2 * n
    assert len(deeper) > len(bright)
    reference_stars(150.0, 30.0, 0.3, mag_limit=16.0, **kw)      # the 17.0 tiles serve it
    assert len(vizier.requests) == 2 * n


def test_proper_motions_move_gaia_positions_to_the_epoch(tmp_path):
    sky = Table({"ra": [150.0, 150.01], "dec": [30.0, 30.01], "g": [12.0, 13.0],
                 "pmra": [1000.0, np.nan], "pmdec": [-500.0, np.nan]})
    stand_in = _gaia_stand_in(sky)
    try:
        got = reference_stars(150.0, 30.0, 0.1, source="gaia", cache_dir=tmp_path, epoch=2026.0,
                              vizier_server=stand_in.url)
    finally:
        stand_in.close()
    assert got.meta["epoch"] == 2026.0
    d_ra = (got["ra"][0] - 150.0) * 3600 * math.cos(math.radians(got["dec"][0]))
    assert d_ra == pytest.approx(10.0, abs=1e-3)                  # 1"/yr for 10 yr
    assert (got["dec"][0] - 30.0) * 3600 == pytest.approx(-5.0, abs=1e-3)
    assert got["ra"][1] == pytest.approx(150.01) and got["dec"][1] == pytest.approx(30.01)


# --------------------------------------------------------------- unreachable / silent

def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_vizier_fails_fast_and_clearly(tmp_path):
    url = f"http://127.0.0.1:{_closed_port()}"
    t0 = time.monotonic()
    with pytest.raises(RefcatError) as err:
        reference_stars(150.0, 30.0, 0.3, source="gaia", cache_dir=tmp_path, vizier_server=url)
    assert time.monotonic() - t0 < 5.0
    text = str(err.value)
    assert "Gaia DR3 (VizieR I/355/gaiadr3)" in text and "field RA 150.0000 Dec +30.0000" in text
    assert f"VizieR at {url} is unreachable" in text
    assert not list(tmp_path.rglob("*.fits"))                    # nothing cached
    # the next field does not knock again for a while
    with pytest.raises(RefcatError, match=r"failed \d+ s ago \(is unreachable .*\); not asked "
                                          r"again for 300 s"):
        reference_stars(10.0, 30.0, 0.3, source="gaia", cache_dir=tmp_path, vizier_server=url)


def test_a_silent_vizier_times_out(tmp_path):
    stand_in = _gaia_stand_in(_sky(10, 150.0, 30.0, 0.1), delay_s=5.0)
    try:
        t0 = time.monotonic()
        with pytest.raises(RefcatError, match="did not answer within 0.5 s"):
            reference_stars(150.0, 30.0, 0.05, source="gaia", cache_dir=tmp_path,
                            vizier_server=stand_in.url, timeout_s=0.5)
        assert time.monotonic() - t0 < 3.0
        refcat.forget_failures()         # once forgotten, it is asked again (and answers)
        stand_in.delay_s = 0.0
        assert len(reference_stars(150.0, 30.0, 0.05, source="gaia", cache_dir=tmp_path,
                                   vizier_server=stand_in.url)) > 0
    finally:
        stand_in.close()


def test_the_server_may_come_from_the_environment(tmp_path, monkeypatch, vizier):
    monkeypatch.setenv(refcat.VIZIER_SERVER_ENV, vizier.url)
    got = reference_stars(150.0, 30.0, 0.1, source="gaia", cache_dir=tmp_path)
    assert len(got) > 0 and len(vizier.requests) > 0


# -------------------------------------------------------------------------- Tycho-2

@needs_tycho
def test_tycho2_from_the_index_files_at_the_pleiades(tmp_path):
    got = reference_stars(56.75, 24.12, 1.0, source="tycho2", cache_dir=tmp_path,
                          index_dirs=[tycho.DEFAULT_INDEX_DIR])
    assert got.meta["source"] == "tycho2" and got.meta["band"] == "VT"
    assert "index-tycho2-07" in got.meta["catalog"]
    # Pleiades (J2000, V): the index (thinned by astrometry.net) lacks Alcyone and Electra;
    # its brightest here is Atlas
    for name, ra, dec, vmag in [("Atlas", 57.290583, 24.053417, 3.62),
                                ("Maia", 56.456696, 24.367751, 3.87),
                                ("Merope", 56.581554, 23.948348, 4.18),
                                ("Taygeta", 56.302063, 24.467277, 4.30)]:
        sep = _sep_deg(got["ra"], got["dec"], ra, dec) * 3600
        k = int(np.argmin(sep))
        assert sep[k] < 1.0, name
        assert got["mag"][k] == pytest.approx(vmag, abs=0.15), name
    assert got["ra"][0] == pytest.approx(57.290583, abs=1e-3)
    assert 100 < len(got) < 1000 and np.all(np.diff(got["mag"]) >= 0)
    faint_cut = reference_stars(56.75, 24.12, 1.0, source="tycho2", cache_dir=tmp_path,
                                mag_limit=7.0)
    assert 5 < len(faint_cut) < len(got) and faint_cut["mag"].max() <= 7.0


@needs_tycho
def test_auto_falls_back_to_tycho2_when_gaia_cannot_serve(tmp_path):
    got = reference_stars(56.75, 24.12, 0.5, cache_dir=tmp_path, offline=True)
    assert got.meta["source"] == "tycho2"
    assert "offline" in got.meta["fallback"] and "Gaia DR3" in got.meta["fallback"]
    url = f"http://127.0.0.1:{_closed_port()}"
    got = reference_stars(56.75, 24.12, 0.5, cache_dir=tmp_path, vizier_server=url)
    assert got.meta["source"] == "tycho2" and "unreachable" in got.meta["fallback"]


def test_auto_with_nothing_to_serve_names_every_reason(tmp_path):
    with pytest.raises(RefcatError) as err:
        reference_stars(56.75, 24.12, 0.5, cache_dir=tmp_path / "cache", offline=True,
                        index_dirs=[tmp_path])
    text = str(err.value)
    assert text.startswith("no reference catalogue can serve the field RA 56.7500 Dec +24.1200")
    assert "offline" in text and "Tycho-2" in text and "apt-get install" in text


def test_tycho2_index_folders_are_searched_in_order(tmp_path):
    with pytest.raises(RefcatError, match=str(tmp_path)):
        reference_stars(0, 0, 1, source="tycho2", cache_dir=tmp_path, index_dirs=[tmp_path])
    if HAVE_TYCHO:
        got = reference_stars(0, 0, 1, source="tycho2", cache_dir=tmp_path,
                              index_dirs=[tmp_path, tycho.DEFAULT_INDEX_DIR])
        assert len(got) > 0


# --------------------------------------------------------------------------- tiling

@pytest.mark.parametrize("radius", [0.05, 0.3, 1.2, 3.0])
def test_tiles_cover_the_cone(radius):
    from astropy_healpix import HEALPix
    rng = np.random.default_rng(5)
    for _ in range(20):
        ra0, dec0 = rng.uniform(0, 360), rng.uniform(-89, 89)
        order = refcat.tile_order(radius)
        tiles = set(refcat.tiles_for_cone(ra0, dec0, radius, order).tolist())
        assert 1 <= len(tiles) <= 40
        n = 4000
        d = np.degrees(np.arccos(1 - rng.uniform(0, 1, n) * (1 - math.cos(math.radians(radius)))))
        d[:400] = radius * 0.99999                  # the rim
        ra, dec = spherical_offset(ra0, dec0, rng.uniform(0, 360, n), d)
        hp = HEALPix(2 ** order, order="nested")
        need = set(hp.lonlat_to_healpix(ra * u.deg, dec * u.deg).tolist())
        assert need <= tiles
