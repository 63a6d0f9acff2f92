"""Find, merge and validate observatory profiles.

A profile is `_defaults.toml` (shared rules) overlaid by the packaged
`<name>.toml`, overlaid by a user file of the same name in
`<config dir>/observatories/` (a user file with a new name adds an observatory).
A file may say `extends = "_base"` to start from a shared base file (files whose
name starts with `_` are bases, not observatories), as the 7DT units do.
Tables merge key by key; any other value (lists included) is replaced whole.
"""

from __future__ import annotations

import datetime as dt
import re
import string
import tomllib
from pathlib import Path
from typing import Any

from gppy.errors import InputError
from gppy.obsconfig import nights
from gppy.obsconfig.schema import CANONICAL_KEYWORDS, HeaderRules, Phot, Profile
from gppy.obsconfig.validate import KeyPath, ProfileError, build
from gppy.reduction.sections import parse_section
from gppy.settings import config_dir

PACKAGED_DIR = Path(__file__).with_name("profiles")
DEFAULTS_FILE = PACKAGED_DIR / "_defaults.toml"
FILE_NAME_FIELDS = {"object", "filter", "imagetyp", "type", "exptime", "seq", "date", "time", "obs"}


class UnknownObservatory(InputError, LookupError):
    pass


def user_dir() -> Path:
    return config_dir() / "observatories"


def _read_toml(path: Path) -> dict:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError([f"{path}: {_toml_error_key(path, exc)}: not valid TOML ({exc}); "
                            "expected `key = value` with a quoted string, a number, true/false, "
                            "a [list] or an inline {table}"]) from None
    except OSError as exc:
        raise ProfileError([f"{path}: cannot be read ({exc.strerror})"]) from None


_TOML_TABLE = re.compile(r"^\s*\[\[?\s*([A-Za-z0-9_.\"' -]+?)\s*(\]|$)")
_TOML_KEY = re.compile(r"^\s*([A-Za-z0-9_.\"' -]+?)\s*=")


def _toml_error_key(path: Path, exc: tomllib.TOMLDecodeError) -> str:
    """The dotted key (or table) on the line a TOML syntax error points at, else 'line N'."""
    m = re.search(r"at line (\d+)", str(exc))
    if not m:
        return "(top level)"
    lineno = int(m.group(1))
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"line {lineno}"
    table = ""
    for line in lines[:lineno - 1]:
        if t := _TOML_TABLE.match(line):
            table = t.group(1).replace('"', "").replace("'", "").replace(" ", "")
    line = lines[lineno - 1] if lineno <= len(lines) else ""
    if t := _TOML_TABLE.match(line):
        return t.group(1).replace('"', "").replace("'", "").replace(" ", "")
    if k := _TOML_KEY.match(line):
        key = k.group(1).replace('"', "").replace("'", "").strip()
        return f"{table}.{key}" if table else key
    return f"line {lineno}"


def _merge(base: dict, over: dict, over_file: str, origins: dict[KeyPath, str],
           path: KeyPath = ()) -> dict:
    merged = dict(base)
    for key, value in over.items():
        here = path + (key,)
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value, over_file, origins, here)
        else:
            merged[key] = value
            for stale in [p for p in origins if p[:len(here)] == here]:
                del origins[stale]
        origins[here] = over_file
    return merged


def _all_files(include_bases: bool = False) -> dict[str, list[Path]]:
    """Lower-case stem -> files to overlay, packaged first then user."""
    files: dict[str, list[Path]] = {}
    for folder in (PACKAGED_DIR, user_dir()):
        if folder.is_dir():
            for path in sorted(folder.glob("*.toml")):
                if path.name != DEFAULTS_FILE.name and (include_bases or not path.stem.startswith("_")):
                    files.setdefault(path.stem.lower(), []).append(path)
    return files


def _profile_files() -> dict[str, list[Path]]:
    return _all_files(include_bases=False)


def _overlay(paths: list[Path], origins: dict[KeyPath, str], seen: tuple[str, ...]) -> dict:
    """Merge `paths` in order, each preceded by the base it `extends`."""
    data: dict = {}
    for path in paths:
        layer = _read_toml(path)
        base = layer.pop("extends", None)
        if base is not None:
            bases = _all_files(include_bases=True)
            if not isinstance(base, str) or base.lower() not in bases:
                raise ProfileError([f"{path}: extends: expected the name of a profile or base "
                                    f"file, got {base!r}"])
            if base.lower() in seen:
                raise ProfileError([f"{path}: extends: circular ({' -> '.join(seen + (base,))})"])
            data = _merge(data, _overlay(bases[base.lower()], origins, seen + (base.lower(),)),
                          str(path), {})
        data = _merge(data, layer, str(path), origins)
    return data


def load_files(paths: list[Path]) -> Profile:
    """Overlay `paths` (and what they extend) on the defaults; build a validated Profile."""
    origins: dict[KeyPath, str] = {}
    data = _merge({}, _read_toml(DEFAULTS_FILE), str(DEFAULTS_FILE), origins)
    data = _merge(data, _overlay(paths, origins, (paths[-1].stem.lower(),)), "", {})
    main_file = str(paths[-1])
    raw = data.get("raw")
    if isinstance(raw, dict) and isinstance(raw.get("root"), str) and isinstance(data.get("name"), str):
        # a shared base (the 7DT units) can say root = "/data/obsdata/{name}"
        data["raw"] = {**raw, "root": raw["root"].replace("{name}", data["name"])}

    def origin(path: KeyPath) -> str:
        for n in range(len(path), 0, -1):
            if path[:n] in origins:
                return origins[path[:n]]
        return main_file

    profile = build(Profile, data, origin, main_file)
    problems = [f"{origin(p)}: {'.'.join(p)}: {msg}" for p, msg in cross_checks(profile)]
    if problems:
        raise ProfileError(problems)
    return profile


def cross_checks(p: Profile) -> list[tuple[KeyPath, str]]:
    """Checks that span several keys, as (key path, message)."""
    out: list[tuple[KeyPath, str]] = []
    cam = p.camera
    for key, seq in (("detector_px", cam.detector_px), ("binning", cam.binning)):
        if len(seq) != 2 or min(seq) < 1:
            out.append((("camera", key), f"expected two positive integers [x, y], got {seq}"))
    if p.phot.refmag_bright >= p.phot.refmag_faint:
        out.append((("phot", "refmag_bright"), "expected to be brighter (smaller) than refmag_faint"))
    for msg in nights.template_problems(p.raw.night_folder):
        out.append((("raw", "night_folder"), msg))
    if "{gain}" in p.raw.night_folder and not cam.gain_mode:
        out.append((("camera", "gain_mode"), "missing; raw.night_folder uses {gain}"))
    for key in p.header.keywords:
        if key not in CANONICAL_KEYWORDS:
            out.append((("header", "keywords", key),
                        f"unknown field; expected one of: {', '.join(CANONICAL_KEYWORDS)}"))
    for i, rule in enumerate(p.header.classify):
        if not rule.conditions():
            out.append((("header", "classify", f"[{i}]"), "a rule needs at least one condition"))
    for key in ("biassec", "trimsec"):
        value = getattr(p.reduction, key)
        if value is not None:
            try:
                parse_section(value)
            except ValueError as exc:
                out.append((("reduction", key), str(exc)))
    for i, wall in enumerate(p.reduction.camera_walls):
        try:
            dt.date.fromisoformat(wall)
        except ValueError:
            out.append((("reduction", "camera_walls", f"[{i}]"),
                        f"expected a date YYYY-MM-DD, got {wall!r}"))
    out += _dialect_checks(p)
    return out


def _dialect_checks(p: Profile) -> list[tuple[KeyPath, str]]:
    """What the observatory writes must read back as what it means."""
    from gppy.obsconfig.headers import filter_alias, imagetyp_alias

    out: list[tuple[KeyPath, str]] = []
    ruled = {rule.type for rule in p.header.classify}  # types a rule can still produce
    for ftype in ("bias", "dark", "flat", "science"):
        written = p.dialect.imagetyp.get(ftype)
        if written is None:
            out.append((("dialect", "imagetyp", ftype), "missing; expected the IMAGETYP value written"))
        elif imagetyp_alias(p.header, written) != ftype and ftype not in ruled:
            out.append((("dialect", "imagetyp", ftype),
                        f"{written!r} does not map back to {ftype!r} through header.imagetyp"))
    for band, written in p.dialect.filter.items():
        if band not in p.camera.filters:
            out.append((("dialect", "filter", band), f"not in camera.filters {p.camera.filters}"))
        elif filter_alias(p.header, written) != band:
            out.append((("dialect", "filter", band),
                        f"{written!r} does not map back to {band!r} through header.filter"))
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(p.dialect.file_name) if f}
        fields = {f.split(":")[0].split("!")[0] for f in fields}
    except ValueError as exc:
        return out + [(("dialect", "file_name"), f"not a valid template ({exc})")]
    for f in sorted(fields - FILE_NAME_FIELDS):
        out.append((("dialect", "file_name"),
                    f"unknown field {{{f}}}; expected some of {sorted(FILE_NAME_FIELDS)}"))
    return out


def _resolve(name: str) -> tuple[str, list[Path]]:
    files = _profile_files()
    key = name.lower()
    if key in files:
        return key, files[key]
    for stem, paths in files.items():  # aliases and canonical names that differ from the stem
        try:
            names = _declared_names(paths)
        except ProfileError:
            continue
        if key in names:
            return stem, paths
    raise UnknownObservatory(
        f"unknown observatory {name!r}; known: {', '.join(sorted(files))} "
        f"(add one as {user_dir()}/{key}.toml)")


def _declared_names(paths: list[Path]) -> set[str]:
    names: set[str] = set()
    for path in paths:
        data = _read_toml(path)
        names.add(str(data.get("name", "")).lower())
        names.update(str(a).lower() for a in data.get("aliases", []))
    return names


def load_profile(name: str) -> Profile:
    """The validated profile for an observatory name or alias (case-insensitive)."""
    _, paths = _resolve(name)
    return load_files(paths)


def load_all() -> tuple[dict[str, Profile], dict[str, ProfileError]]:
    """Every profile by file stem; the invalid ones are returned with their errors."""
    good: dict[str, Profile] = {}
    bad: dict[str, ProfileError] = {}
    for stem, paths in _profile_files().items():
        try:
            good[stem] = load_files(paths)
        except ProfileError as exc:
            bad[stem] = exc
    return good, bad


def _default_section(cls, name: str):
    data = _read_toml(DEFAULTS_FILE)[name]
    return build(cls, data, lambda _: str(DEFAULTS_FILE), str(DEFAULTS_FILE))


def default_header_rules() -> HeaderRules:
    """The shared header rules of _defaults.toml, for frames of no known observatory."""
    return _default_section(HeaderRules, "header")


def default_phot() -> Phot:
    """The shared photometry settings of _defaults.toml, for frames of no known observatory."""
    return _default_section(Phot, "phot")


def profile_as_dict(p: Any) -> Any:
    """A profile (or part of one) as plain TOML-able data, None values left out."""
    import dataclasses

    if dataclasses.is_dataclass(p):
        return {f.name: profile_as_dict(getattr(p, f.name)) for f in dataclasses.fields(p)
                if getattr(p, f.name) is not None}
    if isinstance(p, list):
        return [profile_as_dict(v) for v in p]
    if isinstance(p, dict):
        return {k: profile_as_dict(v) for k, v in p.items()}
    return p
