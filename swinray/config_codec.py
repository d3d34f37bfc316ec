"""Typed configs <-> plain dicts, dotted-path overrides and CLI values, all strictly checked.

Configuration flows one way: preset -> CLI overrides -> ``to_dict()`` -> Ray -> ``from_dict()`` on
each worker. Overrides and sweep parameters are dotted paths into that dict (``optim.lr=3e-4``);
unknown keys and wrong types are errors that list what is valid. Works on any frozen dataclass.
"""
from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, Literal

from swinray.errors import ConfigError
from swinray.storage import write_text

# --------------------------------------------------------------------------------------------
# dict <-> dataclass, with strict checks
# --------------------------------------------------------------------------------------------

def to_dict(cfg) -> dict[str, Any]:
    """Plain nested dict (tuples become lists) that JSON and Ray carry unchanged."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def from_dict(cls: type, data: dict[str, Any], path: str = ""):
    """Rebuild ``cls`` from a dict, rejecting unknown keys and wrong types; missing keys default."""
    if not isinstance(data, dict):
        raise ConfigError(f"{path or cls.__name__}: expected a mapping of fields, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        where = f"in {path!r}" if path else f"for {cls.__name__}"
        raise ConfigError(f"unknown key(s) {', '.join(repr(_join(path, k)) for k in unknown)} "
                          f"{where}; valid keys: {', '.join(_join(path, n) for n in names)}")
    values = {k: _coerce(hints[k], v, _join(path, k)) for k, v in data.items()}
    try:
        return cls(**values)
    except ConfigError as e:            # a section's own check names its field: give it its path
        raise ConfigError(_join(path, str(e))) from None


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _coerce(tp, value, path: str):
    """Check ``value`` against the annotation ``tp``; return it in the dataclass's own types."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, path)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(option, value, path)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{path}: {value!r} matches none of {tp}: " + "; ".join(errors))
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{path}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, f"{path}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{path}: expected {len(args)} values, got {len(value)} ({value!r})")
        return tuple(_coerce(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (bool, int, float, str):
        if type(value) is not tp:
            raise ConfigError(f"{path}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
        return value
    raise ConfigError(f"{path}: unsupported annotation {tp}")


# --------------------------------------------------------------------------------------------
# Overrides: "section.field=value" from the CLI, or {"section.field": value} from a sweep
# --------------------------------------------------------------------------------------------

def apply_overrides(cfg, overrides: dict[str, Any]):
    """Return ``cfg`` with dotted-path overrides applied and the result validated."""
    data = to_dict(cfg)
    for dotted, value in overrides.items():
        node, keys = data, dotted.split(".")
        for depth, key in enumerate(keys):
            prefix = ".".join(keys[:depth])
            if not isinstance(node, dict) or key not in node:
                valid = ", ".join(_join(prefix, k) for k in node) if isinstance(node, dict) else "none"
                raise ConfigError(f"unknown key {dotted!r}; valid keys here: {valid}")
            if depth == len(keys) - 1:
                if isinstance(node[key], dict):
                    raise ConfigError(f"{dotted!r} is a section; set one of its fields: "
                                      + ", ".join(_join(dotted, k) for k in node[key]))
                node[key] = value
            node = node[key]
    return from_dict(type(cfg), data)


def parse_assignments(assignments: list[str], cfg) -> dict[str, Any]:
    """Parse CLI ``key=value`` strings; values are typed by the field they set."""
    hints = field_types(type(cfg))
    parsed = {}
    for item in assignments:
        key, sep, text = item.partition("=")
        if not sep:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        if key not in hints:
            raise ConfigError(f"unknown key {key!r}; valid keys: {', '.join(hints)}")
        parsed[key] = parse_value(text, hints[key], key)
    return parsed


def parse_value(text: str, tp, path: str):
    """Text from the command line -> a value for a field of annotation ``tp``."""
    if tp is str or (typing.get_origin(tp) is Literal and all(isinstance(a, str) for a in typing.get_args(tp))):
        return text
    if tp is bool:
        lowered = text.lower()
        if lowered in ("true", "1", "yes", "on"):
            return True
        if lowered in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"{path}: expected true or false, got {text!r}")
    if typing.get_origin(tp) is tuple and not text.lstrip().startswith("["):
        if str in typing.get_args(tp):          # a,b.pt as well as ["a", "b.pt"]
            return [part.strip() for part in text.split(",") if part.strip()]
        text = f"[{text}]"                      # allow 96,96,96 as well as [96,96,96]
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise ConfigError(f"{path}: cannot read {text!r} as {getattr(tp, '__name__', tp)}") from None


def field_types(cls: type, prefix: str = "") -> dict[str, Any]:
    """Every settable dotted key of a command config and its annotation."""
    out = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out.update(field_types(tp, _join(prefix, f.name)))
        else:
            out[_join(prefix, f.name)] = tp
    return out


def flat_items(cfg, prefix: str = "") -> dict[str, Any]:
    """Dotted key -> current value, for help texts and tracking."""
    out = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            out.update(flat_items(value, _join(prefix, f.name)))
        else:
            out[_join(prefix, f.name)] = value
    return out


def save_config(cfg, path: str | Path) -> Path:
    """Write the resolved config as JSON next to a run's outputs."""
    return write_text(path, json.dumps(to_dict(cfg), indent=2) + "\n")


def load_config(cls: type, path: str | Path):
    try:
        return from_dict(cls, json.loads(Path(path).read_text()))
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None
