"""Azure ML's ScheduleRecurrence: validation with its messages, and pure fire-time math.

(Interface stub: the time-math helper fills in the bodies; signatures are the contract.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

__all__ = ["Recurrence", "describe", "fires_between", "make_recurrence", "next_fire"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Recurrence:
    """A validated recurrence. `start_time` is naive wall time in `zone`."""

    frequency: str  # Minute | Hour | Day | Week | Month
    interval: int
    start_time: datetime | None = None
    time_zone: str = "UTC"  # as given (Windows or IANA name)
    zone: str = "UTC"  # resolved IANA name
    hours: tuple[int, ...] | None = None
    minutes: tuple[int, ...] | None = None
    week_days: tuple[str, ...] | None = None

    def to_dict(self) -> dict[str, object]:
        """The recurrence's keys as the API and TOML export show them (None omitted)."""
        raise NotImplementedError


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
    """Validate as Azure ML does (SPEC §3.1); raise ValidationError(message, key)."""
    raise NotImplementedError


def next_fire(
    rec: Recurrence, anchor: datetime, after: datetime, end_time: datetime | None = None
) -> datetime | None:
    """First slot strictly after `after` (aware UTC in, aware UTC out), or None."""
    raise NotImplementedError


def fires_between(
    rec: Recurrence,
    anchor: datetime,
    after: datetime,
    until: datetime,
    limit: int,
    end_time: datetime | None = None,
) -> list[datetime]:
    """The last `limit` slots in (after, until], oldest first."""
    raise NotImplementedError


def describe(rec: Recurrence) -> str:
    """The trigger in words, e.g. "every 15 minutes"."""
    raise NotImplementedError
