"""SkyBoT (gppy.transient.skybot) through a local HTTP stand-in that answers the
cone search as IMCCE's service does (a VOTable with its column names and
sexagesimal positions), and the transient stage's query for a frame."""

from __future__ import annotations

import socket
import urllib.parse
from http.server import BaseHTTPRequestHandler
from io import BytesIO

import numpy as np
import pytest
import structlog
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.io.votable import from_table
from astropy.table import Table
from astropy.time import Time
from astropy.wcs import WCS

from gppy.catalogs.tiles import sep_deg
from http_standin import reply, serve
from gppy.transient import skybot
from gppy.transient.skybot import SkybotError, known_movers, mark_movers
from gppy.transient.stage import _known_movers

# (name, ra, dec, V, position uncertainty ", geocentric distance au)
OBJECTS = [("Ceres", 150.01234, 20.00567, 8.9, 0.02, 1.9),
           ("2004 XY", 150.12345, 19.93456, 20.1, 4.0, 0.45),
           ("far away", 160.0, 20.0, 15.0, 0.1, 2.0)]
FIELD = (150.05, 20.0, 0.2)            # ra, dec, radius (deg)
EPOCH_MJD = 60385.12


class SkybotStandIn:
    """Answers GET conesearch requests from OBJECTS (those inside the cone); records
    each request's arguments. `status`/`body` override the answer."""

    def __init__(self):
        self.requests: list[dict] = []
        self.status, self.body = 200, None
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                query = urllib.parse.urlparse(self.path).query
                args = {k: v[0] for k, v in urllib.parse.parse_qs(query).items()}
                outer.requests.append(args)
                payload = outer.body if outer.body is not None else outer.answer(args)
                reply(self, outer.status, payload)

        self.server = serve(Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/skybot/conesearch.php"

    @staticmethod
    def answer(args: dict) -> bytes:
        ra0, dec0, radius = float(args["-ra"]), float(args["-dec"]), float(args["-rd"])
        rows = [o for o in OBJECTS if sep_deg(o[1], o[2], ra0, dec0) <= radius]
        coords = SkyCoord([o[1] for o in rows], [o[2] for o in rows], unit="deg")
        n = len(rows)
        table = Table({
            "num": [str(k + 1) if k == 0 else "-" for k in range(n)],
            "name": [o[0] for o in rows],
            "ra": list(coords.ra.to_string(unit="hourangle", sep=" ", precision=4)),
            "de": list(coords.dec.to_string(sep=" ", precision=3, alwayssign=True)),
            "class": ["MB>Inner"] * n, "magV": [o[3] for o in rows],
            "errpos": [o[4] for o in rows], "angdist": [0.0] * n,
            "dracosdec": [10.0] * n, "ddec": [-3.0] * n, "dgeo": [o[5] for o in rows],
            "dhelio": [o[5] + 1.0 for o in rows], "phase": [10.0] * n,
            "solelong": [150.0] * n, **{k: [0.0] * n for k in ("px", "py", "pz", "vx",
                                                              "vy", "vz")},
            "jdref": [float(args["-ep"])] * n})
        out = BytesIO()
        from_table(table).to_xml(out)
        return out.getvalue()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def standin():
    server = SkybotStandIn()
    yield server
    server.close()


@pytest.fixture(autouse=True)
def forget_failures():
    skybot._failed.clear()
    yield
    skybot._failed.clear()


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/skybot"


def test_query_units_and_cache(standin, tmp_path):
    movers = known_movers(*FIELD, EPOCH_MJD, cache_dir=tmp_path, server=standin.url)
    assert sorted(movers["name"]) == ["2004 XY", "Ceres"]
    for o in OBJECTS[:2]:
        row = movers[movers["name"] == o[0]][0]
        assert sep_deg(row["ra"], row["dec"], o[1], o[2]) * 3600 < 0.01
        assert row["vmag"] == o[3] and row["posunc_arcsec"] == o[4] and row["geodist_au"] == o[5]
    args, = standin.requests
    assert float(args["-ep"]) == pytest.approx(Time(EPOCH_MJD, format="mjd").jd, abs=1e-6)
    assert (float(args["-ra"]), float(args["-dec"]), float(args["-rd"])) == pytest.approx(FIELD)
    # a night processed again asks nothing
    again = known_movers(*FIELD, EPOCH_MJD, cache_dir=tmp_path, server=standin.url)
    assert len(standin.requests) == 1 and list(again["name"]) == list(movers["name"])


def test_failures_are_clear_and_not_repeated(standin, tmp_path):
    url = _closed_port_url()
    with pytest.raises(SkybotError, match=f"SkyBoT at {url}: unreachable"):
        known_movers(*FIELD, EPOCH_MJD, cache_dir=tmp_path, server=url)
    with pytest.raises(SkybotError, match=r"failed \d+ s ago .*not asked again"):
        known_movers(150.3, 20.0, 0.2, EPOCH_MJD, cache_dir=tmp_path, server=url)
    standin.status, standin.body = 500, b"oops"
    with pytest.raises(SkybotError, match="answered 500"):
        known_movers(*FIELD, EPOCH_MJD, cache_dir=tmp_path, server=standin.url)
    skybot._failed.clear()
    standin.status, standin.body = 200, b"<html>maintenance</html>"
    with pytest.raises(SkybotError, match="unusable answer"):
        known_movers(*FIELD, EPOCH_MJD, cache_dir=tmp_path, server=standin.url)
    assert not list((tmp_path / "skybot").glob("*.ecsv"))     # failures are not cached


def test_mark_movers():
    movers = Table(rows=[("near", 150.0, 20.0, 19.0, 0.1, 2.5, "MB"),
                         ("close to Earth", 151.0, 20.0, 18.0, 0.5, 0.2, "NEA")],
                   names=skybot.COLUMNS)
    offsets_arcsec = [(0.0, 2.0, "candidate"),    # within 3" + 8.8"/2.5 + 0.3"
                      (0.0, 8.0, "candidate"),    # beyond it
                      (1.0, 40.0, "candidate"),   # parallax at 0.2 au: 3 + 44 + 1.5"
                      (0.0, 1.0, "bogus")]        # only candidates are marked
    cands = Table(rows=[(150.0 + ra_deg, 20.0 + dec_arcsec / 3600, cls, "")
                        for ra_deg, dec_arcsec, cls in offsets_arcsec],
                  names=("ra", "dec", "cls", "reasons"))
    assert mark_movers(cands, movers) == 2
    assert list(cands["cls"]) == ["moving", "candidate", "moving", "bogus"]
    assert list(cands["reasons"]) == ["skybot:near", "", "skybot:close to Earth", ""]
    assert list(cands["sso_name"]) == ["near", "", "close to Earth", ""]


def test_stage_asks_for_the_frame_at_mid_exposure(standin, tmp_path, monkeypatch):
    monkeypatch.setenv(skybot.SKYBOT_SERVER_ENV, standin.url)
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [150.05, 20.0]
    wcs.wcs.crpix = [512.5, 512.5]
    wcs.wcs.cd = np.diag([-0.8 / 3600, 0.8 / 3600])
    header = wcs.to_header()
    header.update({"MJD-OBS": EPOCH_MJD, "EXPTIME": 120.0})
    frame = tmp_path / "Calib-frame.fits"
    fits.PrimaryHDU(np.zeros((1024, 1024), np.float32), header).writeto(frame)
    log = structlog.get_logger()
    movers, note = _known_movers(frame, tmp_path / "cache", log)
    assert note == "2 known solar-system objects over the frame" and len(movers) == 2
    args, = standin.requests
    assert float(args["-ep"]) == pytest.approx(Time(EPOCH_MJD + 60 / 86400, format="mjd").jd,
                                               abs=1e-6)
    assert sep_deg(float(args["-ra"]), float(args["-dec"]), 150.05, 20.0) * 3600 < 1.0
    assert float(args["-rd"]) == pytest.approx(512 * 0.8 * np.sqrt(2) / 3600, rel=0.01)
    # offline: not asked; unreachable: the night goes on without it
    assert _known_movers(frame, None, log) == (None, "not asked (offline)")
    monkeypatch.setenv(skybot.SKYBOT_SERVER_ENV, _closed_port_url())
    movers, note = _known_movers(frame, tmp_path / "other-cache", log)
    assert movers is None and "unreachable" in note
