"""Synthetic nights for any observatory profile, with their truth.

`gppy simulate OBS OUTDIR` (command.py) writes raw night folders in the
observatory's own dialect, OUTDIR/truth/<night>/ (truth.py explains every file
and the zero-point definition) and OUTDIR/refcat.ecsv (refcat.py). In Python:
`simulate.simulate(plan.RunConfig(...), outdir)`, then
`truth.load_truth(outdir, night).noise_free(file)`.

    bands.py       pass bands x sensor QE, AB magnitudes, the black-body colour model
    atmosphere.py  extinction, night-sky and twilight brightness, airmass
    ephem.py       Sun position, sidereal time, altitudes (no IERS downloads)
    telescope.py   photon zero points from the profile's [telescope] section
    tycho.py       re-exports gppy.astrometry.tycho (real Tycho-2 stars from the
                   astrometry.net index files; the reader lives there)
    sky.py         a field's stars, galaxies and transients (data/imsng_fields.dat)
    pointing.py    commanded pointing, pointing error, the true TAN-SIP WCS
    psf.py         Moffat PSF, point-source and Sérsic rendering
    instrument.py  bias, dark, flats, cosmic rays, blooming, noise, digitisation
    plan.py        a night's frames and their conditions (RunConfig, Frame)
    render.py      noise-free and raw frames from the truth
    writer.py      file and folder names, headers in the dialect, FITS writing
    truth.py       truth files: writing, loading, re-rendering
    refcat.py      the offline reference catalogue
    simulate.py    whole nights, frames rendered in a process pool
    seeds.py       named random streams (results independent of process count)
"""
