"""Cron expressions (Vixie semantics via cronsim) evaluated in a time zone; pure fire-time math.

cronsim matches naive local wall times; we map them to UTC ourselves. DST policy: when the hour
field is fixed (a number, list or range), the rule behaves like a Day recurrence: a matching
local time that does not exist fires at the first instant after the gap (all of one gap
collapse into one run) and an ambiguous one fires once, at its first occurrence. When the hour
field is `*` or a step (`*/2`, `0-23/3`), the rule counts elapsed time: it fires at every
instant whose local time matches, so twice for times in an autumn fold and never for times that
do not exist. A cron rule has no creation fire.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum
from functools import lru_cache

from cronsim import CronSim, CronSimError

from watcherd.core.errors import ValidationError
from watcherd.core.timezones import resolve_zone
from watcherd.core.wallclock import (
    as_utc,
    fold_length,
    last_slots,
    parse_local_datetime,
    to_wall,
    wall_instants,
    wall_to_utc,
)

__all__ = [
    "CronRule",
    "anchor_for",
    "creation_fire",
    "describe",
    "fires_between",
    "make_cron",
    "next_fire",
]

_FIELDS = ("minute", "hour", "day-of-month", "month", "day-of-week")
_NAMES = {
    3: "JAN|FEB|MAR|APR|MAY|JUN|JUL|AUG|SEP|OCT|NOV|DEC",
    4: "SUN|MON|TUE|WED|THU|FRI|SAT",
}
_TINY = timedelta(microseconds=1)


@dataclass(frozen=True, slots=True, kw_only=True)
class CronRule:
    """A validated cron rule; start/end are naive wall times in `zone`."""

    expression: str
    time_zone: str = "UTC"
    zone: str = "UTC"
    start_time: datetime | None = None
    end_time: datetime | None = None
    v2: bool = False  # an Azure ML v2 cron trigger: without start_time, fires once at creation

    @property
    def elapsed(self) -> bool:
        """True when the hour field is `*` or a step: the rule counts elapsed time."""
        hour = self.expression.split()[1]
        return hour == "*" or "/" in hour


def _term_re(index: int) -> re.Pattern[str]:
    value = r"\d+" if index not in _NAMES else rf"(?:\d+|{_NAMES[index]})"
    return re.compile(rf"(?:\*|{value}(?:-{value})?)(?:/\d+)?", re.ASCII | re.IGNORECASE)


_TERMS = [_term_re(i) for i in range(5)]


def _check_expression(expression: object) -> str:
    if not isinstance(expression, str):
        raise ValidationError(f"Invalid cron expression {expression!r}: expected a string", "cron")
    return _checked(expression)


@lru_cache(maxsize=4096)
def _checked(expression: str) -> str:
    # Cached (a valid result only: errors are raised afresh): schedules share expressions,
    # and cronsim's parse is the costly part of loading a cron schedule (issue #14).
    def bad(reason: str) -> ValidationError:
        return ValidationError(f"Invalid cron expression {expression!r}: {reason}", "cron")

    fields = expression.split()
    if len(fields) != 5:
        raise bad(f"expected 5 fields (MIN HOUR DOM MON DOW), got {len(fields)}")
    for index, field in enumerate(fields):
        for term in field.split(","):
            if not _TERMS[index].fullmatch(term):
                raise bad(f"bad {_FIELDS[index]} {term!r} (Vixie syntax: * N N-M */S N-M/S)")
    try:
        CronSim(expression, datetime(2000, 1, 1))
    except (CronSimError, ValueError) as exc:
        raise bad(str(exc) or type(exc).__name__) from exc
    return " ".join(fields)


def make_cron(
    expression: object,
    time_zone: object = None,
    start_time: object = None,
    end_time: object = None,
) -> CronRule:
    """Validate; raise ValidationError(message, key).

    Args:
        expression: Five fields `MIN HOUR DOM MON DOW` (names like MON/JAN allowed); cronsim's
            extensions (L, W, #, seconds) are refused. Stored with single spaces.
        time_zone: An Azure ML TimeZone name or IANA name; None means UTC.
        start_time / end_time: Naive datetimes or `YYYY-MM-DDThh:mm[:ss]` strings.
    """
    normalised = _check_expression(expression)
    given: object = "UTC" if time_zone is None else time_zone
    zone = resolve_zone(given)
    start = None if start_time is None else parse_local_datetime(start_time, "start_time")
    end = None if end_time is None else parse_local_datetime(end_time, "end_time")
    return CronRule(
        expression=normalised,
        time_zone=given.value if isinstance(given, Enum) else str(given),
        zone=zone,
        start_time=start,
        end_time=end,
    )


def anchor_for(rule: CronRule, created_at: datetime) -> datetime:
    """The anchor: `start_time` (wall time in the zone, DST rule) or `created_at` to the second."""
    if rule.start_time is not None:
        return wall_to_utc(rule.start_time, rule.zone)
    return as_utc(created_at, "created_at").replace(microsecond=0)


@lru_cache(maxsize=4096)
def _parsed(expression: str) -> CronSim:
    """The expression parsed once (a fifth of a next-fire computation was the parse)."""
    return CronSim(expression, datetime(2000, 1, 1))


def cronsim_from(expression: str, after_wall: datetime) -> CronSim:
    """`CronSim(expression, after_wall)` for a naive wall time, from the parsed expression:
    a copy with cronsim's per-iteration state set as its `__init__` sets it for a naive
    forward walk (a test pins the equivalence, so a cronsim that changes it fails there)."""
    it = CronSim.__new__(CronSim)
    it.__dict__.update(_parsed(expression).__dict__)  # its parsed sets are only read
    it.dt = after_wall.replace(microsecond=0)
    it.skip_initial_tick = False
    it.tick_direction = 1
    it.fixup_tz = None
    return it


def _walls(expression: str, after_wall: datetime) -> Iterator[datetime]:
    """Matching naive wall times strictly after `after_wall`, in order (cronsim gives up after
    50 years without a match, or at year 9999)."""
    it = cronsim_from(expression, after_wall)
    while True:
        try:
            wall = next(it)
        except (StopIteration, OverflowError, ValueError):
            return
        yield wall


def _fixed(rule: CronRule, floor: datetime) -> Iterator[datetime]:
    floor_wall = to_wall(floor, rule.zone)
    last = floor
    for wall in _walls(rule.expression, floor_wall):
        try:
            slot = wall_to_utc(wall, rule.zone)
        except OverflowError:
            return
        # Not above `last`: a collapsed gap, or a fold's first pass while `floor` is in
        # its second.
        if slot > last:
            yield slot
            last = slot


def _elapsed(rule: CronRule, floor: datetime) -> Iterator[datetime]:
    # Start early enough to see second-pass instants of a fold `floor` sits in.
    floor_wall = to_wall(floor, rule.zone)
    start = floor_wall - fold_length(floor_wall, rule.zone) - timedelta(seconds=1)
    # In a fold the two passes interleave in wall order; hold each second occurrence back
    # until nothing earlier can come (the next unambiguous wall time, or an earlier first pass).
    held: list[datetime] = []
    for wall in _walls(rule.expression, start):
        try:
            instants = wall_instants(wall, rule.zone)
        except OverflowError:
            break
        if not instants:
            continue  # the wall time does not exist
        while held and (len(instants) == 1 or held[0] < instants[0]):
            if (slot := held.pop(0)) > floor:
                yield slot
        if instants[0] > floor:
            yield instants[0]
        held.extend(instants[1:])
    yield from (slot for slot in held if slot > floor)


def creation_fire(rule: CronRule, anchor: datetime) -> datetime | None:
    """A v2 cron trigger without `start_time` fires once at creation (SPEC §13); v1's never."""
    return as_utc(anchor, "anchor") if rule.v2 and rule.start_time is None else None


def _slots_after(rule: CronRule, anchor: datetime, after: datetime) -> Iterator[datetime]:
    floor = max(after, anchor - _TINY)  # slots ≥ anchor
    try:
        end = None if rule.end_time is None else wall_to_utc(rule.end_time, rule.zone)
        if (first := creation_fire(rule, anchor)) is not None:
            floor = max(after, anchor)  # then the pattern, strictly after the creation fire
            if first > after and (end is None or first <= end):
                yield first
        gen = (_elapsed if rule.elapsed else _fixed)(rule, floor)
        for slot in gen:
            if end is not None and slot > end:
                return
            yield slot
    except OverflowError:
        return


def next_fire(rule: CronRule, anchor: datetime, after: datetime) -> datetime | None:
    """First slot strictly after `after` and not before `anchor` (aware UTC), or None.

    Args:
        rule: The cron rule; its `end_time` bounds the slots.
        anchor: From `anchor_for`: start_time in UTC, or the creation instant (no creation fire).
        after: Any aware instant; the answer is strictly later.
    """
    anchor, after = as_utc(anchor, "anchor"), as_utc(after, "after")
    return next(_slots_after(rule, anchor, after), None)


def fires_between(
    rule: CronRule, anchor: datetime, after: datetime, until: datetime, limit: int
) -> list[datetime]:
    """The last `limit` slots in (after, until], oldest first."""
    anchor, after, until = as_utc(anchor, "anchor"), as_utc(after), as_utc(until)
    return last_slots(
        lambda x: _slots_after(rule, anchor, x), after, until, limit, timedelta(minutes=limit + 1)
    )


def describe(rule: CronRule) -> str:
    """The trigger in words, e.g. "cron '0 9 * * 1-5': at 09:00 on Monday through Friday"."""
    text = f"cron '{rule.expression}'"
    try:
        words = CronSim(rule.expression, datetime(2000, 1, 1)).explain()
    except Exception:  # explain() is best effort; the expression itself was validated
        words = ""
    if words:
        text += f": {words[0].lower()}{words[1:]}"
    if rule.zone != "UTC":
        text += f" ({rule.time_zone})"
    if rule.start_time is not None:
        text += f", starting {rule.start_time:%Y-%m-%d %H:%M}"
    elif rule.v2:
        text += ", first run on creation"
    if rule.end_time is not None:
        text += f", until {rule.end_time:%Y-%m-%d %H:%M}"
    return text
