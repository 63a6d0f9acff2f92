"""Benchmarks of the pipeline's heavy steps against the reference implementations
they replace (`gppy bench ...`): speed, peak memory and agreement of results."""

BENCH_SEED = 20240314   # every benchmark simulates with this seed unless told otherwise


def add_benchmark(sub, name: str, *, help: str, doc: str, run, json_fields: str):
    """The parser of `gppy bench NAME`: its description the module docstring `doc`
    (as written), --json ("end with one JSON line: <json_fields>"), `run` the
    function called; the caller adds its own options to the parser returned."""
    import argparse

    p = sub.add_parser(name, help=help, description=doc,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help=f"end with one JSON line: {json_fields}")
    p.set_defaults(func=run)
    return p


def add_simulation_arguments(parser, *, frames: int, obs: str | None = None,
                             size: int = 4096, seed: bool = True) -> None:
    """The options of a benchmark run on simulated frames: --obs (when the benchmark
    takes any profile: `obs` is its default), --size, --frames and --seed."""
    if obs is not None:
        parser.add_argument("--obs", default=obs,
                            help=f"observatory profile to simulate (default {obs})")
    parser.add_argument("--size", type=int, default=size,
                        help=f"frames are SIZE x SIZE (default {size})")
    parser.add_argument("--frames", type=int, default=frames,
                        help=f"science frames (default {frames})")
    if seed:
        parser.add_argument("--seed", type=int, default=BENCH_SEED,
                            help=f"simulation seed (default {BENCH_SEED})")


def in_fresh_process(fn, *args):
    """fn(*args) in a new (spawned) process, so that its peak RSS is its own."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as ex:
        return ex.submit(fn, *args).result()
