"""Every "when is this schedule due" answer: for the timers, the API and check-config.

A time schedule's timer is (anchor, cursor): the anchor is `start_time` or the instant its
trigger was created or changed; the cursor is the last slot handled. The next slot is the
first one strictly after the cursor. Pure: the caller passes `now`.

Time triggers are v1 `recurrence`, `cron`, and Azure ML v2's `trigger` (SPEC §13), which is a
RecurrenceTrigger or CronTrigger whose rule carries `v2=True` and whose `v2` holds the table as
given: the rule decides the slots (v2's rules live in core.recurrence / core.cron), the table
only how the schedule is shown.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from watcherd.core import cron, recurrence
from watcherd.core.models import (
    CronTrigger,
    RecurrenceTrigger,
    Schedule,
    Source,
    Status,
    StoredSchedule,
)
from watcherd.core.recurrence import WEEK_DAYS, Recurrence

__all__ = [
    "hint_key",
    "TimeTrigger",
    "CatchUp",
    "anchor_for",
    "catch_up",
    "changed_cursor",
    "creation_fire",
    "effective_status",
    "new_timer",
    "next_slot",
    "same_trigger",
    "slots_between",
    "trigger_key",
    "upcoming",
]

EPS = timedelta(microseconds=1)

TimeTrigger = RecurrenceTrigger | CronTrigger


def next_slot(trigger: TimeTrigger, anchor: datetime, after: datetime) -> datetime | None:
    """First slot strictly after `after` (aware UTC), or None when the schedule has ended."""
    if isinstance(trigger, RecurrenceTrigger):
        return recurrence.next_fire(trigger.recurrence, anchor, after, trigger.end_time)
    return cron.next_fire(trigger.cron, anchor, after)


RELOAD_GRACE = timedelta(seconds=1)


def changed_cursor(
    trigger: TimeTrigger, anchor: datetime, cursor: datetime, now: datetime
) -> datetime:
    """The cursor of a running schedule whose trigger changed at `now` but kept its key (its
    `end_time` moved later, say): a slot before `now - RELOAD_GRACE` after `cursor` was not
    due under the old trigger (the timers fire each on time), so it is not run now either:
    no back-fill (SPEC §3.1; `catch_up` covers only slots missed while the daemon was down).
    A slot in the last RELOAD_GRACE still fires, should it not have yet."""
    nxt = next_slot(trigger, anchor, cursor)
    if nxt is not None and nxt <= now - RELOAD_GRACE:
        return now - RELOAD_GRACE
    return cursor


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
    """The creation fire's instant: recurrences (v1, v2) and v2 cron without start_time
    (SPEC §3.1, §13)."""
    if isinstance(trigger, RecurrenceTrigger):
        return recurrence.creation_fire(trigger.recurrence, anchor)
    return cron.creation_fire(trigger.cron, anchor)


# Bump when the slot arithmetic changes: every stored next slot is then computed again.
HINT_VERSION = "2"


def hint_key(
    trigger: TimeTrigger, anchor: datetime, cursor: datetime, *, key: str | None = None
) -> str:
    """What a stored next slot was computed from: the rule (its end included), the anchor and
    the cursor (aware UTC). A stored next slot is used while this text is unchanged, else
    recomputed. `key`: `trigger_key(trigger)`, when the caller has it (a stored row's).
    Instants as POSIX timestamps: a third of `isoformat`'s cost (10k checked at each start)."""
    end = trigger.end_time if isinstance(trigger, RecurrenceTrigger) else trigger.cron.end_time
    rule = key if key is not None else trigger_key(trigger)
    return f"{HINT_VERSION}|{rule}|{end!r}|{anchor.timestamp()!r}|{cursor.timestamp()!r}"


def trigger_key(trigger: TimeTrigger) -> str:
    """A stable text of what defines the slots: a change re-anchors the schedule.

    The recurrence's lists count as sets (SPEC §3.1's "normalised recurrence"): the same
    hours, minutes or days in another order or twice are the same trigger. v1 keys keep their
    form otherwise (stored keys must not change across upgrades, or every schedule would
    re-anchor and fire on creation again; `same_trigger` also accepts a key stored before the
    lists were normalised); v2 keys are marked as such."""
    if isinstance(trigger, RecurrenceTrigger):
        r = trigger.recurrence
        days = (
            None if r.week_days is None else tuple(sorted(set(r.week_days), key=_DAY.__getitem__))
        )
        return _recurrence_key(r, _ints(r.hours), _ints(r.minutes), days, _ints(r.month_days))
    c = trigger.cron
    key = ("cron", c.expression, c.zone, c.start_time)
    return repr(("v2", *key) if c.v2 else key)


def same_trigger(stored: str | None, trigger: TimeTrigger, key: str | None = None) -> bool:
    """Whether a stored trigger key is `trigger`'s: its key (`key`, when the caller has it),
    or the key a watcherd from before the lists were normalised stored (lists as written)."""
    if stored is None:
        return False
    if stored == (key if key is not None else trigger_key(trigger)):
        return True
    if not isinstance(trigger, RecurrenceTrigger):
        return False
    r = trigger.recurrence
    return stored == _recurrence_key(r, r.hours, r.minutes, r.week_days, r.month_days)


def _recurrence_key(
    r: Recurrence,
    hours: tuple[int, ...] | None,
    minutes: tuple[int, ...] | None,
    days: tuple[str, ...] | None,
    month_days: tuple[int, ...] | None,
) -> str:
    v1 = ("recurrence", r.frequency, r.interval, r.start_time, r.zone, hours, minutes, days)
    return repr(("v2", *v1, month_days) if r.v2 else v1)


def _ints(values: tuple[int, ...] | None) -> tuple[int, ...] | None:
    return None if values is None else tuple(sorted(set(values)))


_DAY = {d: i for i, d in enumerate(WEEK_DAYS)}


def new_timer(trigger: TimeTrigger, now: datetime, *, active: bool) -> tuple[datetime, datetime]:
    """(anchor, cursor) of a time schedule whose trigger is created or changed at `now`.

    Active: the creation fire (a recurrence without `start_time`) is the first slot, else the
    first slot after `now` (no back-fill). Inactive (schedule or pipeline Disabled): nothing
    before `now` ever fires, and enabling later moves the cursor to that instant (§3.1)."""
    anchor = anchor_for(trigger, now)
    if not active:
        return anchor, now
    if creation_fire(trigger, anchor) is not None:
        return anchor, anchor - EPS
    return anchor, max(anchor - EPS, now - EPS)


def upcoming(trigger: TimeTrigger, anchor: datetime, cursor: datetime, n: int) -> list[datetime]:
    """The next `n` slots after `cursor` (fewer when the schedule ends)."""
    out: list[datetime] = []
    after = cursor
    while len(out) < n and (nxt := next_slot(trigger, anchor, after)) is not None:
        out.append(nxt)
        after = nxt
    return out


def effective_status(schedule: Schedule, stored: StoredSchedule | None) -> Status:
    """The status a schedule runs with (SPEC §2).

    A declared schedule takes the file's status when it is new, re-added after removal, or
    when the file's status differs from the one last seen in the file; otherwise the stored
    (run-time enable/disable) status stays, across restarts and reloads."""
    # (StrEnum members compare equal to their stored text: no `.value`, 10k times at start)
    if stored is None or stored.status not in _STATUSES:
        return schedule.status
    if schedule.source is Source.FILE and (
        stored.source == Source.REMOVED or stored.file_status != schedule.status
    ):
        return schedule.status
    return Status(stored.status)


_STATUSES = frozenset(Status)


MISSED_LIMIT = 1000  # at most this many missed slots are looked at (the newest ones)


@dataclass(frozen=True, slots=True)
class CatchUp:
    """What to do with the slots a time schedule missed while the daemon was down."""

    run: list[datetime]  # slots to run now, oldest first
    not_run: list[datetime]  # missed slots the policy drops (logged and counted), oldest first
    cursor: datetime  # the new cursor
    # More than MISSED_LIMIT slots were missed: only the newest were looked at, and this is
    # the oldest missed slot (not_run then counts a lower bound).
    oldest: datetime | None = None


def catch_up(
    trigger: TimeTrigger,
    anchor: datetime,
    cursor: datetime,
    now: datetime,
    *,
    run_all_until: datetime | None = None,
) -> CatchUp:
    """Missed slots in (cursor, now] under the trigger's `catch_up` policy (SPEC §3.3):
    "none" runs none, "last" the newest, "all" the newest `max_catch_up`, oldest first.

    Slots up to `run_all_until` all run whatever the policy: they fell due while some replica
    was alive but none owned the schedule (a failover, SPEC §12); the policy governs only the
    time when no daemon ran."""
    if cursor >= now:
        return CatchUp([], [], cursor)
    missed = slots_between(trigger, anchor, cursor, now, MISSED_LIMIT)
    if not missed:
        return CatchUp([], [], cursor)
    owed = [s for s in missed if run_all_until is not None and s <= run_all_until]
    rest = missed[len(owed) :]
    opts = trigger.options
    keep = {"none": 0, "last": 1, "all": opts.max_catch_up}[opts.catch_up]
    kept = rest[-keep:] if keep else []
    oldest = next_slot(trigger, anchor, cursor) if len(missed) == MISSED_LIMIT else None
    if oldest is not None and oldest >= missed[0]:
        oldest = None  # exactly MISSED_LIMIT were missed: all were looked at
    return CatchUp(owed + kept, rest[: len(rest) - len(kept)], max(now, missed[-1]), oldest)
