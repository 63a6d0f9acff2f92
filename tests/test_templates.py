"""The template library: a configured reference wins, else the library's; a
night's stack is promoted only when it is the better reference, and the old one
is kept."""

from __future__ import annotations

import numpy as np
from astropy.io import fits

from gppy.transient.templates import TemplateLibrary


def _image(path, obj="NGC1", band="R", ul5=20.0, seeing=2.0, date="2024-03-14T03:00:00"):
    header = fits.Header({"OBJECT": obj, "FILTER": band, "UL5": ul5, "SEEING": seeing,
                          "DATE-OBS": date})
    fits.PrimaryHDU(np.zeros((8, 8), np.float32), header).writeto(path)
    return path


def test_promotion_keeps_the_deepest_good_stack(tmp_path):
    lib = TemplateLibrary(tmp_path / "templates", "LOAO")
    assert lib.find("NGC1", "R") is None
    first = _image(tmp_path / "s1.fits")
    assert lib.promote(first, "NGC1", "R") == "first stack of this field and filter"
    found = lib.find("NGC1", "R")
    assert found.source == "library" and fits.getheader(found.path)["UL5"] == 20.0
    # shallower, or deeper but blurred: not promoted
    assert lib.promote(_image(tmp_path / "s2.fits", ul5=19.8), "NGC1", "R") is None
    assert lib.promote(_image(tmp_path / "s3.fits", ul5=20.5, seeing=2.6), "NGC1", "R") is None
    deeper = _image(tmp_path / "s4.fits", ul5=20.4, seeing=2.2, date="2024-03-15T03:00:00")
    assert "0.40 mag deeper" in lib.promote(deeper, "NGC1", "R")
    assert fits.getheader(lib.find("NGC1", "R").path)["UL5"] == 20.4
    kept = list(lib.find("NGC1", "R").path.parent.glob("template-2024-03-14*.fits"))
    assert len(kept) == 1 and fits.getheader(kept[0])["UL5"] == 20.0
    # a folder-unsafe field name still gets a folder of its own
    assert lib.promote(_image(tmp_path / "s5.fits", obj="SN 2024/abc"), "SN 2024/abc", "R")
    assert lib.find("SN 2024/abc", "R") is not None and lib.find("SN 2024", "R") is None


def test_a_configured_reference_wins(tmp_path):
    refs = tmp_path / "refs"
    (refs / "NGC1" / "R").mkdir(parents=True)
    by_folder = _image(refs / "NGC1" / "R" / "deep.fits", ul5=22.0)
    by_header = _image(refs / "ngc2-v.fits", obj="NGC2", band="V")
    lib = TemplateLibrary(tmp_path / "templates", "LOAO", str(refs))
    lib.promote(_image(tmp_path / "s.fits"), "NGC1", "R")
    assert lib.find("NGC1", "R").path == by_folder and lib.find("NGC1", "R").source == "configured"
    assert lib.find("NGC2", "V").path == by_header
    assert lib.find("NGC3", "R") is None
