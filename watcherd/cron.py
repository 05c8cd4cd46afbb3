"""Cron expressions (Vixie semantics via cronsim) evaluated in a time zone; pure fire-time math.

(Interface stub: the time-math helper fills in the bodies; signatures are the contract.)
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

__all__ = ["CronRule", "describe", "fires_between", "make_cron", "next_fire"]


@dataclass(frozen=True, slots=True, kw_only=True)
class CronRule:
    """A validated cron rule; start/end are naive wall times in `zone`."""

    expression: str
    time_zone: str = "UTC"
    zone: str = "UTC"
    start_time: datetime | None = None
    end_time: datetime | None = None


def make_cron(
    expression: object,
    time_zone: object = None,
    start_time: object = None,
    end_time: object = None,
) -> CronRule:
    """Validate; raise ValidationError(message, key)."""
    raise NotImplementedError


def next_fire(rule: CronRule, anchor: datetime, after: datetime) -> datetime | None:
    """First slot strictly after `after` and not before `anchor` (aware UTC), or None."""
    raise NotImplementedError


def fires_between(
    rule: CronRule, anchor: datetime, after: datetime, until: datetime, limit: int
) -> list[datetime]:
    """The last `limit` slots in (after, until], oldest first."""
    raise NotImplementedError


def describe(rule: CronRule) -> str:
    """The trigger in words."""
    raise NotImplementedError
