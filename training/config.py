"""Strict construction of the frozen configuration dataclasses from plain dicts.

Every concern (model, augmentation, data, optimiser, schedule, run) has one frozen dataclass;
checkpoints store `dataclasses.asdict(config)` and later stages rebuild the config with
`from_dict`, which refuses keys it does not know, so a typo can never be silently ignored.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration key or value that is not supported; the message lists the valid ones."""


def check_choice(what: str, value: Any, valid) -> None:
    """Fail with the list of valid values when `value` is not one of them."""
    if value not in valid:
        raise ConfigError(f"unknown {what} {value!r}; valid: {', '.join(map(str, valid))}")


def _convert(tp, value):
    """Coerce JSON-ish values back to the annotated type: lists to tuples, dicts to dataclasses."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp) and isinstance(value, Mapping):
        return from_dict(tp, value)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            if arg is type(None) and value is None:
                return None
            if dataclasses.is_dataclass(arg) and isinstance(value, Mapping):
                return from_dict(arg, value)
        return tuple(value) if isinstance(value, list) else value
    if origin is tuple and isinstance(value, list | tuple):
        return tuple(value)
    return value


def from_dict(cls: type[T], d: Mapping[str, Any]) -> T:
    """Build dataclass `cls` from `d`, recursing into nested dataclasses; unknown keys fail."""
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - set(names))
    if unknown:
        raise ConfigError(
            f"unknown {cls.__name__} key(s) {unknown}; valid: {', '.join(sorted(names))}"
        )
    hints = typing.get_type_hints(cls)
    return cls(**{k: _convert(hints[k], v) for k, v in d.items()})


def to_dict(cfg) -> dict:
    """The config in JSON types (tuples become lists), as checkpoints and config.json hold it."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def replace(cfg: T, **overrides) -> T:
    """`dataclasses.replace` that reports unknown keys with the valid ones, nested via dicts."""
    names = {f.name for f in dataclasses.fields(cfg)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ConfigError(
            f"unknown {type(cfg).__name__} key(s) {unknown}; valid: {', '.join(sorted(names))}"
        )
    hints = typing.get_type_hints(type(cfg))
    out = {}
    for k, v in overrides.items():
        current = getattr(cfg, k)
        if dataclasses.is_dataclass(current) and isinstance(v, Mapping):
            out[k] = replace(current, **v)
        else:
            out[k] = _convert(hints[k], v)
    return dataclasses.replace(cfg, **out)
