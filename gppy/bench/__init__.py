"""Benchmarks of the pipeline's heavy steps against the reference implementations
they replace (`gppy bench ...`): speed, peak memory and agreement of results."""

BENCH_SEED = 20240314   # every benchmark simulates with this seed unless told otherwise


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
