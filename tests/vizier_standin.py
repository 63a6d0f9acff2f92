"""A local HTTP stand-in for VizieR's votable endpoint, shared by the tests.

    VizierStandIn(tables, delay_s=0.0)

`tables` maps a VizieR source id (e.g. "I/355/gaiadr3") to (table, ra column, dec
column), where table is an astropy Table or a zero-argument factory that builds one
(called on first use). The server answers the POSTs astroquery sends to
/viz-bin/votable: the cone (-c and -c.r[dms]), "<" constraints on any column
(masked values fail them), the -out columns (which must exist; all columns when no
-out is given), as a VOTable whose table is named after the source. A request it
cannot answer (unknown source or column, an unsupported constraint) gets HTTP 400
with the reason, which fails the client's query and so the test.

Every request is recorded in `.requests` as {"path", "body", "args"} before the
optional delay (`delay_s`, settable at any time; for timeout tests). `.url` is the
base URL to give as the VizieR server, `.table(source)` the table it serves,
`.count(source)` the number of requests for that source, `.close()` stops it.
"""

from __future__ import annotations

import threading
import time
import warnings
from http.server import BaseHTTPRequestHandler
from io import BytesIO
from typing import Callable, Union

import numpy as np
from astropy.io.votable import from_table
from astropy.table import Table

from gppy.catalogs.tiles import sep_deg
from http_standin import reply, serve

TableSpec = tuple[Union[Table, Callable[[], Table]], str, str]

_RADIUS_UNITS = {"d": 1.0, "m": 60.0, "s": 3600.0}


def parse_args(body: str) -> dict[str, str]:
    """VizieR's POST body: one key=value a line."""
    return dict(line.split("=", 1) for line in body.splitlines() if "=" in line)


def parse_cone(args: dict[str, str]) -> tuple[float, float, float]:
    """(ra, dec, radius) in degrees from -c ("150.0+30.0") and -c.rd / -c.rm / -c.rs."""
    centre = args["-c"]
    k = max(centre.rfind("+"), centre.rfind("-"))
    ra0, dec0 = float(centre[:k]), float(centre[k:])
    radius = next(float(v) / _RADIUS_UNITS[key[-1]]
                  for key, v in args.items() if key.startswith("-c.r"))
    return ra0, dec0, radius


class VizierStandIn:
    """A local HTTP server answering VizieR votable queries from fixed tables."""

    def __init__(self, tables: dict[str, TableSpec], delay_s: float = 0.0):
        self.specs = dict(tables)
        self.delay_s = delay_s
        self.requests: list[dict] = []
        self._tables: dict[str, Table] = {}
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
                args = parse_args(body)
                outer.requests.append({"path": self.path, "body": body, "args": args})
                if outer.delay_s:
                    time.sleep(outer.delay_s)
                try:
                    payload, status = outer.answer(args), 200
                except Exception as exc:  # a bad request: tell the client, fail the test
                    payload, status = f"stand-in: {type(exc).__name__}: {exc}".encode(), 400
                reply(self, status, payload)

        self.server = serve(Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def table(self, source: str) -> Table:
        """The table served for `source` (a factory is called once)."""
        with self._lock:
            if source not in self._tables:
                table = self.specs[source][0]
                self._tables[source] = table() if callable(table) else table
            return self._tables[source]

    def answer(self, args: dict[str, str]) -> bytes:
        source = args["-source"]
        assert source in self.specs, f"no table for source {source!r}"
        sky = self.table(source)
        _, ra_col, dec_col = self.specs[source]
        ra0, dec0, radius = parse_cone(args)
        keep = sep_deg(np.asarray(sky[ra_col], float), np.asarray(sky[dec_col], float),
                       ra0, dec0) <= radius
        for key, value in args.items():
            if key.startswith("-"):
                continue
            assert key in sky.colnames, f"{source} has no column {key!r} to constrain"
            assert value.startswith("<"), f"unsupported constraint {key}={value}"
            col = sky[key]
            data = np.asarray(np.ma.getdata(col), float)
            keep &= ~np.ma.getmaskarray(col) & (data < float(value[1:]))
        wanted = args["-out"].split(",") if "-out" in args else sky.colnames
        unknown = [c for c in wanted if c not in sky.colnames]
        assert not unknown, f"{source} has no columns {unknown}"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")    # "g'mag" gets the ID g_mag, as at VizieR
            vot = from_table(sky[keep][wanted])
        vot.resources[0].tables[0].name = source
        buf = BytesIO()
        vot.to_xml(buf)
        return buf.getvalue()

    def count(self, source: str) -> int:
        """How many requests asked for `source`."""
        return sum(1 for r in self.requests if r["args"].get("-source") == source)

    def close(self):
        self.server.shutdown()
        self.server.server_close()
