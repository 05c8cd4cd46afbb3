"""Durations and sizes as the config file writes them: `"30s"`, `"2h"`, `"1MiB"`.

A duration is `<integer><unit>` with unit `ms s m h d`; a size is `<integer><unit>` with unit
`B KiB MiB GiB`. `polling_interval` alone may also be a bare number of minutes (Azure ML).
Every parser raises `ValueError` with a message naming the offending value.
"""

from __future__ import annotations

import math
import re
from datetime import timedelta

__all__ = [
    "MAX_DURATION",
    "format_duration",
    "format_size",
    "parse_duration",
    "parse_polling_interval",
    "parse_size",
]

_DURATION = re.compile(r"(\d+)(ms|s|m|h|d)")
_SIZE = re.compile(r"(\d+)(B|KiB|MiB|GiB)")

_UNITS: dict[str, timedelta] = {
    "d": timedelta(days=1),
    "h": timedelta(hours=1),
    "m": timedelta(minutes=1),
    "s": timedelta(seconds=1),
    "ms": timedelta(milliseconds=1),
}
_SIZES: dict[str, int] = {"GiB": 1024**3, "MiB": 1024**2, "KiB": 1024, "B": 1}

MIN_POLLING_INTERVAL = timedelta(seconds=1)
# No duration of the config may reach past year 9999 from any instant a schedule can see
# (issue #11): 100 years, as the longest recurrence interval (SPEC §3.1 rule 2b).
MAX_DURATION = timedelta(days=36524)
_TOO_LONG = "is longer than the maximum 36524d (100 years)"


def parse_duration(text: str) -> timedelta:
    """Parse `<integer><unit>` (unit `ms s m h d`), e.g. `"30s"` → 30 seconds.

    Raises:
        ValueError: not a string of that form.
    """
    if not isinstance(text, str):
        raise ValueError(f'expected a duration string like "30s", got {_show(text)}')
    m = _DURATION.fullmatch(text)
    if m is None:
        raise ValueError(
            f"invalid duration {text!r}: expected <integer><unit>, unit one of ms s m h d"
        )
    count = int(m.group(1))
    unit = _UNITS[m.group(2)]
    if count > MAX_DURATION // unit:
        raise ValueError(f"duration {text!r} {_TOO_LONG}")
    return count * unit


def format_duration(value: timedelta) -> str:
    """The shortest exact `<integer><unit>` form: 2 hours → `"2h"`, 90 s → `"90s"`, 0 → `"0s"`.

    Raises:
        ValueError: negative, or not a whole number of milliseconds.
    """
    if value < timedelta(0):
        raise ValueError(f"negative duration {value}")
    if not value:
        return "0s"
    for unit, size in _UNITS.items():
        count, rest = divmod(value, size)
        if not rest:
            return f"{count}{unit}"
    raise ValueError(f"duration {value} is not a whole number of milliseconds")


def parse_size(text: str) -> int:
    """Parse `<integer><unit>` (unit `B KiB MiB GiB`) into bytes, e.g. `"1MiB"` → 1048576.

    Raises:
        ValueError: not a string of that form.
    """
    if not isinstance(text, str):
        raise ValueError(f'expected a size string like "1MiB", got {_show(text)}')
    m = _SIZE.fullmatch(text)
    if m is None:
        raise ValueError(
            f"invalid size {text!r}: expected <integer><unit>, unit one of B KiB MiB GiB"
        )
    return int(m.group(1)) * _SIZES[m.group(2)]


def format_size(value: int) -> str:
    """The shortest exact size form: 1048576 → `"1MiB"`."""
    if value < 0:
        raise ValueError(f"negative size {value}")
    for unit, size in _SIZES.items():
        if value and value % size == 0:
            return f"{value // size}{unit}"
    return f"{value}B"


def parse_polling_interval(value: object) -> timedelta:
    """A bare number of minutes (Azure ML's unit) or a duration string, at least 1 s.

    Raises:
        ValueError: anything else, or shorter than one second.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(
            f'expected a number of minutes or a duration like "30s", got {_show(value)}'
        )
    if isinstance(value, str):
        interval = parse_duration(value)
    else:
        if not math.isfinite(value):
            raise ValueError(f"invalid polling interval {value!r}")
        if value > MAX_DURATION / timedelta(minutes=1):
            raise ValueError(f"polling interval {value!r} {_TOO_LONG}")
        if value < 0:
            raise ValueError(f"polling interval {value!r} is shorter than 1s")
        interval = timedelta(minutes=value)
    if interval < MIN_POLLING_INTERVAL:
        raise ValueError(f"polling interval {value!r} is shorter than 1s")
    return interval


def _show(value: object) -> str:
    """A short description of a value of the wrong type."""
    return f"{type(value).__name__} {value!r}"
