"""Night-folder names: a profile template such as '{YYYY}_{MM}{DD}' or
'{YYYY}-{MM}-{DD}_gain{gain}', turned into a parser and a formatter."""

from __future__ import annotations

import datetime as dt
import re
import string

_TOKENS = {
    "YYYY": r"(?P<YYYY>\d{4})",
    "YY": r"(?P<YY>\d{2})",
    "MM": r"(?P<MM>\d{2})",
    "DD": r"(?P<DD>\d{2})",
    "gain": r"(?P<gain>\d+)",
}


def template_fields(template: str) -> list[str]:
    return [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]


def template_problems(template: str) -> list[str]:
    """Why a night-folder template is unusable (empty list when it is fine)."""
    try:
        fields = template_fields(template)
    except ValueError as exc:
        return [f"not a valid template ({exc})"]
    unknown = [f for f in fields if f not in _TOKENS]
    problems = [f"unknown token {{{f}}}; expected {', '.join('{%s}' % t for t in _TOKENS)}"
                for f in unknown]
    has_year = "YYYY" in fields or "YY" in fields
    if not (has_year and "MM" in fields and "DD" in fields):
        problems.append("must contain a year ({YYYY} or {YY}), {MM} and {DD}")
    return problems


def night_regex(template: str) -> re.Pattern:
    parts = []
    for literal, name, _, _ in string.Formatter().parse(template):
        parts.append(re.escape(literal))
        if name is not None:
            parts.append(_TOKENS[name])
    return re.compile("^" + "".join(parts) + "$")


def night_fields(template: str, folder_name: str) -> dict[str, str] | None:
    """The template's fields read from a folder name ({'YYYY': '2025', 'gain': '2750', ...}),
    or None if the name does not follow the template."""
    m = night_regex(template).match(folder_name)
    return m.groupdict() if m else None


def parse_night(template: str, folder_name: str) -> dt.date | None:
    """The night's date if `folder_name` matches the template, else None."""
    g = night_fields(template, folder_name)
    if g is None:
        return None
    year = int(g["YYYY"]) if g.get("YYYY") else 2000 + int(g["YY"])
    try:
        return dt.date(year, int(g["MM"]), int(g["DD"]))
    except ValueError:
        return None


def format_night(template: str, night: dt.date, gain: str | None = None) -> str:
    return template.format(YYYY=f"{night.year:04d}", YY=f"{night.year % 100:02d}",
                           MM=f"{night.month:02d}", DD=f"{night.day:02d}", gain=gain or "")
