"""The truth of a simulated night, kept beside (never inside) the raw night folder.

    OUTDIR/truth/<night folder>/
      frames.json      run and camera facts, definitions, one record per frame
                       (fields of `gppy.sim.plan.Frame`: file, type, filter,
                       exptime_s, dateobs, airmass, fwhm_arcsec, psf, zp_mag,
                       zp_e_mag, sky_adu_per_s, wcs cards, ...)
      stars.ecsv       id, field, ra, dec (deg), is_tycho, tycho_row, temperature_k,
                       vmag_ab, mag_<band> for every filter of the profile
      galaxies.ecsv    Sérsic components: id, field, ra, dec, sersic_n, r_eff_arcsec,
                       axis_ratio, pa_deg (east of north), component, host,
                       rendered_fraction, vmag_ab, mag_<band>
      transients.ecsv  id, field, ra, dec, kind (galaxy|star|field), near (id of the
                       host or neighbour, '-' if none), first_night (index),
                       first_night_folder, vmag_peak_ab, decline_mag_per_day,
                       temperature_k, mag_<band> on this night (NaN before it appears)
      calib.fits       BIAS (ADU), DARK (ADU/s), one FLAT HDU per observed band
                       (card BAND; median 1), all float32
      crmask.fits      per frame a RICE-compressed uint8 image (1 = cosmic ray),
                       EXTNAME 'CRMASK', card FILE = the raw file name

Zero point. `zp_mag` is the natural-system AB magnitude (see `gppy.sim.bands`) of
a source that gives 1 ADU per second, summed over all its pixels, in the
calibrated frame: raw - bias (the BIAS image plus the frame's bias_offset_adu) -
DARK * exptime_s, divided by the FLAT normalised to median 1. `zp_e_mag` is the
same for 1 e-/s; zp_mag = zp_e_mag - 2.5 log10(gain). Both include the frame's
atmospheric extinction and clouds. A star of magnitude m thus has a total of
10**(-0.4 (m - zp_mag)) * exptime_s ADU in the calibrated frame (less what lies
beyond its rendered stamp: at most 2e-5 of it, or 0.01 e-/s for faint stars), and
`Truth.noise_free(file)` is that calibrated frame without noise.

PSF. `fwhm_arcsec` and `psf` describe the PSF before pixelisation (an elliptical
Moffat, see `gppy.sim.psf`); pixel values integrate it over each pixel. A Moffat
fitted to pixel values must integrate over pixels to return the same FWHM, and
aperture corrections are best measured on a pixel-integrated model exactly as on
the data: for FWHM ~ 2 px the continuous fraction 1 - (1 + r²/α²)^(1-β) is
0.05-0.1% above what an exact-overlap aperture sum (sep) finds within 3 FWHM.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS

from gppy.fitsio import atomic_open, write_atomic
from gppy.sim import render
from gppy.sim.instrument import Detector
from gppy.sim.pointing import wcs_from_cards

TRUTH_FORMAT = "gppy-sim-truth/1"
ZP_DEFINITION = ("zp_mag: AB magnitude (natural system) of a source giving 1 ADU/s in total in the "
                 "calibrated frame (raw - BIAS - bias_offset_adu - DARK*exptime_s) / FLAT, "
                 "FLAT normalised to median 1; includes extinction and clouds. "
                 "zp_e_mag: the same for 1 e-/s.")


def truth_dir(outdir: str | Path, night_folder: str) -> Path:
    return Path(outdir) / "truth" / night_folder


def _write_table(path: Path, table: Table) -> None:
    with atomic_open(path, "w") as fh:
        table.write(fh, format="ascii.ecsv")


def write_truth(folder: Path, meta: dict, frames: list[dict], stars: Table,
                galaxies: Table, transients: Table, detector: Detector) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    doc = {"format": TRUTH_FORMAT, **meta, "zp_definition": ZP_DEFINITION, "frames": frames}
    with atomic_open(folder / "frames.json", "w") as fh:
        json.dump(doc, fh, indent=1, allow_nan=False)
    _write_table(folder / "stars.ecsv", stars)
    _write_table(folder / "galaxies.ecsv", galaxies)
    _write_table(folder / "transients.ecsv", transients)
    hdus = [fits.PrimaryHDU(),
            fits.ImageHDU(detector.bias_adu, name="BIAS"),
            fits.ImageHDU(detector.dark_adu_per_s, name="DARK")]
    hdus[1].header["BUNIT"] = "adu"
    hdus[2].header["BUNIT"] = "adu/s"
    for name, flat in detector.flats.items():
        hdu = fits.ImageHDU(flat, name="FLAT")
        hdu.header["BAND"] = (name, "canonical filter name")
        hdus.append(hdu)
    hdus[0].header["BIASLEV"] = (detector.bias_level_adu, "[adu] level inside BIAS")
    write_atomic(folder / "calib.fits", fits.HDUList(hdus))


def write_cosmic_masks(folder: Path, masks: list[tuple[str, np.ndarray]]) -> None:
    hdus = [fits.PrimaryHDU()]
    for file, mask in masks:
        hdu = fits.CompImageHDU(mask.astype(np.uint8), name="CRMASK", compression_type="RICE_1")
        hdu.header["FILE"] = file
        hdus.append(hdu)
    write_atomic(folder / "crmask.fits", fits.HDUList(hdus))


@dataclass
class Truth:
    """A night's truth, loaded; `noise_free` re-renders any frame."""

    dir: Path
    meta: dict
    frames: list[dict]
    stars: Table
    galaxies: Table
    transients: Table
    detector: Detector

    @classmethod
    def load(cls, folder: str | Path) -> "Truth":
        folder = Path(folder)
        doc = json.loads((folder / "frames.json").read_text())
        if doc.get("format") != TRUTH_FORMAT:
            raise ValueError(f"{folder}/frames.json: not a {TRUTH_FORMAT} file")
        frames = doc.pop("frames")
        with fits.open(folder / "calib.fits", memmap=False) as hdul:
            detector = Detector(
                bias_adu=np.asarray(hdul["BIAS"].data, dtype=np.float32),
                dark_adu_per_s=np.asarray(hdul["DARK"].data, dtype=np.float32),
                flats={h.header["BAND"]: np.asarray(h.data, dtype=np.float32)
                       for h in hdul if h.name == "FLAT"},
                bias_level_adu=float(hdul[0].header["BIASLEV"]))
        tables = [Table.read(folder / f"{name}.ecsv", format="ascii.ecsv")
                  for name in ("stars", "galaxies", "transients")]
        return cls(folder, doc, frames, *tables, detector)

    @property
    def camera(self) -> dict:
        return self.meta["camera"]

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.camera["shape"])

    @property
    def gain(self) -> float:
        return self.camera["gain_e_per_adu"]

    def frame(self, file: str) -> dict:
        name = Path(file).name
        for f in self.frames:
            if f["file"] == name:
                return f
        raise KeyError(f"{name} is not a frame of {self.dir}")

    def flat(self, band: str) -> np.ndarray:
        return self.detector.flats[band]

    def wcs(self, file: str) -> WCS:
        cards = self.frame(file)["wcs"]
        if cards is None:
            raise ValueError(f"{file} has no WCS (not a science frame)")
        return wcs_from_cards(cards)

    def wcs_error_px(self, file: str, wcs: WCS, grid: int = 21) -> np.ndarray:
        """How far (px) `wcs` puts the sky from where the true WCS of `file` has it
        (see `wcs_error_px`)."""
        return wcs_error_px(wcs, self.wcs(file), self.shape, grid)

    def noise_free(self, file: str, calibrated: bool = True) -> np.ndarray:
        """The frame without noise, cosmic rays or saturation: calibrated (ADU per
        exposure, see the module docstring) or raw (ADU, float)."""
        frame = self.frame(file)
        if calibrated:
            return render.expected_calibrated_adu(self, frame)
        return render.expected_raw_adu(self, frame)

    def cosmic_mask(self, file: str) -> np.ndarray:
        name = Path(file).name
        with fits.open(self.dir / "crmask.fits") as hdul:
            for hdu in hdul[1:]:
                if hdu.header.get("FILE") == name:
                    return hdu.data.astype(bool)
        raise KeyError(f"{name} has no cosmic-ray mask in {self.dir}")


def wcs_error_px(wcs: WCS, true_wcs: WCS, shape: tuple[int, int], grid: int = 21,
                 transform=None) -> np.ndarray:
    """|true pixel - pixel| on a `grid` x `grid` lattice spanning a frame of `shape`
    (edges and corners included), after pixel -> sky with `wcs` -> pixel with
    `true_wcs`; `transform` maps the lattice to the true frame's pixels (for rotated
    or mirrored images)."""
    ny, nx = shape
    gx, gy = (a.ravel() for a in np.meshgrid(np.linspace(0, nx - 1, grid),
                                            np.linspace(0, ny - 1, grid)))
    ra, dec = wcs.all_pix2world(gx, gy, 0)
    x, y = true_wcs.all_world2pix(ra, dec, 0, tolerance=1e-10, maxiter=100)
    ex, ey = (gx, gy) if transform is None else transform(gx, gy)
    return np.hypot(x - ex, y - ey)


def load_truth(outdir: str | Path, night_folder: str) -> Truth:
    return Truth.load(truth_dir(outdir, night_folder))
