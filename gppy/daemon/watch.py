"""`gpwatch OBS NCORES`: watch an observatory's upload folder and run the night
routine on each night folder once it has stopped changing.

Filesystem events (watchdog: inotify, or polling on network filesystems) only
say which night is active; a poll loop takes snapshots and the `Settler`
decides when a night is complete. Nights run one at a time, oldest first, each
in a child process, so a crash in the routine never takes the watcher down; the
child reports back through a pipe and stops between frames when asked. State
lives in the ledger: detected -> settling -> queued -> processing -> done | failed.
A failed night is retried with exponential backoff up to a limit, then reported
once. Messages go to Slack through a background queue.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import queue
import signal
import sys
import threading
import time
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver

from gppy import logs, parallel
from gppy.daemon import httpstatus, messages
from gppy.daemon.ledger import Ledger
from gppy.daemon.settle import Settler, snapshot
from gppy.daemon.slack import Notifier
from gppy.obsconfig.loader import load_all, load_profile
from gppy.obsconfig.nights import parse_night
from gppy.obsconfig.schema import Profile
from gppy.reduction.inventory import find_frames
from gppy.settings import DataDir

NETWORK_FILESYSTEMS = {"nfs", "nfs4", "cifs", "smb3", "smbfs", "fuse.sshfs", "sshfs", "9p",
                       "fuse.rclone", "afs", "lustre", "gpfs", "beegfs"}
EXIT_INTERRUPTED = 3       # the night's process stopped on request; it resumes later
MAX_BACKOFF_S = 6 * 3600.0
LOG_TAIL_LINES = 20


def filesystem_type(path: str | os.PathLike) -> str:
    """The type of the filesystem holding `path`, from /proc/mounts ('' if unknown)."""
    target = os.path.realpath(path)
    best, fstype = "", ""
    try:
        with open("/proc/mounts") as fh:
            for line in fh:
                _, mount, kind, *_ = line.split()
                mount = mount.replace("\\040", " ")
                inside = target == mount or target.startswith(mount.rstrip("/") + "/")
                if inside and len(mount) >= len(best):
                    best, fstype = mount, kind
    except OSError:
        return ""
    return fstype


class _NightEvents(FileSystemEventHandler):
    """Turns any change below the root into 'this night folder is active'. Opening
    and closing a file without writing are not changes: the routine's own reads
    would otherwise wake the night again."""

    READS = ("opened", "closed_no_write")

    def __init__(self, root: Path, pattern: str, active: "queue.SimpleQueue[Path]"):
        self.root, self.pattern, self.active = root, pattern, active

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in self.READS:
            return
        for path in (event.src_path, getattr(event, "dest_path", "")):
            if not path:
                continue
            try:
                first = Path(os.fsdecode(path)).relative_to(self.root).parts[0]
            except (ValueError, IndexError):
                continue
            if parse_night(self.pattern, first) is not None:
                self.active.put(self.root / first)


def _run_night(obs: str, night_dir: str, data_root: str, ncores: int, conn) -> None:
    """Body of the child process that processes one night: reports 'started' and
    'done' through `conn`, stops between frames on SIGTERM."""
    from gppy.daemon.routine import done_event, process_night
    from gppy.errors import NightInterrupted

    parallel.die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the watcher decides; it sends SIGTERM
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    logs.configure()
    try:
        result = process_night(load_profile(obs), night_dir, DataDir(Path(data_root)),
                               ncores=ncores, should_stop=stop.is_set,
                               on_event=lambda kind, payload: conn.send((kind, payload)))
    except NightInterrupted:
        sys.exit(EXIT_INTERRUPTED)
    conn.send(("done", done_event(result)))


class Watcher:
    def __init__(self, profile: Profile, root: Path, ncores: int, data: DataDir,
                 settle_s: float, poll_s: float, polling: bool, notifier: Notifier,
                 max_attempts: int = 3, retry_backoff_s: float = 300.0,
                 stop_timeout_s: float = 120.0, http: tuple[str, int] | None = None):
        self.profile, self.root, self.ncores, self.data = profile, root, ncores, data
        self.poll_s, self.polling, self.stop_timeout_s = poll_s, polling, stop_timeout_s
        self.notifier, self.http = notifier, http
        self.max_attempts, self.retry_backoff_s = max_attempts, retry_backoff_s
        self.settler = Settler(settle_s)
        self.active: "queue.SimpleQueue[Path]" = queue.SimpleQueue()
        self.stopping = threading.Event()
        self.retry_at: dict[Path, float] = {}       # failed nights and when to try again
        self.current: dict | None = None           # the night being processed
        self.last_night: tuple[str, str] | None = None  # (night, path) last processed
        self.errors: collections.deque = collections.deque(maxlen=20)
        self.log = logs.get().bind(obs=profile.name)

    def stop(self, *_signal_args) -> None:
        self.stopping.set()

    def night_dirs(self) -> list[Path]:
        return sorted(p for p in self.root.iterdir()
                      if p.is_dir() and parse_night(self.profile.raw.night_folder, p.name))

    def _night_label(self, night_dir: Path) -> str:
        return parse_night(self.profile.raw.night_folder, night_dir.name).isoformat()

    def _has_new_frames(self, ledger: Ledger, night_dir: Path) -> bool:
        for path in find_frames(night_dir, self.profile):
            row = ledger.frame_by_path(path)
            st = path.stat()
            if row is None or (row["size_bytes"], row["mtime"]) != (st.st_size, st.st_mtime):
                return True
        return False

    def _track(self, ledger: Ledger, night_dir: Path, announce: bool) -> None:
        """Watch a night until it settles. New data resets a failed night's attempts."""
        if not self.settler.track(night_dir):
            return
        night = self._night_label(night_dir)
        row = ledger.night_by_path(night_dir)
        night_id = ledger.upsert_night(self.profile.name, night, night_dir, "detected")
        if row is not None and row["status"] == "failed":
            ledger.reset_attempts(night_id)
        self.retry_at.pop(night_dir, None)
        self.log.info("night detected", path=str(night_dir))
        if announce:
            self.notifier.post(self.profile.name, messages.detected(
                self.profile.name, night, night_dir, snapshot(night_dir).n_files))

    def rescan(self, ledger: Ledger) -> None:
        """On start: resume nights that are not done (failed ones within their retries),
        and nights with new or changed frames."""
        for night_dir in self.night_dirs():
            row = ledger.night_by_path(night_dir)
            if row is None or self._has_new_frames(ledger, night_dir):
                self._track(ledger, night_dir, announce=True)
            elif row["status"] == "failed":
                if row["attempts"] < self.max_attempts:
                    self.retry_at[night_dir] = time.monotonic()
            elif row["status"] != "done":
                self._track(ledger, night_dir, announce=False)

    def run(self) -> int:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self.stop)
            signal.signal(signal.SIGINT, self.stop)
        observer = PollingObserver(timeout=self.poll_s) if self.polling else Observer()
        observer.schedule(_NightEvents(self.root, self.profile.raw.night_folder, self.active),
                          str(self.root), recursive=True)
        observer.start()
        server = httpstatus.serve(self.http, self.status) if self.http else None
        self.log.info("watching", root=str(self.root), ncores=self.ncores,
                      observer="polling" if self.polling else "inotify",
                      settle_s=self.settler.settle_s, poll_s=self.poll_s,
                      http=f"{self.http[0]}:{server.server_address[1]}" if server else None)
        try:
            with Ledger(self.data.ledger) as ledger:
                self.rescan(ledger)
                while not self.stopping.is_set():
                    self._step(ledger)
                    self.stopping.wait(self.poll_s)
        finally:
            observer.stop()
            observer.join()
            if server:
                server.shutdown()
            self.notifier.close(timeout_s=10)
        self.log.info("stopped")
        return 0

    def _step(self, ledger: Ledger) -> None:
        while not self.active.empty():
            self._track(ledger, self.active.get(), announce=True)
        for night_dir in self.settler.tracked:
            try:
                first = self.settler.observe(night_dir, snapshot(night_dir))
            except FileNotFoundError:
                self.settler.forget(night_dir)
                continue
            if first:
                ledger.upsert_night(self.profile.name, self._night_label(night_dir), night_dir,
                                    "settling")
        now = time.monotonic()
        due = [d for d, at in self.retry_at.items() if at <= now]
        for night_dir in sorted(self.settler.settled() + due):  # oldest night first
            if self.stopping.is_set():
                return
            self.settler.forget(night_dir)
            self.retry_at.pop(night_dir, None)
            self._process(ledger, night_dir)

    def _process(self, ledger: Ledger, night_dir: Path) -> None:
        import multiprocess

        obs, night = self.profile.name, self._night_label(night_dir)
        night_id = ledger.upsert_night(obs, night, night_dir, "queued")
        self.log.info("night settled, processing", path=str(night_dir))
        self.current = {"night": night, "path": str(night_dir), "since": time.time()}
        self.last_night = (night, str(night_dir))
        ctx = multiprocess.get_context("spawn")
        receive, send = ctx.Pipe(duplex=False)
        child = ctx.Process(target=_run_night, name=f"gppy-night-{night_dir.name}",
                            args=(obs, str(night_dir), str(self.data.root), self.ncores, send))
        child.start()
        send.close()  # the child holds the only writing end: EOF when it exits
        done = None
        asked_to_stop, pipe_open = False, True
        while child.is_alive() or pipe_open:
            if self.stopping.is_set() and not asked_to_stop:
                self.log.info("asking the running night to stop between frames",
                              timeout_s=self.stop_timeout_s)
                child.terminate()  # SIGTERM: the child finishes its frames in hand
                asked_to_stop, deadline = True, time.monotonic() + self.stop_timeout_s
            if asked_to_stop and time.monotonic() > deadline:
                child.kill()       # every finished frame is already committed in the ledger
                break
            if not pipe_open:
                child.join(timeout=0.2)
                continue
            if receive.poll(0.2):
                try:
                    kind, payload = receive.recv()
                except EOFError:  # the child has exited (or closed its end)
                    pipe_open = False
                    continue
                if kind == "started":
                    self.notifier.post(obs, messages.started(obs, night, payload))
                elif kind == "done":
                    done = payload
        child.join()
        self.current = None
        # The ledger has the last word: a stop can arrive after the night finished.
        status = ledger.night(night_id)["status"]
        if status == "done":
            self.log.info("night done", path=str(night_dir))
            if done is not None:
                stamps = [c["stamp_png"] for c in done.get("top_candidates", [])]
                self.notifier.post(obs, messages.done(obs, night, done), files=stamps)
        elif child.exitcode == EXIT_INTERRUPTED or (asked_to_stop and status != "failed"):
            self.log.info("night interrupted; it resumes at the next start", path=str(night_dir))
        else:
            self._failed(ledger, night_id, night, night_dir, child.exitcode)

    def _failed(self, ledger: Ledger, night_id: int, night: str, night_dir: Path,
                exitcode: int) -> None:
        row = ledger.night(night_id)
        error = row["error"] if row["status"] == "failed" and row["error"] else (
            f"night process exited with code {exitcode}")
        if row["status"] != "failed":  # a crash the routine could not record itself
            ledger.set_night_status(night_id, "failed", error=error)
        attempts = row["attempts"]
        self.errors.append({"night": night, "error": error, "attempts": attempts,
                            "time": time.time()})
        if attempts < self.max_attempts:
            delay = min(self.retry_backoff_s * 2 ** (attempts - 1), MAX_BACKOFF_S)
            self.retry_at[night_dir] = time.monotonic() + delay
            self.log.error("night failed, will retry", path=str(night_dir), error=error,
                           attempts=attempts, retry_in_s=round(delay))
        else:
            self.log.error("night failed, giving up until new files arrive",
                           path=str(night_dir), error=error, attempts=attempts)
            self.notifier.post(self.profile.name, messages.failed(
                self.profile.name, night, error, self.data.log_file(self.profile.name, night),
                attempts))

    def status(self) -> dict:
        """The daemon's state, for the HTTP endpoint."""
        now = time.monotonic()
        log_tail: list = []
        if self.last_night:
            path = self.data.log_file(self.profile.name, self.last_night[0])
            if path.exists():
                lines = path.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
                log_tail = [json.loads(line) for line in lines if line.startswith("{")]
        return {"obs": self.profile.name, "root": str(self.root),
                "state": "stopping" if self.stopping.is_set() else
                         "processing" if self.current else "idle",
                "current": self.current,
                "settling": [str(p) for p in self.settler.tracked],
                "retries": [{"path": str(p), "in_s": round(max(at - now, 0))}
                            for p, at in sorted(self.retry_at.items())],
                "recent_errors": list(self.errors), "log_tail": log_tail}


def _ask_observatory() -> tuple[str, int] | None:
    good, _ = load_all()
    names = sorted(p.name for p in good.values())
    print("Observatories:\n  " + "\n  ".join(names))
    try:
        obs = input("Observatory to watch: ").strip()
        ncores = input(f"Cores [{os.cpu_count() or 1}]: ").strip() or str(os.cpu_count() or 1)
        return obs, int(ncores)
    except (EOFError, ValueError):
        return None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gpwatch", description=__doc__.split("\n\n")[0])
    p.add_argument("obs", nargs="?", help="observatory name (any case), e.g. loao")
    p.add_argument("ncores", nargs="?", type=int, help="cores for each night's routine")
    p.add_argument("--root", help="upload folder to watch (default: the profile's raw.root)")
    p.add_argument("--settle", type=float, help="seconds a night must stay unchanged")
    p.add_argument("--poll", type=float, help="seconds between checks of a settling night")
    p.add_argument("--polling", action="store_true",
                   help="poll the filesystem instead of inotify (automatic on network filesystems)")
    p.add_argument("--retries", type=int, default=3,
                   help="attempts at a failing night before giving up (default 3)")
    p.add_argument("--retry-backoff", type=float, default=300.0, metavar="S",
                   help="wait before the first retry, doubled each time (default 300 s)")
    p.add_argument("--stop-timeout", type=float, default=120.0, metavar="S",
                   help="on SIGTERM, wait this long for the running night to checkpoint")
    p.add_argument("--http", metavar="HOST:PORT",
                   help="serve the daemon's state as JSON, read-only (e.g. 127.0.0.1:8003)")
    p.add_argument("--data-dir", help="data directory (default: $GPPY_DATA_DIR or ~/.gppy)")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.obs is None:
        if not sys.stdin.isatty():
            parser.print_usage(sys.stderr)
            print("gpwatch: error: the observatory and the number of cores are required",
                  file=sys.stderr)
            return 2
        answer = _ask_observatory()
        if answer is None:
            return 2
        args.obs, args.ncores = answer
    logs.configure()
    profile = load_profile(args.obs)
    root = Path(os.path.expandvars(args.root or profile.raw.root)).expanduser()
    if not root.is_dir():
        print(f"gpwatch: {root}: the upload folder does not exist", file=sys.stderr)
        return 2
    fstype = filesystem_type(root)
    polling = args.polling or profile.raw.polling or fstype in NETWORK_FILESYSTEMS
    http = httpstatus.parse_address(args.http) if args.http else None
    watcher = Watcher(profile, root.resolve(), max(1, args.ncores or os.cpu_count() or 1),
                      DataDir.resolve(args.data_dir),
                      settle_s=args.settle if args.settle is not None else profile.raw.settle_s,
                      poll_s=args.poll if args.poll is not None else profile.raw.poll_s,
                      polling=polling, notifier=Notifier.from_settings(),
                      max_attempts=max(1, args.retries), retry_backoff_s=args.retry_backoff,
                      stop_timeout_s=args.stop_timeout, http=http)
    return watcher.run()
