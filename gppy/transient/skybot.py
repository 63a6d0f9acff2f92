"""Known solar-system objects in a field, from IMCCE's SkyBoT cone search, to
mark candidates that are asteroids or comets.

    movers = known_movers(ra_deg, dec_deg, radius_deg, epoch_mjd, cache_dir=...)
    n = mark_movers(candidates, movers)

astroquery's Skybot builds the request (geocentric observer, every object class,
objects with a position uncertainty up to 120") and parses the VOTable answer;
the request itself goes to `server`, else $GPPY_SKYBOT_SERVER, else SkyBoT's own
address, with a time limit. Answers are cached as ECSV under
<cache_dir>/skybot, one file per field and epoch (to 0.0001 d): a night
processed again asks nothing. Any failure raises SkybotError naming the server
and the reason; a server that failed is not asked again for RETRY_AFTER_S, so
the other groups of the night do not wait for it again.

A candidate (class "candidate") within match_arcsec (3") + 8.8"/Δ (the parallax
of an object Δ au away: the positions are geocentric) + 3 x its position
uncertainty of a known object becomes class "moving", with reason
"skybot:<name>" and the object's name in column sso_name.
"""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path

import numpy as np
from astropy.coordinates import SkyCoord
from astropy.table import Table
from astropy.time import Time

from gppy.errors import InputError
from gppy.fitsio import atomic_open

SKYBOT_SERVER_ENV = "GPPY_SKYBOT_SERVER"
DEFAULT_TIMEOUT_S = 20.0
RETRY_AFTER_S = 300.0
PARALLAX_ARCSEC_AU = 8.794          # Earth's equatorial radius seen from 1 au
COLUMNS = ("name", "ra", "dec", "vmag", "posunc_arcsec", "geodist_au", "kind")

_failed: dict[str, tuple[float, str]] = {}     # server -> (monotonic time, why)


class SkybotError(InputError):
    """SkyBoT could not answer; the message names the server and why."""


def default_server() -> str:
    from astroquery.imcce import conf

    return os.environ.get(SKYBOT_SERVER_ENV) or conf.skybot_server


def _cache_path(cache_dir: Path, ra_deg, dec_deg, radius_deg, epoch_mjd) -> Path:
    return (Path(cache_dir).expanduser() / "skybot"
            / f"{ra_deg:09.4f}{dec_deg:+08.4f}_r{radius_deg:.4f}_mjd{epoch_mjd:.4f}.ecsv")


def known_movers(ra_deg: float, dec_deg: float, radius_deg: float, epoch_mjd: float, *,
                 cache_dir: str | os.PathLike, server: str | None = None,
                 timeout_s: float = DEFAULT_TIMEOUT_S) -> Table:
    """The known solar-system objects within `radius_deg` of the field centre at
    `epoch_mjd` (UTC): columns COLUMNS, positions in degrees (cached, see the
    module docstring)."""
    path = _cache_path(Path(cache_dir), ra_deg, dec_deg, radius_deg, epoch_mjd)
    if path.exists():
        return Table.read(path, format="ascii.ecsv")
    server = server or default_server()
    failed = _failed.get(server)
    if failed and time.monotonic() - failed[0] < RETRY_AFTER_S:
        raise SkybotError(f"SkyBoT at {server} failed {time.monotonic() - failed[0]:.0f} s ago "
                          f"({failed[1]}); not asked again for {RETRY_AFTER_S:.0f} s")
    try:
        movers = _query(server, ra_deg, dec_deg, radius_deg, epoch_mjd, timeout_s)
    except SkybotError as exc:
        _failed[server] = (time.monotonic(), str(exc).split(": ", 1)[-1])
        raise
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "w") as fh:
        movers.write(fh, format="ascii.ecsv")
    return movers


def _query(server, ra_deg, dec_deg, radius_deg, epoch_mjd, timeout_s) -> Table:
    import requests
    from astroquery.imcce import SkybotClass

    client = SkybotClass()
    payload = client.cone_search_async((ra_deg, dec_deg), radius_deg,
                                       Time(epoch_mjd, format="mjd", scale="utc"),
                                       get_query_payload=True)
    try:
        response = requests.get(server, params=payload, timeout=timeout_s)
        response.raise_for_status()
    except requests.exceptions.Timeout:
        raise SkybotError(f"SkyBoT at {server}: no answer within {timeout_s:g} s") from None
    except requests.exceptions.ConnectionError as exc:
        reason = exc.args[0] if exc.args else exc
        raise SkybotError(f"SkyBoT at {server}: unreachable "
                          f"({getattr(reason, 'reason', reason)})") from None
    except requests.exceptions.HTTPError as exc:
        raise SkybotError(f"SkyBoT at {server}: answered {exc}") from None
    client._get_raw_response = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # "no objects found", VOTable chatter
            found = client._parse_result(response)
    except Exception as exc:   # not a VOTable, or not SkyBoT's columns
        raise SkybotError(f"SkyBoT at {server}: an unusable answer "
                          f"({type(exc).__name__}: {exc})") from None
    if len(found) == 0:
        return Table(names=COLUMNS, dtype=(str, float, float, float, float, float, str))
    return Table([np.asarray(found["Name"], str),
                  np.asarray(found["RA"], float), np.asarray(found["DEC"], float),
                  np.asarray(found["V"], float), np.asarray(found["posunc"], float),
                  np.asarray(found["geodist"], float), np.asarray(found["Type"], str)],
                 names=COLUMNS)


def mark_movers(candidates: Table, movers: Table, match_arcsec: float = 3.0) -> int:
    """Mark the candidates (class "candidate") on a known object as "moving" (see
    the module docstring), in place; adds column sso_name. The number marked."""
    names = np.full(len(candidates), "", dtype="U32")
    marked = 0
    if len(candidates) and len(movers):
        cands = SkyCoord(np.asarray(candidates["ra"], float),
                         np.asarray(candidates["dec"], float), unit="deg")
        known = SkyCoord(np.asarray(movers["ra"], float), np.asarray(movers["dec"], float),
                         unit="deg")
        idx, sep, _ = cands.match_to_catalog_sky(known)
        dist = np.asarray(movers["geodist_au"], float)[idx]
        unc = np.nan_to_num(np.asarray(movers["posunc_arcsec"], float)[idx], nan=0.0)
        reach = match_arcsec + PARALLAX_ARCSEC_AU / np.where(dist > 0, dist, np.inf) + 3 * unc
        hit = (sep.arcsec <= reach) & (np.asarray(candidates["cls"]) == "candidate")
        names[hit] = np.asarray(movers["name"], str)[idx[hit]]
        if hit.any():
            cls = np.asarray(candidates["cls"]).astype("U9")
            cls[hit] = "moving"
            candidates["cls"] = cls
            column = candidates["reasons"]
            reasons = [str(r) for r in (column.filled("") if hasattr(column, "filled")
                                        else column)]
            for k in np.flatnonzero(hit):
                reasons[k] = ",".join([r for r in reasons[k].split(",") if r]
                                      + [f"skybot:{names[k]}"])
            candidates["reasons"] = np.array(reasons, dtype=str)
            marked = int(hit.sum())
    candidates["sso_name"] = names
    return marked
