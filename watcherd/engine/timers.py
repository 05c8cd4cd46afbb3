"""Time schedules: one heap of computed deadlines, one task, no periodic tick.

The task sleeps until the earliest deadline or a wake-up (a schedule armed, changed or
removed). Every slot due at the same instant is committed in one transaction that inserts
its runs and advances the schedules' cursors, then handed to the runner.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

import structlog

from watcherd.core.memo import PerObject
from watcherd.core.models import CronTrigger, RecurrenceTrigger, Schedule
from watcherd.core.runs import NewRun, concurrency_gate
from watcherd.core.slots import TimeTrigger, hint_key, next_slot
from watcherd.core.timefmt import format_utc
from watcherd.engine.clock import Clock
from watcherd.engine.metrics import Metrics
from watcherd.engine.ports import SlotBatch

__all__ = ["Armed", "Timers"]

log = structlog.get_logger(__name__)

SlotRun = Callable[[Schedule, datetime], "NewRun | None"]  # None: schedule or pipeline Disabled
# Store, hand to the runner, and return what was recorded (a fenced-out schedule's is not).
Commit = Callable[[list[SlotBatch], datetime], Awaitable[list[SlotBatch]]]
ActiveRuns = Callable[[str], tuple[int, int]]  # schedule id → (queued, running)


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
    ) -> None:
        self.clock = clock
        self.metrics = metrics
        self.slot_run = slot_run
        self.commit = commit
        self.active_runs = active_runs
        self.armed: dict[str, Armed] = {}
        self._heap: list[tuple[datetime, int, str, int]] = []
        self._seq = itertools.count()
        self._wake = asyncio.Event()

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
            gen=old.gen + 1 if old else 0,
        )
        if known_next is None:
            self._advance(a, cursor, same)
        else:
            self._push(a, known_next[0])
        self.armed[schedule.id] = a
        self._wake.set()
        return a.due

    def disarm(self, schedule_id: str) -> None:
        if self.armed.pop(schedule_id, None) is not None:
            self._wake.set()

    def _advance(self, a: Armed, after: datetime, same: SameRules | None = None) -> None:
        t = a.trigger

        def compute() -> datetime | None:
            return next_slot(t, a.anchor, after)

        # The slots are the rule's and the end's: triggers that differ only in options share.
        rule, end = (
            (t.recurrence, t.end_time) if isinstance(t, RecurrenceTrigger) else (t.cron, None)
        )
        try:
            a.due = (
                compute() if same is None else same.get(rule, end, a.anchor, after, compute=compute)
            )
        except (ValueError, OverflowError) as exc:  # a bad rule is this schedule's problem only
            a.due, a.error = None, f"cannot compute the next fire time: {exc}"
            log.error("timer_error", schedule=a.schedule.name, error=a.error)
        self._push(a, a.due)

    def _push(self, a: Armed, due: datetime | None) -> None:
        a.due = due
        if due is not None:
            heapq.heappush(self._heap, (due, next(self._seq), a.schedule.id, a.gen))

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
            if await self.clock.sleep_until(due, self._wake):
                continue
            await self._fire_due()

    async def _fire_due(self) -> None:
        now = self.clock.now()
        batch: list[SlotBatch] = []
        lateness: list[float] = []
        pending: Counter[str] = Counter()
        while (due := self._peek()) is not None and due <= now:
            _, _, sid, _ = heapq.heappop(self._heap)
            a = self.armed[sid]
            runs = self._slot_runs(a.schedule, due, pending)
            lateness.append((now - due).total_seconds())
            a.cursor = due
            self._advance(a, due)
            hint = None if a.error else (hint_key(a.trigger, a.anchor, due), a.due)
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

    def _slot_runs(self, s: Schedule, slot: datetime, pending: Counter[str]) -> list[NewRun]:
        run = self.slot_run(s, slot)
        if run is None:
            return []
        queued, running = self.active_runs(s.id)
        assert isinstance(s.trigger, RecurrenceTrigger | CronTrigger)
        why = concurrency_gate(s.trigger.options, queued=queued + pending[s.id], running=running)
        if why is not None:
            return [run.skipped(why)]
        pending[s.id] += 1
        return [run]
