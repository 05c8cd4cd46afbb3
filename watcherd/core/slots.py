"""Pure fire-time dispatch over the two time trigger kinds (recurrence and cron)."""

from __future__ import annotations

from datetime import datetime

from watcherd.core import cron, recurrence
from watcherd.core.models import CronTrigger, RecurrenceTrigger

__all__ = ["anchor_for", "creation_fire", "next_slot", "slots_between", "trigger_key"]

TimeTrigger = RecurrenceTrigger | CronTrigger


def next_slot(trigger: TimeTrigger, anchor: datetime, after: datetime) -> datetime | None:
    """First slot strictly after `after` (aware UTC), or None when the schedule has ended."""
    if isinstance(trigger, RecurrenceTrigger):
        return recurrence.next_fire(trigger.recurrence, anchor, after, trigger.end_time)
    return cron.next_fire(trigger.cron, anchor, after)


def slots_between(
    trigger: TimeTrigger, anchor: datetime, after: datetime, until: datetime, limit: int
) -> list[datetime]:
    """The last `limit` slots in (after, until], oldest first."""
    if limit <= 0:
        return []
    if isinstance(trigger, RecurrenceTrigger):
        return recurrence.fires_between(
            trigger.recurrence, anchor, after, until, limit, trigger.end_time
        )
    return cron.fires_between(trigger.cron, anchor, after, until, limit)


def anchor_for(trigger: TimeTrigger, created_at: datetime) -> datetime:
    """start_time as an instant, else the creation/change instant truncated to the second."""
    if isinstance(trigger, RecurrenceTrigger):
        return recurrence.anchor_for(trigger.recurrence, created_at)
    return cron.anchor_for(trigger.cron, created_at)


def creation_fire(trigger: TimeTrigger, anchor: datetime) -> datetime | None:
    """The creation fire's instant, for recurrences without start_time (SPEC §3.1)."""
    if isinstance(trigger, RecurrenceTrigger):
        return recurrence.creation_fire(trigger.recurrence, anchor)
    return None


def trigger_key(trigger: TimeTrigger) -> str:
    """A stable text of what defines the slots: a change re-anchors the schedule."""
    if isinstance(trigger, RecurrenceTrigger):
        r = trigger.recurrence
        return repr(
            (
                "recurrence",
                r.frequency,
                r.interval,
                r.start_time,
                r.zone,
                r.hours,
                r.minutes,
                r.week_days,
            )
        )
    c = trigger.cron
    return repr(("cron", c.expression, c.zone, c.start_time))
