"""Triggers in words, as check-config, the API and the web page show them."""

from __future__ import annotations

from datetime import timedelta

from watcherd.core import cron, recurrence
from watcherd.core.durations import format_duration
from watcherd.core.models import CronTrigger, RecurrenceTrigger, Schedule

__all__ = ["interval_words", "trigger_words"]


def trigger_words(schedule: Schedule) -> str:
    """ "every 15 minutes", "when a file changes in inbox/incoming, checked every 5 min"."""
    trigger = schedule.trigger
    if isinstance(trigger, RecurrenceTrigger):
        text = recurrence.describe(trigger.recurrence)
        if trigger.end_time is not None:
            text += f", until {trigger.end_time:%Y-%m-%d %H:%M}"
        return text
    if isinstance(trigger, CronTrigger):
        return cron.describe(trigger.cron)
    where = "/".join(p for p in (trigger.datastore, trigger.path_on_datastore) if p)
    text = f"when a file changes in {where}"
    if trigger.pattern != ("*",):
        text += " matching " + " or ".join(trigger.pattern)
    return text + f", checked every {interval_words(trigger.polling_interval)}"


def interval_words(value: timedelta) -> str:
    """`5 min` for whole minutes, else the duration string (`30s`)."""
    minutes, rest = divmod(value, timedelta(minutes=1))
    return f"{minutes} min" if minutes and not rest else format_duration(value)
