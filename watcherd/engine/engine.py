"""The engine: applies a config to the store and owns the runner, the timers and pollers.

`prepare()` joins the cluster (one daemon with SQLite), applies the config to the stored
schedules (`reconcile`, serialized in the store), and takes its schedule leases, catching up
what was missed; `run()` then owns every long-lived task in one TaskGroup until `stop()`.
Its collaborators: `book` (what it knows of schedules and pipelines), `runner`, `arming`
(leases, timers, pollers), `sink` (what the pollers report to), `follower` (changes other
replicas make). It offers the services layer public operations (save, enable/disable,
delete, trigger, submit, retry, cancel), so nothing outside touches its state; it is handed
its store, cluster, pollers and dispatchers through `ports` and imports no adapter.
(~430 lines: the operations and the lifecycle read the same state; one class says so.)
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import socket
import uuid
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import TypeVar

import structlog

from watcherd.core.errors import Conflict, NotFound, StateError, ValidationError
from watcherd.core.models import (
    Config,
    CronTrigger,
    DatastoreTrigger,
    RecurrenceTrigger,
    Run,
    RunStatus,
    Schedule,
    Source,
    Status,
    StoredSchedule,
)
from watcherd.core.runs import (
    concurrency_gate,
    manual_run,
    submit_run,
)
from watcherd.core.slots import changed_cursor, new_timer, same_trigger, trigger_key, upcoming
from watcherd.engine.arming import Arming
from watcherd.engine.book import ScheduleBook
from watcherd.engine.clock import Clock
from watcherd.engine.contexts import plan_for
from watcherd.engine.follow import ChangeFollower
from watcherd.engine.metrics import Metrics
from watcherd.engine.ports import (
    Cluster,
    ConfigWrite,
    DispatcherFactory,
    Membership,
    PollerFactory,
    Reading,
    ReplicaInfo,
    RunStore,
)
from watcherd.engine.reconcile import Reconciled, reconcile
from watcherd.engine.retry import StoreHealth, persist
from watcherd.engine.runner import Plan, Runner
from watcherd.engine.sink import FileSink, PollStatus

__all__ = ["Engine", "PollStatus", "config_hash"]

log = structlog.get_logger(__name__)

T = TypeVar("T")


def config_hash(cfg: Config) -> str:
    """What every replica must share: datastores, pipelines and schedules (not [daemon]), as
    the file gives them (`Config.digest`); a Config built in code hashes its `repr`."""
    if cfg.digest:
        return cfg.digest
    text = repr((sorted(cfg.datastores.items()), sorted(cfg.pipelines.items()), cfg.schedules))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class Engine:
    """The scheduling core of one daemon (one replica)."""

    def __init__(
        self,
        config: Config,
        store: RunStore,
        clock: Clock,
        *,
        cluster: Cluster,
        pollers: PollerFactory,
        dispatchers: DispatcherFactory,
        metrics: Metrics | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.cluster = cluster
        self.replica_id = cluster.replica_id
        self.metrics = metrics or Metrics()
        self.health = StoreHealth()
        self.book = ScheduleBook(config)
        self.reload_error: str | None = None
        self.started = asyncio.Event()
        self.started_mono = clock.monotonic()
        self.started_at = clock.now()
        self._pollers = pollers
        self._dispatchers = dispatchers
        self.runner = Runner(
            store=store,
            clock=clock,
            metrics=self.metrics,
            health=self.health,
            replica_id=self.replica_id,
            resolve=self._resolve,
            dispatchers=dispatchers,
            max_concurrent=config.daemon.max_concurrent_runs,
        )
        self.sink = FileSink(
            self.book,
            store=store,
            runner=self.runner,
            pollers=pollers,
            clock=clock,
            metrics=self.metrics,
            persist=self._persist,
            fence=lambda sid: self.arming.leases.epoch(sid),
            lease_lost=lambda sid, epoch: self.arming.leases.lost(sid, epoch),
        )
        self.arming = Arming(
            self.book,
            store=store,
            cluster=cluster,
            clock=clock,
            metrics=self.metrics,
            runner=self.runner,
            pollers=pollers,
            sink=self.sink,
            health=self.sink,
            poll=self.sink.poll,
            persist=self._persist,
        )
        self.timers = self.arming.timers
        self.poll = self.sink.poll
        self.follower = ChangeFollower(
            self.book,
            cluster=cluster,
            store=store,
            arming=self.arming,
            runner=self.runner,
            clock=clock,
        )
        self._stop = asyncio.Event()

    @property
    def config(self) -> Config:
        return self.book.config

    @property
    def schedules(self) -> dict[str, Schedule]:
        return self.book.schedules

    @property
    def rows(self) -> dict[str, StoredSchedule]:
        return self.book.rows

    @property
    def broken(self) -> dict[str, str]:
        return self.book.broken

    @property
    def pipeline_status(self) -> dict[str, Status]:
        return self.book.pipeline_status

    @property
    def standby(self) -> bool:
        """This replica's config is not the deployment's: it serves the API, runs nothing."""
        return self.arming.standby

    # ── config → state ───────────────────────────────────────────────────────

    async def prepare(self) -> None:
        """Join, load stored state, apply the config, take leases (catching up), arm."""
        ok = await self.cluster.join(
            host=socket.gethostname(), config_hash=config_hash(self.config)
        )
        self.arming.alive_until = await self.cluster.alive_until()
        await self.runner.load()
        await self._apply(self.config, config_ok=ok)
        self.arming.leases.on_beat = self._after_beat
        await self.arming.leases.beat()
        self.arming.started()

    async def reload(self, new: Config) -> None:
        """Apply a new config (SIGHUP); raises ConfigErrors and keeps the old one."""
        ok = await self.cluster.set_config(config_hash(new))  # leases kept
        old = dict(self.book.schedules)
        old_rows = dict(self.book.rows)
        await self._apply(new, config_ok=ok, running=True)
        for sid in set(old) | set(self.book.schedules):
            if old.get(sid) != self.book.schedules.get(sid) or old_rows.get(
                sid
            ) != self.book.rows.get(sid):
                await self.arming.refresh(sid)
        self.arming.leases.wake()

    async def _apply(self, new: Config, *, config_ok: bool, running: bool = False) -> None:
        now = self.clock.now()

        def compute(reading: Reading) -> ConfigWrite:
            plan = reconcile(
                new, reading.schedules, reading.pipelines, now, reading.applied, running=running
            )
            return ConfigWrite(plan.pipeline_rows, plan.changed, plan, applied=plan.applied)

        if config_ok:
            written = await self._persist(lambda: self.store.apply_config(compute), "config")
            plan: Reconciled = written.result
        else:  # stand by: show the deployment's state, change nothing, run nothing
            rows = {r.id: r for r in await self.store.load_schedules()}
            plan = compute(Reading(rows, await self.store.load_pipelines())).result
            log.error("config_mismatch", reason="another replica runs a different config")
        self.arming.standby = not config_ok
        self.book.load(new, plan)
        self.runner.max_concurrent = new.daemon.max_concurrent_runs
        self.runner.paused = not config_ok
        for sid, why in plan.broken.items():
            log.error("schedule_error", schedule=plan.rows[sid].name, id=sid, error=why)

    # ── runs ─────────────────────────────────────────────────────────────────

    def _after_beat(self, m: Membership) -> None:
        """What a heartbeat says beyond leases: whether this replica's config is still the
        deployment's, runs re-queued from dead replicas, this replica declared dead."""
        if m.config_ok == self.standby:  # it changed
            self.arming.standby = self.runner.paused = not m.config_ok
            if m.config_ok:
                log.info("config_matches", replica_id=self.replica_id)
            else:
                log.error("config_mismatch", reason="a newer replica runs another config")
            self.arming.leases.wake()
        if m.requeued:
            self.runner.refresh_soon()
        if m.revived:
            log.error("replica_revived", reason="declared dead while paused; its runs moved")
            self.runner.abandon()

    def _resolve(self, run: Run) -> Plan | str | None:
        """The Plan of a Queued run; None when this replica cannot serve its file."""
        file = run.file
        if file is not None and file.local_path is not None:
            ds = self.config.datastores.get(file.datastore)
            if ds is not None and not self._pollers.can_serve(ds):
                return None
        if self.standby:
            return None
        return plan_for(run, self.config, self.book.schedules, self.clock)

    # ── operations for the services layer ────────────────────────────────────

    def schedule(self, ident: str) -> Schedule:
        """A schedule by id, else by name; raises NotFound."""
        return self.book.schedule(ident)

    async def save_schedule(self, s: Schedule, spec: Mapping[str, object]) -> None:
        """Store an API-created schedule (new or changed) and re-arm it; a changed trigger
        re-anchors it (SPEC §3.1)."""
        now = self.clock.now()
        row = self.book.rows.get(s.id)
        tkey = anchor = cursor = None
        if isinstance(s.trigger, RecurrenceTrigger | CronTrigger):
            tkey = trigger_key(s.trigger)
            if row is not None and same_trigger(row.trigger_key, s.trigger, tkey):
                anchor, cursor = row.anchor, row.cursor
                if (
                    anchor is not None
                    and cursor is not None
                    and row.spec.get("end_time") != spec.get("end_time")
                ):  # the slots were not those of the end it had: none is back-filled
                    cursor = changed_cursor(s.trigger, anchor, cursor, now)
            else:
                anchor, cursor = new_timer(s.trigger, now, active=self.book.runnable(s))
                self.book.fresh.add(s.id)
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
        self.book.put(new_row, s)
        await self.arming.refresh(s.id)  # a datastore poller's baseline key decides anew
        log.info("schedule_saved", schedule=s.name, id=s.id)

    async def set_schedule_status(self, sid: str, st: Status) -> None:
        """Enable or disable a schedule; enabling never fires by itself and a datastore
        schedule takes a fresh baseline."""
        s, row = self.book.schedules.get(sid), self.book.rows[sid]
        if st is Status.ACTIVE and sid in self.book.broken:
            raise Conflict(f"schedule {row.name} is in error: {self.book.broken[sid]}", "in_error")
        now = self.clock.now()
        cursor = now if st is Status.ACTIVE and row.cursor is not None else row.cursor
        row = dataclasses.replace(row, status=st.value, cursor=cursor, updated_at=now)
        self.arming.disarm(sid)  # before the write: no slot of the old state starts after it
        fresh_baseline = (
            s is not None and st is Status.ACTIVE and isinstance(s.trigger, DatastoreTrigger)
        )
        await self.store.save_schedules([row], reset_snapshots=[sid] if fresh_baseline else [])
        self.book.put(row, dataclasses.replace(s, status=st) if s is not None else None)
        await self.arming.refresh(sid)
        log.info("schedule_status", schedule=row.name, status=st.value)

    async def delete_schedule(self, sid: str) -> None:
        self.arming.disarm(sid)
        await self.store.delete_schedule(sid)
        self.book.drop(sid)

    async def set_pipeline_status(self, pipeline_id: str, st: Status) -> None:
        await self.store.set_pipeline_status(pipeline_id, st.value)
        self.book.pipeline_status[pipeline_id] = st
        self.book.changed()
        log.info("pipeline_status", pipeline=pipeline_id, status=st.value)

    async def trigger(
        self,
        s: Schedule,
        *,
        by: str,
        path: bytes | None,
        parameters: Mapping[str, str],
        idempotency_key: str | None,
    ) -> Run:
        """Run a schedule now (SPEC §5 manual runs); returns the run as recorded."""
        if self.book.pipeline_status.get(s.pipeline) is not Status.ACTIVE:
            raise Conflict(f"pipeline {s.pipeline} is Disabled", "pipeline_disabled")
        if path is not None and (why := self.sink.refused_name(s, path)) is not None:
            raise ValidationError(why, "path")
        file = self.sink.file_ref(s, path, "") if path is not None else None
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
        if rid != run.id:  # the run an earlier call with this key created
            return await self._stored(rid)
        self.runner.enqueue_new([run], [rid] if run.status is RunStatus.QUEUED else [], now)
        if run.gate is not None:  # the store re-checked the gate: it may have skipped it
            return await self._stored(rid)
        return run.recorded(now)

    async def _stored(self, run_id: str) -> Run:
        got = await self.store.get_run(run_id)
        if got is None:  # pruned or deleted meanwhile
            raise NotFound("run", run_id)
        return got

    async def submit(
        self,
        pipeline_id: str,
        experiment: str,
        *,
        by: str,
        parameters: Mapping[str, str],
        continue_on_step_failure: bool | None,
    ) -> Run:
        """Run a pipeline once with no schedule (SPEC §5); returns the run as recorded."""
        p = self.config.pipeline_by_id(pipeline_id)
        if p is None:
            raise NotFound("pipeline", pipeline_id)
        if self.book.pipeline_status.get(p.id) is not Status.ACTIVE:
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
        return run.recorded(now)

    async def retry_run(self, run: Run) -> bool:
        return await self.runner.retry(run)

    async def cancel_run(self, run_id: str) -> None:
        """Cancel a Queued or Running run, wherever it runs (SPEC §12: within 1 s)."""
        if await self.runner.cancel(run_id):
            await self.runner.wait_run(run_id)
            return
        holder = await self.store.request_cancel(run_id)  # Running on another replica
        if holder == self.replica_id:  # ours after all (our own notification is filtered)
            await self.runner.cancel_here(run_id)
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
        if sid in self.book.broken:
            return self.book.broken[sid]
        poll = self.arming.poll.get(sid)
        if poll is not None and poll.attempts and not poll.ok:
            return poll.error
        armed = self.timers.armed.get(sid)
        return armed.error if armed is not None else None

    async def replicas(self) -> list[ReplicaInfo]:
        """The live daemons sharing this store (with SQLite: this one)."""
        return await self.cluster.replicas()

    def not_ready(self) -> str | None:
        """Why this replica cannot do its share now (None: it can)."""
        if self.standby:
            return "config_mismatch: another replica runs a different config"
        if self.health.error is not None:
            return f"state store: {self.health.error}"
        if self.arming.leases.error is not None:
            return f"heartbeat: {self.arming.leases.error}"
        return None

    # ── lifecycle ────────────────────────────────────────────────────────────

    async def run(self) -> None:
        """Own the runner, the timers, the pollers and the lease keeper until stop()."""
        async with asyncio.TaskGroup() as tg:
            runner = tg.create_task(self.runner.run())
            follow = tg.create_task(self.follower.run())
            self.arming.start(tg)
            self.started_mono = self.clock.monotonic()
            self.started.set()
            await self._stop.wait()
            follow.cancel()
            self.arming.stop()
            stopped = await self.runner.drain(self.config.daemon.shutdown_timeout.total_seconds())
            if stopped:
                log.warning("runs_stopped_at_shutdown", count=stopped)
            await runner
            await self._leave()

    async def _leave(self) -> None:
        try:
            await self.cluster.leave()
        except StateError as exc:  # the others take over when the leases expire
            log.warning("leave_failed", error=str(exc))

    def stop(self) -> None:
        self._stop.set()

    async def close(self) -> None:
        """Release the dispatchers (HTTP sessions, credentials) after run() returned."""
        await self._dispatchers.aclose()

    async def _persist(self, op: Callable[[], Awaitable[T]], what: str) -> T:
        return await persist(op, clock=self.clock, health=self.health, what=what)
