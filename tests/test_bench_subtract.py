"""`gppy bench subtract` end to end, small: one simulated 512 x 512 pair, run as the
installed console script; its JSON line must hold the built-in engine's figures
(residuals near 1, most transients recovered) and say whether HOTPANTS ran."""

from __future__ import annotations

import json
import math
import os
import shutil
import stat
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

KEYS = ("seconds", "peak_rss_gb", "resid_std_blank", "resid_std_stars", "recovered", "injected")


def bench_json(gppy_bin, cwd, *args: str, env=None) -> tuple[str, dict]:
    """Run `gppy bench ARGS --json` (it must succeed): (its stdout, its JSON line)."""
    out = subprocess.run([str(gppy_bin), "bench", *args, "--json"], capture_output=True,
                         text=True, timeout=300, cwd=cwd, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout, json.loads(out.stdout.strip().splitlines()[-1])


def test_bench_subtract_json(gppy_bin, tmp_path):
    stdout, summary = bench_json(gppy_bin, tmp_path, "subtract", "--sizes", "512")
    for key in ("sizes", "engines", "ratio_hotpants", "hotpants_available", "peers_not_run",
                "scene"):
        assert key in summary, key
    assert summary["sizes"] == [512] and set(summary["engines"]) == {"512"}
    rows = summary["engines"]["512"]
    ours = rows["builtin"]
    for key in KEYS:
        assert key in ours, key
    assert ours["seconds"] > 0 and 0 < ours["peak_rss_gb"] < 4
    assert 0.9 <= ours["resid_std_blank"] <= 1.15
    assert math.isfinite(ours["resid_std_stars"]) and ours["resid_std_stars"] <= 1.5
    assert ours["injected"] == summary["scene"]["512"]["transients"] >= 5
    assert ours["recovered"] >= 0.8 * ours["injected"]
    available = shutil.which("hotpants") is not None
    assert summary["hotpants_available"] is available
    if available:
        assert all(key in rows["hotpants"] for key in KEYS)
        assert summary["ratio_hotpants"]["512"] == pytest.approx(
            rows["hotpants"]["seconds"] / ours["seconds"], rel=0.02, abs=0.01)
    else:
        assert rows["hotpants"] is None and summary["ratio_hotpants"] is None
        assert "hotpants: not on PATH" in stdout


def test_bench_subtract_runs_hotpants_when_on_path(gppy_bin, tmp_path):
    """HOTPANTS is run, scored and timed when it is on PATH: a stand-in program (the
    difference without any convolution) shows the plumbing, not HOTPANTS' quality."""
    from test_subtract import FAKE_HOTPANTS

    folder = tmp_path / "bin"
    folder.mkdir()
    fake = folder / "hotpants"
    fake.write_text(FAKE_HOTPANTS.format(python=sys.executable, log=tmp_path / "argv.json"))
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    env = dict(os.environ, PATH=f"{folder}{os.pathsep}{os.environ.get('PATH', '')}")
    env.pop("GPPY_HOTPANTS", None)
    stdout, summary = bench_json(gppy_bin, tmp_path, "subtract", "--sizes", "512", env=env)
    assert summary["hotpants_available"] is True and summary["hotpants_path"] == str(fake)
    rows = summary["engines"]["512"]
    for key in KEYS:
        assert key in rows["hotpants"], key
    assert rows["hotpants"]["injected"] == rows["builtin"]["injected"]
    assert summary["ratio_hotpants"]["512"] == pytest.approx(
        rows["hotpants"]["seconds"] / rows["builtin"]["seconds"], rel=0.02, abs=0.01)
    assert "speed-up over HOTPANTS" in stdout
