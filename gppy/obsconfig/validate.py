"""Check a parsed TOML document against the schema dataclasses and build them.

Every problem is collected, then raised together as one `ProfileError` whose
lines each name the file, the key and what was expected.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Callable, Literal

from gppy.errors import InputError

KeyPath = tuple[str, ...]


class ProfileError(InputError, ValueError):
    """An observatory profile that cannot be used; `problems` lists every reason."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid observatory profile:\n  " + "\n  ".join(problems))


def dotted(path: KeyPath) -> str:
    return ".".join(path) if path else "(top level)"


class _Checker:
    def __init__(self, origin: Callable[[KeyPath], str], main_file: str):
        self.origin = origin  # which file set the key at this path
        self.main_file = main_file  # the file that should set a missing key
        self.problems: list[str] = []

    def fail(self, path: KeyPath, message: str, *, missing: bool = False) -> None:
        where = self.main_file if missing else self.origin(path)
        self.problems.append(f"{where}: {dotted(path)}: {message}")

    def build(self, tp: Any, value: Any, path: KeyPath) -> Any:
        origin = typing.get_origin(tp)
        if dataclasses.is_dataclass(tp):
            return self.build_dataclass(tp, value, path)
        if origin in (typing.Union, types.UnionType):
            inner = [a for a in typing.get_args(tp) if a is not type(None)]
            return self.build(inner[0], value, path)
        if origin is Literal:
            choices = typing.get_args(tp)
            if value not in choices:
                self.fail(path, f"expected one of {', '.join(map(repr, choices))}, got {value!r}")
            return value
        if origin is list:
            if not isinstance(value, list):
                return self.wrong(path, "a list", value)
            (item_tp,) = typing.get_args(tp)
            return [self.build(item_tp, v, path + (f"[{i}]",)) for i, v in enumerate(value)]
        if origin is dict:
            if not isinstance(value, dict):
                return self.wrong(path, "a table", value)
            _, item_tp = typing.get_args(tp)
            return {str(k): self.build(item_tp, v, path + (str(k),)) for k, v in value.items()}
        return self.build_scalar(tp, value, path)

    def build_scalar(self, tp: type, value: Any, path: KeyPath) -> Any:
        if tp is bool:
            return value if isinstance(value, bool) else self.wrong(path, "true or false", value)
        if tp is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
            return value if ok else self.wrong(path, "an integer", value)
        if tp is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            return float(value) if ok else self.wrong(path, "a number", value)
        if tp is str:
            return value if isinstance(value, str) else self.wrong(path, "a string", value)
        raise TypeError(f"schema type {tp!r} is not supported")  # a schema bug, not a user error

    def wrong(self, path: KeyPath, expected: str, value: Any) -> None:
        self.fail(path, f"expected {expected}, got {value!r} ({type(value).__name__})")
        return None

    def build_dataclass(self, cls: type, value: Any, path: KeyPath) -> Any:
        if not isinstance(value, dict):
            return self.wrong(path, f"a table [{dotted(path)}]", value)
        problems_before = len(self.problems)
        hints = typing.get_type_hints(cls)
        known = {f.name: f for f in dataclasses.fields(cls)}
        for key in value:
            if key not in known:
                self.fail(path + (key,), f"unknown key; expected one of: {', '.join(known)}")
        kwargs = {}
        for name, f in known.items():
            if name not in value:
                required = (f.default is dataclasses.MISSING
                            and f.default_factory is dataclasses.MISSING)
                if required:
                    self.fail(path + (name,), f"missing; expected {f.metadata.get('doc', name)}",
                              missing=True)
                continue
            built = self.build(hints[name], value[name], path + (name,))
            self.check_bounds(f, built, path + (name,))
            kwargs[name] = built
        if len(self.problems) > problems_before:
            return None
        return cls(**kwargs)

    def check_bounds(self, f: dataclasses.Field, value: Any, path: KeyPath) -> None:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return
        meta = f.metadata
        if meta.get("ge") is not None and value < meta["ge"]:
            self.fail(path, f"expected a value >= {meta['ge']}, got {value}")
        if meta.get("gt") is not None and value <= meta["gt"]:
            self.fail(path, f"expected a value > {meta['gt']}, got {value}")
        if meta.get("le") is not None and value > meta["le"]:
            self.fail(path, f"expected a value <= {meta['le']}, got {value}")


def build(cls: type, data: dict, origin: Callable[[KeyPath], str], main_file: str) -> Any:
    """Build dataclass `cls` from `data`, or raise ProfileError naming every problem:
    `origin(path)` names the file that set a key, `main_file` the one missing keys belong in."""
    checker = _Checker(origin, main_file)
    result = checker.build(cls, data, ())
    if checker.problems:
        raise ProfileError(checker.problems)
    return result
