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
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import structlog

from watcherd.core.models import CronTrigger, RecurrenceTrigger, RunStatus, Schedule, TimeOptions
from watcherd.core.slots import next_slot, slots_between
from watcherd.engine.clock import Clock
from watcherd.engine.metrics import Metrics
from watcherd.engine.runner import Runner
from watcherd.state.sqlite.store import NewRun, Store, iso

__all__ = ["Armed", "Timers", "slot_dedup"]

log = structlog.get_logger(__name__)

SlotRun = Callable[[Schedule, datetime], "NewRun | None"]  # None: pipeline Disabled


def slot_dedup(slot: datetime) -> str:
    return f"slot:{iso(slot)}"


@dataclass(slots=True)
class Armed:
    """A time schedule's timer state."""

    schedule: Schedule
    anchor: datetime
    cursor: datetime  # the last slot handled (run, skipped or passed)
    due: datetime | None = None
    gen: int = 0
    error: str | None = field(default=None)


def _options(s: Schedule) -> TimeOptions:
    t = s.trigger
    assert isinstance(t, RecurrenceTrigger | CronTrigger)
    return t.options


class Timers:
    """Owns the deadlines of every armed time schedule."""

    def __init__(
        self, *, store: Store, clock: Clock, metrics: Metrics, runner: Runner, slot_run: SlotRun
    ) -> None:
        self.store = store
        self.clock = clock
        self.metrics = metrics
        self.runner = runner
        self.slot_run = slot_run
        self.armed: dict[str, Armed] = {}
        self._heap: list[tuple[datetime, int, str, int]] = []
        self._seq = itertools.count()
        self._wake = asyncio.Event()

    # ── arming ───────────────────────────────────────────────────────────────

    def arm(self, schedule: Schedule, anchor: datetime, cursor: datetime) -> datetime | None:
        """Arm (or re-arm) a schedule; returns its next deadline."""
        t = schedule.trigger
        assert isinstance(t, RecurrenceTrigger | CronTrigger)
        old = self.armed.get(schedule.id)
        a = Armed(schedule=schedule, anchor=anchor, cursor=cursor, gen=(old.gen + 1 if old else 0))
        try:
            a.due = next_slot(t, anchor, cursor)
        except Exception as exc:  # a bad rule is this schedule's problem only
            a.error = f"cannot compute next fire time: {exc}"
            log.error("timer_error", schedule=schedule.name, error=a.error)
        self.armed[schedule.id] = a
        if a.due is not None:
            heapq.heappush(self._heap, (a.due, next(self._seq), schedule.id, a.gen))
        self._wake.set()
        return a.due

    def disarm(self, schedule_id: str) -> None:
        if self.armed.pop(schedule_id, None) is not None:
            self._wake.set()

    def next_due(self, schedule_id: str) -> datetime | None:
        a = self.armed.get(schedule_id)
        return a.due if a else None

    # ── catch-up at start ────────────────────────────────────────────────────

    async def catch_up(self, schedule: Schedule, anchor: datetime, cursor: datetime) -> datetime:
        """Handle slots that fell due while the daemon was down (SPEC §3.3).

        Returns the new cursor (now). Missed slots not run are logged and counted."""
        t = schedule.trigger
        assert isinstance(t, RecurrenceTrigger | CronTrigger)
        now = self.clock.now()
        if cursor >= now:
            return cursor
        opts = t.options
        missed = slots_between(t, anchor, cursor, now, 1000)
        if not missed:
            return cursor
        keep = {"none": 0, "last": 1, "all": opts.max_catch_up}[opts.catch_up]
        run_slots = missed[-keep:] if keep else []
        not_run = len(missed) - len(run_slots)
        if not_run:
            log.info(
                "slots_missed",
                schedule=schedule.name,
                count=not_run,
                catch_up=opts.catch_up,
                first=iso(missed[0]),
                last=iso(missed[-1]),
            )
            self.metrics.slots_not_run.labels(schedule=schedule.name).inc(not_run)
        runs = [r for s in run_slots if (r := self.slot_run(schedule, s)) is not None]
        new_cursor = max(now, missed[-1])
        ids = await self.store.write(
            self.store.record_slots, [(schedule.id, new_cursor, runs)], now
        )
        if ids:
            log.info("slots_caught_up", schedule=schedule.name, count=len(ids))
        await self.runner.enqueue(ids)
        return new_cursor

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
        batch: list[tuple[str, datetime, list[NewRun]]] = []
        lateness: list[float] = []
        pending: Counter[str] = Counter()
        while (due := self._peek()) is not None and due <= now:
            _, _, sid, _ = heapq.heappop(self._heap)
            a = self.armed[sid]
            runs = self._slot_runs(a.schedule, due, pending)
            batch.append((sid, due, runs))
            lateness.append((now - due).total_seconds())
            a.cursor = due
            try:
                a.due = next_slot(a.schedule.trigger, a.anchor, due)  # type: ignore[arg-type]
            except Exception as exc:
                a.due, a.error = None, f"cannot compute next fire time: {exc}"
                log.error("timer_error", schedule=a.schedule.name, error=a.error)
            if a.due is not None:
                heapq.heappush(self._heap, (a.due, next(self._seq), sid, a.gen))
        if not batch:
            return
        ids = await self.store.write(self.store.record_slots, batch, now)
        committed = self.clock.now()
        for late in lateness:
            self.metrics.timer_lateness.observe(max(0.0, late + (committed - now).total_seconds()))
        for sid, slot, runs in batch:
            for r in runs:
                log.info(
                    "slot_fired",
                    schedule=self.armed[sid].schedule.name if sid in self.armed else sid,
                    slot=iso(slot),
                    run_id=r.id,
                    status=r.status.value,
                )
        await self.runner.enqueue(ids)

    def _slot_runs(self, s: Schedule, slot: datetime, pending: Counter[str]) -> list[NewRun]:
        run = self.slot_run(s, slot)
        if run is None:
            return []
        opts = _options(s)
        active = self.runner.queued(s.id) + self.runner.running(s.id) + pending[s.id]
        if opts.concurrency == "forbid" and active:
            run = _skipped(run, "previous run still active (concurrency = forbid)")
        elif opts.concurrency == "queue" and (
            self.runner.queued(s.id) + pending[s.id] >= opts.max_queued
        ):
            run = _skipped(run, "queue full")
        if run.status is RunStatus.QUEUED:
            pending[s.id] += 1
        return [run]


def _skipped(run: NewRun, why: str) -> NewRun:
    return NewRun(
        schedule_id=run.schedule_id,
        pipeline_id=run.pipeline_id,
        experiment=run.experiment,
        dedup=run.dedup,
        trigger=run.trigger,
        parameters=run.parameters,
        path=run.path,
        status=RunStatus.SKIPPED,
        error=why,
    )
