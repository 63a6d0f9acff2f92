"""Photometry of calibrated frames.

    detect      background (mean-levelled sep mesh) and sep extraction, source flags
    psf         pixel-integrated elliptical Moffat: per-star fits, the frame's seeing
    apertures   aperture set (growth-curve optimum, 1.35/2/3 FWHM, 3", 5", Kron),
                sums with errors from ERR, aperture corrections
    limits      limiting magnitudes from random empty apertures
    measure     one frame: `measure` / `measure_file` -> FrameCatalog
    fitting     clipped weighted least squares with an honest error (offsets per star)
    zeropoint   cross-match to reference stars, calibration-star selection, zero point
                (and colour term) fit
    inject      depth from injected artificial stars (50 % completeness at S/N >= 5)
    catalogs, transforms   reference magnitudes for zero points (see their docstrings)
"""
