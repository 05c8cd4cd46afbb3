"""`Arming`: which schedules run here, and their timers and pollers.

A schedule is armed (its timer set, or its poller started) only while this replica holds its
lease (`leases.LeaseKeeper`; with one daemon, every lease). A schedule gained is first caught
up: the slots it missed since its stored cursor are queued in batched, fenced transactions —
all of them when some replica was alive meanwhile (a failover, SPEC §12), else as its
`catch_up` says (SPEC §3.3). Every slot commit is fenced by the lease's epoch; a refused one
drops that schedule (another replica owns it now) and commits the rest.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime

import structlog

from watcherd.core.errors import LeaseLost, StateError
from watcherd.core.memo import PerObject
from watcherd.core.models import (
    CronTrigger,
    DatastoreTrigger,
    RecurrenceTrigger,
    Schedule,
    Status,
    StoredSchedule,
)
from watcherd.core.runs import NewRun, slot_runs
from watcherd.core.slots import CatchUp, TimeTrigger, catch_up, hint_key, next_slot
from watcherd.core.timefmt import format_utc
from watcherd.engine.book import ScheduleBook
from watcherd.engine.clock import Clock
from watcherd.engine.leases import LeaseKeeper
from watcherd.engine.metrics import Metrics
from watcherd.engine.ports import (
    ChangeSink,
    Cluster,
    PollerFactory,
    PollHealth,
    RunStore,
    SlotBatch,
)
from watcherd.engine.runner import Runner
from watcherd.engine.sink import PollStatus
from watcherd.engine.timers import SameRules, Timers

__all__ = ["Arming"]

log = structlog.get_logger(__name__)

CATCH_UP_BATCH = 500  # schedules per catch-up transaction
HINTS_CHUNK = 1000  # next slots stored per transaction after arming
MISSED_EACH = 20  # schedules whose missed slots are logged one line each; more: one summary

Persist = Callable[[Callable[[], Awaitable[list[str]]], str], Awaitable[list[str]]]


class Arming:
    """Timers and pollers of the schedules this replica owns."""

    def __init__(
        self,
        book: ScheduleBook,
        *,
        store: RunStore,
        cluster: Cluster,
        clock: Clock,
        metrics: Metrics,
        runner: Runner,
        pollers: PollerFactory,
        sink: ChangeSink,
        health: PollHealth,
        poll: dict[str, PollStatus],
        persist: Persist,
    ) -> None:
        self.book = book
        self.store = store
        self.clock = clock
        self.metrics = metrics
        self.runner = runner
        self.pollers = pollers
        self.sink = sink
        self.health = health
        self.persist = persist
        self.poll = poll  # the sink's: last poll attempt per datastore schedule
        self.standby = False  # this replica's config is not the deployment's: own nothing
        self.alive_until: datetime | None = None  # another replica was alive until then
        self.timers = Timers(
            clock=clock,
            metrics=metrics,
            slot_run=self._slot_run,
            commit=self.commit_slots,
            active_runs=runner.active,
            version=lambda: self.book.version,
        )
        self.leases = LeaseKeeper(
            cluster,
            clock,
            wanted=self.wanted,
            running=runner.total_running,
            on_gain=self._gained,
            on_loss=self._lost,
        )
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._loops: list[asyncio.Task[None]] = []
        self._tg: asyncio.TaskGroup | None = None
        self._started = False  # until prepare() ends, gains take rows as reconciled
        self._stopped = False
        # schedule id → (trigger, anchor, cursor, next slot): computed by the catch-up, used
        # once by arm() when the schedule is still that (a restart computes it once, not twice)
        self._known_next: dict[str, tuple[TimeTrigger, datetime, datetime, datetime | None]] = {}
        # schedule id → the cursor for which the store's next slot held (catch-up): not saved
        self._hinted: dict[str, datetime] = {}
        self._unsaved: set[str] = set()  # armed since the last _save_hints

    # ── ownership ────────────────────────────────────────────────────────────

    def wanted(self) -> list[str]:
        """The schedules this replica would run: Active, not in error, and (local datastores)
        on a root it can read."""
        if self.standby:
            return []
        out = []
        for sid, s in self.book.schedules.items():
            if s.status is not Status.ACTIVE or sid in self.book.broken:
                continue
            t = s.trigger
            if isinstance(t, DatastoreTrigger):
                ds = self.book.config.datastores.get(t.datastore)
                if ds is None or not self.pollers.can_serve(ds):
                    continue
            out.append(sid)
        return out

    def owned(self) -> frozenset[str]:
        return frozenset(self.timers.armed) | frozenset(self._tasks)

    async def refresh(self, sid: str) -> None:
        """A schedule changed here or elsewhere: re-arm it if owned, else ask for it."""
        self.disarm(sid)
        s = self.book.schedules.get(sid)
        if s is None or s.status is not Status.ACTIVE:
            return
        if self.leases.epoch(sid) is not None:
            self.arm(s)
        else:
            await self.leases.beat()  # one daemon: granted at once; replicas: maybe

    def started(self) -> None:
        """Start-up is over: from now on a schedule gained was someone else's (or nobody's
        while this replica ran): its cursor is re-read and every slot it missed runs."""
        self._started = True

    async def _gained(self, gained: Mapping[str, int]) -> None:
        if self._stopped:
            return
        if self._started:  # the previous owner may have moved the cursors: re-read them
            rows = {r.id: r for r in await self.store.load_schedules() if r.id in gained}
            for sid, row in rows.items():
                if sid in self.book.rows:
                    self.book.rows[sid] = row
                    self.book.changed()
                self.book.fresh.discard(sid)  # "nothing missed" held only for its creator
        run_all_until = self.clock.now() if self._started else self.alive_until
        await self._catch_up(list(gained), run_all_until)
        same = SameRules()
        for sid in gained:
            s = self.book.schedules.get(sid)
            if s is not None:
                self.arm(s, same)
        self._unsaved.update(gained)
        if self._tg is not None:  # else start() saves them, once READY is near
            self._tg.create_task(self._save_hints())

    async def _save_hints(self) -> None:
        """Store the next slots computed at arming (not those the store already held), so
        that the next start reads them instead. After start-up, in chunks that yield to the
        loop; best effort: a failed write only costs a computation at the next start."""
        sids, self._unsaved = self._unsaved, set()
        hinted, self._hinted = self._hinted, {}
        # Taken before the first write: a stop meanwhile disarms them, and they still hold.
        armed = [a for sid in sids if (a := self.timers.armed.get(sid)) is not None]
        for i in range(0, len(armed), HINTS_CHUNK):
            await asyncio.sleep(0)
            hints = []
            for a in armed[i : i + HINTS_CHUNK]:
                sid = a.schedule.id
                if a.error is not None or hinted.get(sid) == a.cursor:
                    continue
                hints.append((sid, hint_key(a.trigger, a.anchor, a.cursor), a.due))
            try:
                await self.store.save_timer_hints(hints)
            except StateError as exc:
                log.warning("timer_hints_not_saved", error=str(exc), count=len(hints))
                return

    def _lost(self, sids: set[str]) -> None:
        for sid in sids:
            self.disarm(sid)

    # ── catch-up ─────────────────────────────────────────────────────────────

    async def _catch_up(self, sids: list[str], run_all_until: datetime | None) -> None:
        """Queue the slots that schedules `sids` missed until now, in batched transactions.

        Those whose stored next slot is missing or already past go first (Quartz's misfire
        query), and their batches are committed as they fill, the last one as soon as they
        are done; then the others, whose stored next slot is checked against their rule and
        cursor (computed again only where it no longer holds). A restart or a replica gaining
        schedules so starts their missed runs before it has checked the rest (at 10k
        schedules, checking the rest took longer than committing 1,500 missed runs).
        The due batches' cursors move in the book and their runs go to the runner once all
        of them are recorded (at start-up the runner does not run yet: doing it between two
        commits only delayed the second); the others' (rarely any: a stored next slot that no
        longer holds) once all of theirs are. Arming follows the pass; a reader meanwhile (the
        API, when a replica gains schedules after start-up) sees the cursors of a moment ago.
        (Computing the next batch while one commits was tried: the GIL makes both slower,
        0.2 → 0.28 s at 10k schedules.)"""
        now = self.clock.now()
        rows = self.book.rows
        due: list[str] = []
        later: list[str] = []
        for sid in sids:
            row = rows.get(sid)
            if row is None:
                continue
            hint = row.next_hint
            if hint is not None and (hint[1] is None or hint[1] > now):
                later.append(sid)
            else:
                due.append(sid)
        missed: list[Missed] = []
        batches: list[SlotBatch] = []
        recorded: list[tuple[list[SlotBatch], list[str]]] = []
        same = _Shared()
        for i, sid in enumerate(due + later):
            batch = self._missed(sid, now, run_all_until, missed, due=i < len(due), same=same)
            if batch is not None:
                batches.append(batch)
            if len(batches) >= CATCH_UP_BATCH or (batches and i == len(due) - 1):
                # full, or the last of the due ones
                recorded.append(await self._record(batches, now))
                batches = []
            if i == len(due) - 1:  # their runs start before the rest is checked
                self._hand_over(recorded, now)
                recorded = []
        if batches:
            recorded.append(await self._record(batches, now))
        self._hand_over(recorded, now)
        for name, _, count, *_ in missed:  # after the commits: one label lookup each
            self.metrics.slots_not_run.labels(schedule=name).inc(count)
        _log_missed(missed)

    def _missed(
        self,
        sid: str,
        now: datetime,
        run_all_until: datetime | None,
        missed: list[Missed],
        *,
        due: bool = False,
        same: _Shared | None = None,
    ) -> SlotBatch | None:
        """The batch of slots schedule `sid` missed, or None; notes what it will not run.
        `due`: its stored next slot is missing or past, so its missed slots are searched at
        once (a valid past hint would only confirm it; a stale one decides nothing).
        `same`: what this pass computed by trigger object, anchor and cursor (schedules that
        share a rule and anchor fired together: same stored next slot, same missed slots)."""
        s, row = self.book.schedules.get(sid), self.book.rows.get(sid)
        if s is None or row is None or sid in self.book.fresh:
            return None
        t = s.trigger
        if not isinstance(t, RecurrenceTrigger | CronTrigger) or s.status is not Status.ACTIVE:
            return None
        if row.anchor is None or row.cursor is None:
            return None
        try:
            # Most schedules missed nothing: their next slot (which arming needs anyway, and
            # which the store mostly still has) is after `now`, and no missed slot is searched.
            if not due:
                hint = row.next_hint
                if hint is not None and hint[0] == _hint_key(t, row, same):
                    nxt = hint[1]
                    self._hinted[sid] = row.cursor
                else:
                    nxt = next_slot(t, row.anchor, row.cursor)
                if nxt is None or nxt > now:
                    self._known_next[sid] = (t, row.anchor, row.cursor, nxt)
                    return None
            anchor, cursor = row.anchor, row.cursor

            def missed_slots() -> CatchUp:
                return catch_up(t, anchor, cursor, now, run_all_until=run_all_until)

            todo = (
                missed_slots()
                if same is None
                else same.catch_ups.get(t, anchor, cursor, compute=missed_slots)
            )
        except (ValueError, OverflowError) as exc:  # this schedule's problem only
            self.book.set_broken(sid, f"cannot compute missed slots: {exc}")
            return None
        if todo.not_run:
            not_run = todo.not_run
            oldest = todo.oldest if todo.oldest is not None else not_run[0]
            more = todo.oldest is not None
            missed.append((s.name, t.options.catch_up, len(not_run), oldest, not_run[-1], more))
        if todo.cursor == row.cursor:
            return None
        return SlotBatch(sid, todo.cursor, self._slot_runs(s, todo.run))

    # ── timers and pollers ───────────────────────────────────────────────────

    def arm(self, s: Schedule, same: SameRules | None = None) -> None:
        if self._stopped or s.status is not Status.ACTIVE or s.id in self.book.broken:
            return
        if self.leases.epoch(s.id) is None:
            return
        self.book.fresh.discard(s.id)
        if isinstance(s.trigger, DatastoreTrigger):
            self._start_poller(s)
            return
        row = self.book.rows[s.id]
        if row.anchor is None or row.cursor is None:
            self.book.set_broken(s.id, "no stored timer")
            return
        known = self._known_next.pop(s.id, None)
        if known is not None and known[0] is s.trigger and known[1:3] == (row.anchor, row.cursor):
            self.timers.arm(s, row.anchor, row.cursor, known_next=(known[3],))
        else:
            self.timers.arm(s, row.anchor, row.cursor, same=same)

    def disarm(self, sid: str) -> None:
        self.timers.disarm(sid)
        task = self._tasks.pop(sid, None)
        if task is not None:
            _cancel_until_done(task)
        self.poll.pop(sid, None)

    def _start_poller(self, s: Schedule) -> None:
        assert isinstance(s.trigger, DatastoreTrigger)
        if s.id in self._tasks:
            return
        ds = self.book.config.datastores[s.trigger.datastore]
        poller = self.pollers.poller(
            s,
            ds,
            sink=self.sink,
            health=self.health,
            max_pending=self.book.config.daemon.max_pending,
        )
        self.poll[s.id] = PollStatus()
        if self._tg is not None:  # else start() starts it, once the engine runs
            self._tasks[s.id] = self._tg.create_task(poller.run())

    def start(self, tg: asyncio.TaskGroup) -> None:
        """Run timers, the lease keeper and (from now on) pollers in `tg`."""
        self._tg = tg
        self._loops = [tg.create_task(self.timers.run()), tg.create_task(self.leases.run())]
        if self._unsaved:  # not cancelled by stop(): a few short writes, then it ends
            tg.create_task(self._save_hints())
        for sid in self.leases.held:
            s = self.book.schedules.get(sid)
            if s is not None and isinstance(s.trigger, DatastoreTrigger) and sid not in self._tasks:
                self.arm(s)

    def stop(self) -> None:
        """Stop every timer, poller and the lease keeper (shutdown); nothing arms after."""
        self._stopped = True
        for task in self._loops:
            task.cancel()
        for sid in list(self.timers.armed) + list(self._tasks):
            self.disarm(sid)

    # ── slots ────────────────────────────────────────────────────────────────

    def _slot_run(self, s: Schedule, slot: datetime) -> NewRun | None:
        runs = self._slot_runs(s, (slot,))
        return runs[0] if runs else None

    def _slot_runs(self, s: Schedule, slots: Sequence[datetime]) -> list[NewRun]:
        current = self.book.schedules.get(s.id, s)
        if not slots or not self.book.runnable(current):
            return []
        return slot_runs(current, self.book.config.pipeline_by_id(current.pipeline), slots)

    async def commit_slots(self, batches: list[SlotBatch], now: datetime) -> list[SlotBatch]:
        """Record slots (fenced by each schedule's lease epoch), hand the runs over, and
        return the batches recorded."""
        todo, ids = await self._record(batches, now)
        self._hand_over([(todo, ids)], now)
        return todo

    async def _record(
        self, batches: list[SlotBatch], now: datetime
    ) -> tuple[list[SlotBatch], list[str]]:
        """Record slots (fenced by each schedule's lease epoch): (the batches recorded, the
        ids of the runs inserted)."""
        # Only what this replica holds a lease on: a slot of a schedule whose lease is gone is
        # its new owner's to record (an unfenced write could fire it twice).
        todo = [
            SlotBatch(b.schedule_id, b.cursor, b.runs, epoch, b.hint)
            for b in batches
            if (epoch := self.leases.epoch(b.schedule_id)) is not None
        ]
        while True:
            if not todo:
                return [], []
            try:
                ids = await self.persist(
                    functools.partial(self.store.record_slots, todo, now), "slots"
                )
                break
            except LeaseLost as exc:  # another replica owns it now: its slots are not ours
                lost = [b for b in todo if b.schedule_id == exc.schedule_id]
                todo = [b for b in todo if b.schedule_id != exc.schedule_id]
                self.leases.lost(exc.schedule_id, lost[0].epoch if lost else None)
        return todo, ids

    def _hand_over(self, recorded: list[tuple[list[SlotBatch], list[str]]], now: datetime) -> None:
        """Move the book's cursors to each (batches, ids inserted) `_record` returned and give
        the runner their runs, in one call."""
        rows = self.book.rows
        for batches, _ in recorded:
            for b in batches:
                row = rows.get(b.schedule_id)
                if row is not None and (row.cursor is None or b.cursor > row.cursor):
                    rows[b.schedule_id] = row.moved(b.cursor, b.hint)
        runs = [r for batches, _ in recorded for b in batches for r in b.runs]
        if runs:
            self.runner.enqueue_new(runs, [i for _, ids in recorded for i in ids], now)


@dataclasses.dataclass
class _Shared:
    """What one catch-up pass computed, by trigger object, anchor and cursor: schedules that
    share a rule and anchor fired together (same stored next slot, same missed slots)."""

    hint_keys: PerObject[str] = dataclasses.field(default_factory=PerObject)
    catch_ups: PerObject[CatchUp] = dataclasses.field(default_factory=PerObject)


def _hint_key(t: TimeTrigger, row: StoredSchedule, same: _Shared | None) -> str:
    """`hint_key` of a row with anchor and cursor set, once per pass for shared values."""
    anchor, cursor = row.anchor, row.cursor
    assert anchor is not None and cursor is not None

    def compute() -> str:
        return hint_key(t, anchor, cursor, key=row.trigger_key)

    if same is None:
        return compute()
    return same.hint_keys.get(t, anchor, cursor, row.trigger_key, compute=compute)


RECANCEL = 1.0  # seconds between cancellations of a poller that has not ended yet


def _cancel_until_done(task: asyncio.Task[None]) -> None:
    """Cancel a poller's task, and again every RECANCEL seconds until it has ended.

    One cancellation can be lost: Python 3.11's `asyncio.wait_for` (which the PostgreSQL pool
    uses) drops one that arrives just as the call it waits on completes. A poller that lived
    on would poll a schedule this replica no longer owns, its commits refused for ever, and
    the engine's TaskGroup would wait for it at shutdown (issue #13's fault test saw both)."""
    if task.done():
        return
    task.cancel()
    asyncio.get_running_loop().call_later(RECANCEL, _cancel_until_done, task)


# (schedule name, catch_up, slots not run, the oldest, the newest, more were not counted:
# after a downtime of more than MISSED_LIMIT slots, the count is a lower bound)
Missed = tuple[str, str, int, datetime, datetime, bool]


def _log_missed(missed: list[Missed]) -> None:
    """One line per schedule that will not run some missed slots (its `catch_up`), or one
    line for all when there are many (after a long downtime); the metric has each count.
    `count_is_lower_bound`: more were missed than were looked at (MISSED_LIMIT)."""
    if len(missed) <= MISSED_EACH:
        for name, policy, count, first, last, more in missed:
            extra = {"count_is_lower_bound": True} if more else {}
            log.info(
                "slots_missed", schedule=name, count=count, catch_up=policy,
                first=format_utc(first), last=format_utc(last), **extra,
            )  # fmt: skip
        return
    extra = {"count_is_lower_bound": True} if any(m[5] for m in missed) else {}
    log.info(
        "slots_missed", schedules=len(missed), count=sum(m[2] for m in missed),
        first=format_utc(min(m[3] for m in missed)), last=format_utc(max(m[4] for m in missed)),
        names=[m[0] for m in missed[:MISSED_EACH]],
        metric="watcherd_slots_not_run_total", **extra,
    )  # fmt: skip
