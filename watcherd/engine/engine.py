"""The engine: applies a config to the state database and owns timers, pollers and the runner.

`Engine.prepare()` syncs the config with the stored schedules (SPEC §2 rules), catches up
missed slots and arms every schedule; `Engine.run()` then owns every long-lived task in one
TaskGroup until `stop()`. It is also the ChangeSink and PollHealth of the pollers.
"""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import datetime, timedelta
from typing import Any, Protocol

import structlog

from watcherd import config as config_mod
from watcherd.core.errors import ConfigError, ConfigErrors
from watcherd.core.models import (
    Config,
    CronTrigger,
    DatastoreTrigger,
    LocalDatastore,
    RecurrenceTrigger,
    Schedule,
    Source,
    Status,
)
from watcherd.core.slots import anchor_for, creation_fire, trigger_key
from watcherd.dispatch.command import CommandDispatcher
from watcherd.engine.clock import Clock
from watcherd.engine.metrics import Metrics
from watcherd.engine.outbox import Outbox, PollStatus, display_name
from watcherd.engine.ports import Dispatcher
from watcherd.engine.runner import Runner
from watcherd.engine.timers import Timers
from watcherd.state.sqlite.store import Store, StoredSchedule

__all__ = ["Engine", "PollStatus", "display_name", "spec_body"]

log = structlog.get_logger(__name__)

EPS = timedelta(microseconds=1)


class Engine(Outbox):
    """The scheduling core of one daemon."""

    def __init__(
        self, config: Config, store: Store, clock: Clock, metrics: Metrics | None = None
    ) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        self.metrics = metrics or Metrics()
        self.schedules: dict[str, Schedule] = {}
        self.rows: dict[str, StoredSchedule] = {}
        self.pipeline_status: dict[str, Status] = {}
        self.poll: dict[str, PollStatus] = {}
        self._dispatchers = _LazyDispatchers(command=CommandDispatcher())
        self.runner = Runner(
            store=store,
            clock=clock,
            metrics=self.metrics,
            resolve=self._resolve,
            dispatchers=self._dispatchers,
            max_concurrent=config.daemon.max_concurrent_runs,
        )
        self.timers = Timers(
            store=store,
            clock=clock,
            metrics=self.metrics,
            runner=self.runner,
            slot_run=self._slot_run,
        )
        self._pollers: dict[str, asyncio.Task[None]] = {}
        self._pending_pollers: list[tuple[str, _Runnable]] = []
        self._fresh: set[str] = set()  # timers just (re)created: nothing was missed
        self._live_cursor: dict[str, datetime] = {}  # cursors of timers re-armed at run time
        self._tg: asyncio.TaskGroup | None = None
        self._stop = asyncio.Event()
        self.started = asyncio.Event()
        self.started_mono = clock.monotonic()
        self.reload_error: str | None = None

    # ── config → state ───────────────────────────────────────────────────────

    async def prepare(self) -> None:
        """Load stored state, apply the config, requeue interrupted runs, arm timers."""
        await self.runner.load()
        await self._apply(self.config, first=True)

    async def reload(self, new: Config) -> None:
        """Apply a new config (SIGHUP); raises ConfigErrors and keeps the old one."""
        await self._apply(new, first=False)

    async def _apply(self, new: Config, *, first: bool) -> None:
        now = self.clock.now()
        rows = {r.id: r for r in await self.store.call(self.store.schedules)}
        pipes = await self.store.call(self.store.pipeline_rows)
        api = self._parse_api(new, rows)
        errors = config_mod.check_compat(new, api.values()) + _name_clashes(new, rows)
        if errors:
            raise ConfigErrors(errors)
        pstatus = await self._apply_pipelines(new, pipes)
        self.pipeline_status = pstatus
        declared = {s.id for s in new.schedules}
        new_rows: dict[str, StoredSchedule] = {}
        schedules: dict[str, Schedule] = {}
        for s in new.schedules:
            sched, row = self._declared(s, rows.get(s.id), new, now)
            schedules[s.id], new_rows[s.id] = sched, row
        for sid, row in rows.items():
            if sid in declared:
                continue
            if row.source == Source.API.value and sid in api:
                schedules[sid] = api[sid]
                new_rows[sid] = row
            elif row.source in (Source.FILE.value, Source.REMOVED.value):
                new_rows[sid] = dataclasses.replace(
                    row,
                    source=Source.REMOVED.value,
                    status=Status.DISABLED.value,
                    updated_at=now if row.source != Source.REMOVED.value else row.updated_at,
                )
                gone = _removed_schedule(new_rows[sid], new)
                if gone is not None:
                    schedules[sid] = gone
        changed = [r for sid, r in new_rows.items() if rows.get(sid) != r]
        await self.store.call(self.store.put_schedules, changed)
        old = self.schedules
        self.config = new
        self.rows = new_rows
        self.schedules = schedules
        self.runner.max_concurrent = new.daemon.max_concurrent_runs
        for sid in list(old):
            if sid not in schedules or old[sid] != schedules[sid] or first:
                self._disarm(sid)
        for sid, s in schedules.items():
            if first or old.get(sid) != s or rows.get(sid) != new_rows[sid]:
                await self._arm(s)

    async def _apply_pipelines(
        self, new: Config, pipes: dict[str, tuple[str, str | None]]
    ) -> dict[str, Status]:
        """The file's status wins only when it changed since last seen (SPEC §2)."""
        pstatus: dict[str, Status] = {}
        for p in new.pipelines.values():
            stored = pipes.get(p.id)
            if stored is None or stored[1] != p.status.value:
                pstatus[p.id] = p.status
            else:
                pstatus[p.id] = Status(stored[0])
        rows = [(p.id, p.name, pstatus[p.id].value, p.status.value) for p in new.pipelines.values()]
        await self.store.call(self.store.upsert_pipelines, rows)
        return pstatus

    def _parse_api(self, cfg: Config, rows: dict[str, StoredSchedule]) -> dict[str, Schedule]:
        out: dict[str, Schedule] = {}
        for sid, row in rows.items():
            if row.source != Source.API.value:
                continue
            try:
                s = config_mod.parse_schedule(
                    spec_body(row.spec),
                    config=cfg,
                    key_prefix=f"api schedule {row.name!r}",
                    source=Source.API,
                )
            except (ConfigErrors, ConfigError) as exc:
                raise ConfigErrors(
                    [
                        ConfigError(
                            f"schedules.{row.name}",
                            f"API-created schedule {row.name!r} ({sid}) no longer fits "
                            f"the config: {exc}",
                        )
                    ]
                ) from exc
            out[sid] = dataclasses.replace(s, id=sid, status=Status(row.status))
        return out

    def _declared(
        self, s: Schedule, row: StoredSchedule | None, cfg: Config, now: datetime
    ) -> tuple[Schedule, StoredSchedule]:
        spec = config_mod.schedule_to_dict(s, cfg)
        if row is None:
            status = s.status
        elif row.file_status != s.status.value or row.source == Source.REMOVED.value:
            status = s.status
        else:
            status = Status(row.status)
        sched = dataclasses.replace(s, status=status, source=Source.FILE)
        tkey = anchor = cursor = None
        if isinstance(s.trigger, RecurrenceTrigger | CronTrigger):
            tkey = trigger_key(s.trigger)
            if row is not None and row.trigger_key == tkey and row.anchor and row.cursor:
                anchor, cursor = row.anchor, row.cursor
                if row.status != status.value and status is Status.ACTIVE:
                    cursor = now  # enabling never fires by itself
            else:
                anchor, cursor = self._new_timer(sched, now, cfg)
                self._fresh.add(s.id)
        new = StoredSchedule(
            id=s.id,
            name=s.name,
            source=Source.FILE.value,
            status=status.value,
            file_status=s.status.value,
            spec=spec,
            trigger_key=tkey,
            anchor=anchor,
            cursor=cursor,
            created_at=row.created_at if row else now,
            updated_at=now
            if row is None or row.spec != spec or row.status != status.value
            else row.updated_at,
        )
        return sched, new

    def _new_timer(self, s: Schedule, now: datetime, cfg: Config) -> tuple[datetime, datetime]:
        """Anchor and cursor of a created or re-triggered time schedule (SPEC §3.1)."""
        t = s.trigger
        assert isinstance(t, RecurrenceTrigger | CronTrigger)
        anchor = anchor_for(t, now)
        pipeline = cfg.pipeline_by_id(s.pipeline)
        active = (
            s.status is Status.ACTIVE
            and pipeline is not None
            and (self.pipeline_status.get(pipeline.id, pipeline.status) is Status.ACTIVE)
        )
        if not active:
            return anchor, now
        if creation_fire(t, anchor) is not None:
            return anchor, anchor - EPS
        return anchor, max(anchor - EPS, now - EPS)

    # ── arming ───────────────────────────────────────────────────────────────

    async def _arm(self, s: Schedule) -> None:
        if s.status is not Status.ACTIVE:
            return
        if isinstance(s.trigger, DatastoreTrigger):
            self._start_poller(s)
            return
        row = self.rows[s.id]
        assert row.anchor is not None and row.cursor is not None
        live = self._live_cursor.pop(s.id, None)
        if s.id in self._fresh:
            self._fresh.discard(s.id)
            cursor = row.cursor
        elif live is not None:  # re-armed while running: nothing was missed
            cursor = max(live, row.cursor)
        else:
            cursor = await self.timers.catch_up(s, row.anchor, row.cursor)
        if cursor != row.cursor:
            self.rows[s.id] = dataclasses.replace(row, cursor=cursor)
        self.timers.arm(s, row.anchor, cursor)

    def _disarm(self, sid: str) -> None:
        armed = self.timers.armed.get(sid)
        if armed is not None:
            self._live_cursor[sid] = armed.cursor
        self.timers.disarm(sid)
        task = self._pollers.pop(sid, None)
        if task is not None:
            task.cancel()
        self.poll.pop(sid, None)

    def _start_poller(self, s: Schedule) -> None:
        assert isinstance(s.trigger, DatastoreTrigger)
        ds = self.config.datastores[s.trigger.datastore]
        kw: dict[str, Any] = dict(
            schedule=s,
            sink=self,
            health=self,
            clock=self.clock,
            max_pending=self.config.daemon.max_pending,
            metrics=self.metrics,
        )
        poller: _Runnable
        if isinstance(ds, LocalDatastore):
            from watcherd.pollers.local import LocalPoller

            poller = LocalPoller(datastore=ds, **kw)
        else:
            from watcherd.pollers.blob import BlobPoller

            poller = BlobPoller(datastore=ds, **kw)
        self.poll[s.id] = PollStatus()
        if self._tg is None:
            self._pending_pollers.append((s.id, poller))
        else:
            self._pollers[s.id] = self._tg.create_task(poller.run())

    # ── lifecycle ────────────────────────────────────────────────────────────

    async def run(self) -> None:
        """Own the runner, the timers and the pollers until stop()."""
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            runner = tg.create_task(self.runner.run())
            timers = tg.create_task(self.timers.run())
            for sid, poller in self._pending_pollers:
                self._pollers[sid] = tg.create_task(poller.run())
            self._pending_pollers = []
            self.started_mono = self.clock.monotonic()
            self.started.set()
            await self._stop.wait()
            timers.cancel()
            for t in self._pollers.values():
                t.cancel()
            stopped = await self.runner.drain(self.config.daemon.shutdown_timeout.total_seconds())
            if stopped:
                log.warning("runs_stopped_at_shutdown", count=stopped)
            await runner
        self._tg = None
        for d in self._dispatchers.values():
            await d.aclose()

    def stop(self) -> None:
        self._stop.set()


def spec_body(spec: dict[str, Any]) -> dict[str, Any]:
    """A stored schedule spec without its read-only keys, ready for parse_schedule."""
    return {k: v for k, v in spec.items() if k not in ("id", "source")}


def _removed_schedule(row: StoredSchedule, cfg: Config) -> Schedule | None:
    """A schedule removed from the file, kept visible (Disabled) with its history."""
    try:
        s = config_mod.parse_schedule(
            spec_body(row.spec), config=cfg, key_prefix="removed", source=Source.REMOVED
        )
    except (ConfigErrors, ConfigError):
        return None  # e.g. its pipeline is gone too; its runs stay in the database
    return dataclasses.replace(s, id=row.id, status=Status.DISABLED, source=Source.REMOVED)


def _name_clashes(new: Config, rows: dict[str, StoredSchedule]) -> list[ConfigError]:
    """Schedule names are unique across the file and the API."""
    api_names = {r.name: r.id for r in rows.values() if r.source == Source.API.value}
    return [
        ConfigError(
            f"schedules[{i}].name",
            f"{s.name!r} is already the name of API-created schedule {api_names[s.name]}",
        )
        for i, s in enumerate(new.schedules)
        if s.name in api_names and api_names[s.name] != s.id
    ]


class _Runnable(Protocol):
    async def run(self) -> None: ...


class _LazyDispatchers(dict[str, Dispatcher]):
    """Imports the http and azureml dispatchers (and aiohttp, azure) only when first used."""

    def __missing__(self, kind: str) -> Dispatcher:
        d: Dispatcher
        if kind == "http":
            from watcherd.dispatch.http import HttpDispatcher

            d = HttpDispatcher()
        elif kind == "azureml":
            from watcherd.dispatch.azureml import AzureMLDispatcher

            d = AzureMLDispatcher()
        else:
            raise KeyError(kind)
        self[kind] = d
        return d
