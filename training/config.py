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

from common.cli import ConfigError

__all__ = ["ConfigError", "check_choice", "from_dict", "parse_overrides", "replace", "to_dict"]

T = TypeVar("T")


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


def parse_overrides(items: list[str]) -> dict:
    """Command-line overrides → the nested dict `replace` takes; values are JSON where they parse.

    ['optim.lr=0.2', 'model.stem=cifar'] → {'optim': {'lr': 0.2}, 'model': {'stem': 'cifar'}};
    ['stem=cifar', 'layers=[1,1,1,1]'] → {'stem': 'cifar', 'layers': [1, 1, 1, 1]}.
    """
    out: dict = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not all(key.split(".")):
            raise ConfigError(
                f"--set takes KEY=VALUE (SECTION.KEY=VALUE for a section), got {item!r}"
            )
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw  # a bare string such as cifar
        *sections, name = key.split(".")
        node = out
        for section in sections:
            node = node.setdefault(section, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r} sets a key inside {section!r}, a value")
        node[name] = value
    return out
