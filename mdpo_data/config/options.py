"""Typed options for both commands: one definition gives the YAML keys, the flags and the help.

A config is a dataclass whose fields carry their command-line facts in metadata (`setting`:
help text, flag name, choices, smallest value, shown default). From it come the click options
(`dataclass_options` + `OptionsCommand`), the strict YAML reader (`read_yaml`, `unknown_keys`
with the closest known key) and the type checks of values (`check_fields`). Both `mdpo-data
build` (BuildConfig + Runtime) and `mdpo-train` (TrainConfig) use it, so the precedence is the
same everywhere: field defaults < the YAML file < the flags given on the command line (`given`,
from click's parameter sources, so a flag typed with its default value still wins).

To add an option, add one field: `name: int = setting(4, "What it does.", min=1)` to BuildConfig
(it shapes the output, so it enters the build key), Runtime (how a build runs) or TrainConfig.
The flag `--name`, the YAML key, the help, the type and range checks all follow from it.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import math
import reprlib
import typing
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import click
import yaml

from mdpo_data.config.typecheck import TypeProblem, check, describe, optional_base

FREE_TEXT_KEYS = ("description",)  # free text for people, allowed in every YAML file


class ConfigFileError(ValueError):
    """A YAML config that cannot be used at all (missing, unreadable, not UTF-8, not a mapping)."""


# ------------------------------------------------------------------ fields


def setting(default: Any = dataclasses.MISSING, help: str | Callable[[], str] = "", *, factory: Any = dataclasses.MISSING,
            flag: str | None = None, choices: Iterable[str] | Callable[[], Iterable[str]] | None = None,
            min: float | None = None, above: float | None = None, below: float | None = None,
            max: float | None = None, check: Callable[[Any], Any] | None = None,
            shown: str | None = None, cli: bool = True,
            click_args: Mapping[str, Any] | None = None) -> Any:
    """A dataclass field with its command-line facts. `choices` may be a function (names from a
    registry, read when the options are made); `min`/`max` bound the value inclusively,
    `above`/`below` exclusively (a bounded float must also be finite); `shown` replaces the
    default in the help; `check` parses the value further (a strategy spec: ValueError names the
    problem); `cli=False` keeps a field out of the flags (it is still a YAML key);
    `click_args` are extra `click.option` arguments for odd flags."""
    metadata = {"help": help, "flag": flag, "choices": choices, "min": min, "above": above,
                "below": below, "max": max, "check": check, "shown": shown, "cli": cli, "click": dict(click_args or {})}
    return dataclasses.field(default=default, default_factory=factory, metadata=metadata)


def described(text: str, module: str) -> Callable[[], str]:
    """A help text naming a registry's forms (`module.forms()`), read when the options are made."""
    return lambda: text.format(importlib.import_module(module).forms())


def help_of(field: dataclasses.Field) -> str:
    text = field.metadata.get("help") or ""
    return text() if callable(text) else text


def names_from(module: str, attribute: str) -> Callable[[], tuple[str, ...]]:
    """Choices read from where they are defined (a registry, a table), when first needed."""
    return lambda: tuple(getattr(importlib.import_module(module), attribute))


def fields(cls) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def normalize_key(key: Any) -> str:
    """YAML keys may use dashes (as on the command line) or underscores."""
    return str(key).strip().replace("-", "_")


def flag(field: dataclasses.Field | str) -> str:
    """The field's command-line flag, `--name-with-dashes` unless its metadata names another."""
    if isinstance(field, str):
        return "--" + field.replace("_", "-")
    return field.metadata.get("flag") or flag(field.name)


def choices_of(field: dataclasses.Field) -> tuple[str, ...] | None:
    choices = field.metadata.get("choices")
    return tuple(choices() if callable(choices) else choices) if choices is not None else None


def default_of(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None


# ------------------------------------------------------------------ YAML


def read_yaml(path: str | Path, what: str = "config") -> dict[str, Any]:
    """A YAML file of `key: value` as {underscore_key: value}, without the free-text keys.
    Raises ConfigFileError with one line when the file cannot be used at all."""
    path = Path(path)
    if not path.is_file():
        raise ConfigFileError(f"{what} file {path} does not exist")
    try:
        data = load_yaml_text(path.read_bytes().decode("utf-8"), str(path)) or {}
    except UnicodeDecodeError as error:
        raise ConfigFileError(f"{path} is not UTF-8 text (byte {error.start})") from None
    except OSError as error:
        raise ConfigFileError(f"{what} file {path} cannot be read: {error.strerror}") from None
    except yaml.YAMLError as error:
        message = " ".join(str(error).split())
        raise ConfigFileError(f"{path} is not valid YAML: {message}") from None
    if not isinstance(data, dict):
        raise ConfigFileError(f"{path} must be a mapping of key: value, got {type(data).__name__}")
    options = {normalize_key(k): v for k, v in data.items()}
    for key in FREE_TEXT_KEYS:
        options.pop(key, None)
    return options


MAX_YAML_VALUES = 100_000  # values a config may expand to through aliases (a real one has ~50)


def load_yaml_text(text: str, name: str) -> Any:
    """`yaml.safe_load`, refusing what a config never needs and a hostile file uses: aliases
    that expand to more than MAX_YAML_VALUES values (a "billion laughs" is tiny on disk but
    unbounded once printed or iterated), recursive aliases, and a key given twice in one
    mapping (YAML's last-wins would silently drop the first). The node graph is checked
    before any Python object is made."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_nodes(node, name)
        try:
            return loader.construct_document(node)
        except (ValueError, OverflowError) as error:  # e.g. an int of 5,000 digits
            message = " ".join(str(error).split())[:200]
            raise ConfigFileError(f"{name}: a value cannot be read: {message}") from None
    except RecursionError:  # PyYAML composes and constructs recursively
        raise ConfigFileError(f"{name}: YAML nested too deeply for a config") from None
    finally:
        loader.dispose()


def _check_nodes(root: yaml.Node, name: str) -> None:
    sizes: dict[int, int] = {}
    visiting: set[int] = set()

    def size(node: yaml.Node) -> int:  # expanded values under `node`, aliases followed
        if id(node) in sizes:
            return sizes[id(node)]
        if id(node) in visiting:
            raise ConfigFileError(f"{name}: line {node.start_mark.line + 1}: recursive YAML alias")
        visiting.add(id(node))
        total = 1
        if isinstance(node, yaml.MappingNode):
            _check_duplicates(node, name)
            children = [child for pair in node.value for child in pair]
        else:
            children = node.value if isinstance(node, yaml.SequenceNode) else []
        for child in children:
            total += size(child)
            if total > MAX_YAML_VALUES:
                raise ConfigFileError(
                    f"{name}: line {node.start_mark.line + 1}: YAML aliases expand to more than "
                    f"{MAX_YAML_VALUES:,} values; a config needs no aliases this large")
        visiting.discard(id(node))
        sizes[id(node)] = total
        return total

    size(root)


def _check_duplicates(node: yaml.MappingNode, name: str) -> None:
    seen: dict[str, int] = {}
    for key, _ in node.value:
        if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
            continue
        line = key.start_mark.line + 1
        normal = normalize_key(key.value)
        if normal in seen:
            raise ConfigFileError(f"{name}: line {line}: duplicate key {shown(key.value)} (first given "
                                  f"on line {seen[normal]}); give each key once")
        seen[normal] = line


def closest_key(name: str, known: Iterable[str], aliases: Mapping[str, str] | None = None) -> str | None:
    """The known key a mistyped `name` most likely meant (an alias first), or None."""
    if aliases and name in aliases:
        return aliases[name]
    close = difflib.get_close_matches(name, list(known), n=1)
    return close[0] if close else None


def unknown_keys(options: Iterable[str], known: Iterable[str],
                 aliases: Mapping[str, str] | None = None) -> dict[str, str | None]:
    """Each key not in `known` (sorted) -> the closest known key or None."""
    known = list(known)
    return {name: closest_key(name, known, aliases) for name in sorted(set(options) - set(known))}


def suggestion(name: str, close: str | None) -> str:
    return f"{name}: did you mean {close!r}?" if close else f"{name}: no similar key"


# ------------------------------------------------------------------ values

_SHOWN = reprlib.Repr()
_SHOWN.maxlevel, _SHOWN.maxlist, _SHOWN.maxdict, _SHOWN.maxstring, _SHOWN.maxother = 2, 4, 4, 60, 60


def shown(value: Any) -> str:
    """A value as a message shows it: a short repr, whatever the value's size or depth."""
    return _SHOWN.repr(value)


def check_value(cls, name: str, value: Any, *, scalars_as_text: bool = False) -> tuple[Any, str | None]:
    """(coerced value, problem or None) for one field from its annotated type (the one checker,
    `config.typecheck`, leniently: people type these); the problem is the text after the
    field's label, e.g. "expected a number, got 'high'"."""
    hint = typing.get_type_hints(cls)[name]
    if value is None:
        return value, None if optional_base(hint)[1] else "may not be null"
    try:
        return check(value, hint, lenient=True, scalars_as_text=scalars_as_text), None
    except TypeProblem:
        return value, f"expected {describe(optional_base(hint)[0])}, got {shown(value)}"


def _bounds(meta: Mapping[str, Any]) -> tuple[float | None, bool, float | None, bool]:
    """(low, low is exclusive, high, high is exclusive) from a field's metadata."""
    low, low_open = (meta["above"], True) if meta.get("above") is not None else (meta.get("min"), False)
    high, high_open = (meta["below"], True) if meta.get("below") is not None else (meta.get("max"), False)
    return low, low_open, high, high_open


def _range_text(meta: Mapping[str, Any]) -> str:
    """The bounds as click writes a range: x>=1, 0<=x<1."""
    low, low_open, high, high_open = _bounds(meta)
    left = f"{low:g}{'<' if low_open else '<='}" if low is not None else ""
    right = f"{'<' if high_open else '<='}{high:g}" if high is not None else ""
    if not right:
        return f"x{'>' if low_open else '>='}{low:g}"
    return f"{left}x{right}"


def range_problem(meta: Mapping[str, Any], value: Any) -> str | None:
    """What is wrong with `value` against the field's bounds, or None."""
    low, low_open, high, high_open = _bounds(meta)
    if value is None or (low is None and high is None):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return f"must be finite, got {shown(value)}"
    if (low is None or (value > low if low_open else value >= low)) and \
            (high is None or (value < high if high_open else value <= high)):
        return None
    if low is not None and high is not None:
        return f"must be in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}, got {shown(value)}"
    if low is not None:
        return f"must be > {low:g}, got {shown(value)}" if low_open else f"must be at least {low:g}, got {shown(value)}"
    return f"must be < {high:g}, got {shown(value)}" if high_open else f"must be at most {high:g}, got {shown(value)}"


def check_fields(cls, options: Mapping[str, Any], label: Callable[[str], str] = flag,
                 *, scalars_as_text: bool = False) -> tuple[dict[str, Any], list[str]]:
    """The options that are fields of `cls`, type-checked, and checked against their metadata's
    choices and bounds -> (values, every problem as "LABEL: ..."). Badly typed values
    are left out of `values` (the field keeps its default). Options that are not fields of
    `cls` are ignored (`unknown_keys` reports them)."""
    values, problems = {}, []
    for name, field in fields(cls).items():
        if name not in options:
            continue
        value, problem = check_value(cls, name, options[name], scalars_as_text=scalars_as_text)
        choices = choices_of(field)
        if problem is None and value is not None and choices is not None and value not in choices:
            problem = f"{shown(value)} is not one of {', '.join(choices)}"
        if problem is None:
            problem = range_problem(field.metadata, value)
        if problem is None and value is not None and field.metadata.get("check"):
            try:
                field.metadata["check"](value)
            except ValueError as error:
                problem = str(error)
        if problem:
            problems.append(f"{label(name)}: {problem}")
        else:
            values[name] = value
    return values, problems


# ------------------------------------------------------------------ click options


def click_option(cls, field: dataclasses.Field, *, negatable: bool = False,
                 extra: Mapping[str, Any] | None = None) -> click.Option:
    """The click option of one field: its flag, help and shown default; its choices and bounds
    in the help (checked once, with the YAML's, by `check_fields`: every problem at once); the
    real default, so `given` tells typed flags from defaults."""
    base, _ = optional_base(typing.get_type_hints(cls)[field.name])
    meta, default = field.metadata, default_of(field)
    hidden = default is None or default is False or default in ("", [], {})
    help_text = help_of(field)
    if meta.get("shown"):
        help_text += f"  [default: {meta['shown']}]"
    kwargs: dict[str, Any] = {"help": help_text, "default": default,
                              "show_default": not hidden and not meta.get("shown")}
    decls = [flag(field), field.name]
    if base is bool and negatable:
        decls[0] = f"{flag(field)}/--no-{flag(field)[2:]}"
    elif base is bool:
        kwargs["is_flag"] = True
    else:  # choices and bounds are shown here and checked once, with the YAML's (check_fields)
        kwargs["type"] = {int: int, float: float}.get(base, str)
        if choices_of(field) is not None:
            kwargs["metavar"] = "[" + "|".join(choices_of(field)) + "]"
        if _bounds(meta) != (None, False, None, False):
            kwargs["help"] += f"  [{_range_text(meta)}]"
    kwargs.update(meta.get("click") or {})
    kwargs.update(extra or {})
    return click.Option(decls, **kwargs)


class _Placeholder:
    """Where generated options go among a command's hand-written ones (see OptionsCommand)."""

    opts: tuple = ()
    secondary_opts: tuple = ()

    def __init__(self, make: Callable[[], list[click.Option]]):
        self.make = make


def dataclass_options(classes: Callable[[], Iterable[type]], *, only: Iterable[str] | None = None,
                      negatable: bool = False, overrides: Mapping[str, Mapping[str, Any]] | None = None):
    """Decorator: one option per field of the dataclasses `classes()` returns (fields with
    `cli=False` and, when `only` is given, fields not in it are left out). `overrides` maps a
    field to extra `click.option` arguments for this command. The classes are imported when
    the command first needs its options (for --help or to parse), not when the CLI module
    loads: spawned worker processes re-import that module. Use with `cls=OptionsCommand`."""
    keep = set(only) if only is not None else None

    def make() -> list[click.Option]:
        options = []
        for cls in classes():
            for field in dataclasses.fields(cls):
                if not field.metadata.get("cli", True) or (keep is not None and field.name not in keep):
                    continue
                extra = (overrides or {}).get(field.name)
                options.append(click_option(cls, field, negatable=negatable, extra=extra))
        return options

    def decorator(function):
        if not hasattr(function, "__click_params__"):
            function.__click_params__ = []
        function.__click_params__.append(_Placeholder(make))
        return function

    return decorator


class OptionsCommand(click.Command):
    """A click command whose `dataclass_options` are made on first use, in place."""

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        if any(isinstance(p, _Placeholder) for p in self.params):
            self.params = [q for p in self.params
                           for q in (p.make() if isinstance(p, _Placeholder) else [p])]
        return super().get_params(ctx)


def given(ctx: click.Context) -> dict[str, Any]:
    """The parameters the user gave (command line or environment), in the order typed; those
    left at their defaults are absent, so they cannot override a YAML file."""
    from click.core import ParameterSource

    typed = (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT, ParameterSource.PROMPT)
    return {name: value for name, value in ctx.params.items()
            if ctx.get_parameter_source(name) in typed}
