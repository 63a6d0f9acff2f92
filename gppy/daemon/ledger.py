"""The ledger: a SQLite database of nights, frames, per-frame steps and products.

It is what makes a night resumable: every step of every frame is recorded with
its status, so a crash resumes from here and a re-run with nothing changed does
no work. Writes happen inside `transaction()` (BEGIN IMMEDIATE ... COMMIT) with
WAL journalling and synchronous=FULL, so a process killed mid-write leaves the
database at the last committed transaction.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

SCHEMA_VERSION = 2

NIGHT_STATES = ("detected", "settling", "queued", "processing", "done", "failed")
STEP_STATES = ("pending", "running", "done", "failed", "skipped")
MASTER_KINDS = ("bias", "dark", "flat", "bpm")

# Migration N brings a database from version N-1 to N.
_MIGRATIONS: dict[int, str] = {
    1: f"""
    CREATE TABLE nights (
        id          INTEGER PRIMARY KEY,
        obs         TEXT NOT NULL,
        night       TEXT NOT NULL,               -- local date at the start of the night
        path        TEXT NOT NULL UNIQUE,
        status      TEXT NOT NULL CHECK (status IN {NIGHT_STATES}),
        attempts    INTEGER NOT NULL DEFAULT 0,
        error       TEXT,
        created_utc TEXT NOT NULL,
        updated_utc TEXT NOT NULL
    );
    CREATE TABLE frames (
        id          INTEGER PRIMARY KEY,
        night_id    INTEGER NOT NULL REFERENCES nights(id) ON DELETE CASCADE,
        path        TEXT NOT NULL UNIQUE,
        size_bytes  INTEGER NOT NULL,
        mtime       REAL NOT NULL,
        sha256      TEXT,
        type        TEXT,
        filter      TEXT,
        exptime_s   REAL,
        object      TEXT,
        dateobs     TEXT,
        record_json TEXT,                        -- the homogenised header record
        error       TEXT,
        updated_utc TEXT NOT NULL
    );
    CREATE INDEX frames_by_night ON frames(night_id);
    CREATE TABLE steps (
        frame_id     INTEGER NOT NULL REFERENCES frames(id) ON DELETE CASCADE,
        step         TEXT NOT NULL,
        status       TEXT NOT NULL CHECK (status IN {STEP_STATES}),
        error        TEXT,
        info_json    TEXT,
        started_utc  TEXT,
        finished_utc TEXT,
        PRIMARY KEY (frame_id, step)
    );
    CREATE TABLE products (
        id          INTEGER PRIMARY KEY,
        night_id    INTEGER NOT NULL REFERENCES nights(id) ON DELETE CASCADE,
        frame_id    INTEGER REFERENCES frames(id) ON DELETE SET NULL,
        kind        TEXT NOT NULL,
        path        TEXT NOT NULL UNIQUE,
        sha256      TEXT,
        info_json   TEXT,
        created_utc TEXT NOT NULL
    );
    """,
    2: f"""
    CREATE TABLE masters (
        id          INTEGER PRIMARY KEY,
        obs         TEXT NOT NULL,
        night       TEXT NOT NULL,               -- the night whose frames made it
        kind        TEXT NOT NULL CHECK (kind IN {MASTER_KINDS}),
        binning     TEXT NOT NULL,               -- e.g. 2x2
        gain_mode   TEXT NOT NULL DEFAULT '',
        settemp_c   REAL,                        -- cooler set-point, NULL if unknown
        exptime_s   REAL,                        -- darks
        filter      TEXT,                        -- flats
        shape       TEXT NOT NULL,               -- e.g. 2048x2048 (ny x nx)
        path        TEXT NOT NULL UNIQUE,
        n_frames    INTEGER NOT NULL,
        inputs_sha  TEXT NOT NULL,               -- of the input frames' checksums
        qa_json     TEXT,
        created_utc TEXT NOT NULL
    );
    CREATE INDEX masters_lookup ON masters(obs, kind, binning, night);
    """,
}


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


class LedgerError(RuntimeError):
    pass


class Ledger:
    """One connection to the ledger file; create it with `Ledger(path)`."""

    def __init__(self, path: str | Path, timeout_s: float = 60.0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we issue BEGIN/COMMIT ourselves (see transaction()).
        self.db = sqlite3.connect(self.path, timeout=timeout_s, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("PRAGMA foreign_keys=ON")
        self._migrate()

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "Ledger":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """All statements inside commit together or not at all."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def _migrate(self) -> None:
        with self.transaction() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise LedgerError(f"{self.path}: schema version {version} is newer than this "
                                  f"gppy understands ({SCHEMA_VERSION}); upgrade gppy")
            for target in range(version + 1, SCHEMA_VERSION + 1):
                for statement in _MIGRATIONS[target].split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(f"PRAGMA user_version = {target}")

    @property
    def schema_version(self) -> int:
        return self.db.execute("PRAGMA user_version").fetchone()[0]

    # ---- nights ------------------------------------------------------------

    def upsert_night(self, obs: str, night: str, path: str | Path, status: str) -> int:
        now = utc_now()
        with self.transaction() as db:
            db.execute(
                "INSERT INTO nights (obs, night, path, status, created_utc, updated_utc) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(path) DO UPDATE SET "
                "status = excluded.status, updated_utc = excluded.updated_utc",
                (obs, night, str(path), status, now, now))
            return db.execute("SELECT id FROM nights WHERE path = ?", (str(path),)).fetchone()[0]

    def set_night_status(self, night_id: int, status: str, error: str | None = None,
                         count_attempt: bool = False) -> None:
        with self.transaction() as db:
            db.execute("UPDATE nights SET status = ?, error = ?, updated_utc = ?, "
                       "attempts = attempts + ? WHERE id = ?",
                       (status, error, utc_now(), int(count_attempt), night_id))

    def reset_attempts(self, night_id: int) -> None:
        with self.transaction() as db:
            db.execute("UPDATE nights SET attempts = 0, updated_utc = ? WHERE id = ?",
                       (utc_now(), night_id))

    def night(self, night_id: int) -> sqlite3.Row:
        return self.db.execute("SELECT * FROM nights WHERE id = ?", (night_id,)).fetchone()

    def night_by_path(self, path: str | Path) -> sqlite3.Row | None:
        return self.db.execute("SELECT * FROM nights WHERE path = ?", (str(path),)).fetchone()

    # ---- frames and steps --------------------------------------------------

    def frame_by_path(self, path: str | Path) -> sqlite3.Row | None:
        return self.db.execute("SELECT * FROM frames WHERE path = ?", (str(path),)).fetchone()

    def frames(self, night_id: int) -> list[sqlite3.Row]:
        return self.db.execute("SELECT * FROM frames WHERE night_id = ? ORDER BY path",
                               (night_id,)).fetchall()

    def record_frame(self, night_id: int, path: str | Path, size_bytes: int, mtime: float,
                     sha256: str | None, record: dict[str, Any], step: str,
                     step_status: str) -> int:
        """Store a frame's homogenised record and the status of the step that made it,
        in one transaction."""
        now = utc_now()
        with self.transaction() as db:
            db.execute(
                "INSERT INTO frames (night_id, path, size_bytes, mtime, sha256, type, filter, "
                "exptime_s, object, dateobs, record_json, error, updated_utc) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(path) DO UPDATE SET "
                "night_id = excluded.night_id, size_bytes = excluded.size_bytes, "
                "mtime = excluded.mtime, sha256 = excluded.sha256, type = excluded.type, "
                "filter = excluded.filter, exptime_s = excluded.exptime_s, "
                "object = excluded.object, dateobs = excluded.dateobs, "
                "record_json = excluded.record_json, error = excluded.error, "
                "updated_utc = excluded.updated_utc",
                (night_id, str(path), size_bytes, mtime, sha256, record.get("type"),
                 record.get("filter"), record.get("exptime"), record.get("object"),
                 record.get("dateobs"), json.dumps(record), record.get("error"), now))
            frame_id = db.execute("SELECT id FROM frames WHERE path = ?", (str(path),)).fetchone()[0]
            self._set_step(db, frame_id, step, step_status, record.get("error"), None, now)
            return frame_id

    def set_step(self, frame_id: int, step: str, status: str, error: str | None = None,
                 info: dict | None = None) -> None:
        with self.transaction() as db:
            self._set_step(db, frame_id, step, status, error, info, utc_now())

    @staticmethod
    def _set_step(db, frame_id, step, status, error, info, now) -> None:
        finished = now if status in ("done", "failed", "skipped") else None
        db.execute(
            "INSERT INTO steps (frame_id, step, status, error, info_json, started_utc, "
            "finished_utc) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(frame_id, step) DO UPDATE "
            "SET status = excluded.status, error = excluded.error, "
            "info_json = excluded.info_json, finished_utc = excluded.finished_utc, "
            "started_utc = COALESCE(steps.started_utc, excluded.started_utc)",
            (frame_id, step, status, error, json.dumps(info) if info else None, now, finished))

    def step(self, frame_id: int, step: str) -> sqlite3.Row | None:
        return self.db.execute("SELECT * FROM steps WHERE frame_id = ? AND step = ?",
                               (frame_id, step)).fetchone()

    def step_status(self, frame_id: int, step: str) -> str | None:
        row = self.db.execute("SELECT status FROM steps WHERE frame_id = ? AND step = ?",
                              (frame_id, step)).fetchone()
        return row[0] if row else None

    # ---- products ----------------------------------------------------------

    def record_product(self, night_id: int, kind: str, path: str | Path,
                       frame_id: int | None = None, sha256: str | None = None,
                       info: dict | None = None) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO products (night_id, frame_id, kind, path, sha256, info_json, "
                "created_utc) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(path) DO UPDATE SET "
                "sha256 = excluded.sha256, info_json = excluded.info_json, "
                "created_utc = excluded.created_utc",
                (night_id, frame_id, kind, str(path), sha256,
                 json.dumps(info) if info else None, utc_now()))

    def products(self, night_id: int) -> list[sqlite3.Row]:
        return self.db.execute("SELECT * FROM products WHERE night_id = ? ORDER BY path",
                               (night_id,)).fetchall()
