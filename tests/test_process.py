"""`gppy process`: one night end to end with the stages that exist, resumable."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess

import pytest
from astropy.table import Table

from gppy.daemon.ledger import Ledger
from gppy.daemon.routine import NightError, process_night
from gppy.obsconfig.loader import load_profile
from gppy.settings import DataDir

from conftest import real_data


def _fingerprint(folder):
    return {p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.iterdir())}


def test_bad_frames_never_stop_the_night(bad_night, tmp_path):
    data = DataDir(tmp_path / "data")
    before = _fingerprint(bad_night)
    result = process_night(load_profile("LOAO"), bad_night, data, ncores=2)
    assert _fingerprint(bad_night) == before  # raw data untouched

    assert result.night == "2025-03-15"  # from the folder name
    assert result.n_scanned == 11
    skipped = {k.rsplit("/", 1)[-1]: v for k, v in result.plan.skipped.items()}
    assert set(skipped) == {"empty.fits", "notes.fits", "truncated.fits", "truncated.fits.gz",
                            "nodate.fits", "noexptime.fits", "badra.fits", "focus.fits"}
    assert "type unknown" in skipped["focus.fits"]
    assert [s.file.rsplit("/", 1)[-1] for s in result.plan.science] == ["good1.fits", "good2.fits"]
    assert [m.label for m in result.plan.masters] == ["bias (2x2)"]  # LOAO reads out 2x2
    assert [m.path.name for m in result.masters.built] == ["bias_2x2.fits"]
    assert set(result.calibration.uncalibrated.values()) == {"no flat: frames left uncalibrated"}

    with Ledger(data.ledger) as ledger:
        night = ledger.db.execute("SELECT * FROM nights").fetchone()
        assert (night["status"], night["attempts"], night["obs"]) == ("done", 1, "LOAO")
        frames = ledger.frames(night["id"])
        assert len(frames) == 11
        statuses = {f["path"].rsplit("/", 1)[-1]: ledger.step_status(f["id"], "inventory")
                    for f in frames}
        assert statuses["good1.fits"] == "done" and statuses["truncated.fits"] == "failed"
        assert all(f["sha256"] and len(f["sha256"]) == 64 for f in frames)
        kinds = sorted(p["kind"] for p in ledger.products(night["id"]))
        assert kinds == ["inventory", "plan"]

    table = Table.read(result.out_dir / "inventory.ecsv")
    assert len(table) == 11 and table["ra"].dtype.kind == "f"
    plan = json.loads((result.out_dir / "plan.json").read_text())
    assert len(plan["science"]) == 2
    events = [json.loads(line) for line in result.log_path.read_text().splitlines()]
    assert events[0]["event"] == "night started" and events[-1]["event"] == "night done"
    assert sum(e["event"] == "frame skipped" for e in events) == 7


def test_rerun_reads_only_new_changed_or_failed_frames(bad_night, tmp_path):
    data = DataDir(tmp_path / "data")
    profile = load_profile("LOAO")
    process_night(profile, bad_night, data)
    again = process_night(profile, bad_night, data)
    # only the 7 unreadable frames are tried again (a partial upload may have completed)
    assert (again.n_scanned, again.n_unchanged) == (7, 4)

    (bad_night / "truncated.fits").write_bytes((bad_night / "good1.fits").read_bytes())
    fixed = process_night(profile, bad_night, data)
    rec = next(r for r in fixed.records if r.file.endswith("/truncated.fits"))
    assert rec.error is None and rec.type == "science"

    forced = process_night(profile, bad_night, data, force=True)
    assert forced.n_scanned == 11
    with Ledger(data.ledger) as ledger:
        assert ledger.db.execute("SELECT attempts FROM nights").fetchone()[0] == 4
        assert ledger.db.execute("SELECT COUNT(*) FROM frames").fetchone()[0] == 11


def test_night_date_from_frames_when_folder_is_not_a_night_name(tmp_path):
    folder = real_data("sbu_stl1001e_calib")
    result = process_night(load_profile("SBU"), folder, DataDir(tmp_path), ncores=2)
    # first frame 2017-09-08T20:45 UTC at longitude -73.1: evening of 2017-09-08
    assert result.night == "2017-09-08"
    assert sorted(m.label for m in result.plan.masters)[:2] == ["bias (1x1 -10C)", "bias (1x1 -5C)"]
    assert sum(len(m.files) for m in result.plan.masters) == 52


def test_not_a_folder(tmp_path):
    with pytest.raises(NightError, match="not a folder"):
        process_night(load_profile("LOAO"), tmp_path / "missing", DataDir(tmp_path))


def test_process_cli(gppy_bin, tmp_path):
    folder = real_data("sbu_stl1001e_calib")
    run = subprocess.run([str(gppy_bin), "process", "sbu", str(folder), "--ncores", "2",
                          "--data-dir", str(tmp_path)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    out = run.stdout
    assert "SBU_STL1001E night 2017-09-08" in out
    assert "52 frames (52 read, 0 unchanged" in out
    assert re.search(r"built +flat_clear_1x1_m5C\.fits +10 frames +FLATLEV=", out)
    assert re.search(r"built +bias_1x1_m10C\.fits +10 frames +BIASLEV=", out)
    assert "night done" in run.stderr  # readable console log line
    log = tmp_path / "logs" / "SBU_STL1001E" / "2017-09-08.jsonl"
    assert all(json.loads(line)["night"] == "2017-09-08" for line in log.read_text().splitlines())

    unknown = subprocess.run([str(gppy_bin), "process", "nowhere", str(folder)],
                             capture_output=True, text=True)
    assert unknown.returncode == 2 and "unknown observatory 'nowhere'" in unknown.stderr
