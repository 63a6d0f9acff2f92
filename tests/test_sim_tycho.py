"""Reading Tycho-2 from the astrometry.net index: the decoding is checked
against famous bright stars."""

from __future__ import annotations

import math

import pytest

from gppy.astrometry import tycho

pytestmark = pytest.mark.skipif(not (tycho.DEFAULT_INDEX_DIR / tycho.INDEX_NAME).is_file(),
                                reason="astrometry-data-tycho2-07-littleendian is not installed")

# name, J2000 RA and Dec (deg), V, proper motion total (arcsec/yr): Tycho-2 positions
# are at epoch ~1991, so fast movers sit up to 9 yr x pm from their J2000 place.
FAMOUS = [
    ("Betelgeuse", 88.792939, 7.407064, 0.50, 0.03),
    ("Deneb", 310.357980, 45.280339, 1.25, 0.003),
    ("Altair", 297.695827, 8.868321, 0.77, 0.66),
    ("Castor A", 113.649428, 31.888276, 1.93, 0.24),      # the bright one of the visual pair
    ("Pollux", 116.328958, 28.026199, 1.14, 0.63),
    ("Spica", 201.298247, -11.161319, 0.97, 0.05),
]


@pytest.mark.parametrize("name, ra, dec, vmag, pm", FAMOUS)
def test_famous_stars_are_where_they_should_be(name, ra, dec, vmag, pm):
    stars = tycho.cone(ra, dec, 30 / 3600)
    assert len(stars.index) >= 1, f"{name} not found"
    brightest = 0  # cone() sorts brightest first
    d_ra = (stars.ra_deg[brightest] - ra) * math.cos(math.radians(dec))
    sep_arcsec = 3600 * math.hypot(d_ra, stars.dec_deg[brightest] - dec)
    assert sep_arcsec < 1.0 + 10 * pm
    assert stars.vt_mag[brightest] == pytest.approx(vmag, abs=0.35)   # VT vs Johnson V


def test_a_cone_has_the_expected_density():
    stars = tycho.cone(150.0, 60.0, 1.0)      # high galactic latitude
    assert 40 < len(stars.index) < 400       # ~45 per deg^2 on average over the sky
    assert list(stars.vt_mag) == sorted(stars.vt_mag)


def test_missing_index_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv(tycho.INDEX_DIR_ENV, str(tmp_path))
    with pytest.raises(tycho.TychoIndexMissing, match="apt-get install astrometry-data-tycho2"):
        tycho.cone(0.0, 0.0, 1.0)
