"""Reference images (templates) per observatory, field and filter.

Where a template comes from, in order:
1. the profile's `transient.template_dir`, if set: a file OBJECT/FILTER/*.fits, or
   any FITS file directly in the folder whose OBJECT and FILTER cards match
   (a hand-made deep reference always wins);
2. the library under the data directory, templates/OBS/OBJECT/FILTER/template.fits,
   filled automatically: a night's stack is promoted when there is no template yet,
   or when it is deeper (UL5) by at least PROMOTE_DEEPER_MAG without a seeing
   worse than PROMOTE_MAX_SEEING_RATIO times the template's. A promoted stack is
   copied (atomically), so later nights never change under a difference image
   already made; the previous template is kept beside it with its date.

A stack never becomes its own template's reference: `find` is asked before the
night's stacks are promoted.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from astropy.io import fits

from gppy.fitsio import atomic_open, write_atomic

PROMOTE_DEEPER_MAG = 0.1
PROMOTE_MAX_SEEING_RATIO = 1.2
TEMPLATE_NAME = "template.fits"
SOURCE_KEY = "TMPLSRC"       # in a library template: the name of the image it was


@dataclass(frozen=True)
class Template:
    path: Path
    source: str          # "configured" | "library"


def _safe(name: str) -> str:
    """A field or filter name as a folder name."""
    return "".join(c if c.isalnum() or c in "+-._" else "_" for c in name.strip()) or "_"


class TemplateLibrary:
    def __init__(self, root: Path, obs: str, template_dir: str | None = None):
        self.root = Path(root) / _safe(obs)
        self.template_dir = Path(template_dir).expanduser() if template_dir else None

    def _library_path(self, obj: str, band: str) -> Path:
        return self.root / _safe(obj) / _safe(band) / TEMPLATE_NAME

    def find(self, obj: str, band: str, science: str | None = None) -> Template | None:
        """The template of a field and filter for the image named `science`, which is
        never its own reference (a night processed again finds its own stack in the
        library: then the template it replaced serves)."""
        if self.template_dir is not None:
            found = self._configured(obj, band)
            if found is not None:
                return Template(found, "configured")
        current = self._library_path(obj, band)
        older = sorted(current.parent.glob("template-*.fits"), reverse=True)   # newest first
        for path in [current, *older]:
            if path.is_file() and (science is None
                                   or fits.getheader(path).get(SOURCE_KEY) != science):
                return Template(path, "library")
        return None

    def _configured(self, obj: str, band: str) -> Path | None:
        folder = self.template_dir / obj / band
        if folder.is_dir():
            files = sorted(folder.glob("*.fits")) + sorted(folder.glob("*.fit"))
            if files:
                return files[0]
        if not self.template_dir.is_dir():
            return None
        for path in sorted(self.template_dir.glob("*.fit*")):
            try:
                header = fits.getheader(path)
            except (OSError, ValueError):
                continue
            if (str(header.get("OBJECT", "")).strip() == obj
                    and str(header.get("FILTER", "")).strip() == band):
                return path
        return None

    def promote(self, stack: Path, obj: str, band: str) -> str | None:
        """Make `stack` the library's template of the field and filter when it is the
        better one (see the module docstring); why, or None when it is not."""
        path = self._library_path(obj, band)
        new = fits.getheader(stack)
        if path.is_file():
            old = fits.getheader(path)
            deeper = _num(new, "UL5") - _num(old, "UL5")
            seeing_ratio = _num(new, "SEEING") / _num(old, "SEEING")
            if not (deeper >= PROMOTE_DEEPER_MAG and seeing_ratio <= PROMOTE_MAX_SEEING_RATIO):
                return None
            why = f"{deeper:.2f} mag deeper than the template of {old.get('DATE-OBS', '?')}"
            _copy(path, path.with_name(f"template-{_safe(str(old.get('DATE-OBS', 'old')))}.fits"))
        else:
            why = "first stack of this field and filter"
        with fits.open(stack, memmap=False) as hdul:
            copy = fits.HDUList([h.copy() for h in hdul])
        copy[0].header[SOURCE_KEY] = (Path(stack).name[-68:], "the image promoted to template")
        write_atomic(path, copy)
        return why


def _copy(src: Path, dst: Path) -> None:
    with open(src, "rb") as fin, atomic_open(dst, "wb") as fout:
        shutil.copyfileobj(fin, fout)


def _num(header: fits.Header, key: str) -> float:
    value = header.get(key)
    return float(value) if isinstance(value, (int, float)) else float("nan")
