"""Same seed, same bytes, whatever the number of processes; another seed, another night."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
from astropy.io import fits

from gppy.obsconfig.loader import load_profile
from gppy.astrometry import tycho
from gppy.sim.plan import RunConfig
from gppy.sim.simulate import simulate

pytestmark = pytest.mark.skipif(not (tycho.DEFAULT_INDEX_DIR / tycho.INDEX_NAME).is_file(),
                                reason="astrometry-data-tycho2-07-littleendian is not installed")


def _night(out, seed, processes):
    cfg = RunConfig(profile=load_profile("LOAO"), seed=seed, shape=(256, 256), bands=["V", "R"],
                    first_night=dt.date(2024, 3, 14), n_nights=2, n_fields=1, nscience=1,
                    exptime_s=60.0)
    simulate(cfg, out, processes=processes)
    return {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_bytes_with_any_process_count(tmp_path):
    one = _night(tmp_path / "a", seed=5, processes=1)
    two = _night(tmp_path / "b", seed=5, processes=2)
    assert one.keys() == two.keys()
    assert sum(p.suffix == ".fits" for p in one) > 30
    different = [str(p) for p in one if one[p] != two[p]]
    assert not different


def test_another_seed_gives_another_night(tmp_path):
    one = _night(tmp_path / "a", seed=5, processes=2)
    other = _night(tmp_path / "b", seed=6, processes=2)
    raw = lambda files: sorted(p for p in files if p.parts[0] != "truth" and p.suffix == ".fits")
    assert len(raw(one)) == len(raw(other)) > 30        # the same plan, other draws
    for a, b in zip(raw(one), raw(other)):
        data_a, data_b = fits.getdata(tmp_path / "a" / a), fits.getdata(tmp_path / "b" / b)
        assert not np.array_equal(data_a, data_b), a
