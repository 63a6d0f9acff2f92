"""Grouping a night's frames for stacking: by object and filter, split at time
gaps, bad frames left out with the reason."""

from __future__ import annotations

from gppy.obsconfig.loader import load_profile
from gppy.transient.groups import NightFrame, group_frames

RULES = load_profile("LOAO").transient
MIN = 1.0 / 1440.0   # a minute, in days


def _frame(name, minute, obj="NGC1", band="R", seeing=2.0, zp=25.0, outlier=False):
    return NightFrame(name, obj, band, 60000.0 + minute * MIN, 120.0, seeing, zp, outlier)


def test_frames_split_by_object_filter_and_time_gap():
    frames = [_frame("a", 0), _frame("b", 3), _frame("c", 6),
              _frame("d", 8 + 59), _frame("e", 67 + 2 + 61.5),   # 59 min after c ends; 61.5 after d
              _frame("v", 10, band="V"), _frame("x", 1, obj="NGC2")]
    groups = group_frames(frames, RULES)
    assert [(g.label, g.paths) for g in groups] == [
        ("NGC1 / R", ["a", "b", "c", "d"]), ("NGC1 / R", ["e"]), ("NGC1 / V", ["v"]),
        ("NGC2 / R", ["x"])]
    assert RULES.group_gap_h == 1.0


def test_bad_frames_are_left_out_with_the_reason():
    frames = [_frame("a", 0), _frame("b", 3), _frame("c", 6, seeing=3.2),
              _frame("d", 9, zp=24.3), _frame("e", 12, outlier=True), _frame("f", 15)]
    (group,) = group_frames(frames, RULES)
    assert group.paths == ["a", "b", "f"]
    assert set(group.excluded) == {"c", "d", "e"}
    assert "seeing 3.20\"" in group.excluded["c"]
    assert "clouds" in group.excluded["d"] and "0.70 mag" in group.excluded["d"]
    assert group.excluded["e"] == "astrometric outlier"
