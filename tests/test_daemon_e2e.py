"""gpwatch end to end: a real daemon process, a simulated night uploaded into its
folder file by file, a stand-in for Slack's Web API on 127.0.0.1, the ledger on
disk. Crashes, stops, late files, Slack trouble and persistent failures."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from gppy.daemon.ledger import Ledger
from gppy.daemon.slackstub import SlackStub
from gppy.obsconfig.loader import load_profile
from gppy.reduction.inventory import read_frame

from conftest import simulate_nights, wait_for

pytestmark = pytest.mark.slow
TOKEN = "xoxb-gppy-test-0123456789-abcdef"
CHANNEL = "#gppy-loao"


def _frames_by_type(folder: Path) -> dict[str, list[Path]]:
    profile = load_profile("LOAO")
    out: dict[str, list[Path]] = {}
    for f in sorted(folder.iterdir()):
        out.setdefault(read_frame(f, profile).type, []).append(f)
    return out


@pytest.fixture(scope="module")
def small_night(tmp_path_factory):
    """LOAO, 256 x 256: 5 biases, 9 darks, 10 flats, 8 science frames."""
    out, (truth,) = simulate_nights(tmp_path_factory.mktemp("small"), "LOAO", 256, nscience=4)
    return out / truth.meta["raw_folder"]


@pytest.fixture(scope="module")
def slow_night(tmp_path_factory):
    """LOAO, 1024 x 1024, 8 science frames: seconds per frame on one core."""
    out, (truth,) = simulate_nights(tmp_path_factory.mktemp("slow"), "LOAO", 1024, nscience=4,
                                    seed=3)
    return out / truth.meta["raw_folder"]


class Daemon:
    """gpwatch as a subprocess, its output in a file."""

    def __init__(self, home: Path, root: Path, api_url: str, *extra: str, settle_s: float = 3.0,
                 ncores: int = 2, slack_settings: str = ""):
        self.home, self.root = home, root
        self.data = home / "data"
        config = home / "config"
        config.mkdir(parents=True, exist_ok=True)
        (config / "settings.toml").write_text(f'[slack]\ndefault_channel = "{CHANNEL}"\n'
                                              + slack_settings)
        env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
        env |= {"SLACK_BOT_TOKEN": TOKEN, "GPPY_SLACK_API_URL": api_url,
                "GPPY_CONFIG_DIR": str(config), "GPPY_DATA_DIR": str(self.data)}
        self.output = home / f"gpwatch-{time.monotonic_ns()}.log"
        self.proc = subprocess.Popen(
            [str(Path(os.sys.executable).with_name("gpwatch")), "loao", str(ncores), "--root",
             str(root), "--settle", str(settle_s), "--poll", "0.2", *extra],
            stdout=open(self.output, "w"), stderr=subprocess.STDOUT, env=env)
        wait_for(lambda: "watching" in self.text(), 30, "gpwatch to start")

    def text(self) -> str:
        return self.output.read_text() if self.output.exists() else ""

    def stop(self, sig=signal.SIGTERM, timeout_s: float = 60) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout_s)

    def night(self, folder: Path) -> dict | None:
        if not (self.data / "ledger.sqlite").exists():
            return None
        with Ledger(self.data / "ledger.sqlite") as ledger:
            row = ledger.night_by_path(folder)
            return dict(row) if row else None

    def calibrated(self) -> dict[str, dict]:
        """Science frame name -> its calibrate step (status, finished time, output)."""
        with Ledger(self.data / "ledger.sqlite") as ledger:
            rows = ledger.db.execute(
                "SELECT f.path, s.status, s.finished_utc, s.info_json FROM steps s "
                "JOIN frames f ON f.id = s.frame_id WHERE s.step = 'calibrate'").fetchall()
        return {Path(r[0]).name: {"status": r[1], "finished": r[2],
                                  "output": json.loads(r[3] or "{}").get("output")} for r in rows}

    def events(self, night: str) -> list[dict]:
        log = self.data / "logs" / "LOAO" / f"{night}.jsonl"
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _upload(files: list[Path], dest: Path, delay_s: float, daemon: Daemon | None = None,
            chunks: int = 3) -> float:
    """Copy files one by one as an upload would; every third in several appends.
    Checks after each step that the daemon has read nothing. Returns the time of
    the last byte."""
    dest.mkdir(exist_ok=True)
    for i, src in enumerate(files):
        data = src.read_bytes()
        parts = chunks if i % 3 == 0 else 1
        step = -(-len(data) // parts)
        with open(dest / src.name, "wb") as fh:
            for k in range(parts):
                fh.write(data[k * step:(k + 1) * step])
                fh.flush()
                time.sleep(delay_s)
                if daemon is not None:
                    row = daemon.night(dest)
                    assert row is None or row["status"] in ("detected", "settling"), row
    return time.time()


def _t(event: dict) -> float:
    return dt.datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()


def _corrupt_copy(src: Path, dest: Path) -> None:
    dest.write_bytes(src.read_bytes()[:5000])


def test_night_processed_once_after_it_settles_with_messages(small_night, tmp_path):
    root, held_back = tmp_path / "raw", 2
    root.mkdir()
    by_type = _frames_by_type(small_night)
    late = by_type["science"][-held_back:]
    first = [f for f in sorted(small_night.iterdir()) if f not in late]
    night_dir = root / small_night.name
    with SlackStub(token=TOKEN, channels=[CHANNEL]) as stub:
        daemon = Daemon(tmp_path, root, stub.url, "--http", "127.0.0.1:0")
        try:
            port = int(re.search(r"http=127\.0\.0\.1:(\d+)", daemon.text()).group(1))
            last_write = _upload(first, night_dir, 0.05, daemon)
            _corrupt_copy(by_type["science"][0], night_dir / "broken.fits")
            last_write = time.time()
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as r:
                status = json.load(r)
            assert status["obs"] == "LOAO" and status["state"] in ("idle", "processing")
            assert str(night_dir) in status["settling"] + [(status["current"] or {}).get("path")]
            row = wait_for(lambda: (r := daemon.night(night_dir)) and r["status"] == "done" and r,
                            120, "the night to be processed")
            assert row["attempts"] == 1
            events = daemon.events("2024-03-14")
            started = [e for e in events if e["event"] == "night started"]
            assert len(started) == 1 and _t(started[0]) >= last_write + 3.0
            calibrated = daemon.calibrated()
            assert sorted(calibrated) == sorted(f.name for f in by_type["science"][:-held_back])
            assert all(c["status"] == "done" for c in calibrated.values())
            texts = [m.text for m in stub.wait_for(lambda s: len(s.messages) >= 3 and s.messages,
                                                  timeout_s=30)]
            assert [m.channel_name for m in stub.messages] == [CHANNEL.lstrip("#")] * 3
            assert "new data" in texts[0]
            assert re.search(r"processing 31 frames \(5 bias, 9 dark, 10 flat, 6 science, "
                             r"1 unreadable\) on 2 cores", texts[1]), texts[1]
            assert "6 frames calibrated, 0 failed, 1 skipped" in texts[2], texts[2]
            assert "broken.fits: truncated" in texts[2]

            # late files in the finished night: only they are processed and reported
            _upload(late, night_dir, 0.05)
            wait_for(lambda: (r := daemon.night(night_dir))["attempts"] == 2
                      and r["status"] == "done", 120, "the late frames to be processed")
            # the second run reads the 2 late frames, and tries the unreadable file again
            assert [e["scanned"] for e in daemon.events("2024-03-14")
                    if e["event"] == "night done"] == [31, 3]
            after = daemon.calibrated()
            assert len(after) == 8 and all(after[k] == calibrated[k] for k in calibrated)
            done = stub.wait_for(lambda s: len(s.messages) >= 6 and s.messages, timeout_s=30)[5]
            assert "2 frames calibrated (6 unchanged)" in done.text, done.text
            assert daemon.stop() == 0
        finally:
            daemon.kill()
    assert TOKEN not in daemon.text()


def test_stop_and_crash_mid_night_resume_without_redoing_frames(slow_night, tmp_path):
    root = tmp_path / "raw"
    root.mkdir()
    night_dir = root / slow_night.name
    n_science = len(_frames_by_type(slow_night)["science"])
    with SlackStub(token=TOKEN, channels=[CHANNEL]) as stub:
        daemon = Daemon(tmp_path, root, stub.url, settle_s=1.0, ncores=1)
        try:
            _upload(sorted(slow_night.iterdir()), night_dir, 0.0)
            done_count = lambda: sum(c["status"] == "done" for c in daemon.calibrated().values())
            wait_for(lambda: daemon.night(night_dir) and daemon.night(night_dir)["status"]
                      == "processing" and (daemon.data / "ledger.sqlite").exists()
                      and done_count() >= 2, 180, "two frames calibrated")
            # SIGTERM: the frame in hand is finished, the night is left queued
            assert daemon.stop(timeout_s=150) == 0
            assert daemon.night(night_dir)["status"] == "queued"
            first_round = {k: v for k, v in daemon.calibrated().items() if v["status"] == "done"}
            assert 2 <= len(first_round) < n_science

            daemon = Daemon(tmp_path, root, stub.url, settle_s=1.0, ncores=1)
            wait_for(lambda: done_count() >= len(first_round) + 2, 180, "two more frames")
            daemon.kill()  # kill -9: no chance to clean up
            at_kill = {k: v for k, v in daemon.calibrated().items() if v["status"] == "done"}
            outputs = {Path(v["output"]).stat().st_mtime_ns for v in at_kill.values()}
            time.sleep(3)  # the night's process died with the daemon: nothing more is written
            assert {k: v for k, v in daemon.calibrated().items() if v["status"] == "done"} == at_kill
            products = daemon.data / "products" / "LOAO" / "2024-03-14"
            assert {p.stat().st_mtime_ns for p in products.glob("Calib-*.fits")} == outputs

            daemon = Daemon(tmp_path, root, stub.url, settle_s=1.0, ncores=1)
            wait_for(lambda: daemon.night(night_dir)["status"] == "done", 240, "the night done")
            final = daemon.calibrated()
            assert len(final) == n_science and all(c["status"] == "done" for c in final.values())
            for name, step in at_kill.items():  # finished frames were not redone
                assert final[name] == step
            with Ledger(daemon.data / "ledger.sqlite") as ledger:
                paths = [r[0] for r in ledger.db.execute(
                    "SELECT path FROM products WHERE kind = 'calibrated'")]
            assert len(paths) == len(set(paths)) == n_science
            assert sorted(paths) == sorted(str(p) for p in products.glob("Calib-*.fits"))
            assert daemon.stop() == 0
        finally:
            daemon.kill()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_slack_down_never_stops_processing(small_night, tmp_path):
    """Nothing listens at the Web API address: the night is processed all the same,
    and the messages are retried, then dropped with a log line (settings.toml's
    policy: a retry after 4 s, no wait beyond 5 s: ~4 s a message, one at a time)."""
    root = tmp_path / "raw"
    root.mkdir()
    daemon = Daemon(tmp_path, root, f"http://127.0.0.1:{_free_port()}/api/", settle_s=1.0,
                    slack_settings="backoff_s = 4.0\nmessage_budget_s = 5.0\n")
    try:
        t0 = time.monotonic()
        _upload(sorted(small_night.iterdir()), root / small_night.name, 0.0)
        wait_for(lambda: (r := daemon.night(root / small_night.name)) and r["status"] == "done",
                  120, "the night to be processed")
        assert time.monotonic() - t0 < 30    # as fast as with Slack up
        wait_for(lambda: "slack message dropped" in daemon.text(), 120,
                  "the first message to be dropped after its retries")
        assert daemon.stop(timeout_s=60) == 0
    finally:
        daemon.kill()
    output = daemon.text()
    assert "slack message dropped" in output and "Connection refused" in output
    assert TOKEN not in output


def test_rate_limited_messages_arrive_in_order(small_night, tmp_path):
    root = tmp_path / "raw"
    root.mkdir()
    with SlackStub(token=TOKEN, channels=[CHANNEL]) as stub:
        stub.rate_limit(2, retry_after=1, method="chat.postMessage")
        daemon = Daemon(tmp_path, root, stub.url, settle_s=1.0)
        try:
            _upload(sorted(small_night.iterdir()), root / small_night.name, 0.0)
            messages = stub.wait_for(lambda s: len(s.messages) >= 3 and s.messages, timeout_s=120)
            assert [m.text.split()[0] for m in messages] == [
                ":telescope:", ":gear:", ":white_check_mark:"]
            assert sum(c.status == 429 for c in stub.calls) == 2
            assert daemon.stop() == 0
        finally:
            daemon.kill()


def test_failing_night_is_retried_then_reported_once(small_night, tmp_path):
    """The products folder cannot be created (a file is in the way): the night fails,
    is retried after the backoff, then left failed with one message."""
    root = tmp_path / "raw"
    root.mkdir()
    blocker = tmp_path / "data" / "products" / "LOAO" / "2024-03-14"
    blocker.parent.mkdir(parents=True)
    blocker.write_text("not a folder")
    with SlackStub(token=TOKEN, channels=[CHANNEL]) as stub:
        daemon = Daemon(tmp_path, root, stub.url, "--retries", "2", "--retry-backoff", "1",
                        settle_s=1.0)
        try:
            _upload(sorted(small_night.iterdir()), root / small_night.name, 0.0)
            row = wait_for(lambda: (r := daemon.night(root / small_night.name)) and
                            r["status"] == "failed" and r["attempts"] == 2 and r, 120,
                            "two failed attempts")
            assert "NotADirectoryError" in row["error"] or "FileExistsError" in row["error"]
            time.sleep(3)  # no third attempt, no second report
            assert daemon.night(root / small_night.name)["attempts"] == 2
            failed = [m for m in stub.messages if m.text.startswith(":x:")]
            assert len(failed) == 1 and "failed after 2 attempts" in failed[0].text
            assert "Log: `" in failed[0].text
            assert daemon.stop() == 0
        finally:
            daemon.kill()
