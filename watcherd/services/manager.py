"""The Services the API offers, implemented over the engine and the state database."""

from __future__ import annotations

import dataclasses
import os
import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import structlog

from watcherd import config as config_mod
from watcherd.core.errors import Conflict, NotFound, ValidationError
from watcherd.core.models import (
    Config,
    CronTrigger,
    DatastoreTrigger,
    LocalDatastore,
    RecurrenceTrigger,
    Run,
    RunStatus,
    Schedule,
    Source,
    Status,
)
from watcherd.core.redact import redact_url
from watcherd.core.slots import next_slot, trigger_key
from watcherd.engine.engine import Engine
from watcherd.engine.metrics import Metrics
from watcherd.services.runs import RunServices, run_json, utc_z
from watcherd.state.sqlite.store import StoredSchedule

__all__ = ["Manager", "run_json"]

log = structlog.get_logger(__name__)

JSON = dict[str, Any]


class Manager(RunServices):
    """Implements watcherd.services.Services."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @property
    def config(self) -> Config:
        return self.engine.config

    @property
    def metrics(self) -> Metrics:
        return self.engine.metrics

    # ── lookups ──────────────────────────────────────────────────────────────

    def _schedule(self, ident: str) -> Schedule:
        s = self.engine.schedules.get(ident)
        if s is not None:
            return s
        for s in self.engine.schedules.values():
            if s.name == ident:
                return s
        raise NotFound("schedule", ident)

    def _pipeline_id(self, ident: str) -> str:
        p = self.config.pipeline_by_id(ident)
        if p is None:
            raise NotFound("pipeline", ident)
        return p.id

    def _source(self, s: Schedule) -> str:
        row = self.engine.rows.get(s.id)
        return row.source if row else s.source.value

    # ── pipelines ────────────────────────────────────────────────────────────

    def _pipeline_json(self, pid: str, last: Mapping[str, Run] | None = None) -> JSON:
        p = self.config.pipeline_by_id(pid)
        assert p is not None
        t = p.target
        endpoint = getattr(t, "url", None) or getattr(t, "endpoint", None)
        scheds = [
            s.id
            for s in self.engine.schedules.values()
            if s.pipeline == p.id and self._source(s) != Source.REMOVED.value
        ]
        runs = [r for r in (last or {}).values() if r.pipeline_id == p.id]
        newest = (
            max(runs, key=lambda r: r.queued_at or datetime.min.replace(tzinfo=None), default=None)
            if runs
            else None
        )
        return {
            "id": p.id,
            "name": p.name,
            "kind": p.kind,
            "description": p.description,
            "status": self.engine.pipeline_status.get(p.id, p.status).value,
            "parameters": dict(p.parameters),
            "continue_on_step_failure": p.continue_on_step_failure,
            "endpoint": redact_url(endpoint) if endpoint else None,
            "schedules": scheds,
            "last_run": run_json(newest, self._name(newest.schedule_id)) if newest else None,
        }

    def list_pipelines(self, active_only: bool = False) -> list[JSON]:
        last = self.engine.store.sync(self.engine.store.last_runs)
        out = [self._pipeline_json(p.id, last) for p in self.config.pipelines.values()]
        return [p for p in out if not active_only or p["status"] == "Active"]

    def get_pipeline(self, ident: str) -> JSON:
        last = self.engine.store.sync(self.engine.store.last_runs)
        return self._pipeline_json(self._pipeline_id(ident), last)

    async def set_pipeline_status(self, ident: str, status: str) -> JSON:
        pid = self._pipeline_id(ident)
        st = _status(status)
        if st is Status.DISABLED:
            active = [
                s
                for s in self.engine.schedules.values()
                if s.pipeline == pid and s.status is Status.ACTIVE
            ]
            if active:
                names = ", ".join(f"{s.name} ({s.id})" for s in active)
                raise Conflict(
                    f"pipeline {ident} has Active schedules: {names}; disable them first",
                    "pipeline_has_active_schedules",
                )
        await self.engine.store.call(self.engine.store.set_pipeline_status, pid, st.value)
        self.engine.pipeline_status[pid] = st
        log.info("pipeline_status", pipeline=pid, status=st.value)
        return self.get_pipeline(pid)

    def list_experiments(self) -> list[JSON]:
        names = {s.experiment_name for s in self.engine.schedules.values()}
        names.update(self.engine.store.sync(self.engine.store.experiments))
        return [{"name": n} for n in sorted(names)]

    # ── schedules ────────────────────────────────────────────────────────────

    def next_fire_times(self, ident: str, n: int) -> list[str]:
        s = self._schedule(ident)
        if s.status is not Status.ACTIVE or isinstance(s.trigger, DatastoreTrigger):
            return []
        armed = self.engine.timers.armed.get(s.id)
        if armed is None or armed.due is None:
            return []
        out: list[datetime] = []
        cur: datetime | None = armed.due
        while cur is not None and len(out) < max(0, min(n, 100)):
            out.append(cur)
            cur = next_slot(s.trigger, armed.anchor, cur)
        return [utc_z(t) or "" for t in out]

    def _schedule_json(self, s: Schedule, last: Mapping[str, Run] | None = None) -> JSON:
        from watcherd.cli.checkconfig import trigger_words

        body = config_mod.schedule_to_dict(s, self.config)
        row = self.engine.rows.get(s.id)
        poll = self.engine.poll.get(s.id)
        armed = self.engine.timers.armed.get(s.id)
        error = (poll.error if poll and not poll.ok else None) or (armed.error if armed else None)
        lr = (last or {}).get(s.id)
        body.update(
            id=s.id,
            status=s.status.value,
            source=self._source(s),
            created_at=utc_z(row.created_at) if row else None,
            updated_at=utc_z(row.updated_at) if row else None,
            next_fire_times=self.next_fire_times(s.id, 3),
            trigger_words=trigger_words(s, self.config),
            last_run=run_json(lr, s.name) if lr else None,
            error=error,
        )
        return body

    def list_schedules(
        self, active_only: bool = False, pipeline_id: str | None = None
    ) -> list[JSON]:
        last = self.engine.store.sync(self.engine.store.last_runs)
        pid = self._pipeline_id(pipeline_id) if pipeline_id else None
        out = []
        for s in self.engine.schedules.values():
            if pid is not None:
                if s.pipeline != pid:
                    continue
            elif active_only and s.status is not Status.ACTIVE:
                continue
            out.append(self._schedule_json(s, last))
        return out

    def get_schedule(self, ident: str) -> JSON:
        last = self.engine.store.sync(self.engine.store.last_runs)
        return self._schedule_json(self._schedule(ident), last)

    async def create_schedule(self, body: Mapping[str, Any]) -> JSON:
        _reject_readonly(body)
        s = config_mod.parse_schedule(
            body, config=self.config, key_prefix="body", source=Source.API
        )
        s = dataclasses.replace(s, id=str(uuid.uuid4()))
        if s.id in self.engine.schedules or any(
            x.name == s.name for x in self.engine.schedules.values()
        ):
            raise Conflict(f"a schedule named {s.name!r} or with id {s.id} exists", "exists")
        if (
            s.status is Status.ACTIVE
            and self.engine.pipeline_status.get(s.pipeline) is not Status.ACTIVE
        ):
            raise Conflict(f"pipeline {s.pipeline} is Disabled", "pipeline_disabled")
        await self._store(s, None)
        return self.get_schedule(s.id)

    async def update_schedule(self, ident: str, body: Mapping[str, Any]) -> JSON:
        _reject_readonly(body)
        s = self._schedule(ident)
        if self._source(s) != Source.API.value:
            if set(k for k, v in body.items() if v is not None) - {"status"}:
                raise Conflict(
                    f"schedule {s.name} is declared in the config file; "
                    "only its status can change through the API",
                    "declared_in_config",
                )
        else:
            new = config_mod.parse_schedule(
                body, config=self.config, key_prefix="body", source=Source.API, existing=s
            )
            new = dataclasses.replace(new, id=s.id, status=s.status)
            await self._store(new, s)
            s = new
        if body.get("status") is not None:
            return await self.set_schedule_status(s.id, str(body["status"]))
        return self.get_schedule(s.id)

    async def _store(self, s: Schedule, old: Schedule | None) -> None:
        eng = self.engine
        now = eng.clock.now()
        row = eng.rows.get(s.id)
        spec = config_mod.schedule_to_dict(s, self.config)
        tkey = anchor = cursor = None
        if isinstance(s.trigger, RecurrenceTrigger | CronTrigger):
            tkey = trigger_key(s.trigger)
            if row is not None and row.trigger_key == tkey:
                anchor, cursor = row.anchor, row.cursor
            else:
                anchor, cursor = eng._new_timer(s, now, self.config)
                eng._fresh.add(s.id)
        new_row = StoredSchedule(
            id=s.id,
            name=s.name,
            source=Source.API.value,
            status=s.status.value,
            file_status=None,
            spec=spec,
            trigger_key=tkey,
            anchor=anchor,
            cursor=cursor,
            created_at=row.created_at if row else now,
            updated_at=now,
        )
        await eng.store.call(eng.store.put_schedule, new_row)
        eng.rows[s.id] = new_row
        eng.schedules[s.id] = s
        if old is not None:
            eng._disarm(s.id)  # a datastore poller's baseline key decides on a new baseline
        await eng._arm(s)
        log.info("schedule_saved", schedule=s.name, id=s.id)

    async def set_schedule_status(self, ident: str, status: str) -> JSON:
        eng = self.engine
        s = self._schedule(ident)
        st = _status(status)
        if self._source(s) == Source.REMOVED.value and st is Status.ACTIVE:
            raise Conflict(f"schedule {s.name} was removed from the config file", "removed")
        if st is s.status:
            return self.get_schedule(s.id)
        if st is Status.ACTIVE and eng.pipeline_status.get(s.pipeline) is not Status.ACTIVE:
            raise Conflict(f"pipeline {s.pipeline} is Disabled", "pipeline_disabled")
        now = eng.clock.now()
        row = eng.rows[s.id]
        new = dataclasses.replace(s, status=st)
        cursor = now if st is Status.ACTIVE and row.cursor is not None else row.cursor
        row = dataclasses.replace(row, status=st.value, cursor=cursor, updated_at=now)
        await eng.store.call(eng.store.put_schedule, row)
        if st is Status.ACTIVE and isinstance(s.trigger, DatastoreTrigger):
            await eng.store.call(eng.store.drop_baseline, s.id)  # enabling: fresh baseline
        eng.rows[s.id] = row
        eng.schedules[s.id] = new
        eng._disarm(s.id)
        await eng._arm(new)
        log.info("schedule_status", schedule=s.name, status=st.value)
        return self.get_schedule(s.id)

    async def delete_schedule(self, ident: str) -> None:
        s = self._schedule(ident)
        if self._source(s) == Source.FILE.value:
            raise Conflict(
                f"schedule {s.name} is declared in the config file", "declared_in_config"
            )
        if s.status is Status.ACTIVE:
            raise Conflict(f"schedule {s.name} is Active; disable it first", "schedule_active")
        eng = self.engine
        eng._disarm(s.id)
        await eng.store.call(eng.store.delete_schedule, s.id)
        eng.schedules.pop(s.id, None)
        eng.rows.pop(s.id, None)

    async def trigger_schedule(
        self,
        ident: str,
        *,
        path: str | None = None,
        parameters: Mapping[str, str] | None = None,
        by: str = "api",
        idempotency_key: str | None = None,
    ) -> JSON:
        eng = self.engine
        s = self._schedule(ident)
        if eng.pipeline_status.get(s.pipeline) is not Status.ACTIVE:
            raise Conflict(f"pipeline {s.pipeline} is Disabled", "pipeline_disabled")
        raw_path = self._trigger_path(s, path)
        params = {str(k): str(v) for k, v in (parameters or {}).items()}
        run = eng.manual_run(s, by=by, path=raw_path, parameters=params)
        if isinstance(s.trigger, RecurrenceTrigger | CronTrigger):
            opts = s.trigger.options
            active = eng.runner.queued(s.id) + eng.runner.running(s.id)
            if opts.concurrency == "forbid" and active:
                run = dataclasses.replace(
                    run,
                    status=RunStatus.SKIPPED,
                    error="previous run still active (concurrency = forbid)",
                )
            elif opts.concurrency == "queue" and eng.runner.queued(s.id) >= opts.max_queued:
                run = dataclasses.replace(run, status=RunStatus.SKIPPED, error="queue full")
        key = f"{s.id}:{idempotency_key}" if idempotency_key else None
        rid = await eng.store.call(eng.store.insert_manual, run, key, eng.clock.now())
        await eng.runner.enqueue([rid])
        return await self.get_run(rid)

    def _trigger_path(self, s: Schedule, path: str | None) -> bytes | None:
        if not isinstance(s.trigger, DatastoreTrigger):
            if path:
                raise ValidationError("path is only for datastore schedules", "path")
            return None
        if not path:
            raise ValidationError("a datastore schedule needs the path of a file to run", "path")
        prefix = s.trigger.path_on_datastore.strip("/")
        rel = path.lstrip("/")
        if prefix and rel.startswith(prefix + "/"):
            rel = rel[len(prefix) + 1 :]
        if not rel or "/" in rel or rel in (".", ".."):
            raise ValidationError(
                f"{path!r} is not a file directly in {prefix or 'the datastore root'}", "path"
            )
        name = f"{prefix}/{rel}" if prefix else rel
        ds = self.config.datastores.get(s.trigger.datastore)
        if isinstance(ds, LocalDatastore) and not os.path.isfile(ds.root / name):
            raise ValidationError(f"no file {name!r} in datastore {ds.name}", "path")
        return name.encode()

    # ── health ───────────────────────────────────────────────────────────────

    def readiness(self) -> tuple[bool, JSON]:
        eng = self.engine
        errors: list[JSON] = []
        waiting: list[str] = []
        for s in eng.schedules.values():
            if s.status is not Status.ACTIVE:
                continue
            if isinstance(s.trigger, DatastoreTrigger):
                p = eng.poll.get(s.id)
                if p is None or p.attempts == 0:
                    waiting.append(s.name)
                elif not p.ok:
                    errors.append({"schedule": s.name, "error": p.error})
            else:
                a = eng.timers.armed.get(s.id)
                if a is None:
                    waiting.append(s.name)
                elif a.error:
                    errors.append({"schedule": s.name, "error": a.error})
        ready = eng.started.is_set() and not waiting and eng.store.write_error is None
        if errors and self.config.daemon.readyz_strict:
            ready = False
        body: JSON = {"ready": ready, "waiting": waiting, "errors": errors}
        if eng.reload_error:
            body["reload_error"] = eng.reload_error
        if eng.store.write_error:
            body["state_error"] = eng.store.write_error
        return ready, body


_READONLY = ("source", "created_at", "updated_at", "next_fire_times")


def _reject_readonly(body: Mapping[str, Any]) -> None:
    for k in _READONLY:
        if k in body:
            raise ValidationError(f"{k} is read-only", k)


def _status(value: str) -> Status:
    try:
        return Status(value)
    except ValueError:
        raise ValidationError(
            f"status must be Active or Disabled, not {value!r}", "status"
        ) from None
