"""Independent random streams named by keys, so every draw depends only on the
run's seed and on what is being drawn, never on process count or order."""

from __future__ import annotations

import zlib

import numpy as np


def stream(seed: int, *key: int | str) -> np.random.Generator:
    """The generator for (seed, key...); string keys are hashed with CRC-32."""
    spawn_key = tuple(k if isinstance(k, int) else zlib.crc32(k.encode()) for k in key)
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=spawn_key))
