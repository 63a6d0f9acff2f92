"""`gppy bench astrometry` end to end, small: one simulated RASA36 frame of 1024 x 1024
(2.36"/px, a 40' field the Tycho-2 indexes solve), run as the installed console
script; its JSON line must say that both gppy and solve-field solved it, with
gppy's WCS within 0.1 px of the truth everywhere on the frame."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from gppy.astrometry import tycho

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("solve-field") is None, reason="solve-field is not installed"),
    pytest.mark.skipif(not (tycho.DEFAULT_INDEX_DIR / tycho.INDEX_NAME).is_file(),
                       reason="astrometry-data-tycho2-07-littleendian is not installed"),
]

KEYS = ("ours_s_per_frame", "peer_s_per_frame", "ratio", "ours_rms_arcsec", "peer_rms_arcsec",
        "ours_truth_max_px", "peer_truth_max_px", "ours_truth_rms_px", "peer_truth_rms_px",
        "ours_solved", "peer_solved", "frames", "peak_rss_gb", "peer_peak_rss_gb", "per_frame")


def test_bench_astrometry_json(gppy_bin, tmp_path):
    out = subprocess.run([str(gppy_bin), "bench", "astrometry", "--obs", "RASA36", "--size", "1024",
                          "--frames", "1", "--json"],
                         capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    for key in KEYS:
        assert key in summary, key
    assert summary["frames"] == 1 and len(summary["per_frame"]) == 1
    assert summary["ours_solved"] == 1 and summary["peer_solved"] == 1
    assert summary["ours_truth_max_px"] <= 0.1
    assert 0 < summary["ours_truth_rms_px"] <= summary["ours_truth_max_px"]
    assert 0 < summary["peer_truth_rms_px"] <= summary["peer_truth_max_px"] < 5.0
    assert 0 < summary["ours_rms_arcsec"] < 0.5 and 0 < summary["peer_rms_arcsec"] < 2.0
    assert summary["ours_s_per_frame"] > 0 and summary["peer_s_per_frame"] > 0
    assert summary["ratio"] > 0
    assert summary["ratio"] == pytest.approx(
        summary["peer_s_per_frame"] / summary["ours_s_per_frame"], rel=0.02, abs=0.01)
    assert 0 < summary["peak_rss_gb"] < 4 and 0 < summary["peer_peak_rss_gb"] < 4
    assert summary["per_frame"][0]["ours"]["nstars"] >= 8
