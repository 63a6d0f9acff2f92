"""`gppy obs list` and `gppy obs show NAME`."""

from __future__ import annotations

import json

from gppy.obsconfig.loader import load_all, load_profile, profile_as_dict, user_dir


def register(sub) -> None:
    p = sub.add_parser("obs", help="list or show observatory profiles")
    obs_sub = p.add_subparsers(dest="obs_command", metavar="ACTION", required=True)
    lp = obs_sub.add_parser("list", help="every observatory with its camera and field")
    lp.set_defaults(func=cmd_list)
    sp = obs_sub.add_parser("show", help="one observatory's full profile (TOML)")
    sp.add_argument("name", help="observatory name or alias, any case")
    sp.add_argument("--json", action="store_true", help="print JSON instead of TOML")
    sp.set_defaults(func=cmd_show)


def cmd_list(args) -> int:
    good, bad = load_all()
    print(f"{'NAME':<14} {'CAMERA':<18} {'KIND':<5} {'PIX_AS':>6} {'FOV_AM':>6} "
          f"{'GAIN':>6} {'FILTERS':<24} DESCRIPTION")
    for p in sorted(good.values(), key=lambda p: p.name.lower()):
        c = p.camera
        print(f"{p.name:<14} {c.name:<18} {c.kind:<5} {c.pixscale_arcsec:6.3f} "
              f"{c.fov_arcmin:6.1f} {c.gain_e_per_adu:6.3f} {','.join(c.filters)[:24]:<24} "
              f"{p.description}")
    for stem, err in sorted(bad.items()):
        print(f"{stem:<14} INVALID: {err.problems[0]}"
              + (f" (+{len(err.problems) - 1} more)" if len(err.problems) > 1 else ""))
    print(f"\n{len(good)} profiles; add or override them in {user_dir()}")
    return 1 if bad else 0


def cmd_show(args) -> int:
    data = profile_as_dict(load_profile(args.name))
    print(json.dumps(data, indent=2) if args.json else to_toml(data))
    return 0


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a valid TOML basic string
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"cannot write {type(v).__name__} as TOML")


def _toml_key(k: str) -> str:
    bare = k.replace("_", "").replace("-", "").isalnum()
    return k if bare else json.dumps(k)


def to_toml(data: dict, prefix: str = "") -> str:
    """Plain data as TOML: scalars first, then sub-tables, lists of tables as [[...]]."""
    lines, tables = [], []
    for k, v in data.items():
        name = f"{prefix}.{_toml_key(k)}" if prefix else _toml_key(k)
        if isinstance(v, dict):
            tables.append(f"\n\n[{name}]\n" + to_toml(v, name))
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            tables.extend(f"\n\n[[{name}]]\n" + to_toml(x, name) for x in v)
        else:
            lines.append(f"{_toml_key(k)} = {_toml_value(v)}")
    return "\n".join(lines) + "".join(tables)
