"""gpwatch: settling logic, and the real daemon reacting to real filesystem events."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from gppy.daemon.ledger import Ledger
from gppy.daemon.settle import Settler, Snapshot, snapshot
from gppy.daemon.watch import filesystem_type

from conftest import wait_for


class FakeClock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def test_settler_waits_for_no_change():
    clock = FakeClock()
    s = Settler(settle_s=60, clock=clock)
    night = Path("/raw/2025_0315")
    assert s.track(night) and not s.track(night)
    assert s.observe(night, Snapshot(1, 100, 5.0))      # the first snapshot
    assert not s.observe(night, Snapshot(1, 100, 5.0))
    clock.t += 59
    s.observe(night, Snapshot(1, 100, 5.0))
    assert s.settled() == []
    clock.t += 2
    assert s.settled() == [night]
    s.observe(night, Snapshot(1, 200, 6.0))  # the file grew: start again
    clock.t += 59
    assert s.settled() == []
    clock.t += 1
    assert s.settled() == [night]
    s.forget(night)
    assert s.settled() == [] and s.tracked == []


def test_empty_night_never_settles():
    clock = FakeClock()
    s = Settler(settle_s=1, clock=clock)
    s.track(Path("/raw/2025_0316"))
    s.observe(Path("/raw/2025_0316"), Snapshot(0, 0, 0.0))
    clock.t += 100
    assert s.settled() == []


def test_snapshot_counts_every_file(tmp_path):
    (tmp_path / "a.fits").write_bytes(b"x" * 10)
    (tmp_path / ".b.fits.part").write_bytes(b"x" * 5)
    (tmp_path / "sub").mkdir()
    snap = snapshot(tmp_path)
    assert (snap.n_files, snap.total_bytes) == (2, 15)


def test_filesystem_type_is_read_from_mounts(tmp_path):
    assert filesystem_type(tmp_path) != ""


def _frame_bytes(imagetyp: str, dateobs: str, size: int = 64) -> bytes:
    hdu = fits.PrimaryHDU(np.full((size, size), 1000, np.uint16))
    hdu.header.update({"IMAGETYP": imagetyp, "FILTER": "R", "EXPTIME": 60.0,
                       "DATE-OBS": dateobs, "OBJECT": "NGC0337"})
    from io import BytesIO
    buf = BytesIO()
    hdu.writeto(buf)
    return buf.getvalue()


def _night_row(ledger_path: Path, night_dir: Path):
    if not ledger_path.exists():
        return None
    with Ledger(ledger_path) as ledger:
        row = ledger.night_by_path(night_dir)
        return dict(row) if row else None


def _start(gpwatch: Path, root: Path, data: Path, settle_s: float) -> subprocess.Popen:
    return subprocess.Popen(
        [str(gpwatch), "LOAO", "1", "--root", str(root), "--settle", str(settle_s),
         "--poll", "0.2", "--data-dir", str(data)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_gpwatch_processes_a_night_once_it_settles(gppy_bin, tmp_path):
    gpwatch = gppy_bin.with_name("gpwatch")
    root, data = tmp_path / "raw", tmp_path / "data"
    root.mkdir()
    ledger_path = data / "ledger.sqlite"
    settle_s = 2.0
    proc = _start(gpwatch, root, data, settle_s)
    try:
        time.sleep(1.5)  # the observer is up
        night = root / "2025_0315"
        night.mkdir()
        (night / "bias1.fits").write_bytes(_frame_bytes("Bias Frame", "2025-03-16T01:00:00"))
        # a science frame uploaded slowly: chunks arrive faster than the settle time
        whole = _frame_bytes("Light Frame", "2025-03-16T03:00:00", size=256)
        chunks = np.array_split(np.frombuffer(whole, np.uint8), 8)
        with open(night / "sci1.fits", "wb") as fh:
            for chunk in chunks:
                fh.write(chunk.tobytes())
                fh.flush()
                time.sleep(0.6)
                row = _night_row(ledger_path, night)
                assert row is None or row["status"] == "settling", "processed while uploading"
        last_write = time.time()

        row = wait_for(lambda: (r := _night_row(ledger_path, night)) and r["status"] == "done"
                        and r, 90, "the night to be processed")
        assert row["attempts"] == 1
        log = data / "logs" / "LOAO" / "2025-03-15.jsonl"
        events = [json.loads(line) for line in log.read_text().splitlines()]
        started = next(e for e in events if e["event"] == "night started")
        t_started = dt.datetime.fromisoformat(started["timestamp"].replace("Z", "+00:00"))
        assert t_started.timestamp() >= last_write + settle_s
        with Ledger(ledger_path) as ledger:
            frames = {Path(f["path"]).name: f for f in ledger.frames(row["id"])}
        assert set(frames) == {"bias1.fits", "sci1.fits"}
        assert frames["sci1.fits"]["error"] is None and frames["sci1.fits"]["type"] == "science"

        # a frame arriving in a finished night triggers a run over just that frame
        (night / "sci2.fits").write_bytes(_frame_bytes("Light Frame", "2025-03-16T03:10:00"))
        wait_for(lambda: (r := _night_row(ledger_path, night)) and r["attempts"] == 2
                  and r["status"] == "done", 90, "the new frame to be processed")
        events = [json.loads(line) for line in log.read_text().splitlines()]
        assert [e["scanned"] for e in events if e["event"] == "night done"] == [2, 1]

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        output = proc.stdout.read()
    assert "night detected" in output and "stopped" in output

    # restarted, it finds nothing new to do
    proc = _start(gpwatch, root, data, settle_s)
    time.sleep(settle_s + 3)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 0
    assert _night_row(ledger_path, root / "2025_0315")["attempts"] == 2


def test_gpwatch_without_arguments_and_terminal_prints_usage(gppy_bin):
    run = subprocess.run([str(gppy_bin.with_name("gpwatch"))], stdin=subprocess.DEVNULL,
                         capture_output=True, text=True)
    assert run.returncode == 2
    assert "usage: gpwatch" in run.stderr and "observatory" in run.stderr


def test_gpwatch_missing_root_is_a_clear_error(gppy_bin, tmp_path):
    run = subprocess.run([str(gppy_bin.with_name("gpwatch")), "loao", "2", "--root",
                          str(tmp_path / "nowhere")], capture_output=True, text=True,
                         env=os.environ | {"GPPY_DATA_DIR": str(tmp_path)})
    assert run.returncode == 2 and "upload folder does not exist" in run.stderr


def test_reading_a_night_is_not_activity_but_writing_is(tmp_path):
    """The routine's own reads (inotify open / close-without-write) must not wake a
    finished night; a new or appended file must."""
    import queue

    from watchdog.observers import Observer

    from gppy.daemon.watch import _NightEvents

    night = tmp_path / "2025_0315"
    night.mkdir()
    (night / "a.fits").write_bytes(b"x" * 100)
    (tmp_path / "notes").mkdir()
    active = queue.SimpleQueue()
    observer = Observer()
    observer.schedule(_NightEvents(tmp_path, "{YYYY}_{MM}{DD}", active), str(tmp_path),
                      recursive=True)
    observer.start()
    try:
        time.sleep(0.3)
        (night / "a.fits").read_bytes()
        (tmp_path / "notes" / "x.txt").write_text("not a night folder")
        time.sleep(0.5)
        assert active.empty()
        with open(night / "a.fits", "ab") as fh:
            fh.write(b"more")
        wait_for(lambda: not active.empty(), 5, "an event for the appended file")
        assert active.get() == night
    finally:
        observer.stop()
        observer.join()


def test_gpwatch_on_a_terminal_lists_observatories_and_asks(gppy_bin, tmp_path):
    import pty

    main, secondary = pty.openpty()
    proc = subprocess.Popen([str(gppy_bin.with_name("gpwatch"))], stdin=secondary,
                            stdout=secondary, stderr=secondary, close_fds=True)
    os.close(secondary)
    os.write(main, b"7dt05\n1\n")
    output = b""
    try:
        while proc.poll() is None or output.count(b"\n") < 3:
            try:
                chunk = os.read(main, 4096)
            except OSError:  # the terminal closed: the process has exited
                break
            if not chunk:
                break
            output += chunk
    finally:
        proc.wait(timeout=30)
        os.close(main)
    text = output.decode(errors="replace")
    assert "Observatories:" in text and "7DT05" in text and "LOAO" in text
    assert "Observatory to watch:" in text
    # the answer was taken: 7DT05's upload folder does not exist on this machine
    assert "/data/obsdata/7DT05: the upload folder does not exist" in text
    assert proc.returncode == 2


def test_gppy_status_json(gppy_bin, tmp_path):
    from gppy.daemon.routine import process_night
    from gppy.obsconfig.loader import load_profile
    from gppy.settings import DataDir

    night = tmp_path / "2025_0315"
    night.mkdir()
    (night / "bias1.fits").write_bytes(_frame_bytes("Bias Frame", "2025-03-16T01:00:00"))
    (night / "sci1.fits").write_bytes(_frame_bytes("Light Frame", "2025-03-16T03:00:00"))
    (night / "broken.fits").write_bytes(b"SIMPLE  =")
    process_night(load_profile("LOAO"), night, DataDir(tmp_path / "data"))
    out = subprocess.run([str(gppy_bin), "status", "LOAO", "--json", "--data-dir",
                          str(tmp_path / "data")], capture_output=True, text=True, check=True)
    (row,) = [json.loads(line) for line in out.stdout.splitlines()]
    assert {"obs", "night", "state", "attempts", "frames_done", "frames_failed", "error"} <= set(row)
    assert (row["obs"], row["night"], row["state"], row["attempts"]) == ("LOAO", "2025-03-15",
                                                                       "done", 1)
    # the bias is done; the science frame has no flat (skipped); the broken file failed
    assert (row["frames_done"], row["frames_failed"]) == (2, 1)
    table = subprocess.run([str(gppy_bin), "status", "--data-dir", str(tmp_path / "data")],
                           capture_output=True, text=True, check=True).stdout
    assert re.search(r"LOAO\s+2025-03-15\s+done\s+1\s+2\s+1", table)
