"""Azure ML's ScheduleRecurrence: validation with its messages, and pure fire-time math.

Slots are computed in the recurrence's zone and returned as aware UTC instants; nothing here
reads the clock. DST policy: Minute and Hour recurrences count elapsed time, `anchor + k ·
interval`, so they fire in both passes of an autumn fold and simply have no slot at wall times
that do not exist. Day, Week and Month recurrences follow the wall clock: a slot whose local
time does not exist (spring-forward gap) fires at the first instant after the gap, and all
nonexistent slots of one gap collapse into that single run; a slot whose local time is
ambiguous (autumn fold) fires once, at its first occurrence (fold=0).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum
from functools import lru_cache

from watcherd.core.errors import ValidationError
from watcherd.core.patterns import Pattern, walls
from watcherd.core.timezones import resolve_zone
from watcherd.core.wallclock import (
    as_utc,
    last_slots,
    parse_local_datetime,
    reject_offset,
    to_wall,
    wall_to_utc,
)

__all__ = [
    "FREQUENCIES",
    "MAX_INTERVAL",
    "WEEK_DAYS",
    "Recurrence",
    "anchor_for",
    "creation_fire",
    "describe",
    "fires_between",
    "make_recurrence",
    "next_fire",
]

FREQUENCIES = ("Minute", "Hour", "Day", "Week", "Month")
# SPEC §3.1 rule 2b: an interval spans at most 100 years (36524 days), so that no slot can
# fall past year 9999 (watcherd's rule, §11).
MAX_INTERVAL = {"Minute": 52_594_560, "Hour": 876_576, "Day": 36_524, "Week": 5_217, "Month": 1_200}
WEEK_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_TIME_OF_DAY = re.compile(r"[0-9]{1,2}:[0-9]{2}")
_ELAPSED = {"Minute": timedelta(minutes=1), "Hour": timedelta(hours=1)}
_TINY = timedelta(microseconds=1)


@dataclass(frozen=True, slots=True, kw_only=True)
class Recurrence:
    """A validated recurrence. `start_time` is naive wall time in `zone`.

    `v2` marks an Azure ML v2 recurrence (SPEC §13, built by `core.v2`): a slot exactly at
    `start_time` fires even with a pattern, and Month takes hours, minutes, week days and
    `month_days`."""

    frequency: str  # Minute | Hour | Day | Week | Month
    interval: int
    start_time: datetime | None = None
    time_zone: str = "UTC"  # as given (Windows or IANA name)
    zone: str = "UTC"  # resolved IANA name
    hours: tuple[int, ...] | None = None
    minutes: tuple[int, ...] | None = None
    week_days: tuple[str, ...] | None = None
    month_days: tuple[int, ...] | None = None  # v2 Month only
    v2: bool = False

    def to_dict(self) -> dict[str, object]:
        """The recurrence's keys as the API and TOML export show them (None omitted)."""
        out: dict[str, object] = {"frequency": self.frequency, "interval": self.interval}
        if self.start_time is not None:
            out["start_time"] = self.start_time.isoformat(timespec="seconds")
        out["time_zone"] = self.time_zone
        for key in ("hours", "minutes", "week_days"):
            value = getattr(self, key)
            if value is not None:
                out[key] = list(value)
        return out


def _time_of_day(value: object, hours: object, minutes: object) -> tuple[int, int]:
    if hours is not None or minutes is not None:
        raise ValidationError("Can not specify time_of_day and hours or minutes.", "time_of_day")
    if not isinstance(value, str) or not _TIME_OF_DAY.fullmatch(value):
        raise ValidationError("time_of_day should be in the format hh:mm.", "time_of_day")
    hour, minute = (int(part) for part in value.split(":"))
    if hour > 23:
        raise ValidationError("Time of day hour value must be between 0 and 23.", "time_of_day")
    if minute > 59:
        raise ValidationError("Time of day minute value must be between 0 and 59.", "time_of_day")
    return hour, minute


def _ints(value: object, top: int, message: str, key: str) -> tuple[int, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list | tuple):
        raise ValidationError(message, key)
    for item in value:
        if isinstance(item, bool) or not isinstance(item, int) or not 0 <= item <= top:
            raise ValidationError(message, key)
    return tuple(value)


def _days(value: object) -> tuple[str, ...] | None:
    message = (
        "Week days must be a list of str, accepted values: Monday, Tuesday, Wednesday, "
        "Thursday, Friday, Saturday, Sunday."
    )
    if value is None:
        return None
    if not isinstance(value, list | tuple) or any(d not in WEEK_DAYS for d in value):
        raise ValidationError(message, "week_days")
    return tuple(value)


def make_recurrence(
    frequency: object,
    interval: object,
    start_time: object = None,
    time_zone: object = None,
    hours: Sequence[object] | None = None,
    minutes: Sequence[object] | None = None,
    week_days: Sequence[object] | None = None,
    time_of_day: object = None,
) -> Recurrence:
    """Validate as Azure ML does (SPEC §3.1); raise ValidationError(message, key).

    Construction checks come first (start_time tzinfo, time_of_day, start_time format), then
    rules 1–9 in order; the first failure wins. `time_of_day` becomes `hours=(h,)`,
    `minutes=(m,)`. `time_zone` None means "UTC".
    """
    if start_time is not None:
        reject_offset(start_time, "start_time")
    raw_hours: object = hours
    raw_minutes: object = minutes
    if time_of_day is not None:
        hour, minute = _time_of_day(time_of_day, hours, minutes)
        raw_hours, raw_minutes = [hour], [minute]
    start = None if start_time is None else parse_local_datetime(start_time, "start_time")

    if not isinstance(frequency, str) or frequency not in FREQUENCIES:
        raise ValidationError(
            "Invalid value for frequency, only one of Minute, Hour, Day, Week, or Month accepted",
            "frequency",
        )
    if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
        raise ValidationError("Interval must be an integer greater than 0.", "interval")
    if interval > (top := MAX_INTERVAL[frequency]):
        raise ValidationError(
            f"Interval must be at most {top} for frequency {frequency}.", "interval"
        )
    if raw_hours is not None and frequency not in ("Day", "Week"):
        raise ValidationError("Can only specify hours if frequency is Week or Day.", "hours")
    if raw_minutes is not None and frequency not in ("Day", "Week"):
        raise ValidationError("Can only specify minutes if frequency is Week or Day.", "minutes")
    if week_days is not None and frequency != "Week":
        raise ValidationError("Can only specify week days if frequency is Week.", "week_days")
    hour_list = _ints(raw_hours, 23, "Hours must be between 0 and 23.", "hours")
    minute_list = _ints(raw_minutes, 59, "Minutes must be between 0 and 59.", "minutes")
    day_list = _days(week_days)
    given: object = "UTC" if time_zone is None else time_zone
    zone = resolve_zone(given)
    return Recurrence(
        frequency=frequency,
        interval=interval,
        start_time=start,
        time_zone=given.value if isinstance(given, Enum) else str(given),
        zone=zone,
        hours=hour_list,
        minutes=minute_list,
        week_days=day_list,
    )


def anchor_for(rec: Recurrence, created_at: datetime) -> datetime:
    """The anchor: `start_time` (wall time in the zone, DST rule) or `created_at` to the second."""
    if rec.start_time is not None:
        return wall_to_utc(rec.start_time, rec.zone)
    return as_utc(created_at, "created_at").replace(microsecond=0)


def creation_fire(rec: Recurrence, anchor: datetime) -> datetime | None:
    """The fire at creation: the anchor itself when there is no `start_time`, else None."""
    return as_utc(anchor, "anchor") if rec.start_time is None else None


def _has_pattern(rec: Recurrence) -> bool:
    return (
        rec.hours is not None
        or rec.minutes is not None
        or rec.week_days is not None
        or rec.month_days is not None
    )


def _anchor_wall(rec: Recurrence, anchor: datetime) -> datetime:
    # The anchor's own wall time, as given: a start_time inside a gap keeps its 02:30.
    return rec.start_time if rec.start_time is not None else to_wall(anchor, rec.zone)


@lru_cache(maxsize=1024)
def _pattern(rec: Recurrence, aw: datetime) -> Pattern:
    days = None if rec.week_days is None else tuple(WEEK_DAYS.index(d) for d in rec.week_days)
    return Pattern(
        rec.frequency,
        rec.interval,
        aw,
        hours=rec.hours,
        minutes=rec.minutes,
        week_days=days,
        month_days=rec.month_days,
        v2=rec.v2,
    )


def _end_utc(rec: Recurrence, end_time: datetime | None) -> datetime | None:
    if end_time is None:
        return None
    if end_time.tzinfo is not None:
        return as_utc(end_time)
    return wall_to_utc(end_time, rec.zone)


def _elapsed_slots(rec: Recurrence, anchor: datetime, floor: datetime) -> Iterator[datetime]:
    step = rec.interval * _ELAPSED[rec.frequency]
    k = 0 if floor < anchor else (floor - anchor) // step + 1  # a jump, not a walk
    while True:
        try:
            slot = anchor + k * step
        except OverflowError:
            return
        yield slot
        k += 1


def _wall_slots(rec: Recurrence, anchor: datetime, floor: datetime) -> Iterator[datetime]:
    try:
        floor_wall = to_wall(floor, rec.zone)
    except OverflowError:
        if floor.year > 1:
            return
        floor_wall = datetime.min
    last = floor
    for wall in walls(_pattern(rec, _anchor_wall(rec, anchor)), floor_wall):
        # Walls ≤ floor_wall fire at or before `floor` (the DST rule is monotonic).
        if wall <= floor_wall:
            continue
        try:
            slot = wall_to_utc(wall, rec.zone)
        except OverflowError:
            return
        # Not above `last`: a collapsed gap, or a fold's first pass while `floor` is in
        # its second.
        if slot > last:
            yield slot
            last = slot


def _slots_after(
    rec: Recurrence, anchor: datetime, after: datetime, end: datetime | None
) -> Iterator[datetime]:
    """Slots > `after` in increasing order (aware UTC), none after `end`."""
    if rec.start_time is None and anchor > after:
        if end is not None and anchor > end:
            return
        yield anchor  # the creation fire
    if rec.start_time is None or (_has_pattern(rec) and not rec.v2):
        floor = max(after, anchor)  # strictly after the anchor (fired at creation, or excluded)
    else:
        floor = max(after, anchor - _TINY)  # v2, or no pattern: a slot at start_time fires
    gen = _elapsed_slots if rec.frequency in _ELAPSED else _wall_slots
    for slot in gen(rec, anchor, floor):
        if end is not None and slot > end:
            return
        yield slot


def next_fire(
    rec: Recurrence, anchor: datetime, after: datetime, end_time: datetime | None = None
) -> datetime | None:
    """First slot strictly after `after` (aware UTC in, aware UTC out), or None.

    Args:
        rec: The recurrence.
        anchor: From `anchor_for`: start_time in UTC, or the creation instant.
        after: Any aware instant; the answer is strictly later.
        end_time: Naive wall time in the recurrence's zone (or aware); no slot after it.

    Returns:
        Without `start_time` the anchor itself is a slot (the creation fire), followed by the
        pattern's slots after it. With `start_time`, slots ≥ the anchor, except that with
        hours/minutes/week_days a slot exactly at the anchor does not fire.
    """
    anchor, after = as_utc(anchor, "anchor"), as_utc(after, "after")
    return next(_slots_after(rec, anchor, after, _end_utc(rec, end_time)), None)


_WINDOW_MAX = 3_000_000  # days: past any two instants a schedule can see (years 1900–9999)


def _window(rec: Recurrence, limit: int) -> timedelta:
    """About `limit` slots' worth of time (last_slots widens it when slots cluster); never
    more than datetime can hold, whatever the interval of a stored schedule."""
    if rec.frequency in _ELAPSED:
        days = rec.interval * (limit + 1) * (_ELAPSED[rec.frequency] / timedelta(days=1))
    elif rec.frequency == "Month":
        days = 31 * rec.interval * (limit + 1)
    else:
        per_period = len(rec.hours or (0,)) * len(rec.minutes or (0,))
        per_period *= len(rec.week_days or (0,))
        days = rec.interval * (7 if rec.frequency == "Week" else 1) * (limit + 1) / per_period
    return timedelta(days=min(days, _WINDOW_MAX))


def fires_between(
    rec: Recurrence,
    anchor: datetime,
    after: datetime,
    until: datetime,
    limit: int,
    end_time: datetime | None = None,
) -> list[datetime]:
    """The last `limit` slots in (after, until], oldest first (the slots of `next_fire`)."""
    anchor, after, until = as_utc(anchor, "anchor"), as_utc(after), as_utc(until)
    end = _end_utc(rec, end_time)
    if rec.frequency in _ELAPSED:
        # Pure arithmetic, so catching up a month of Minute/1 costs `limit` slots.
        step = rec.interval * _ELAPSED[rec.frequency]
        top = until if end is None else min(until, end)
        if limit <= 0 or top < anchor or top <= after:
            return []
        k_top = (top - anchor) // step
        k_low = 0 if after < anchor else (after - anchor) // step + 1
        return [anchor + k * step for k in range(max(k_low, k_top - limit + 1), k_top + 1)]
    return last_slots(
        lambda x: _slots_after(rec, anchor, x, end), after, until, limit, _window(rec, limit)
    )


def _plural(n: int, unit: str) -> str:
    return f"every {unit}" if n == 1 else f"every {n} {unit}s"


def _at(rec: Recurrence) -> str:
    st = rec.start_time
    hours = rec.hours or ((st.hour,) if st else None)
    minutes = rec.minutes or ((st.minute,) if st else None)
    if hours is None and minutes is None:
        return ""
    if minutes is None:
        return f" at hour {_nums(hours)} (minute of creation)"
    if hours is None:
        return f" at minute {_nums(minutes)} (hour of creation)"
    pairs = sorted({(h, m) for h in hours for m in minutes})
    if len(pairs) <= 6:
        return " at " + ", ".join(f"{h:02d}:{m:02d}" for h, m in pairs)
    return f" at minutes {_nums(minutes)} of hours {_nums(hours)}"


def _nums(values: Sequence[int] | None) -> str:
    return ", ".join(str(v) for v in sorted(set(values or ())))


def describe(rec: Recurrence) -> str:
    """The trigger in words, e.g. "every 2 days at 04:50" or
    "every week on Monday, Friday at 04:50 (Pacific Standard Time)"."""
    n, st = rec.interval, rec.start_time
    if rec.frequency in _ELAPSED:
        text = _plural(n, rec.frequency.lower())
    elif rec.frequency == "Month" and rec.v2 and _has_pattern(rec):
        text = _plural(n, "month") + _month_days(rec) + (_at(rec) or " at the time of creation")
    elif rec.frequency == "Month":
        text = _plural(n, "month")
        text += f" on day {st.day} at {st:%H:%M}" if st else " on the day and time of creation"
    elif rec.frequency == "Day":
        text = _plural(n, "day") + (_at(rec) or " at the time of creation")
    else:
        if rec.week_days:
            days = ", ".join(sorted(set(rec.week_days), key=WEEK_DAYS.index))
        else:
            days = f"{st:%A}" if st else "the weekday of creation"
        text = f"{_plural(n, 'week')} on {days}" + (_at(rec) or " at the time of creation")
    if rec.zone != "UTC":
        text += f" ({rec.time_zone})"
    if st is not None:
        text += f", starting {st:%Y-%m-%d %H:%M}"
    elif rec.v2:
        text += ", first run on creation"
    return text


def _month_days(rec: Recurrence) -> str:
    """ " on day 1, 15 and every Monday" for a v2 Month pattern."""
    parts = []
    if rec.month_days:
        parts.append(f"day {_nums(rec.month_days)}")
    if rec.week_days:
        days = sorted(set(rec.week_days), key=WEEK_DAYS.index)
        parts.append("every " + ", ".join(days))
    if not parts:
        st = rec.start_time
        parts.append(f"day {st.day}" if st else "the day of creation")
    return " on " + " and ".join(parts)
