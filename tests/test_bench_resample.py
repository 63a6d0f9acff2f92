"""`gppy bench resample` end to end, small: a 512 x 512 frame, run as the installed
console script; its JSON line must hold every candidate's figures, the ratios
against reproject, and our flux conservation better than 1e-3."""

from __future__ import annotations

import pytest

from test_bench_subtract import bench_json

pytestmark = pytest.mark.slow

CANDIDATE_KEYS = ("wall_s", "cpu_s", "peak_rss_gb", "flux_ratio_median", "flux_ratio_std",
                  "flux_conservation", "position_rms_px")
PEERS = ("reproject_interp bilinear", "reproject_interp bicubic", "reproject_adaptive")


def test_bench_resample_json(gppy_bin, tmp_path):
    _, summary = bench_json(gppy_bin, tmp_path, "resample", "--size", "512")
    for key in ("candidates", "ratio", "ours_wall_s", "ours_flux_conservation", "peak_rss_gb",
                "size", "seed", "stars_scored"):
        assert key in summary, key
    assert summary["size"] == 512 and summary["stars_scored"] >= 10
    assert set(summary["candidates"]) == {"ours lanczos3", "ours bilinear", *PEERS}
    for name, row in summary["candidates"].items():
        for key in CANDIDATE_KEYS:
            assert key in row, (name, key)
        assert row["wall_s"] > 0 and 0 < row["peak_rss_gb"] < 4
    assert set(summary["ratio"]) == set(PEERS)
    ours = summary["candidates"]["ours lanczos3"]
    for name in PEERS:
        assert summary["ratio"][name] > 0
        assert summary["ratio"][name] == pytest.approx(
            summary["candidates"][name]["wall_s"] / ours["wall_s"], rel=0.02, abs=0.01)
    assert summary["ours_flux_conservation"] == ours["flux_conservation"] < 1e-3
    assert ours["flux_ratio_std"] < 1e-3 and ours["position_rms_px"] < 0.02
