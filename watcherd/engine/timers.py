"""Time schedules: one heap of computed deadlines, one task, no periodic tick.

The task sleeps until the earliest deadline or a wake-up (a schedule armed, changed or
removed). Every slot due at the same instant is committed in one transaction that inserts
its runs and advances the schedules' cursors, then handed to the runner.

What a slot's commit needs (its run, the schedule's next slot, the stored hint) depends only
on the schedule and the slot, so the task wakes a little before the instant (the lead: the
measured cost of that many slots, twice over, at least MIN_LEAD) and prepares it; at the
instant only the concurrency gate (which counts the runs active then) and the commit remain.
It waits for the instant itself in a precise sleep (`Clock.sleep_until`): within ~0.1 ms of
it, where a plain asyncio sleep wakes up to a millisecond late. Nothing is committed before
its instant, and nothing prepared is used once the schedules or pipelines have changed since
(the book's `version`, or a re-arm): it is computed again.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog

from watcherd.core.memo import PerObject
from watcherd.core.models import CronTrigger, RecurrenceTrigger, Schedule
from watcherd.core.runs import NewRun, concurrency_gate
from watcherd.core.slots import TimeTrigger, hint_key, next_slot
from watcherd.core.timefmt import format_utc
from watcherd.engine.clock import PRECISE_LAST, Clock
from watcherd.engine.metrics import Metrics
from watcherd.engine.ports import SlotBatch

__all__ = ["Armed", "Timers"]

log = structlog.get_logger(__name__)

SlotRun = Callable[[Schedule, datetime], "NewRun | None"]  # None: schedule or pipeline Disabled
# Store, hand to the runner, and return what was recorded (a fenced-out schedule's is not).
Commit = Callable[[list[SlotBatch], datetime], Awaitable[list[SlotBatch]]]
ActiveRuns = Callable[[str], tuple[int, int]]  # schedule id → (queued, running)
Version = Callable[[], int]  # bumped by every change to the schedules or pipelines


@dataclass(slots=True)
class Armed:
    """A time schedule's timer state."""

    schedule: Schedule
    trigger: TimeTrigger
    anchor: datetime
    cursor: datetime  # the last slot handled (run, skipped or passed)
    due: datetime | None = None
    gen: int = 0
    error: str | None = None


# Next slots computed in one pass, by (Recurrence or CronRule, end_time, anchor, after)
SameRules = PerObject[datetime | None]

MIN_LEAD = 0.002  # s before a slot's instant when its commit is prepared, at least
MAX_LEAD = 0.5  # ... and at most (a batch that takes longer to prepare commits that late)
_FIRST_COST = 1e-4  # s to prepare one slot, until measured


@dataclass(slots=True)
class _Ahead:
    """One slot's commit, prepared before its instant for one armed generation."""

    gen: int
    version: int
    due: datetime
    run: NewRun | None  # before the concurrency gate
    next_due: datetime | None
    error: str | None  # the next slot could not be computed
    key: str  # the stored next slot's hint_key


class Timers:
    """Owns the deadlines of every armed time schedule."""

    def __init__(
        self,
        *,
        clock: Clock,
        metrics: Metrics,
        slot_run: SlotRun,
        commit: Commit,
        active_runs: ActiveRuns,
        version: Version = lambda: 0,
    ) -> None:
        self.clock = clock
        self.metrics = metrics
        self.slot_run = slot_run
        self.commit = commit
        self.active_runs = active_runs
        self.version = version
        self.armed: dict[str, Armed] = {}
        self._heap: list[tuple[datetime, int, str, int]] = []
        self._seq = itertools.count()
        self._gens = itertools.count()  # an Armed's gen: never reused, not even after disarm
        self._wake = asyncio.Event()
        self._at: Counter[datetime] = Counter()  # armed schedules per deadline (live entries)
        self._ahead: dict[str, _Ahead] = {}
        self._cost = _FIRST_COST  # s to prepare one slot (a moving average)

    def arm(
        self,
        schedule: Schedule,
        anchor: datetime,
        cursor: datetime,
        *,
        known_next: tuple[datetime | None] | None = None,
        same: SameRules | None = None,
    ) -> datetime | None:
        """Arm (or re-arm) a time schedule; returns its next deadline. `known_next`: that
        deadline, already computed for this (trigger, anchor, cursor) by the caller (start-up's
        catch-up computes it for every schedule), in a 1-tuple since None means "ended".
        `same`: deadlines computed in this pass, by rule, anchor and cursor (a start arms
        thousands of schedules; those that share a rule and were created together share
        their next slot)."""
        t = schedule.trigger
        if not isinstance(t, RecurrenceTrigger | CronTrigger):
            raise TypeError(f"schedule {schedule.name!r} has no time trigger")
        old = self.armed.get(schedule.id)
        a = Armed(
            schedule=schedule,
            trigger=t,
            anchor=anchor,
            cursor=cursor,
            gen=next(self._gens),
        )
        if known_next is None:
            self._advance(a, cursor, same)
        else:
            self._push(a, known_next[0])
        if old is not None:  # (after: a failure above leaves the old one armed and counted)
            self._uncount(old.due)
        self._ahead.pop(schedule.id, None)
        self.armed[schedule.id] = a
        self._wake.set()
        return a.due

    def disarm(self, schedule_id: str) -> None:
        old = self.armed.pop(schedule_id, None)
        self._ahead.pop(schedule_id, None)
        if old is not None:
            self._uncount(old.due)
            self._wake.set()

    def _advance(self, a: Armed, after: datetime, same: SameRules | None = None) -> None:
        due, error = self._next(a, after, same)
        self._set_next(a, due, error)

    def _next(
        self, a: Armed, after: datetime, same: SameRules | None = None
    ) -> tuple[datetime | None, str | None]:
        """(a's first slot after `after`, None), or (None, why it cannot be computed)."""
        t = a.trigger

        def compute() -> datetime | None:
            return next_slot(t, a.anchor, after)

        # The slots are the rule's and the end's: triggers that differ only in options share.
        rule, end = (
            (t.recurrence, t.end_time) if isinstance(t, RecurrenceTrigger) else (t.cron, None)
        )
        try:
            if same is None:
                return compute(), None
            return same.get(rule, end, a.anchor, after, compute=compute), None
        except (ValueError, OverflowError) as exc:  # a bad rule is this schedule's problem only
            return None, f"cannot compute the next fire time: {exc}"

    def _set_next(self, a: Armed, due: datetime | None, error: str | None) -> None:
        if error is not None:
            a.error = error
            log.error("timer_error", schedule=a.schedule.name, error=error)
        self._push(a, due)

    def _push(self, a: Armed, due: datetime | None) -> None:
        a.due = due
        if due is not None:
            heapq.heappush(self._heap, (due, next(self._seq), a.schedule.id, a.gen))
            self._at[due] += 1

    def _uncount(self, due: datetime | None) -> None:
        if due is None:
            return
        left = self._at[due] - 1
        if left > 0:
            self._at[due] = left
        else:
            del self._at[due]

    # ── the loop ─────────────────────────────────────────────────────────────

    def _peek(self) -> datetime | None:
        while self._heap:
            due, _, sid, gen = self._heap[0]
            a = self.armed.get(sid)
            if a is None or a.gen != gen or a.due != due:
                heapq.heappop(self._heap)
                continue
            return due
        return None

    async def run(self) -> None:
        while True:
            self._wake.clear()
            due = self._peek()
            if due is None:
                await self._wake.wait()
                continue
            lead = min(MAX_LEAD, max(MIN_LEAD, 2 * self._cost * self._at[due]))
            # (plus what a plain sleep may overshoot by, so that the prepared commit waits
            # for its instant in the precise sleep, not the other way round)
            early = timedelta(seconds=lead + PRECISE_LAST)
            if await self.clock.sleep_until(due - early, self._wake):
                continue
            self._prepare(due)
            if await self.clock.sleep_until(due, self._wake, precise=True):
                continue  # what was prepared stays, for the schedules not re-armed since
            await self._fire_due()

    def _prepare(self, until: datetime) -> None:
        """Prepare the commit of every armed slot due at `until` or before (see the module
        doc): a walk of the heap's top, which holds exactly those entries."""
        heap, todo, same, version = self._heap, [0], SameRules(), self.version()
        started, n = time.perf_counter(), 0
        while todo:
            i = todo.pop()
            if i >= len(heap) or heap[i][0] > until:
                continue  # (the heap's order: nothing below is due sooner)
            todo += (2 * i + 1, 2 * i + 2)
            due, _, sid, gen = heap[i]
            a = self.armed.get(sid)
            if a is None or a.gen != gen or a.due != due:
                continue  # superseded
            ahead = self._ahead.get(sid)
            if ahead is None or (ahead.gen, ahead.version, ahead.due) != (gen, version, due):
                self._ahead[sid] = self._compute(a, due, version, same)
                n += 1
        if n:
            cost = (time.perf_counter() - started) / n
            self._cost += (cost - self._cost) / 4

    def _compute(
        self, a: Armed, due: datetime, version: int, same: SameRules | None = None
    ) -> _Ahead:
        next_due, error = self._next(a, due, same)
        key = hint_key(a.trigger, a.anchor, due)
        run = self.slot_run(a.schedule, due)
        return _Ahead(a.gen, version, due, run, next_due, error, key)

    async def _fire_due(self) -> None:
        now = self.clock.now()
        batch: list[SlotBatch] = []
        lateness: list[float] = []
        pending: Counter[str] = Counter()
        version = self.version()
        while (due := self._peek()) is not None and due <= now:
            _, _, sid, _ = heapq.heappop(self._heap)
            a = self.armed[sid]
            self._uncount(due)
            ahead = self._ahead.pop(sid, None)
            if ahead is None or (ahead.gen, ahead.version, ahead.due) != (a.gen, version, due):
                ahead = self._compute(a, due, version)  # not prepared, or changed since
            runs = self._gated(a.schedule, ahead.run, pending)
            lateness.append((now - due).total_seconds())
            a.cursor = due
            self._set_next(a, ahead.next_due, ahead.error)
            hint = None if a.error else (ahead.key, a.due)
            batch.append(SlotBatch(sid, due, runs, hint=hint))
        if not batch:
            return
        recorded = await self.commit(batch, now)
        committed = self.clock.now()
        for late in lateness:
            self.metrics.timer_lateness.observe(max(0.0, late + (committed - now).total_seconds()))
        for b in recorded:
            armed = self.armed.get(b.schedule_id)
            for r in b.runs:
                log.info(
                    "slot_fired",
                    schedule=armed.schedule.name if armed else b.schedule_id,
                    slot=format_utc(b.cursor),
                    run_id=r.id,
                    status=r.status.value,
                )

    def _gated(self, s: Schedule, run: NewRun | None, pending: Counter[str]) -> list[NewRun]:
        if run is None:
            return []
        queued, running = self.active_runs(s.id)
        assert isinstance(s.trigger, RecurrenceTrigger | CronTrigger)
        why = concurrency_gate(s.trigger.options, queued=queued + pending[s.id], running=running)
        if why is not None:
            return [run.skipped(why)]
        pending[s.id] += 1
        return [run]
