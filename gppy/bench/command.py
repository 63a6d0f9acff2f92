"""`gppy bench BENCHMARK ...`: run one benchmark (see gppy.bench)."""

from __future__ import annotations

import importlib

# Modules providing `register(subparsers)` for one benchmark each, in --help order.
BENCHMARK_MODULES = (
    "gppy.bench.combine",    # gppy bench combine
    "gppy.bench.cosmics",    # gppy bench cosmics
    "gppy.bench.reduce",     # gppy bench reduce
    "gppy.bench.latency",    # gppy bench latency
    "gppy.bench.astrometry",  # gppy bench astrometry
    "gppy.bench.phot",       # gppy bench phot
    "gppy.bench.subtract",   # gppy bench subtract
    "gppy.bench.resample",   # gppy bench resample
)


def register(sub) -> None:
    p = sub.add_parser("bench", help="benchmark a heavy step against its reference implementation",
                       description=__doc__)
    bench_sub = p.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    for name in BENCHMARK_MODULES:
        importlib.import_module(name).register(bench_sub)
