"""The plan of a night: which masters tonight's frames make (grouped by set-up:
binning, cooler set-point, and exposure time for darks or filter for flats),
which science frames go on to the per-frame steps, and which stacks follow.

A pure function of the night's homogenised records. Which master each science
frame finally uses is decided by the master library once tonight's are built.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass

from gppy.obsconfig.headers import FrameRecord

SCIENCE_STEPS = ("calibrate", "astrometry", "photometry")
MIN_FRAMES_FOR_MASTER = 3  # fewer still make a master, flagged as weak


def binning_of(rec: FrameRecord) -> str:
    return "x".join(map(str, rec.binning or [1, 1]))


def settemp_of(rec: FrameRecord) -> float | None:
    """The cooler set-point, rounded to a degree (None when the header has none)."""
    return None if rec.settemp is None else float(round(rec.settemp))


@dataclass
class MasterPlan:
    kind: str              # bias | dark | flat
    binning: str           # e.g. "1x1"
    settemp_c: float | None
    exptime_s: float | None
    filter: str | None
    files: list[str]
    exptimes_s: list[float]  # of each input (flats need their own darks)
    weak: bool             # fewer than MIN_FRAMES_FOR_MASTER inputs

    @property
    def label(self) -> str:
        temp = "" if self.settemp_c is None else f" {self.settemp_c:g}C"
        what = (f" {self.exptime_s:g}s" if self.kind == "dark"
                else f" {self.filter}" if self.kind == "flat" else "")
        return f"{self.kind}{what} ({self.binning}{temp})"


@dataclass
class NightPlan:
    masters: list[MasterPlan]
    science: list[FrameRecord]      # usable science frames, in time order
    stacks: dict[str, int]          # "object / filter" -> frames to stack
    skipped: dict[str, str]         # file -> why it takes no further part

    def as_dict(self) -> dict:
        return {"masters": [asdict(m) | {"label": m.label} for m in self.masters],
                "science": [r.file for r in self.science], "steps": list(SCIENCE_STEPS),
                "stacks": self.stacks, "skipped": self.skipped}


def make_plan(records: list[FrameRecord]) -> NightPlan:
    usable = [r for r in records if r.error is None]
    skipped = {r.file: r.error for r in records if r.error is not None}
    skipped |= {r.file: f"type unknown: {r.reason}" for r in usable if r.type == "unknown"}

    groups: dict[tuple, list[FrameRecord]] = defaultdict(list)
    for r in usable:
        if r.type == "flat" and r.filter is None:
            skipped[r.file] = "flat without a filter"
        elif r.type in ("bias", "dark", "flat"):
            groups[(r.type, binning_of(r), settemp_of(r), r.exptime if r.type == "dark" else None,
                    r.filter if r.type == "flat" else None)].append(r)
    order = {"bias": 0, "dark": 1, "flat": 2}
    masters = [MasterPlan(kind, binning, temp, exptime, filt, [r.file for r in rs],
                          [r.exptime for r in rs], len(rs) < MIN_FRAMES_FOR_MASTER)
               for (kind, binning, temp, exptime, filt), rs in sorted(
                   groups.items(), key=lambda kv: (order[kv[0][0]], kv[0][1], kv[0][2] or 0,
                                                   kv[0][3] or 0, kv[0][4] or ""))]
    for m in masters:
        order_by_name = sorted(range(len(m.files)), key=lambda i: m.files[i])
        m.files = [m.files[i] for i in order_by_name]
        m.exptimes_s = [m.exptimes_s[i] for i in order_by_name]

    science, stacks = [], defaultdict(int)
    for r in sorted((r for r in usable if r.type == "science"), key=lambda r: r.mjd or 0):
        if r.filter is None:
            skipped[r.file] = "science frame without a filter: cannot be flat-fielded"
            continue
        science.append(r)
        stacks[f"{r.object or '?'} / {r.filter}"] += 1
    return NightPlan(masters, science, dict(stacks), skipped)
