"""`gppy bench phot` end to end, small: one simulated LOAO frame of 1024 x 1024, run
as the installed console script; its JSON line must give both times and their
ratio, peak memory, fluxes that agree with photutils' on the same positions and
apertures to a tiny fraction of their error, and a finite zero point."""

from __future__ import annotations

import json
import math
import subprocess

import pytest

pytest.importorskip("photutils")

KEYS = ("ours_s_per_frame", "peer_s_per_frame", "ratio", "ours_measure_s_per_frame",
        "ours_zp_s_per_frame", "peer_background_s_per_frame", "peer_apertures_s_per_frame",
        "flux_dev_median", "flux_dev_max", "fluxerr_dev_max", "n_compared", "n_sources",
        "apertures", "zp_mag", "zp_err_mag", "frames", "peak_rss_gb", "peer_peak_rss_gb",
        "per_frame")


def test_bench_phot_json(gppy_bin, tmp_path):
    out = subprocess.run([str(gppy_bin), "bench", "phot", "--size", "1024", "--frames", "1",
                          "--json"], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    for key in KEYS:
        assert key in summary, key
    assert summary["frames"] == 1 and len(summary["per_frame"]) == 1
    assert summary["ours_s_per_frame"] > 0 and summary["peer_s_per_frame"] > 0
    assert summary["ratio"] > 0
    assert summary["ratio"] == pytest.approx(
        summary["peer_s_per_frame"] / summary["ours_s_per_frame"], rel=0.02, abs=0.01)
    assert 0 < summary["peak_rss_gb"] < 4 and 0 < summary["peer_peak_rss_gb"] < 4
    # the same circular apertures at the same positions on the same pixels
    assert summary["apertures"] == ["opt", "fwhm135", "fwhm200", "fwhm300", "3arcsec", "5arcsec"]
    assert summary["n_compared"] >= 100
    assert summary["n_compared"] >= 0.9 * summary["n_sources"]
    assert summary["flux_dev_median"] < 0.01
    assert summary["flux_dev_max"] < 0.01
    assert summary["fluxerr_dev_max"] < 1e-4
    (zp,) = summary["zp_mag"]
    assert zp is not None and math.isfinite(zp) and 15 < zp < 35
    assert 0 < summary["zp_err_mag"][0] < 0.05
