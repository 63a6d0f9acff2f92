"""Transients: from the night's calibrated frames to candidates.

Modules:
    resample          an image with its MASK and ERR onto another WCS grid (Lanczos-3
                      or bilinear, flux-conserving, ERR and MASK propagated)
    stack             frames of one field and band onto a common grid, scaled to a
                      common zero point, sigma-clipped weighted mean or median
    command_stack     `gppy stack FILE...`
    groups            which frames of a night are stacked together
    templates         reference images per observatory, field and filter
    subtract          difference of a frame (or stack) and a reference on one grid
    hotpants          the external HOTPANTS engine of `subtract`
    command_subtract  `gppy subtract SCI REF`
    candidates        transient candidates on a difference image: detection,
                      features, rejections, real/bogus score
    stamps            cut-outs (new, reference, difference) of the candidates
"""
