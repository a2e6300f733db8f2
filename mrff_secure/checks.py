"""Argument checks: each takes the argument's name and value, returns the value, or raises an error
that names both ("min_group_size must be an int >= 2, got 1").

The error is ConfigError unless the caller names another class (PrivacyError in `dp`, SecAggError
in `secagg`, ...). Booleans are refused where a number is asked for: `True` is an int to Python,
never a count or a rate to us.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import Any

from mrff_secure.errors import ConfigError, MrffError


def _bounds(low: float | None, high: float | None, low_open: bool = False, high_open: bool = False) -> str:
    """' >= 1', ' < 1', ' in (0, 1]' ... ('' without bounds)."""

    def text(bound: float) -> str:
        return f"{bound:g}" if isinstance(bound, float) else str(bound)

    if low is not None and high is not None:
        return f" in {'(' if low_open else '['}{text(low)}, {text(high)}{')' if high_open else ']'}"
    if low is not None:
        return f" {'>' if low_open else '>='} {text(low)}"
    if high is not None:
        return f" {'<' if high_open else '<='} {text(high)}"
    return ""


def check_int(
    name: str, value: Any, *, low: int | None = None, high: int | None = None, error: type[MrffError] = ConfigError
) -> int:
    """``value``, an int (not a bool) in [low, high] (either bound optional)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or (low is not None and value < low)
        or (high is not None and value > high)
    ):
        raise error(f"{name} must be an int{_bounds(low, high)}, got {value!r}")
    return value


def check_number(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    error: type[MrffError] = ConfigError,
) -> float:
    """``value`` as a float: a finite int or float (not a bool) within the bounds, each optional and
    inclusive unless ``low_open`` / ``high_open``."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or (low is not None and (value <= low if low_open else value < low))
        or (high is not None and (value >= high if high_open else value > high))
    ):
        raise error(f"{name} must be a finite number{_bounds(low, high, low_open, high_open)}, got {value!r}")
    return float(value)


def check_bool(name: str, value: Any, *, error: type[MrffError] = ConfigError) -> bool:
    """``value``, True or False (not 0, 1 or a string)."""
    if not isinstance(value, bool):
        raise error(f"{name} must be true or false, got {value!r}")
    return value


def check_choice(name: str, value: Any, choices: Collection[str], *, error: type[MrffError] = ConfigError) -> str:
    """``value``, one of ``choices``."""
    if not isinstance(value, str) or value not in choices:
        raise error(f"{name} must be one of {', '.join(repr(str(c)) for c in choices)}, got {value!r}")
    return value


def parse_users(text: str) -> list[int]:
    """'0-99', '3,5,7' or '0-9,20' -> sorted unique ids."""
    users: set[int] = set()
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part:
                lo, hi = (int(x) for x in part.split("-", 1))
                if hi < lo:
                    raise ValueError(part)
                users.update(range(lo, hi + 1))
            elif part:
                users.add(int(part))
    except ValueError as exc:
        raise ConfigError(f"--users must look like 0-99 or 1,2,5, got {text!r}") from exc
    if not users or min(users) < 0:
        raise ConfigError(f"--users must name non-negative ids, got {text!r}")
    return sorted(users)
