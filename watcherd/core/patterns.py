"""Wall-time slots of Day, Week and Month recurrences, v1's and v2's (SPEC §3.1, §13).

Pure and naive: every answer is a local wall time in the recurrence's zone; `recurrence` maps
them to instants with the DST rule. Periods are jumped to, never walked, so asking for the next
slot years after the anchor costs the same as asking tomorrow.

- Day: periods of `interval` days from 00:00 of the anchor's date; each slot is an
  hours × minutes pair (a missing list takes the anchor's hour or minute; seconds are 0).
- Week: 7-day blocks from Monday 00:00 of the anchor's week; periods 0, interval, 2·interval…
  on the week days (none: the anchor's weekday), at the hours × minutes pairs.
- Month (v1, and v2 without a pattern): every `interval` months from the anchor's month, on
  the anchor's day and time; a month without that day is skipped.
- Month (v2 with a pattern): in every `interval`-th month counted from the start month, the
  `month_days` that month has plus every day falling on one of `week_days` (neither: the
  anchor's day), at the hours × minutes pairs.
"""

from __future__ import annotations

import calendar
from bisect import bisect_right
from collections.abc import Iterator
from datetime import date, datetime, time, timedelta
from functools import lru_cache

__all__ = ["Pattern", "walls"]

_LAST_YEAR = 9999


@lru_cache(maxsize=256)
def grid(hours: tuple[int, ...], minutes: tuple[int, ...]) -> tuple[time, ...]:
    """Sorted distinct hours × minutes (cached: a dense pattern costs more to build than to
    search)."""
    return tuple(sorted({time(h, m) for h in hours for m in minutes}))


class Pattern:
    """What a wall-time recurrence fires on, with everything derived from the anchor resolved."""

    __slots__ = ("frequency", "interval", "aw", "times", "week_days", "month_days", "v2")

    def __init__(
        self,
        frequency: str,
        interval: int,
        aw: datetime,
        *,
        hours: tuple[int, ...] | None,
        minutes: tuple[int, ...] | None,
        week_days: tuple[int, ...] | None,
        month_days: tuple[int, ...] | None = None,
        v2: bool = False,
    ) -> None:
        self.frequency = frequency
        self.interval = interval
        self.aw = aw  # the anchor's own wall time
        self.times = grid(hours or (aw.hour,), minutes or (aw.minute,))
        self.week_days = tuple(sorted(set(week_days or ()))) or None
        self.month_days = tuple(sorted(set(month_days or ()))) or None
        # v2 Month with any pattern key: days and times from the pattern, not the anchor.
        self.v2 = v2 and bool(hours or minutes or self.week_days or self.month_days)


def walls(p: Pattern, floor_wall: datetime) -> Iterator[datetime]:
    """Slot wall times of `p` from about `floor_wall` on, in increasing order (the first few
    may be ≤ `floor_wall`: the caller drops those). Ends at year 9999."""
    if p.frequency == "Month":
        yield from (_pattern_months if p.v2 else _anchor_months)(p, floor_wall)
        return
    start = floor_wall.date()
    if p.frequency == "Day":
        origin, days, length = p.aw.date(), [0], p.interval
    else:
        origin = p.aw.date() - timedelta(days=p.aw.weekday())
        days, length = list(p.week_days or (p.aw.weekday(),)), 7 * p.interval
    period = max(0, (start - origin).days // length)
    try:
        while True:
            base = origin + timedelta(days=period * length)
            for day in (base + timedelta(days=offset) for offset in days):
                if day >= start:
                    yield from _on(day, p.times, floor_wall, start)
            period += 1
    except OverflowError:  # past year 9999
        return


def _on(
    day: date, times: tuple[time, ...], floor_wall: datetime, start: date
) -> Iterator[datetime]:
    skip = bisect_right(times, floor_wall.time()) if day == start else 0
    return (datetime.combine(day, t) for t in times[skip:])


def _months(p: Pattern, floor_wall: datetime) -> Iterator[tuple[int, int]]:
    """(year, month) of the fired months from the one holding `floor_wall`."""
    first = p.aw.year * 12 + p.aw.month - 1
    n = p.interval
    k = max(0, (floor_wall.year * 12 + floor_wall.month - 1 - first) // n)
    while (year := (first + k * n) // 12) <= _LAST_YEAR:
        yield year, (first + k * n) % 12 + 1
        k += 1


def _anchor_months(p: Pattern, floor_wall: datetime) -> Iterator[datetime]:
    for year, month in _months(p, floor_wall):
        if p.aw.day <= calendar.monthrange(year, month)[1]:
            yield p.aw.replace(year=year, month=month)


def _pattern_months(p: Pattern, floor_wall: datetime) -> Iterator[datetime]:
    start = floor_wall.date()
    for year, month in _months(p, floor_wall):
        for day in _month_days(p, year, month):
            when = date(year, month, day)
            if when >= start:
                yield from _on(when, p.times, floor_wall, start)


def _month_days(p: Pattern, year: int, month: int) -> list[int]:
    first_weekday, length = calendar.monthrange(year, month)
    if p.month_days is None and p.week_days is None:
        return [p.aw.day] if p.aw.day <= length else []
    days = {d for d in p.month_days or () if d <= length}
    for weekday in p.week_days or ():
        days.update(range(1 + (weekday - first_weekday) % 7, length + 1, 7))
    return sorted(days)
