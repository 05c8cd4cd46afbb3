"""The `trigger` key of a schedule (Azure ML v2 syntax, SPEC §13) as a config converter.

`core.v2` checks the table and computes nothing from the clock; this module reports its
problems at their key paths and turns an exact `${VAR}` integer into an integer, as every
numeric key of the file does (SPEC §2).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from watcherd.config.schema import At, EnvStr, Invalid
from watcherd.core.v2 import V2Trigger, parse_v2_trigger

__all__ = ["V2_HINT_KEYS", "as_v2_trigger"]

# Keys that belong inside `trigger` when a v2 schedule writes them beside it.
V2_HINT_KEYS = ("start_time", "end_time", "time_zone", "timezone", "frequency", "interval",
                "schedule", "expression")  # fmt: skip
_INT_KEYS = ("interval",)
_PATTERN_INT_KEYS = ("hours", "minutes", "month_days")


def _env_int(value: object) -> object:
    if isinstance(value, EnvStr) and value.strip().lstrip("-").isdigit():
        return int(value)
    return value


def _env_ints(table: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: _env_int(v) if k in _INT_KEYS else v for k, v in table.items()}
    for key in ("schedule", "pattern"):
        pattern = out.get(key)
        if isinstance(pattern, Mapping):
            fixed = {}
            for k, v in pattern.items():
                if k in _PATTERN_INT_KEYS:
                    v = [_env_int(x) for x in v] if isinstance(v, list) else _env_int(v)
                fixed[k] = v
            out[key] = fixed
    return out


def as_v2_trigger(value: object, at: At) -> V2Trigger:
    """The `trigger` table into a checked V2Trigger; every problem at its own key path."""
    if isinstance(value, Mapping):
        value = _env_ints(value)
    trigger, problems = parse_v2_trigger(value)
    if trigger is not None:
        return trigger
    for path, message in problems:
        where = at
        for part in path:
            where = where / part
        where.error(message)
    raise Invalid(None)
