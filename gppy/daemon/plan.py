"""The plan of a night: which masters can be built from tonight's frames, and for
each science frame which calibration it will use (tonight's, scaled, or
borrowed from the nearest night in the master library) and which steps follow.

A pure function of the night's homogenised records.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field

from gppy.obsconfig.headers import FrameRecord

SCIENCE_STEPS = ("calibrate", "astrometry", "photometry")
MIN_FRAMES_FOR_MASTER = 3  # fewer still make a master, flagged as weak


def _binning(rec: FrameRecord) -> str:
    return "x".join(map(str, rec.binning or [1, 1]))


@dataclass
class MasterPlan:
    kind: str              # bias | dark | flat
    binning: str           # e.g. "1x1"
    exptime_s: float | None
    filter: str | None
    files: list[str]
    weak: bool             # fewer than MIN_FRAMES_FOR_MASTER inputs

    @property
    def label(self) -> str:
        if self.kind == "dark":
            return f"dark {self.exptime_s:g}s ({self.binning})"
        if self.kind == "flat":
            return f"flat {self.filter} ({self.binning})"
        return f"bias ({self.binning})"


@dataclass
class SciencePlan:
    file: str
    object: str | None
    filter: str | None
    exptime_s: float | None
    bias: str              # how each calibration will be obtained
    dark: str
    flat: str
    steps: list[str] = field(default_factory=lambda: list(SCIENCE_STEPS))


@dataclass
class NightPlan:
    masters: list[MasterPlan]
    science: list[SciencePlan]
    stacks: dict[str, int]          # "object / filter" -> frames to stack
    skipped: dict[str, str]         # file -> why it takes no further part

    def as_dict(self) -> dict:
        return {"masters": [asdict(m) | {"label": m.label} for m in self.masters],
                "science": [asdict(s) for s in self.science],
                "stacks": self.stacks, "skipped": self.skipped}


def make_plan(records: list[FrameRecord]) -> NightPlan:
    usable = [r for r in records if r.error is None]
    skipped = {r.file: r.error for r in records if r.error is not None}
    skipped |= {r.file: f"type unknown: {r.reason}" for r in usable if r.type == "unknown"}

    by_key: dict[tuple, list[str]] = defaultdict(list)
    for r in usable:
        if r.type == "bias":
            by_key[("bias", _binning(r), None, None)].append(r.file)
        elif r.type == "dark":
            by_key[("dark", _binning(r), r.exptime, None)].append(r.file)
        elif r.type == "flat":
            if r.filter is None:
                skipped[r.file] = "flat without a filter"
            else:
                by_key[("flat", _binning(r), None, r.filter)].append(r.file)
    masters = [MasterPlan(kind, binning, exptime, filt, sorted(files),
                          len(files) < MIN_FRAMES_FOR_MASTER)
               for (kind, binning, exptime, filt), files in sorted(
                   by_key.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] or 0, kv[0][3] or ""))]

    science, stacks = [], defaultdict(int)
    for r in sorted((r for r in usable if r.type == "science"), key=lambda r: r.mjd or 0):
        if r.filter is None:
            skipped[r.file] = "science frame without a filter: cannot be flat-fielded"
            continue
        science.append(_science_plan(r, masters))
        stacks[f"{r.object or '?'} / {r.filter}"] += 1
    return NightPlan(masters, science, dict(stacks), skipped)


def _science_plan(r: FrameRecord, masters: list[MasterPlan]) -> SciencePlan:
    binning = _binning(r)
    tonight = [m for m in masters if m.binning == binning]
    bias = "tonight" if any(m.kind == "bias" for m in tonight) else "borrow nearest night"
    darks = sorted((m.exptime_s for m in tonight if m.kind == "dark"),
                   key=lambda t: abs(t - (r.exptime or 0)))
    if darks and darks[0] == r.exptime:
        dark = f"tonight {darks[0]:g}s"
    elif darks:
        dark = f"tonight {darks[0]:g}s scaled to {r.exptime:g}s"
    else:
        dark = "borrow nearest night"
    flat = ("tonight" if any(m.kind == "flat" and m.filter == r.filter for m in tonight)
            else "borrow nearest night")
    return SciencePlan(r.file, r.object, r.filter, r.exptime, bias, dark, flat)
