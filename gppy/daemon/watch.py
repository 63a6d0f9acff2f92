"""`gpwatch OBS NCORES`: watch an observatory's upload folder and run the night
routine on each night folder once it has stopped changing.

Filesystem events (watchdog: inotify, or polling on network filesystems) only
say which night is active; a poll loop takes snapshots and the `Settler`
decides when a night is complete. Nights run one at a time, oldest first, each
in a child process, so a crash in the routine never takes the watcher down.
State lives in the ledger: detected -> settling -> queued -> processing -> done | failed.
"""

from __future__ import annotations

import argparse
import os
import queue
import signal
import sys
import threading
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver

from gppy import logs
from gppy.daemon.ledger import Ledger
from gppy.daemon.settle import Settler, snapshot
from gppy.obsconfig.loader import load_all, load_profile
from gppy.obsconfig.nights import parse_night
from gppy.obsconfig.schema import Profile
from gppy.reduction.inventory import find_frames
from gppy.settings import DataDir

NETWORK_FILESYSTEMS = {"nfs", "nfs4", "cifs", "smb3", "smbfs", "fuse.sshfs", "sshfs", "9p",
                       "fuse.rclone", "afs", "lustre", "gpfs", "beegfs"}


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
    """Turns any event below the root into 'this night folder is active'."""

    def __init__(self, root: Path, pattern: str, active: "queue.SimpleQueue[Path]"):
        self.root, self.pattern, self.active = root, pattern, active

    def on_any_event(self, event: FileSystemEvent) -> None:
        for path in (event.src_path, getattr(event, "dest_path", "")):
            if not path:
                continue
            try:
                first = Path(os.fsdecode(path)).relative_to(self.root).parts[0]
            except (ValueError, IndexError):
                continue
            if parse_night(self.pattern, first) is not None:
                self.active.put(self.root / first)


def _run_night(obs: str, night_dir: str, data_root: str, ncores: int) -> None:
    """Body of the child process that processes one night."""
    from gppy.daemon.routine import process_night

    logs.configure()
    process_night(load_profile(obs), night_dir, DataDir(Path(data_root)), ncores=ncores)


class Watcher:
    def __init__(self, profile: Profile, root: Path, ncores: int, data: DataDir,
                 settle_s: float, poll_s: float, polling: bool, stop_timeout_s: float = 120.0):
        self.profile, self.root, self.ncores, self.data = profile, root, ncores, data
        self.poll_s, self.polling, self.stop_timeout_s = poll_s, polling, stop_timeout_s
        self.settler = Settler(settle_s)
        self.active: "queue.SimpleQueue[Path]" = queue.SimpleQueue()
        self.stopping = threading.Event()
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

    def _track(self, ledger: Ledger, night_dir: Path) -> None:
        if self.settler.track(night_dir):
            ledger.upsert_night(self.profile.name, self._night_label(night_dir), night_dir,
                                "settling")
            self.log.info("night detected", path=str(night_dir))

    def rescan(self, ledger: Ledger) -> None:
        """On start: resume every night that is not done, or has new or changed frames."""
        for night_dir in self.night_dirs():
            row = ledger.night_by_path(night_dir)
            if row is None or row["status"] != "done" or self._has_new_frames(ledger, night_dir):
                self._track(ledger, night_dir)

    def run(self) -> int:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self.stop)
            signal.signal(signal.SIGINT, self.stop)
        observer = PollingObserver(timeout=self.poll_s) if self.polling else Observer()
        observer.schedule(_NightEvents(self.root, self.profile.raw.night_folder, self.active),
                          str(self.root), recursive=True)
        observer.start()
        self.log.info("watching", root=str(self.root), ncores=self.ncores,
                      observer="polling" if self.polling else "inotify",
                      settle_s=self.settler.settle_s, poll_s=self.poll_s)
        try:
            with Ledger(self.data.ledger) as ledger:
                self.rescan(ledger)
                while not self.stopping.is_set():
                    self._step(ledger)
                    self.stopping.wait(self.poll_s)
        finally:
            observer.stop()
            observer.join()
        self.log.info("stopped")
        return 0

    def _step(self, ledger: Ledger) -> None:
        while not self.active.empty():
            self._track(ledger, self.active.get())
        for night_dir in self.settler.tracked:
            try:
                self.settler.observe(night_dir, snapshot(night_dir))
            except FileNotFoundError:
                self.settler.forget(night_dir)
        for night_dir in self.settler.settled():  # sorted: oldest night first
            if self.stopping.is_set():
                return
            self.settler.forget(night_dir)
            self._process(ledger, night_dir)

    def _process(self, ledger: Ledger, night_dir: Path) -> None:
        import multiprocess

        night_id = ledger.upsert_night(self.profile.name, self._night_label(night_dir),
                                       night_dir, "queued")
        self.log.info("night settled, processing", path=str(night_dir))
        child = multiprocess.get_context("spawn").Process(
            target=_run_night, name=f"gppy-night-{night_dir.name}",
            args=(self.profile.name, str(night_dir), str(self.data.root), self.ncores))
        child.start()
        while child.is_alive() and not self.stopping.is_set():
            child.join(timeout=0.5)
        if child.is_alive():  # stopping: let it finish, within a bound
            self.log.info("waiting for the running night", timeout_s=self.stop_timeout_s)
            child.join(timeout=self.stop_timeout_s)
            if child.is_alive():
                child.terminate()  # every finished frame is already committed in the ledger
                child.join()
        if child.exitcode != 0:
            row = ledger.night(night_id)
            if row["status"] != "failed":  # a crash the routine could not record itself
                ledger.set_night_status(night_id, "failed",
                                        error=f"night process exited with code {child.exitcode}")
            self.log.error("night failed", path=str(night_dir), exitcode=child.exitcode)
        else:
            self.log.info("night done", path=str(night_dir))


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
    watcher = Watcher(profile, root.resolve(), max(1, args.ncores or os.cpu_count() or 1),
                      DataDir.resolve(args.data_dir),
                      settle_s=args.settle if args.settle is not None else profile.raw.settle_s,
                      poll_s=args.poll if args.poll is not None else profile.raw.poll_s,
                      polling=polling)
    return watcher.run()
