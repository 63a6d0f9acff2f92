"""The ledger: schema, state transitions, and consistency when its writer is killed."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from gppy.daemon.ledger import SCHEMA_VERSION, Ledger, LedgerError

STEPS = ("inventory", "calibrate", "astrometry", "photometry")

# Each transaction inserts a frame and all its steps, sleeping between statements
# so that a kill lands inside a transaction most of the time.
WRITER = f"""
import sys, time
from gppy.daemon.ledger import Ledger
ledger = Ledger(sys.argv[1])
night = ledger.upsert_night("SIM", "2025-01-01", "/raw/2025_0101", "processing")
i = ledger.db.execute("SELECT COUNT(*) FROM frames").fetchone()[0]
while True:
    with ledger.transaction() as db:
        cur = db.execute("INSERT INTO frames (night_id, path, size_bytes, mtime, updated_utc) "
                         "VALUES (?, ?, ?, 0, 'now')", (night, f"/raw/f{{i:06d}}.fits", i))
        for step in {STEPS!r}:
            time.sleep(0.003)
            db.execute("INSERT INTO steps (frame_id, step, status) VALUES (?, ?, 'done')",
                       (cur.lastrowid, step))
    print(i, flush=True)
    i += 1
"""


def test_schema_created_and_versioned(tmp_path):
    with Ledger(tmp_path / "l.sqlite") as ledger:
        assert ledger.schema_version == SCHEMA_VERSION
        tables = {r[0] for r in ledger.db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"nights", "frames", "steps", "products"} <= tables
    with Ledger(tmp_path / "l.sqlite") as ledger:  # reopening migrates nothing
        assert ledger.schema_version == SCHEMA_VERSION


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "l.sqlite"
    Ledger(path).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(LedgerError, match="newer than this gppy"):
        Ledger(path)


def test_night_frame_step_product_round_trip(tmp_path):
    with Ledger(tmp_path / "l.sqlite") as ledger:
        night = ledger.upsert_night("LOAO", "2025-03-15", "/raw/2025_0315", "detected")
        ledger.set_night_status(night, "processing", count_attempt=True)
        record = {"type": "science", "filter": "R", "exptime": 60.0, "object": "NGC0337",
                  "dateobs": "2025-03-16T03:00:00", "error": None}
        fid = ledger.record_frame(night, "/raw/2025_0315/a.fits", 1234, 1.5, "ab" * 32,
                                  record, "inventory", "done")
        assert ledger.step_status(fid, "inventory") == "done"
        ledger.set_step(fid, "calibrate", "failed", error="no flat")
        ledger.record_product(night, "inventory", "/out/inventory.ecsv", info={"frames": 1})
        ledger.set_night_status(night, "done")

        row = ledger.night(night)
        assert (row["status"], row["attempts"]) == ("done", 1)
        frame = ledger.frame_by_path("/raw/2025_0315/a.fits")
        assert (frame["type"], frame["filter"], frame["exptime_s"]) == ("science", "R", 60.0)
        assert ledger.step_status(fid, "calibrate") == "failed"
        assert [p["kind"] for p in ledger.products(night)] == ["inventory"]
        # the same path again updates the frame rather than duplicating it
        ledger.record_frame(night, "/raw/2025_0315/a.fits", 1300, 2.0, None,
                            record | {"filter": "B"}, "inventory", "done")
        assert len(ledger.frames(night)) == 1
        assert ledger.frame_by_path("/raw/2025_0315/a.fits")["filter"] == "B"


def test_invalid_state_is_rejected(tmp_path):
    with Ledger(tmp_path / "l.sqlite") as ledger:
        night = ledger.upsert_night("LOAO", "2025-03-15", "/raw/n", "detected")
        with pytest.raises(sqlite3.IntegrityError):
            ledger.set_night_status(night, "half-done")
        assert ledger.night(night)["status"] == "detected"


def test_failed_transaction_leaves_nothing(tmp_path):
    with Ledger(tmp_path / "l.sqlite") as ledger:
        night = ledger.upsert_night("LOAO", "2025-03-15", "/raw/n", "detected")
        with pytest.raises(RuntimeError):
            with ledger.transaction() as db:
                db.execute("INSERT INTO frames (night_id, path, size_bytes, mtime, updated_utc) "
                           "VALUES (?, '/raw/n/x.fits', 1, 0, 'now')", (night,))
                raise RuntimeError("crash between two statements")
        assert ledger.frames(night) == []


def test_killed_writer_leaves_ledger_consistent(tmp_path):
    """SIGKILL a writer repeatedly, mostly mid-transaction: every time the ledger
    passes SQLite's integrity check, holds every frame it reported committed, and
    holds no frame without all of its steps."""
    path = tmp_path / "ledger.sqlite"
    rng = random.Random(7)
    committed = 0
    for _round in range(6):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)],
                                stdout=subprocess.PIPE, text=True)
        time.sleep(rng.uniform(0.8, 1.6))
        os.kill(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        reported = [int(x) for x in out.split()]
        assert reported, "the writer committed nothing before it was killed"
        committed = reported[-1] + 1

        with Ledger(path) as ledger:
            assert ledger.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            n_frames = ledger.db.execute("SELECT COUNT(*) FROM frames").fetchone()[0]
            # a commit can land after the last line was printed, never before
            assert committed <= n_frames <= committed + 1
            incomplete = ledger.db.execute(
                "SELECT COUNT(*) FROM frames f WHERE (SELECT COUNT(*) FROM steps s "
                "WHERE s.frame_id = f.id) != ?", (len(STEPS),)).fetchone()[0]
            assert incomplete == 0
    assert committed > 20  # the rounds really wrote (and resumed) across kills
