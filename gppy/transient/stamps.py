"""Cut-outs of transient candidates for vetting.

Per candidate (a row of `find_candidates`' table: id, x, y, ra, dec, ...):
  <stem>.fits  three image HDUs NEW (primary), REF and DIFF: square cut-outs of
               `size_arcsec` (2' by default) centred on the candidate's pixel, each
               with the cut-out's WCS (astropy Cutout2D); pixels beyond the image
               are NaN. Header cards CANDID, CAND_X, CAND_Y (0-based in the cut-out),
               RA, DEC and, when the table has them, MAG, MAGERR, SNR, SCORE, CLASS,
               REASONS
  <stem>.png   the triplet NEW | REF | DIFF side by side, each scaled with zscale
               (astropy ZScaleInterval) on its own finite pixels, NaN black, the
               candidate circled (radius 2 FWHM when the table's meta has FWHM_PX,
               else 3"), panels enlarged by an integer factor to at least 200 px

<stem> = cand<id:05d>_<ra:.5f><dec:+.5f>, e.g. cand00012_150.01234+02.00567.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.nddata import Cutout2D
from astropy.table import Table
from astropy.visualization import ZScaleInterval
from astropy.wcs import WCS
from astropy.wcs.utils import proj_plane_pixel_scales
from PIL import Image, ImageDraw

PANEL_MIN_PX = 200
GAP_PX = 4
CIRCLE_RGB = (255, 40, 40)
LABEL_RGB = (255, 220, 0)
PANELS = ("NEW", "REF", "DIFF")


def stamp_stem(cand_id: int, ra: float, dec: float) -> str:
    return f"cand{int(cand_id):05d}_{ra:09.5f}{dec:+09.5f}"


def _scaled(data: np.ndarray) -> np.ndarray:
    """uint8 zscale rendering, NaN black; rows flipped so that north-up images
    with y up look right (FITS convention: row 0 at the bottom)."""
    out = np.zeros(data.shape, np.uint8)
    finite = np.isfinite(data)
    if finite.sum() >= 2:
        vmin, vmax = ZScaleInterval().get_limits(data[finite])
        if not vmax > vmin:
            vmin, vmax = float(data[finite].min()), float(data[finite].max()) + 1e-12
        scaled = np.clip((data - vmin) / (vmax - vmin), 0.0, 1.0)
        out[finite] = np.round(255 * scaled[finite]).astype(np.uint8)
    return out[::-1]


def _png(path: Path, panels: list[np.ndarray], cx: float, cy: float, radius_px: float) -> None:
    ny, nx = panels[0].shape
    zoom = max(1, math.ceil(PANEL_MIN_PX / max(ny, nx)))
    pw, ph = nx * zoom, ny * zoom
    canvas = Image.new("RGB", (3 * pw + 2 * GAP_PX, ph), (60, 60, 60))
    draw = ImageDraw.Draw(canvas)
    for k, (name, data) in enumerate(zip(PANELS, panels)):
        img = Image.fromarray(_scaled(data)).resize((pw, ph), Image.NEAREST)
        ox = k * (pw + GAP_PX)
        canvas.paste(img.convert("RGB"), (ox, 0))
        # pixel (cx, cy) of the cut-out: centre of the displayed pixel, y flipped
        px = ox + (cx + 0.5) * zoom
        py = (ny - 1 - cy + 0.5) * zoom
        r = radius_px * zoom
        draw.ellipse([px - r, py - r, px + r, py + r], outline=CIRCLE_RGB, width=max(1, zoom // 2))
        draw.text((ox + 3, 2), name, fill=LABEL_RGB)
    canvas.save(path, format="PNG")


def write_stamps(candidates: Table, sci, ref, diff, wcs: WCS, out_dir, size_arcsec: float = 120.0,
                 pixscale_arcsec: float | None = None) -> list[tuple[Path, Path]]:
    """Write a FITS triplet and a PNG per candidate under out_dir; returns the
    (fits, png) paths in the table's order. pixscale_arcsec: default from the WCS."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if pixscale_arcsec is None:
        pixscale_arcsec = float(np.mean(proj_plane_pixel_scales(wcs.celestial))) * 3600.0
    size_px = int(round(size_arcsec / pixscale_arcsec))
    size_px += (size_px + 1) % 2          # odd: the candidate's pixel at the centre
    fwhm = candidates.meta.get("FWHM_PX")
    radius_px = 2.0 * float(fwhm) if fwhm else 3.0 / pixscale_arcsec
    images = [np.asarray(a, dtype=np.float32) for a in (sci, ref, diff)]
    extra = [("mag", "MAG"), ("magerr", "MAGERR"), ("snr", "SNR"), ("score", "SCORE"),
             ("cls", "CLASS"), ("reasons", "REASONS")]
    paths = []
    for row in candidates:
        x, y = float(row["x"]), float(row["y"])
        cuts = [Cutout2D(a, (x, y), (size_px, size_px), wcs=wcs, mode="partial",
                         fill_value=np.nan, copy=True) for a in images]
        cx, cy = cuts[0].input_position_cutout
        hdus = []
        for k, (name, cut) in enumerate(zip(PANELS, cuts)):
            header = cut.wcs.to_header()
            header["EXTNAME"] = name
            header["CANDID"] = int(row["id"])
            header["CAND_X"] = (float(cx), "candidate x in this cut-out, 0-based")
            header["CAND_Y"] = (float(cy), "candidate y in this cut-out, 0-based")
            header["RA"] = (float(row["ra"]), "candidate, deg")
            header["DEC"] = (float(row["dec"]), "candidate, deg")
            for col, key in extra:
                if col in row.colnames:
                    value = row[col]
                    value = str(value) if isinstance(value, (str, np.str_)) else float(value)
                    if isinstance(value, float) and not np.isfinite(value):
                        continue
                    header[key] = value
            data = cut.data.astype(np.float32)
            hdus.append(fits.PrimaryHDU(data, header) if k == 0 else fits.ImageHDU(data, header))
        stem = stamp_stem(row["id"], float(row["ra"]), float(row["dec"]))
        fits_path, png_path = out / f"{stem}.fits", out / f"{stem}.png"
        fits.HDUList(hdus).writeto(fits_path, overwrite=True)
        _png(png_path, [c.data for c in cuts], cx, cy, radius_px)
        paths.append((fits_path, png_path))
    return paths
