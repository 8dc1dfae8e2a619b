"""ONE way to check a value read from a file or a flag against a field's type hint, used by the
build/train/score options (`config.options.check_fields`) and by the manifest
(`format.manifest.parse_manifest`), so "expected a whole number" means the same everywhere.

Handles what our dataclasses declare: bool, int, float, str, Any, `X | None`, `list[X]`,
`dict[str, X]` and nested dataclass records (`from_json`: the manifest, the stage markers).
JSON and YAML have no integer/boolean distinction Python respects (True is an int), so
bool is never an int or a number here.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any


class TypeProblem(ValueError):
    """`value` at `path` ("counts.skipped.x", "splits.train[3]") is not `expected`."""

    def __init__(self, path: str, expected: str, value: Any):
        super().__init__(f"{path}: expected {expected}")
        self.path, self.expected, self.value = path, expected, value

    def got(self, limit: int = 60) -> str:
        try:
            return json.dumps(self.value)[:limit]
        except (TypeError, ValueError):
            return repr(self.value)[:limit]


class MissingField(TypeProblem):
    """A required field of a record is absent."""

    def __init__(self, path: str):
        super().__init__(path, "present", None)


def _union_args(hint: Any) -> tuple[Any, ...] | None:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return typing.get_args(hint)
    return None


def optional_base(hint: Any) -> tuple[Any, bool]:
    """(the hint without None, whether None is allowed)."""
    args = _union_args(hint)
    if args is None:
        return hint, False
    rest = [a for a in args if a is not type(None)]
    return (rest[0] if len(rest) == 1 else typing.Union[tuple(rest)]), len(rest) < len(args)


def describe(hint: Any) -> str:
    """A type hint as an error message names it: "a whole number", "a list of a string"."""
    args = _union_args(hint)
    if args is not None:
        return " or ".join("null" if a is type(None) else describe(a) for a in args)
    origin, params = typing.get_origin(hint), typing.get_args(hint)
    if origin is dict:
        return "an object" if params[1] is Any else f"a mapping of name: {describe(params[1])}"
    if origin is list:
        return f"a list of {describe(params[0])}"
    if dataclasses.is_dataclass(hint):
        return "an object"
    return {int: "a whole number", float: "a number", str: "a string",
            bool: "true/false"}.get(hint, "anything")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def from_json(cls, data: Any, path: str = "") -> Any:
    """A dataclass record from its JSON object: declared fields checked against their hints
    (MissingField for a required one that is absent). A record with an `extra` field keeps the
    undeclared keys there (a newer writer's fields survive a rewrite), one with an `absent`
    field the names of the defaulted fields the object lacked (so it is written back as read);
    other records drop undeclared keys."""
    if not isinstance(data, dict):
        raise TypeProblem(path, describe(cls), data)
    hints = typing.get_type_hints(cls)
    declared = {f.name: f for f in dataclasses.fields(cls) if f.name not in ("extra", "absent")}
    values = {}
    for name, f in declared.items():
        where = f"{path}.{name}" if path else name
        if name in data:
            values[name] = check(data[name], hints[name], path=where)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise MissingField(where)
    if "extra" in hints:
        values["extra"] = {k: v for k, v in data.items() if k not in declared}
    if "absent" in hints:
        values["absent"] = frozenset(name for name in declared if name not in data)
    return cls(**values)


def check(value: Any, hint: Any, *, lenient: bool = False, scalars_as_text: bool = False,
          path: str = "") -> Any:
    """`value` checked against `hint`; returns it (dataclasses built by `from_json`).
    TypeProblem naming the innermost bad path otherwise.

    lenient (options typed by people): 1 is a float, a Path is a string, "a,b" is a list of
    strings. Stored files (manifests) are checked exactly: nothing is converted.
    """
    if hint is Any:
        return value
    args = _union_args(hint)
    if args is not None:
        if value is None and type(None) in args:
            return None
        inner = None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return check(value, arg, lenient=lenient, scalars_as_text=scalars_as_text, path=path)
            except TypeProblem as problem:
                inner = inner or (problem if problem.path != path else None)
        raise inner or TypeProblem(path, describe(hint), value)
    origin, params = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return from_json(hint, value, path)
    if origin is dict:
        if not isinstance(value, dict):
            raise TypeProblem(path, describe(hint), value)
        return {(str(k) if lenient else k): check(v, params[1], lenient=lenient,
                                                  scalars_as_text=scalars_as_text, path=f"{path}.{k}")
                for k, v in value.items()}
    if origin is list:
        if lenient and isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise TypeProblem(path, describe(hint), value)
        return [check(v, params[0], lenient=lenient, scalars_as_text=scalars_as_text,
                      path=f"{path}[{i}]") for i, v in enumerate(value)]
    if hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint is float:
        ok = _is_number(value)
        if ok and lenient:
            value = float(value)
    elif hint is str:
        if lenient and (isinstance(value, Path) or (scalars_as_text and _is_number(value))):
            value = str(value)
        ok = isinstance(value, str)
    else:
        ok = isinstance(value, hint)
    if not ok:
        raise TypeProblem(path, describe(hint), value)
    return value
