"""Which frames of a night are stacked together.

Frames of one object and filter form a group, split wherever two consecutive
frames are more than `group_gap_h` apart (a field revisited later in the night
is a new epoch: a fast transient or an asteroid must not be averaged away).
A frame is left out of its group's stack, with the reason, when its astrometry
was an outlier, its seeing is more than `max_seeing_ratio` times the group's
median, or its zero point is more than `max_zp_drop_mag` below the group's
median (clouds).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from gppy.obsconfig.schema import Transient

HOURS_PER_DAY = 24.0


@dataclass(frozen=True)
class NightFrame:
    path: str
    object: str
    filter: str
    mjd: float                  # start of the exposure
    exptime_s: float
    seeing_arcsec: float | None = None
    zp: float | None = None     # zero point of counts per second
    astrometric_outlier: bool = False


@dataclass
class Group:
    object: str
    filter: str
    frames: list[NightFrame] = field(default_factory=list)      # to stack, by time
    excluded: dict[str, str] = field(default_factory=dict)     # path -> why left out

    @property
    def label(self) -> str:
        return f"{self.object} / {self.filter}"

    @property
    def paths(self) -> list[str]:
        return [f.path for f in self.frames]


def group_frames(frames: list[NightFrame], rules: Transient) -> list[Group]:
    """The night's groups, by object, filter and time (see the module docstring)."""
    by_target: dict[tuple[str, str], list[NightFrame]] = {}
    for f in sorted(frames, key=lambda f: f.mjd):
        by_target.setdefault((f.object, f.filter), []).append(f)
    groups = []
    for (obj, band), members in sorted(by_target.items()):
        epoch = [members[0]]
        for prev, cur in zip(members, members[1:]):
            gap_h = (cur.mjd - (prev.mjd + prev.exptime_s / 86400.0)) * HOURS_PER_DAY
            if gap_h > rules.group_gap_h:
                groups.append(_screened(obj, band, epoch, rules))
                epoch = []
            epoch.append(cur)
        groups.append(_screened(obj, band, epoch, rules))
    return groups


def _screened(obj: str, band: str, frames: list[NightFrame], rules: Transient) -> Group:
    group = Group(obj, band)
    seeing = np.median([f.seeing_arcsec for f in frames if f.seeing_arcsec]) \
        if any(f.seeing_arcsec for f in frames) else None
    zps = [f.zp for f in frames if f.zp is not None]
    zp = float(np.median(zps)) if zps else None
    for f in frames:
        if f.astrometric_outlier:
            group.excluded[f.path] = "astrometric outlier"
        elif seeing and f.seeing_arcsec and f.seeing_arcsec > rules.max_seeing_ratio * seeing:
            group.excluded[f.path] = (f"seeing {f.seeing_arcsec:.2f}\" > {rules.max_seeing_ratio:g}"
                                      f" x the group's {seeing:.2f}\"")
        elif zp is not None and f.zp is not None and f.zp < zp - rules.max_zp_drop_mag:
            group.excluded[f.path] = (f"zero point {f.zp:.2f} is {zp - f.zp:.2f} mag below the "
                                      f"group's {zp:.2f} (clouds)")
        else:
            group.frames.append(f)
    return group
