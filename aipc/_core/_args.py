"""Argument checks every mechanism shares: one message per kind of mistake."""

from __future__ import annotations

import os

__all__ = ["check_int", "check_mode", "fspath"]


def check_int(name: str, value: object) -> int:
    """``value`` if it is an int (not a bool); ``TypeError`` naming ``name``."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    return value


def check_mode(mode: object) -> int:
    """A permission mask for a created object: an int within 0o777."""
    mode = check_int("mode", mode)
    if not 0 <= mode <= 0o777:
        raise ValueError(f"mode must be a permission mask within 0o777, got {mode!r}")
    return mode


def fspath(path: object, name: str = "path") -> str:
    """A non-empty str path from a str or ``os.PathLike[str]``."""
    p = os.fspath(path)  # type: ignore[call-overload]
    if not isinstance(p, str):
        raise TypeError(
            f"{name} must be a str or os.PathLike[str], not {type(p).__name__}"
        )
    if not p:
        raise ValueError(f"{name} must not be empty")
    return p
