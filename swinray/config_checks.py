"""Checks of single config fields, shared by the config dataclasses: each raises a ConfigError naming
the field, its value and the rule, at parse time and again on every worker (``from_dict``)."""
from __future__ import annotations

import math

from swinray.errors import ConfigError


def require(ok: bool, name: str, value, rule: str) -> None:
    """A pure check of one field; it fires at parse time and again on every worker (``from_dict``)."""
    if not ok:
        raise ConfigError(f"{name}={value!r}: {rule}")


def at_least(minimum: int, **values) -> None:
    for name, value in values.items():
        require(value >= minimum, name, value, f"must be at least {minimum}")


def positive_finite(**values) -> None:
    for name, value in values.items():
        require(math.isfinite(value) and value > 0, name, value, "must be a finite number above 0")


def non_negative_finite(**values) -> None:
    for name, value in values.items():
        require(math.isfinite(value) and value >= 0, name, value, "must be a finite number, 0 or more")


def plain_name(name: str, value: str) -> None:
    """A run or sweep name becomes a folder under storage: one plain path component."""
    require(bool(value.strip()) and value not in (".", "..") and not any(c in value for c in "/\\\0"),
             name, value, "must be a plain name (not empty, no path separators), e.g. ssl-openkbp")
