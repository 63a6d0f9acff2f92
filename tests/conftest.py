"""Shared test fixtures: where the real shared data lives, and isolation of the
user's configuration and data directories."""

from __future__ import annotations

import gzip
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
REAL = SHARED / "data" / "real"
GPPY = Path(sys.executable).with_name("gppy")  # the installed console script

# the tests never ask the real SkyBoT: a closed local port, unreachable at once
os.environ.setdefault("GPPY_SKYBOT_SERVER", "http://127.0.0.1:9/skybot")


def real_data(name: str) -> Path:
    """A folder of ../shared/data/real, or skip: a user's fresh clone lacks it."""
    path = REAL / name
    if not path.is_dir():
        pytest.skip(f"real test data {path} is absent (it sits beside the repository in CI)")
    return path


@pytest.fixture(autouse=True)
def isolated_dirs(tmp_path_factory, monkeypatch):
    """Never read the developer's ~/.config/gppy or write into ~/.gppy."""
    base = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("GPPY_CONFIG_DIR", str(base / "config"))
    monkeypatch.setenv("GPPY_DATA_DIR", str(base / "data"))
    return base


@pytest.fixture
def gppy_bin() -> Path:
    if not GPPY.exists():
        pytest.skip(f"{GPPY} is not installed (run `make test`)")
    return GPPY


@dataclass
class SimulatedFrame:
    """A science frame of a simulated night: its truth record."""

    truth: object
    frame: dict

    @property
    def shape(self) -> tuple[int, int]:
        return self.truth.shape

    @property
    def true_wcs(self):
        return self.truth.wcs(self.frame["file"])

    @property
    def pointing(self) -> tuple[float, float]:
        """The commanded pointing of the raw header (the truth adds a pointing error)."""
        return self.frame["ra_cmd_deg"], self.frame["dec_cmd_deg"]


def noisy(truth, frame: dict, seed: int) -> np.ndarray:
    """The calibrated frame: noise-free plus Poisson (Gaussian) and read noise."""
    clean = truth.noise_free(frame["file"])
    rng = np.random.default_rng(seed)
    read_noise_adu = truth.camera["read_noise_e"] / truth.gain
    variance = np.maximum(clean, 0.0) / truth.gain + read_noise_adu ** 2
    return clean + rng.normal(0.0, 1.0, clean.shape) * np.sqrt(variance)


def simulate_nights(out: Path, obs: str, size: int | None, nights: int = 1, nscience: int = 2,
                    seed: int = 7, n_fields: int = 1, render: bool = True, n_bands: int = 2,
                    **run):
    """(out, [Truth per night]) of a simulated run written under `out` (without the
    raw frames when not `render`), in the first `n_bands` of the simulator's two
    default bands; `run`: further RunConfig fields (n_transients, field_psf, ...)."""
    import datetime as dt

    from gppy.obsconfig.loader import load_profile
    from gppy.sim.command import default_bands
    from gppy.sim.plan import RunConfig
    from gppy.sim.simulate import simulate
    from gppy.sim.truth import Truth, truth_dir

    profile = load_profile(obs)
    shape = (size, size) if size else tuple(reversed(profile.camera.detector_px))
    cfg = RunConfig(profile=profile, seed=seed, shape=shape,
                    bands=default_bands(profile.camera.filters)[:n_bands],
                    first_night=dt.date(2024, 3, 14), n_nights=nights, n_fields=n_fields,
                    nscience=nscience, exptime_s=120.0, **run)
    folders = simulate(cfg, out, processes=2, render=render)
    return out, [Truth.load(truth_dir(out, f.name)) for f in folders]


@pytest.fixture(scope="session")
def processed_loao_night(tmp_path_factory):
    """A simulated LOAO night (full 2048 px frames, 2 filters x 2 frames, seed 7)
    through the night routine with the simulator's catalogue as the reference:
    (outdir, Truth, profile, DataDir, AstrometrySettings, NightResult). Shared by the
    astrometry and photometry tests: do not change its files."""
    from gppy.daemon.routine import process_night
    from gppy.obsconfig.loader import load_profile
    from gppy.settings import AstrometrySettings, DataDir

    out, (truth,) = simulate_nights(tmp_path_factory.mktemp("loao-night"), "LOAO", None,
                                    nscience=2)
    profile, data = load_profile("LOAO"), DataDir(out / "data")
    settings = AstrometrySettings(refcat=str(out / "refcat.ecsv"))
    result = process_night(profile, out / truth.dir.name, data, ncores=2, settings=settings)
    return out, truth, profile, data, settings, result


def wait_for(predicate, timeout_s: float, what: str):
    """The first truthy value of predicate(), polled every 0.1 s, or AssertionError."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def _write(path: Path, header: dict, data=None) -> Path:
    hdu = fits.PrimaryHDU(np.zeros((32, 32), np.uint16) if data is None else data)
    for k, v in header.items():
        hdu.header[k] = v
    hdu.writeto(path)
    return path


GOOD = {"IMAGETYP": "Light Frame", "FILTER": "R", "EXPTIME": 60.0,
        "DATE-OBS": "2025-03-16T03:00:00", "OBJECT": "NGC0337"}


@pytest.fixture
def bad_night(tmp_path) -> Path:
    """A night folder holding good frames and every kind of bad one."""
    night = tmp_path / "2025_0315"
    night.mkdir()
    _write(night / "good1.fits", GOOD)
    _write(night / "good2.fits", GOOD | {"FILTER": "B102"})
    _write(night / "bias.fits", {"IMAGETYP": "zero", "DATE-OBS": "2025-03-16T01:00:00"})
    (night / "empty.fits").write_bytes(b"")
    (night / "notes.fits").write_text("observing log, not FITS\n" * 20)
    whole = (night / "good1.fits").read_bytes()
    (night / "truncated.fits").write_bytes(whole[:4000])
    (night / "truncated.fits.gz").write_bytes(gzip.compress(whole[:4000]))
    _write(night / "focus.fits", GOOD | {"IMAGETYP": "Focus"})
    _write(night / "nodate.fits", {k: v for k, v in GOOD.items() if k != "DATE-OBS"})
    _write(night / "noexptime.fits", {k: v for k, v in GOOD.items() if k != "EXPTIME"})
    _write(night / "badra.fits", GOOD | {"RA": "somewhere"})
    return night


