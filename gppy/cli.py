"""Entry points: `gppy <command> ...` and `gpwatch OBS NCORES`.

Each command lives in its own module exposing `register(subparsers)`, which adds
a sub-parser whose `func(args) -> int` runs it; this file only wires them up.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from gppy.errors import InputError

# Modules providing `register(subparsers)`, in the order shown by --help.
COMMAND_MODULES = (
    "gppy.obsconfig.command",     # gppy obs list | show
    "gppy.reduction.command",     # gppy inspect
    "gppy.sim.command",           # gppy simulate
    "gppy.daemon.command",        # gppy process
    "gppy.daemon.status",         # gppy status
    "gppy.astrometry.command",    # gppy astrometry
    "gppy.phot.command",          # gppy phot
    "gppy.transient.command_stack",  # gppy stack
    "gppy.transient.command_subtract",  # gppy subtract
    "gppy.bench.command",         # gppy bench combine
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gppy", description="gpPy: automatic data pipeline for the IMSNG/GECKO telescopes")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except InputError as exc:
        print(f"gppy {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `gppy inspect ... | head`
        return 0


def gpwatch_main(argv: list[str] | None = None) -> int:
    from gppy.daemon.watch import main as watch_main

    try:
        return watch_main(argv)
    except InputError as exc:
        print(f"gpwatch: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
