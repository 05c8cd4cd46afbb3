"""Local wall time ↔ UTC instants, with watcherd's DST rule and local date-time parsing.

The rule (SPEC §3.1), used by Day/Week/Month recurrences and fixed-hour cron: a local time that
does not exist (spring-forward gap) resolves to the first instant after the gap, so every
nonexistent time of one gap lands on the same instant; an ambiguous local time (autumn fold)
resolves to its first occurrence. `wall_instants` instead gives every instant that shows a wall
time (none in a gap, two in a fold) for the elapsed-time rules.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from watcherd.core.errors import ValidationError

__all__ = [
    "YEAR_MAX",
    "YEAR_MIN",
    "as_utc",
    "check_year",
    "fold_length",
    "last_slots",
    "parse_local_datetime",
    "reject_offset",
    "to_wall",
    "wall_instants",
    "wall_to_utc",
]

# start_time / end_time years (issue #11): with intervals of at most 100 years (SPEC §3.1 rule
# 2b) no slot computed from these can pass year 9999, and no zone conversion leaves datetime's
# range at either end.
YEAR_MIN, YEAR_MAX = 1900, 9899

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_WIDEST = timedelta(days=100_000_000)
_SECOND = timedelta(seconds=1)
_LOCAL = r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2})(?::(\d{2}))?"
_LOCAL_RE = re.compile(_LOCAL, re.ASCII)
_OFFSET_RE = re.compile(_LOCAL + r"(?:\.\d+)?\s*(?:[Zz]|[+-]\d{2}(?::?\d{2})?)", re.ASCII)


def as_utc(value: datetime, name: str = "datetime") -> datetime:
    """`value` as an aware UTC datetime; a naive value is a programming error."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, got {value!r}")
    return value.astimezone(UTC)


def to_wall(instant: datetime, zone: str) -> datetime:
    """The naive local wall time that `instant` shows in `zone`."""
    return instant.astimezone(ZoneInfo(zone)).replace(tzinfo=None)


def _both(wall: datetime, zone: str) -> tuple[datetime, datetime]:
    tz = ZoneInfo(zone)
    first = wall.replace(tzinfo=tz, fold=0).astimezone(UTC)
    second = wall.replace(tzinfo=tz, fold=1).astimezone(UTC)
    return first, second


def wall_instants(wall: datetime, zone: str) -> tuple[datetime, ...]:
    """Every UTC instant whose local time in `zone` is `wall`: (), (u,) or (first, second)."""
    first, second = _both(wall, zone)
    if first == second:
        return (first,)
    if first < second:
        return (first, second)  # a fold: the wall time occurs twice
    return ()  # a gap: zoneinfo's fold=0 used the pre-gap offset and landed past the gap


def fold_length(wall: datetime, zone: str) -> timedelta:
    """How far the second occurrence of an ambiguous `wall` lies after its first (else 0)."""
    first, second = _both(wall, zone)
    return max(second - first, timedelta(0))


def wall_to_utc(wall: datetime, zone: str) -> datetime:
    """The instant `wall` (naive, in `zone`) fires at under the DST rule (module docstring)."""
    first, second = _both(wall, zone)
    if first <= second:
        return first
    return _transition(second, first, ZoneInfo(zone))


def _seconds(instant: datetime) -> int:
    return (instant - _EPOCH) // _SECOND


def _transition(before: datetime, after: datetime, tz: ZoneInfo) -> datetime:
    """The first instant in (before, after] with `after`'s UTC offset (whole seconds, as tzdata)."""
    target = after.astimezone(tz).utcoffset()
    lo = _seconds(before)
    hi = -((_EPOCH - after) // _SECOND)  # ceiling
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if (_EPOCH + mid * _SECOND).astimezone(tz).utcoffset() == target:
            hi = mid
        else:
            lo = mid
    return _EPOCH + hi * _SECOND


def reject_offset(value: object, key: str) -> None:
    """Refuse a datetime with tzinfo or a string with an offset, in Azure ML's words."""
    has_tz = isinstance(value, datetime) and value.tzinfo is not None
    if has_tz or (isinstance(value, str) and _OFFSET_RE.fullmatch(value.strip())):
        raise ValidationError(f"Can not specify tzinfo for {key}, use time_zone instead.", key)


def parse_local_datetime(value: object, key: str) -> datetime:
    """A naive local date-time from a naive datetime or a `YYYY-MM-DDThh:mm[:ss]` string.

    Microseconds are dropped (Azure ML keeps whole seconds).

    Raises:
        ValidationError: with `key`, for an offset/tzinfo or any other form.
    """
    reject_offset(value, key)
    if isinstance(value, datetime):
        return check_year(value.replace(microsecond=0, fold=0), key)
    if isinstance(value, str) and (m := _LOCAL_RE.fullmatch(value)):
        try:
            year, month, day, hour, minute, second = (int(g) for g in m.groups(default="0"))
            parsed = datetime(year, month, day, hour, minute, second)
        except ValueError as exc:
            raise ValidationError(f"{key} {value!r} is not a valid date-time: {exc}", key) from exc
        return check_year(parsed, key)
    raise ValidationError(
        f"{key} must be a local date-time YYYY-MM-DDThh:mm[:ss] without an offset, got {value!r}",
        key,
    )


def check_year(value: datetime, key: str) -> datetime:
    """`value` when its year is within YEAR_MIN..YEAR_MAX, else a ValidationError for `key`."""
    if not YEAR_MIN <= value.year <= YEAR_MAX:
        raise ValidationError(
            f"{key} year must be between {YEAR_MIN} and {YEAR_MAX}, got {value.year}", key
        )
    return value


def last_slots(
    slots_after: Callable[[datetime], Iterator[datetime]],
    after: datetime,
    until: datetime,
    limit: int,
    window: timedelta,
) -> list[datetime]:
    """The last `limit` values of `slots_after(after)` that are ≤ `until`, oldest first.

    `slots_after(x)` must yield the slots > x in increasing order. We scan a window ending at
    `until` and widen it (×4) until it holds `limit` slots or reaches `after`, so catching up
    after a long downtime costs about `limit` slots, not every slot of the downtime.
    """
    if limit <= 0 or until <= after:
        return []
    window = max(window, _SECOND)
    while True:
        try:
            start = max(after, until - window)
        except OverflowError:
            start = after
        found: deque[datetime] = deque(maxlen=limit)
        for slot in slots_after(start):
            if slot > until:
                break
            found.append(slot)
        if len(found) >= limit or start == after:
            return list(found)
        window = window * 4 if window < _WIDEST else timedelta.max
