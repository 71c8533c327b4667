"""Typed option sets: a dataclass declares each key with its type, default, allowed range and a
one-line description; `check_options` turns a plain mapping into an instance or refuses it with a
message naming the key (`data.batch_size`), what it got and what is allowed.

Types understood: bool, int, float, str, Optional[...], Literal[...], Union[...], list[...],
dict[...] and Any. Ranges come from `field(metadata={"min": ..., "max": ..., "below": ...})`.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Literal, Mapping, Optional, TypeVar, Union, get_args, get_origin

from sft.errors import ConfigError

T = TypeVar("T")


def option(default: Any = None, help: str = "", *, min: Optional[float] = None, max: Optional[float] = None,
           below: Optional[float] = None, above: Optional[float] = None, default_factory: Any = None) -> Any:
    """A dataclass field with its description and bounds (`min`/`max` inclusive, `above`/`below` exclusive)."""
    metadata = {"help": help, "min": min, "max": max, "below": below, "above": above}
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _type_name(annotation: Any) -> str:
    origin = get_origin(annotation)
    if origin is Literal:
        return " or ".join(repr(a) for a in get_args(annotation))
    if origin is Union:
        return " or ".join("null" if a is type(None) else _type_name(a) for a in get_args(annotation))
    if origin in (list, tuple):
        return "a list"
    if origin is dict:
        return "a mapping"
    if annotation is Any:
        return "any value"
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(annotation, str(annotation))


def _matches(value: Any, annotation: Any) -> bool:
    origin = get_origin(annotation)
    if annotation is Any:
        return True
    if annotation is type(None):
        return value is None
    if origin is Literal:
        return value in get_args(annotation)
    if origin is Union:
        return any(_matches(value, a) for a in get_args(annotation))
    if origin in (list, tuple):
        inner = get_args(annotation)
        return isinstance(value, (list, tuple)) and (not inner or all(_matches(v, inner[0]) for v in value))
    if origin is dict:
        return isinstance(value, Mapping)
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    return isinstance(value, annotation) if isinstance(annotation, type) else True


def _check_range(key: str, value: Any, metadata: Mapping) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    bounds = [("min", lambda v, b: v >= b, "at least"), ("max", lambda v, b: v <= b, "at most"),
              ("above", lambda v, b: v > b, "above"), ("below", lambda v, b: v < b, "below")]
    for name, holds, words in bounds:
        bound = metadata.get(name)
        if bound is not None and not holds(value, bound):
            raise ConfigError(f"{key}={value} must be {words} {bound}")


def check_options(cls: type[T], values: Mapping[str, Any], prefix: str, what: str = "") -> T:
    """An instance of the dataclass `cls` from `values`; an unknown key, a wrong type or a value out
    of range is a ConfigError naming `prefix.key` and what is allowed."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"{prefix}.{unknown[0]} is not a setting{' of ' + what if what else ''}; "
                          f"its settings: {', '.join(sorted(fields))}")
    for name, value in values.items():
        key = f"{prefix}.{name}"
        if not _matches(value, hints[name]):
            raise ConfigError(f"{key}={value!r}: expected {_type_name(hints[name])}")
        _check_range(key, value, fields[name].metadata)
    return cls(**values)


def describe(cls: type) -> dict[str, str]:
    """{key: description} of an option set, for docs and error messages."""
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}


def as_dict(options: Any) -> dict[str, Any]:
    return {f.name: getattr(options, f.name) for f in dataclasses.fields(options)}
