"""IRAF/FITS image sections such as '[2049:2080,1:2048]' (1-based, inclusive,
x first) as numpy slices."""

from __future__ import annotations

import re

_SECTION = re.compile(r"^\[\s*(\d+)\s*:\s*(\d+)\s*,\s*(\d+)\s*:\s*(\d+)\s*\]$")


def parse_section(text: str) -> tuple[slice, slice]:
    """(rows, columns) slices for a section string; ValueError if malformed."""
    m = _SECTION.match(text.strip())
    if not m:
        raise ValueError(f"not an image section {text!r}; expected '[x1:x2,y1:y2]'")
    x1, x2, y1, y2 = map(int, m.groups())
    if min(x1, y1) < 1 or x2 < x1 or y2 < y1:
        raise ValueError(f"empty or reversed image section {text!r}")
    return slice(y1 - 1, y2), slice(x1 - 1, x2)
