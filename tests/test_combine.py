"""The image combine gives ccdproc.combine's results (median, mean, sigma clipping,
scaling, masks, NaNs; from arrays and from plain or gzipped FITS files), the
same for any block size, in bounded memory, and names the file at fault."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import textwrap

import bottleneck as bn
import ccdproc
import numpy as np
import pytest
from astropy.io import fits
from astropy.nddata import CCDData
from astropy.stats import sigma_clip
from numpy import ma

from gppy.fitsio import BadFrame
from gppy.reduction.combine import BLOCK_VALUES, CombineError, _block_rows, _nanmedian, combine

from conftest import real_data

pytestmark = [  # warnings of ccdproc's reading and clipping
    pytest.mark.filterwarnings("ignore:Input data contains invalid values"),
    pytest.mark.filterwarnings("ignore::astropy.wcs.FITSFixedWarning"),
]

N, SHAPE = 15, (24, 32)  # 15 frames: one outlier can be 3.6 sigma from the mean of its pixel
CCDPROC_METHOD = {"median": "median", "mean": "average"}


def make_frames(seed=0, levels=None, n=N):
    """n bias-like frames (or flats at `levels`) with cosmic-ray hits, as float64."""
    rng = np.random.default_rng(seed)
    levels = [1000.0] * n if levels is None else levels
    frames = []
    for level in levels:
        f = rng.normal(level, 0.005 * level, SHAPE)
        hits = rng.random(SHAPE) < 0.02
        f[hits] += rng.uniform(0.2, 1.0, hits.sum()) * level
        frames.append(f)
    return frames


def with_nans(frames):
    frames = [f.copy() for f in frames]
    frames[1][2, 3] = frames[4][5, 6] = frames[4][7, 8] = np.nan
    for f in frames:
        f[0, 0] = np.nan  # NaN in every frame
    return frames


def random_masks(seed=1):
    rng = np.random.default_rng(seed)
    masks = [rng.random(SHAPE) < 0.05 for _ in range(N)]
    for m in masks:
        m[1, 1] = True  # masked in every frame
    return masks


def reference(frames, method, clip_sigma=None, scale=None, masks=None):
    """ccdproc.combine of the same inputs (arrays become CCDData with their mask)."""
    if isinstance(frames[0], np.ndarray):
        frames = [CCDData(f, unit="adu", mask=None if masks is None else masks[i])
                  for i, f in enumerate(frames)]
    clip = {} if clip_sigma is None else {"sigma_clip": True, "sigma_clip_low_thresh": clip_sigma[0],
                                          "sigma_clip_high_thresh": clip_sigma[1]}
    return ccdproc.combine(frames, method=CCDPROC_METHOD[method], scale=scale, **clip)


def counts(frames, clip_sigma=None, masks=None):
    """What ccdproc's Combiner uses per pixel, and how many values its clipping removes."""
    c = ccdproc.Combiner([CCDData(f, unit="adu", mask=None if masks is None else masks[i])
                          for i, f in enumerate(frames)])
    before = c.data_arr.mask | np.isnan(c.data_arr.data)
    if clip_sigma is not None:
        c.sigma_clipping(low_thresh=clip_sigma[0], high_thresh=clip_sigma[1],
                         func=ma.mean, dev_func=ma.std)
    unused = c.data_arr.mask | np.isnan(c.data_arr.data)
    return len(frames) - unused.sum(axis=0), int((unused & ~before).sum())


def assert_matches(ours, ref):
    assert ours.image.dtype == np.float32 and ours.nused.dtype == np.uint16
    nan = np.isnan(ref.data)
    assert np.array_equal(np.isnan(ours.image), nan)
    assert np.array_equal(ours.nused == 0, ref.mask)
    rel = np.abs(ours.image[~nan] - ref.data[~nan]) / np.abs(ref.data[~nan])
    assert rel.max() <= 1e-5


@pytest.mark.parametrize("n", [N, N - 1])  # odd and even: one or two middle values
@pytest.mark.parametrize("method", ["median", "mean"])
@pytest.mark.parametrize("clip_sigma", [None, (3, 3), (2.5, 3.5)])
def test_matches_ccdproc_with_nans(method, clip_sigma, n):
    frames = with_nans(make_frames(n=n))
    ours = combine(frames, method, clip_sigma=clip_sigma)
    assert_matches(ours, reference(frames, method, clip_sigma))
    nused, nrejected = counts(frames, clip_sigma)
    assert np.array_equal(ours.nused, nused)
    assert ours.nrejected == nrejected
    assert ours.nused[0, 0] == 0 and np.isnan(ours.image[0, 0])
    if clip_sigma is None:
        assert ours.nused[2, 3] == n - 1
    else:
        assert nrejected > 100
        # ccdproc's quirk, reproduced: with clipping, one NaN rejects its whole pixel
        assert ours.nused[2, 3] == 0 and np.isnan(ours.image[2, 3])


def test_median_network_is_nanmedian():
    """Every stack size to 40, with ties, NaNs and all-NaN pixels."""
    rng = np.random.default_rng(4)
    for n in range(1, 41):
        x = rng.integers(0, 6, (n, 4, 30)).astype(np.float32)
        x[rng.random(x.shape) < 0.01] = np.nan
        x[:, 0, 0] = np.nan
        nnan = np.isnan(x).sum(axis=0)
        assert np.array_equal(_nanmedian(x.copy(), nnan), bn.nanmedian(x.astype(np.float64), axis=0),
                              equal_nan=True), n


@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("method", ["median", "mean"])
def test_matches_ccdproc_with_few_frames(method, n):
    frames = make_frames(n=n)
    assert_matches(combine(frames, method), reference(frames, method))


@pytest.mark.parametrize("method", ["median", "mean"])
@pytest.mark.parametrize("clip_sigma", [None, (3, 3)])
def test_matches_ccdproc_with_masks_and_nans(method, clip_sigma):
    frames, masks = with_nans(make_frames()), random_masks()
    ours = combine(frames, method, clip_sigma=clip_sigma, masks=masks)
    assert_matches(ours, reference(frames, method, clip_sigma, masks=masks))
    nused, nrejected = counts(frames, clip_sigma, masks)
    assert np.array_equal(ours.nused, nused) and ours.nrejected == nrejected
    assert ours.nused[1, 1] == 0 and np.isnan(ours.image[1, 1])


@pytest.mark.parametrize("method", ["median", "mean"])
@pytest.mark.parametrize("clip_sigma", [None, (3, 3)])
def test_matches_ccdproc_with_scaling(method, clip_sigma):
    frames = make_frames(levels=np.linspace(5000, 20000, N))  # flats
    factors = [1 / np.median(f) for f in frames]
    ours = combine(frames, method, clip_sigma=clip_sigma, scale=factors)
    assert_matches(ours, reference(frames, method, clip_sigma, scale=factors))
    assert abs(np.median(ours.image) - 1) < 0.01

    def inverse_median(a):
        return 1 / np.median(a)

    by_function = combine(frames, method, clip_sigma=clip_sigma, scale=inverse_median)
    assert_matches(by_function, reference(frames, method, clip_sigma, scale=inverse_median))


def test_more_clipping_passes_are_astropy_sigma_clip():
    """ccdproc clips once (it cannot pass maxiters); more passes are astropy's."""
    frames = make_frames()
    for iters in (2, 5):
        ours = combine(frames, "median", clip_sigma=(2.5, 3), clip_iters=iters)
        clipped = sigma_clip(np.stack(frames), sigma_lower=2.5, sigma_upper=3, maxiters=iters,
                             cenfunc="mean", stdfunc="std", axis=0)
        assert np.array_equal(ours.nused, N - clipped.mask.sum(axis=0))
        assert ours.nrejected == clipped.mask.sum()
        np.testing.assert_allclose(ours.image, ma.median(clipped, axis=0), rtol=1e-6)
    assert combine(frames, "median", clip_sigma=(2.5, 3), clip_iters=5).nrejected > \
        combine(frames, "median", clip_sigma=(2.5, 3)).nrejected


def write_fits(folder, frames, dtype=np.float32, gz=()):
    """Frames as FITS files (BUNIT for ccdproc), those at indices `gz` gzipped."""
    paths = []
    for i, f in enumerate(frames):
        path = folder / f"frame{i:02d}.fits"
        fits.PrimaryHDU(f.astype(dtype), fits.Header({"BUNIT": "adu"})).writeto(path)
        if i in gz:
            path = path.with_name(path.name + ".gz")
            path.write_bytes(gzip.compress(path.with_suffix("").read_bytes()))
            path.with_suffix("").unlink()
        paths.append(path)
    return paths


@pytest.mark.parametrize("clip_sigma", [None, (3, 3)])
def test_files_plain_and_gzipped_match_arrays_and_ccdproc(tmp_path, clip_sigma):
    frames = with_nans(make_frames())
    paths = write_fits(tmp_path, frames, gz=range(0, N, 2))
    ours = combine(paths, "median", clip_sigma=clip_sigma)
    from_arrays = combine([f.astype(np.float32) for f in frames], "median", clip_sigma=clip_sigma)
    assert np.array_equal(ours.image, from_arrays.image, equal_nan=True)
    assert np.array_equal(ours.nused, from_arrays.nused)
    assert_matches(ours, reference([str(p) for p in paths], "median", clip_sigma))


def test_integer_files_are_scaled_by_bzero(tmp_path):
    """Raw camera frames: uint16, stored as int16 with BZERO = 32768."""
    frames = [np.round(f) for f in make_frames(levels=[30000.0] * N)]
    frames[0][0, 0] = 65535
    paths = write_fits(tmp_path, frames, dtype=np.uint16, gz=[1])
    assert fits.getheader(paths[0])["BZERO"] == 32768
    ours = combine(paths, "mean")
    assert_matches(ours, reference([str(p) for p in paths], "mean"))


def test_real_bias_and_flat_frames_match_ccdproc():
    """The SBU STL-1001E set: gzipped uint16 frames with BZERO."""
    folder = real_data("sbu_stl1001e_calib")
    biases = sorted(str(p) for p in folder.glob("bias-*.FIT.gz"))
    flats = sorted(str(p) for p in folder.glob("flat-*.FIT.gz"))
    assert len(biases) == len(flats) == 10
    assert_matches(combine(biases, "median"), ccdproc.combine(biases, method="median", unit="adu"))

    def inverse_median(a):
        return 1 / np.median(a)

    flat = combine(flats, "median", clip_sigma=(2.5, 2.5), scale=inverse_median)
    assert flat.nrejected > 10000
    assert_matches(flat, ccdproc.combine(flats, method="median", scale=inverse_median, unit="adu",
                                         sigma_clip=True, sigma_clip_low_thresh=2.5,
                                         sigma_clip_high_thresh=2.5))


@pytest.mark.parametrize("method, clip_sigma", [("median", None), ("mean", None),
                                                ("median", (3, 3)), ("mean", (2, 2))])
def test_many_row_blocks_give_identical_results(method, clip_sigma):
    frames, masks = with_nans(make_frames(levels=np.linspace(900, 1100, N))), random_masks()
    masks[3] = None  # a frame without a mask
    kw = dict(clip_sigma=clip_sigma, scale=np.linspace(0.9, 1.1, N), masks=masks)
    one_block = combine(frames, method, **kw, ncores=1)
    assert _block_rows(SHAPE, N, 30, 1e-9, 2) == 1
    row_by_row = combine(frames, method, **kw, mem_limit_gb=1e-9)
    assert np.array_equal(one_block.image, row_by_row.image, equal_nan=True)
    assert np.array_equal(one_block.nused, row_by_row.nused)
    assert one_block.nrejected == row_by_row.nrejected


def test_block_size_follows_the_memory_limit():
    """Blocks fill what the limit leaves after the outputs (one block per thread),
    up to the cache-sized BLOCK_VALUES."""
    limits = (0.11, 0.12, 2.0)
    rows = [_block_rows((4096, 4096), 50, 2 * 4 + 1, gb, 2) for gb in limits]
    assert rows[0] < rows[1] < rows[2] == BLOCK_VALUES // (50 * 4096)
    outputs = 4096 * 4096 * 6
    for r, gb in zip(rows[:2], limits):
        assert outputs + 2 * r * 4096 * 50 * (2 * 4 + 1) <= gb * 1e9


def test_peak_memory_stays_bounded(tmp_path):
    """10 frames of 2048^2 from files at mem_limit_gb=0.1, in a fresh process."""
    rng = np.random.default_rng(2)
    paths = []
    for i in range(10):
        paths.append(tmp_path / f"f{i}.fits")
        fits.PrimaryHDU(rng.normal(1000, 5, (2048, 2048)).astype(np.float32)).writeto(paths[-1])
    script = textwrap.dedent(f"""
        import json, sys
        import numpy as np
        from gppy.reduction.combine import combine

        def hwm():
            for line in open("/proc/self/status"):
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024

        before = hwm()
        result = combine({[str(p) for p in paths]!r}, "median", clip_sigma=(3, 3), mem_limit_gb=0.1)
        print(json.dumps({{"growth": hwm() - before, "nused_min": int(result.nused.min()),
                          "level": float(np.median(result.image))}}))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    report = json.loads(out.stdout)
    # The limit plus 50 MB for open files and temporaries; the whole stack in
    # float64, as clipping works, would be 0.34 GB.
    assert report["growth"] < 0.15e9, report
    assert report["nused_min"] >= 7 and abs(report["level"] - 1000) < 0.1


def test_errors_name_the_file_and_the_problem(tmp_path):
    good = write_fits(tmp_path, make_frames(n=2))
    other = tmp_path / "other_shape.fits"
    fits.PrimaryHDU(np.zeros((10, 10), np.float32)).writeto(other)
    with pytest.raises(BadFrame, match=r"other_shape\.fits: shape \(10, 10\) differs from \(24, 32\)"):
        combine(good + [other])

    notfits = tmp_path / "notes.fits"
    notfits.write_text("observing log, not FITS\n" * 200)
    with pytest.raises(BadFrame, match=r"notes\.fits: not a readable FITS file"):
        combine(good + [notfits])
    with pytest.raises(BadFrame, match=r"missing\.fits: cannot be read"):
        combine(good + [tmp_path / "missing.fits"])
    truncated = tmp_path / "truncated.fits.gz"
    truncated.write_bytes(gzip.compress(good[0].read_bytes()[:4000]))
    with pytest.raises(BadFrame, match=r"truncated\.fits\.gz: truncated"):
        combine(good + [truncated])
    broken = tmp_path / "broken.fits.gz"
    whole = gzip.compress(good[0].read_bytes())
    broken.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(BadFrame, match=r"broken\.fits\.gz: cannot be decompressed"):
        combine(good + [broken])


def test_errors_in_the_arguments():
    frames = make_frames(n=3)
    with pytest.raises(CombineError, match="no frames"):
        combine([])
    with pytest.raises(CombineError, match=r"frame 2: shape \(5, 5\) differs from \(24, 32\) of frame 0"):
        combine(frames[:2] + [np.zeros((5, 5))])
    with pytest.raises(CombineError, match="frame 1: a 2-D image is needed"):
        combine([frames[0], np.zeros(5)])
    with pytest.raises(CombineError, match="2 masks for 3 frames"):
        combine(frames, masks=[None, None])
    with pytest.raises(CombineError, match=r"mask of frame 1: shape \(2, 2\)"):
        combine(frames, masks=[None, np.zeros((2, 2), bool), None])
    with pytest.raises(CombineError, match="one factor per frame"):
        combine(frames, scale=[1.0, 2.0])
    with pytest.raises(CombineError, match="unknown combine method 'average'"):
        combine(frames, "average")
    with pytest.raises(CombineError, match="clip_sigma"):
        combine(frames, clip_sigma=(3, -1))
