"""`gppy bench latency [--json] [--size 512] [--settle 10]`: how long after the last
byte of a night arrives does its "done" message go out?

A small night is simulated; gpwatch runs as a subprocess on a temporary upload
folder with a stand-in for Slack's Web API on 127.0.0.1; the night is copied in
and the clock starts at its last byte. The latency is split into the settle wait
(last byte -> the watcher starts the night; the configured settle time plus the
polling granularity), the routine (night started -> night done, from the night's
log) and the rest (process start-up and the Slack hand-off). The settle time is
the price of never reading a file still being uploaded, so the figure to watch
is the overhead beyond it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gppy.bench import add_benchmark

TOKEN = "xoxb-bench-latency"


def register(sub) -> None:
    p = add_benchmark(sub, "latency", help="last byte uploaded -> 'done' message, and its parts",
                      doc=__doc__, run=run,
                      json_fields="latency_s, settle_wait_s, routine_s, other_s, ...")
    p.add_argument("--obs", default="LOAO", help="observatory to simulate (default LOAO)")
    p.add_argument("--size", type=int, default=512, help="frames are SIZE x SIZE (default 512)")
    p.add_argument("--settle", type=float, default=10.0, help="gpwatch --settle (default 10 s)")
    p.add_argument("--poll", type=float, default=1.0, help="gpwatch --poll (default 1 s)")
    p.add_argument("--ncores", type=int, default=2, help="gpwatch cores (default 2)")


def _stamp(line: str) -> float:
    return dt.datetime.fromisoformat(line.split()[0].replace("Z", "+00:00")).timestamp()


def run(args) -> int:
    from gppy.daemon.slackstub import SlackStub
    from gppy.obsconfig.loader import load_profile
    from gppy.sim.command import default_bands
    from gppy.sim.plan import RunConfig
    from gppy.sim.simulate import simulate

    with tempfile.TemporaryDirectory(prefix="gppy-bench-latency-") as tmp, \
            SlackStub(token=TOKEN) as stub:
        tmp = Path(tmp)
        profile = load_profile(args.obs)
        cfg = RunConfig(profile=profile, seed=5, shape=(args.size, args.size),
                        bands=default_bands(profile.camera.filters),
                        first_night=dt.date(2024, 3, 14), n_nights=1, n_fields=1, nscience=3,
                        exptime_s=120.0)
        (source,) = simulate(cfg, tmp / "sim", processes=2)
        files = sorted(source.iterdir())
        root, log = tmp / "raw", tmp / "gpwatch.log"
        root.mkdir()
        (tmp / "config").mkdir()
        (tmp / "config" / "settings.toml").write_text('[slack]\ndefault_channel = "#bench"\n')
        env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
        env |= {"SLACK_BOT_TOKEN": TOKEN, "GPPY_SLACK_API_URL": stub.url,
                "GPPY_CONFIG_DIR": str(tmp / "config"), "GPPY_DATA_DIR": str(tmp / "data")}
        daemon = subprocess.Popen(
            [str(Path(sys.executable).with_name("gpwatch")), args.obs, str(args.ncores),
             "--root", str(root), "--settle", str(args.settle), "--poll", str(args.poll)],
            stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env)
        try:
            while "watching" not in log.read_text():
                time.sleep(0.1)
            print(f"uploading {len(files)} frames of {args.size} x {args.size} ...", flush=True)
            night = root / source.name
            night.mkdir()
            for f in files:
                shutil.copy2(f, night / f.name)
            last_byte = time.time()
            stub.wait_for(lambda s: any(m.text.startswith(":white_check_mark:") for m in s.messages),
                          timeout_s=600)
            done_message = time.time()
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=60)
        text = log.read_text()
    settled = _stamp(re.search(r"^.*night settled, processing.*$", text, re.M).group(0))
    started = _stamp(re.search(r"^.*\] night started .*$", text, re.M).group(0))
    finished = _stamp(re.search(r"^.*\] night done .*scanned=.*$", text, re.M).group(0))
    summary = {"frames": len(files), "size": args.size, "settle_s": args.settle,
               "poll_s": args.poll,
               "latency_s": round(done_message - last_byte, 2),
               "settle_wait_s": round(settled - last_byte, 2),
               "routine_s": round(finished - started, 2),
               "other_s": round((done_message - last_byte) - (settled - last_byte)
                                - (finished - started), 2)}
    summary["overhead_beyond_settle_s"] = round(summary["latency_s"] - args.settle, 2)
    print(f"  last byte -> 'done' message   {summary['latency_s']:7.2f} s")
    print(f"    settle wait                 {summary['settle_wait_s']:7.2f} s "
          f"(settle time {args.settle:g} s, polled every {args.poll:g} s)")
    print(f"    the night routine           {summary['routine_s']:7.2f} s")
    print(f"    start-up and Slack hand-off {summary['other_s']:7.2f} s")
    print(f"  overhead beyond the settle time {summary['overhead_beyond_settle_s']:.2f} s")
    if args.json:
        print(json.dumps(summary))
    return 0
