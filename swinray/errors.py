"""Errors a user can fix: the command line prints one line and ``ok: false``, never a traceback.

Anything else is a bug, or a fault of the machine, and keeps its traceback.
"""
from __future__ import annotations


class UserError(Exception):
    """A problem with the user's settings, data or environment; the message names what and how to fix it."""


class ConfigError(UserError, ValueError):
    """A configuration value or key is invalid; the message names the field and what is valid."""


class DatasetError(UserError, ValueError):
    """A dataset file or folder is unusable; the message names the file and the problem."""


def short_repr(value: object) -> str:
    """A value as an error message quotes it: its repr, cut to 80 characters."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
