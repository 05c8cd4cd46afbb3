"""The engine: applies a config to the store and owns timers, pollers and the runner.

`prepare()` reconciles the config with the stored schedules (`reconcile`), catches up missed
slots in batches and arms every schedule; `run()` then owns every long-lived task in one
TaskGroup until `stop()`. The engine is the pollers' ChangeSink and PollHealth, and offers the
services layer public operations (save, enable/disable, delete, trigger, retry, cancel) so
nothing outside touches its state. It is handed its store, pollers and dispatchers through
`ports`; it imports no adapter. One class on purpose (~450 lines): every method reads or
changes the same schedule tables, and splitting them would only hide that.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

import structlog

from watcherd.core.errors import Conflict, NotFound
from watcherd.core.models import (
    Config,
    CronTrigger,
    DatastoreTrigger,
    FileRef,
    RecurrenceTrigger,
    Run,
    RunStatus,
    Schedule,
    Source,
    Status,
    StoredSchedule,
)
from watcherd.core.runs import (
    NewRun,
    concurrency_gate,
    file_run,
    manual_run,
    slot_run,
    submit_run,
)
from watcherd.core.slots import catch_up, new_timer, trigger_key, upcoming
from watcherd.core.timefmt import format_utc
from watcherd.engine.clock import Clock
from watcherd.engine.contexts import plan_for
from watcherd.engine.metrics import Metrics
from watcherd.engine.ports import (
    DispatcherFactory,
    FileChange,
    Poller,
    PollerFactory,
    ReplicaInfo,
    RunStore,
    SlotBatch,
)
from watcherd.engine.reconcile import Reconciled, reconcile
from watcherd.engine.retry import StoreHealth, persist
from watcherd.engine.runner import Runner
from watcherd.engine.timers import Timers

__all__ = ["Engine", "PollStatus"]

log = structlog.get_logger(__name__)

T = TypeVar("T")
CATCH_UP_BATCH = 500  # schedules per catch-up transaction at start


@dataclass(slots=True)
class PollStatus:
    """The last poll attempt of one datastore schedule."""

    attempts: int = 0
    ok: bool = False
    error: str | None = None
    last_mono: float | None = None
    files: int = 0


class Engine:
    """The scheduling core of one daemon."""

    def __init__(
        self,
        config: Config,
        store: RunStore,
        clock: Clock,
        *,
        pollers: PollerFactory,
        dispatchers: DispatcherFactory,
        metrics: Metrics | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        self.metrics = metrics or Metrics()
        self.health = StoreHealth()
        self.schedules: dict[str, Schedule] = {}
        self.rows: dict[str, StoredSchedule] = {}
        self.broken: dict[str, str] = {}  # stored API schedules in error: id → why
        self.pipeline_status: dict[str, Status] = {}
        self.poll: dict[str, PollStatus] = {}
        self.reload_error: str | None = None
        self.started = asyncio.Event()
        self.started_mono = clock.monotonic()
        self.started_at = clock.now()
        self.replica_id = socket.gethostname()
        self._pollers = pollers
        self._dispatchers = dispatchers
        self.runner = Runner(
            store=store,
            clock=clock,
            metrics=self.metrics,
            health=self.health,
            resolve=lambda run: plan_for(run, self.config, self.schedules, clock),
            dispatchers=dispatchers,
            max_concurrent=config.daemon.max_concurrent_runs,
        )
        self.timers = Timers(
            clock=clock,
            metrics=self.metrics,
            slot_run=self._slot_run,
            commit=self._commit_slots,
            active_runs=self.runner.active,
        )
        self._poller_tasks: dict[str, asyncio.Task[None]] = {}
        self._pending_pollers: dict[str, Poller] = {}  # started by run()
        self._tg: asyncio.TaskGroup | None = None
        self._stop = asyncio.Event()

    # ── config → state ───────────────────────────────────────────────────────

    async def prepare(self) -> None:
        """Load stored state, apply the config, catch up missed slots, arm everything."""
        await self.runner.load()
        await self._apply(self.config, first=True)

    async def reload(self, new: Config) -> None:
        """Apply a new config (SIGHUP); raises ConfigErrors and keeps the old one."""
        await self._apply(new, first=False)

    async def _apply(self, new: Config, *, first: bool) -> None:
        now = self.clock.now()
        rows = {r.id: r for r in await self.store.load_schedules()}
        pipes = await self.store.load_pipelines()
        plan = reconcile(new, rows, pipes, now)  # raises ConfigErrors: nothing changed yet
        await self._persist(lambda: self.store.save_pipelines(plan.pipeline_rows), "pipelines")
        await self._persist(lambda: self.store.save_schedules(plan.changed), "schedules")
        old = self.schedules
        self.config, self.pipeline_status = new, plan.pipeline_status
        self.rows, self.schedules, self.broken = plan.rows, plan.schedules, plan.broken
        self.runner.max_concurrent = new.daemon.max_concurrent_runs
        for sid in list(old):
            if first or sid not in plan.schedules or old[sid] != plan.schedules[sid]:
                self._disarm(sid)
        if first:
            await self._catch_up(plan)
        for sid, s in plan.schedules.items():
            if first or old.get(sid) != s or rows.get(sid) != plan.rows[sid]:
                self._arm(s)
        for sid, why in plan.broken.items():
            log.error("schedule_error", schedule=rows[sid].name, id=sid, error=why)

    async def _catch_up(self, plan: Reconciled) -> None:
        """Slots that fell due while the daemon was down (SPEC §3.3), committed in batches of
        CATCH_UP_BATCH schedules, one transaction each."""
        now = self.clock.now()
        batches: list[SlotBatch] = []
        for sid, s in plan.schedules.items():
            row = plan.rows[sid]
            if sid in plan.fresh or s.status is not Status.ACTIVE or row.cursor is None:
                continue
            if not isinstance(s.trigger, RecurrenceTrigger | CronTrigger) or row.anchor is None:
                continue
            try:
                todo = catch_up(s.trigger, row.anchor, row.cursor, now)
            except (ValueError, OverflowError) as exc:  # this schedule's problem only
                self.broken[sid] = f"cannot compute missed slots: {exc}"
                continue
            if not todo.missed:
                continue
            if len(todo.missed) > len(todo.run):
                log.info(
                    "slots_missed", schedule=s.name, count=len(todo.missed) - len(todo.run),
                    catch_up=s.trigger.options.catch_up, first=format_utc(todo.missed[0]),
                    last=format_utc(todo.missed[-1]),
                )  # fmt: skip
                self.metrics.slots_not_run.labels(schedule=s.name).inc(
                    len(todo.missed) - len(todo.run)
                )
            runs = [r for slot in todo.run if (r := self._slot_run(s, slot)) is not None]
            batches.append(SlotBatch(sid, todo.cursor, runs))
        for i in range(0, len(batches), CATCH_UP_BATCH):
            await self._commit_slots(batches[i : i + CATCH_UP_BATCH], now)

    # ── arming ───────────────────────────────────────────────────────────────

    def _arm(self, s: Schedule) -> None:
        if s.status is not Status.ACTIVE or s.id in self.broken:
            return
        if isinstance(s.trigger, DatastoreTrigger):
            self._start_poller(s)
            return
        row = self.rows[s.id]
        if row.anchor is None or row.cursor is None:
            self.broken[s.id] = "no stored timer"
            return
        self.timers.arm(s, row.anchor, row.cursor)

    def _disarm(self, sid: str) -> None:
        self.timers.disarm(sid)
        task = self._poller_tasks.pop(sid, None)
        if task is not None:
            task.cancel()
        self.poll.pop(sid, None)

    def _start_poller(self, s: Schedule) -> None:
        assert isinstance(s.trigger, DatastoreTrigger)
        ds = self.config.datastores[s.trigger.datastore]
        poller = self._pollers.poller(
            s, ds, sink=self, health=self, max_pending=self.config.daemon.max_pending
        )
        self.poll[s.id] = PollStatus()
        if self._tg is not None:
            self._poller_tasks[s.id] = self._tg.create_task(poller.run())
        else:  # started by run()
            self._pending_pollers[s.id] = poller

    # ── runs from triggers ───────────────────────────────────────────────────

    def _runnable(self, s: Schedule) -> bool:
        return s.status is Status.ACTIVE and self.pipeline_status.get(s.pipeline) is Status.ACTIVE

    def _slot_run(self, s: Schedule, slot: datetime) -> NewRun | None:
        current = self.schedules.get(s.id, s)
        if not self._runnable(current):
            return None
        return slot_run(current, self.config.pipeline_by_id(current.pipeline), slot)

    async def _commit_slots(self, batches: list[SlotBatch], now: datetime) -> None:
        ids = await self._persist(lambda: self.store.record_slots(batches, now), "slots")
        for b in batches:
            row = self.rows.get(b.schedule_id)
            if row is not None and (row.cursor is None or b.cursor > row.cursor):
                self.rows[b.schedule_id] = dataclasses.replace(row, cursor=b.cursor)
        self.runner.enqueue_new([r for b in batches for r in b.runs], ids, now)

    def _file_ref(self, s: Schedule, name: bytes, version: str) -> FileRef:
        assert isinstance(s.trigger, DatastoreTrigger)
        ds = self.config.datastores[s.trigger.datastore]
        local, url = self._pollers.locate(ds, name)
        return FileRef(
            datastore=ds.name,
            relative_path=name,
            local_path=local,
            url=url,
            version=version,
            parameter=s.trigger.data_path_parameter_name,
        )

    # ── the pollers' ChangeSink and PollHealth ───────────────────────────────

    async def load_snapshot(self, schedule_id: str, baseline_key: str) -> dict[bytes, str] | None:
        return await self.store.load_snapshot(schedule_id, baseline_key)

    async def load_marker(self, schedule_id: str, baseline_key: str) -> str | None:
        return await self.store.load_marker(schedule_id, baseline_key)

    async def commit(
        self,
        schedule_id: str,
        baseline_key: str,
        upserts: Sequence[tuple[bytes, str]],
        deletes: Sequence[bytes],
        fire: Sequence[FileChange],
        marker: str | None = None,
    ) -> int:
        s = self.schedules.get(schedule_id)
        now = self.clock.now()
        runs: list[NewRun] = []
        if s is not None and fire and self._runnable(s):
            pipeline = self.config.pipeline_by_id(s.pipeline)
            for ch in fire:
                runs.append(file_run(s, pipeline, self._file_ref(s, ch.name, ch.version)))
                if ch.modified is not None:  # the one detection-lag observation per file
                    self.metrics.detection_lag.labels(schedule=s.name).observe(
                        max(0.0, (now - ch.modified).total_seconds())
                    )
        ids = await self._persist(
            lambda: self.store.commit_changes(
                schedule_id, baseline_key, upserts, deletes, runs, now, marker
            ),
            "snapshot",
        )
        if fire and len(ids) < len(fire):  # the poller logs each file_changed itself
            log.info(
                "changes_not_run",
                schedule=s.name if s else schedule_id,
                changes=len(fire),
                runs=len(ids),
                reason="schedule or pipeline Disabled, or already recorded",
            )
        self.runner.enqueue_new(runs, ids, now)
        return len(ids)

    def pending(self, schedule_id: str) -> int:
        return self.runner.queued(schedule_id)

    async def wait_below(self, schedule_id: str, limit: int) -> None:
        await self.runner.wait_queued_below(schedule_id, limit)

    def poll_finished(
        self, schedule_id: str, *, ok: bool, duration: float, files: int, error: str | None
    ) -> None:
        st = self.poll.setdefault(schedule_id, PollStatus())
        st.attempts += 1
        st.ok, st.error, st.files = ok, error, files
        st.last_mono = self.clock.monotonic()

    # ── operations for the services layer ────────────────────────────────────

    def schedule(self, ident: str) -> Schedule:
        """A schedule by id, else by name; raises NotFound."""
        s = self.schedules.get(ident)
        if s is not None:
            return s
        for s in self.schedules.values():
            if s.name == ident:
                return s
        raise NotFound("schedule", ident)

    async def save_schedule(self, s: Schedule, spec: Mapping[str, object]) -> None:
        """Store an API-created schedule (new or changed) and re-arm it; a changed trigger
        re-anchors it (SPEC §3.1)."""
        now = self.clock.now()
        row = self.rows.get(s.id)
        tkey = anchor = cursor = None
        if isinstance(s.trigger, RecurrenceTrigger | CronTrigger):
            tkey = trigger_key(s.trigger)
            if row is not None and row.trigger_key == tkey:
                anchor, cursor = row.anchor, row.cursor
            else:
                active = self._runnable(s)
                anchor, cursor = new_timer(s.trigger, now, active=active)
        new_row = StoredSchedule(
            id=s.id,
            name=s.name,
            source=Source.API.value,
            status=s.status.value,
            file_status=None,
            spec=dict(spec),
            trigger_key=tkey,
            anchor=anchor,
            cursor=cursor,
            created_at=row.created_at if row else now,
            updated_at=now,
        )
        await self.store.save_schedules([new_row])
        self.rows[s.id], self.schedules[s.id] = new_row, s
        self._disarm(s.id)  # a datastore poller's baseline key decides on a new baseline
        self._arm(s)
        log.info("schedule_saved", schedule=s.name, id=s.id)

    async def set_schedule_status(self, sid: str, st: Status) -> None:
        """Enable or disable a schedule; enabling never fires by itself and a datastore
        schedule takes a fresh baseline."""
        s, row = self.schedules.get(sid), self.rows[sid]
        if st is Status.ACTIVE and sid in self.broken:
            raise Conflict(f"schedule {row.name} is in error: {self.broken[sid]}", "in_error")
        now = self.clock.now()
        cursor = now if st is Status.ACTIVE and row.cursor is not None else row.cursor
        row = dataclasses.replace(row, status=st.value, cursor=cursor, updated_at=now)
        await self.store.save_schedules([row])
        if s is not None and st is Status.ACTIVE and isinstance(s.trigger, DatastoreTrigger):
            await self.store.drop_baseline(sid)
        self.rows[sid] = row
        self._disarm(sid)
        if s is not None:
            self.schedules[sid] = dataclasses.replace(s, status=st)
            self._arm(self.schedules[sid])
        log.info("schedule_status", schedule=row.name, status=st.value)

    async def delete_schedule(self, sid: str) -> None:
        self._disarm(sid)
        await self.store.delete_schedule(sid)
        self.schedules.pop(sid, None)
        self.rows.pop(sid, None)
        self.broken.pop(sid, None)

    async def set_pipeline_status(self, pipeline_id: str, st: Status) -> None:
        await self.store.set_pipeline_status(pipeline_id, st.value)
        self.pipeline_status[pipeline_id] = st
        log.info("pipeline_status", pipeline=pipeline_id, status=st.value)

    async def trigger(
        self,
        s: Schedule,
        *,
        by: str,
        path: bytes | None,
        parameters: Mapping[str, str],
        idempotency_key: str | None,
    ) -> str:
        """Run a schedule now (SPEC §5 manual runs); returns the run id."""
        if self.pipeline_status.get(s.pipeline) is not Status.ACTIVE:
            raise Conflict(f"pipeline {s.pipeline} is Disabled", "pipeline_disabled")
        file = self._file_ref(s, path, "") if path is not None else None
        run = manual_run(
            s,
            self.config.pipeline_by_id(s.pipeline),
            by=by,
            file=file,
            parameters=parameters,
            nonce=str(uuid.uuid4()),
        )
        if isinstance(s.trigger, RecurrenceTrigger | CronTrigger):
            queued, running = self.runner.active(s.id)
            why = concurrency_gate(s.trigger.options, queued=queued, running=running)
            if why is not None:
                run = run.skipped(why)
        key = f"{s.id}:{idempotency_key}" if idempotency_key else None
        now = self.clock.now()
        rid = await self.store.insert_manual(run, key, now)
        if rid == run.id:
            self.runner.enqueue_new([run], [rid] if run.status is RunStatus.QUEUED else [], now)
        return rid

    async def submit(
        self,
        pipeline_id: str,
        experiment: str,
        *,
        by: str,
        parameters: Mapping[str, str],
        continue_on_step_failure: bool | None,
    ) -> str:
        """Run a pipeline once with no schedule (SPEC §5); returns the run id."""
        p = self.config.pipeline_by_id(pipeline_id)
        if p is None:
            raise NotFound("pipeline", pipeline_id)
        if self.pipeline_status.get(p.id) is not Status.ACTIVE:
            raise Conflict(f"pipeline {p.name} is Disabled", "pipeline_disabled")
        run = submit_run(
            p,
            experiment,
            by=by,
            parameters=parameters,
            continue_on_step_failure=continue_on_step_failure,
            nonce=str(uuid.uuid4()),
        )
        now = self.clock.now()
        rid = await self.store.insert_manual(run, None, now)
        self.runner.enqueue_new([run], [rid], now)
        return rid

    async def retry_run(self, run: Run) -> bool:
        return await self.runner.retry(run)

    async def cancel_run(self, run_id: str) -> None:
        await self.runner.cancel(run_id)
        await self.runner.wait_run(run_id)

    # ── queries ──────────────────────────────────────────────────────────────

    def next_fire_times(self, sid: str, n: int) -> list[datetime]:
        """The next `n` slots of an armed time schedule (none when Disabled or in error)."""
        armed = self.timers.armed.get(sid)
        if armed is None or armed.due is None or n <= 0:
            return []
        return [armed.due, *upcoming(armed.trigger, armed.anchor, armed.due, n - 1)]

    def schedule_error(self, sid: str) -> str | None:
        """Why a schedule cannot run now: a failing poll, a timer error, a stored spec."""
        if sid in self.broken:
            return self.broken[sid]
        poll = self.poll.get(sid)
        if poll is not None and poll.attempts and not poll.ok:
            return poll.error
        armed = self.timers.armed.get(sid)
        return armed.error if armed is not None else None

    async def replicas(self) -> list[ReplicaInfo]:
        """The live daemons sharing this store: here, this one."""
        owned = frozenset(self.timers.armed) | frozenset(self._poller_tasks)
        return [
            ReplicaInfo(
                id=self.replica_id,
                host=socket.gethostname(),
                started=self.started_at,
                last_heartbeat=self.clock.now(),
                schedules=owned,
                running=self.runner.total_running(),
                config_hash="",
            )
        ]

    # ── lifecycle ────────────────────────────────────────────────────────────

    async def run(self) -> None:
        """Own the runner, the timers and the pollers until stop()."""
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            runner = tg.create_task(self.runner.run())
            timers = tg.create_task(self.timers.run())
            for sid, poller in self._pending_pollers.items():
                self._poller_tasks[sid] = tg.create_task(poller.run())
            self._pending_pollers = {}
            self.started_mono = self.clock.monotonic()
            self.started.set()
            await self._stop.wait()
            timers.cancel()
            for t in self._poller_tasks.values():
                t.cancel()
            stopped = await self.runner.drain(self.config.daemon.shutdown_timeout.total_seconds())
            if stopped:
                log.warning("runs_stopped_at_shutdown", count=stopped)
            await runner
        self._tg = None

    def stop(self) -> None:
        self._stop.set()

    async def close(self) -> None:
        """Release the dispatchers (HTTP sessions, credentials) after run() returned."""
        await self._dispatchers.aclose()

    async def _persist(self, op: Callable[[], Awaitable[T]], what: str) -> T:
        return await persist(op, clock=self.clock, health=self.health, what=what)
