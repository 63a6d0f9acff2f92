"""Catalogue tables of any common layout: reading a file (ECSV, FITS, CSV, or anything
astropy recognises), finding columns by name, and coordinates in degrees."""

from __future__ import annotations

import re
from typing import Iterable, Sequence

import numpy as np
from astropy import units as u
from astropy.table import Table

RA_NAMES = ("ra", "ra_icrs", "raj2000", "_raj2000", "ra_j2000", "ra_deg", "radeg", "ra2000",
            "alpha_j2000", "ra_icrs_deg", "raicrs")
DEC_NAMES = ("dec", "de_icrs", "dej2000", "_dej2000", "dec_j2000", "dec_deg", "decdeg",
             "dec2000", "delta_j2000", "de", "dec_icrs", "decl", "dej2000_deg", "deicrs")

_PUNCTUATION = re.compile(r"[^0-9a-z]")


def _squash(name: str) -> str:
    # VizieR's "g'mag" arrives as "g_mag" through some routes (VOTable IDs, FITS)
    return _PUNCTUATION.sub("", name.lower())


def find_column(colnames: Sequence[str], wanted: Iterable[str]) -> str | None:
    """The first of `wanted` present in `colnames`: exactly, else ignoring case, else
    ignoring case and punctuation (g'mag = g_mag). None if absent."""
    wanted = list(wanted)
    present = set(colnames)
    for name in wanted:
        if name in present:
            return name
    lower = {c.lower(): c for c in reversed(colnames)}   # the first of equal names wins
    for name in wanted:
        if name.lower() in lower:
            return lower[name.lower()]
    squashed = {_squash(c): c for c in reversed(colnames)}
    for name in wanted:
        if _squash(name) in squashed:
            return squashed[_squash(name)]
    return None


def float_values(column) -> np.ndarray:
    """A numeric column as float64, missing values NaN."""
    values = column.filled(np.nan) if hasattr(column, "filled") else column
    return np.asarray(values, dtype=np.float64)


def degrees(column, hours_if_text: bool) -> np.ndarray:
    """Coordinates in degrees: numbers (degrees or with an angle unit) or sexagesimal
    text (hours for RA when `hours_if_text`)."""
    if column.dtype.kind in "USO":
        from astropy.coordinates import Angle
        text = [str(v).strip() for v in column]
        unit = u.hourangle if hours_if_text and any((":" in t or " " in t) for t in text) else u.deg
        return Angle(text, unit=unit).to_value(u.deg)
    values = float_values(column)
    unit = getattr(column, "unit", None)
    if unit is not None and unit != u.deg:
        try:
            values = (values * u.Unit(unit)).to_value(u.deg)
        except (u.UnitConversionError, ValueError, TypeError):
            pass   # unknown or non-angle units: assume degrees
    return values


def table_format(path: str) -> str | None:
    """astropy's format for a catalogue file name (None: let astropy guess)."""
    name = path.lower()
    if name.endswith(".ecsv"):
        return "ascii.ecsv"
    if name.endswith((".fits", ".fit", ".fts", ".fits.gz", ".fit.gz")):
        return "fits"
    if name.endswith((".csv", ".csv.gz")):
        return "ascii.csv"
    return None


def read_table(path: str) -> Table:
    """The table in a catalogue file; ValueError (with astropy's reason) if unreadable."""
    fmt = table_format(path)
    try:
        if fmt:
            return Table.read(path, format=fmt)
        try:
            return Table.read(path)
        except Exception:   # .cat, .txt, .dat: let astropy guess the text layout
            return Table.read(path, format="ascii")
    except Exception as exc:  # astropy raises many kinds for unreadable tables
        raise ValueError(f"cannot be read as a table ({type(exc).__name__}: {exc})") from None


def column_as(table: Table, name: str, dtype: str) -> np.ndarray:
    """Column `name` (found as find_column does) as a plain array of `dtype` (missing
    values: NaN for floats, 0 for integers, "" for text); all missing if absent."""
    found = find_column(table.colnames, [name])
    kind = np.dtype(dtype).kind
    fill = np.nan if kind == "f" else ("" if kind == "U" else 0)
    if found is None:
        return np.full(len(table), fill, dtype=dtype if kind != "U" else "U1")
    col = table[found]
    if kind == "U":
        values = col.filled("") if hasattr(col, "filled") else col
        return np.asarray([v.decode() if isinstance(v, bytes) else str(v) for v in values],
                          dtype=str) if len(values) else np.zeros(0, "U1")
    try:
        values = col.filled(fill) if hasattr(col, "filled") else col
        return np.asarray(values).astype(dtype)
    except (TypeError, ValueError):   # text where a number was expected
        return np.full(len(table), fill, dtype=dtype)
