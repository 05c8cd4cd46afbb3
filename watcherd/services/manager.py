"""`Manager`: the Services the API offers, over the engine's public operations and the store.

It validates requests, applies the 409 rules of SPEC §2 and §8, and shapes answers
(`views`). Every read is a coroutine over the store's reader path, so the API never blocks
the event loop; trigger words and next fire times are cached per schedule and recomputed only
when the schedule changes or fires.

Size: over 400 lines because it is the one list of what the API may do (each method a few
lines of checks around one engine or store call); the list views live in `views`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import bisect
import dataclasses
import itertools
import os
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import structlog

from watcherd import config as config_mod
from watcherd.config import limits
from watcherd.core.errors import Conflict, NotFound, ValidationError
from watcherd.core.models import (
    TERMINAL,
    Config,
    DatastoreTrigger,
    LocalDatastore,
    Run,
    RunStatus,
    Schedule,
    Source,
    Status,
)
from watcherd.core.timefmt import format_utc
from watcherd.engine.engine import Engine
from watcherd.engine.metrics import Metrics
from watcherd.services import OFF_LOOP_ITEMS, EncodedJSON, encode
from watcherd.services.views import Views, run_json

T = TypeVar("T")

__all__ = ["Manager"]

log = structlog.get_logger(__name__)

JSON = dict[str, Any]
_READONLY = ("source", "created_at", "updated_at", "next_fire_times")


class Manager:
    """Implements `watcherd.services.Services` for one engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.views = Views(engine)
        # replica id → (its schedules, sorted, encoded): 10k ids are not sorted and encoded
        # again on every poll of /replicas
        self._owned: dict[str, tuple[frozenset[str], list[str], str]] = {}

    @property
    def config(self) -> Config:
        return self.engine.config

    @property
    def metrics(self) -> Metrics:
        return self.engine.metrics

    # ── lookups ──────────────────────────────────────────────────────────────

    def _schedule(self, ident: str) -> Schedule:
        return self.engine.schedule(ident)

    def _pipeline_id(self, ident: str) -> str:
        p = self.config.pipeline_by_id(ident)
        if p is None:
            raise NotFound("pipeline", ident)
        return p.id

    # ── pipelines and experiments ────────────────────────────────────────────

    async def list_pipelines(self, active_only: bool = False) -> list[JSON]:
        ids = [p.id for p in self.config.pipelines.values()]
        last = await self.engine.store.last_pipeline_runs(ids)
        by_pipeline = self.views.schedules_by_pipeline()
        out = [self.views.pipeline(pid, last.get(pid), by_pipeline) for pid in ids]
        return [p for p in out if not active_only or p["status"] == "Active"]

    async def get_pipeline(self, ident: str) -> JSON:
        pid = self._pipeline_id(ident)
        last = await self.engine.store.last_pipeline_runs([pid])
        return self.views.pipeline(pid, last.get(pid), self.views.schedules_by_pipeline())

    async def set_pipeline_status(self, ident: str, status: str) -> JSON:
        pid = self._pipeline_id(ident)
        st = _status(status)
        if st is Status.DISABLED:
            # every schedule that references it counts, those in error too (their stored
            # status is what enabling the pipeline again would resume)
            eng = self.engine
            active = [
                (s.name, s.id)
                for s in eng.schedules.values()
                if s.pipeline == pid and s.status is Status.ACTIVE
            ]
            active += [
                (eng.rows[sid].name, sid)
                for sid in eng.broken
                if sid not in eng.schedules
                and sid in eng.rows
                and eng.rows[sid].status == Status.ACTIVE.value
                and self.views.broken_pipeline(sid) == pid
            ]
            if active:
                names = ", ".join(f"{name} ({sid})" for name, sid in active)
                raise Conflict(
                    f"pipeline {ident} has Active schedules: {names}; disable them first",
                    "pipeline_has_active_schedules",
                )
        await self.engine.set_pipeline_status(pid, st)
        return await self.get_pipeline(pid)

    async def submit_pipeline(
        self,
        ident: str,
        *,
        experiment_name: str,
        parameters: Mapping[str, str] | None = None,
        continue_on_step_failure: bool | None = None,
        by: str = "api",
    ) -> JSON:
        """`PublishedPipeline.submit`: one run of the pipeline now, with no schedule."""
        pid = self._pipeline_id(ident)
        if not isinstance(experiment_name, str) or not experiment_name.strip():
            raise ValidationError("experiment_name must be a non-empty string", "experiment_name")
        params = _parameters(parameters)
        run = await self.engine.submit(
            pid,
            experiment_name,
            by=by,
            parameters=params,
            continue_on_step_failure=continue_on_step_failure,
        )
        return run_json(run, self.views.name(run.schedule_id))

    async def list_experiments(self) -> list[JSON]:
        names = {s.experiment_name for s in self.engine.schedules.values()}
        names.update(await self.engine.store.experiments())
        return [{"name": n} for n in sorted(names)]

    # ── schedules ────────────────────────────────────────────────────────────

    async def next_fire_times(self, ident: str, n: int) -> list[str]:
        s = self._schedule(ident)
        if s.status is not Status.ACTIVE or isinstance(s.trigger, DatastoreTrigger):
            return []
        n = max(0, min(n, 100))
        return [format_utc(t) for t in self.engine.next_fire_times(s.id, n)]

    async def list_schedules(
        self,
        active_only: bool = False,
        pipeline_id: str | None = None,
        *,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> tuple[list[JSON], str | None]:
        pid = self._pipeline_id(pipeline_id) if pipeline_id else None
        after = _schedule_cursor(cursor) if cursor is not None else None
        eng = self.engine

        def wanted(sid: str) -> bool:
            s = eng.schedules.get(sid)
            if s is not None:
                return (
                    s.pipeline == pid
                    if pid is not None
                    else (not active_only or s.status is Status.ACTIVE)
                )
            if pid is not None:  # in error: it still references its pipeline
                return self.views.broken_pipeline(sid) == pid
            return not active_only or eng.rows[sid].status == Status.ACTIVE.value

        next_cursor = None
        if limit is None and after is None:  # everything, in the order the schedules came
            entries = [(s.name, s.id) for s in eng.schedules.values()]
            entries += [(eng.rows[sid].name, sid) for sid in eng.broken if sid not in eng.schedules]
            entries = [e for e in entries if wanted(e[1])]
        else:  # a page: by name, from just after the cursor's name
            order = self.views.by_name()
            start = 0 if after is None else bisect.bisect_right(order, (after, "\U0010ffff"))
            entries = []
            for e in itertools.islice(order, start, None):
                if wanted(e[1]):
                    if limit is not None and len(entries) == limit:
                        next_cursor = _encode_schedule_cursor(entries[-1][0])
                        break
                    entries.append(e)
        shown = [s for _, sid in entries if (s := eng.schedules.get(sid)) is not None]
        fires: list[list[str]] = []  # on the loop (they read the armed timers), in chunks
        for i in range(0, len(shown), OFF_LOOP_ITEMS):
            if i:
                await asyncio.sleep(0)  # a timer or a file due meanwhile goes first
            fires += [self.views.next3(s) for s in shown[i : i + OFF_LOOP_ITEMS]]
        last = await eng.store.last_runs([sid for _, sid in entries])
        built: dict[str, JSON] = await _maybe_off_loop(
            len(shown),
            lambda: {
                s.id: self.views.schedule(s, last, f) for s, f in zip(shown, fires, strict=True)
            },
        )
        out: list[JSON] = []
        for _, sid in entries:  # in the page's order; broken ones where their name sorts
            if sid in built:
                out.append(built[sid])
            elif sid in eng.broken:
                out.append(self.views.broken(sid, last))
        return out, next_cursor

    async def get_schedule(self, ident: str) -> JSON:
        broken = self._broken_id(ident)
        sid = broken if broken is not None else self._schedule(ident).id
        last = await self.engine.store.last_runs([sid])
        if broken is not None:
            return self.views.broken(broken, last)
        return self.views.schedule(self._schedule(ident), last)

    def _broken_id(self, ident: str) -> str | None:
        for sid in self.engine.broken:
            if ident in (sid, self.engine.rows[sid].name):
                return sid
        return None

    async def create_schedule(self, body: Mapping[str, Any]) -> JSON:
        _reject_readonly(body)
        s = config_mod.parse_schedule(
            body, config=self.config, key_prefix="body", source=Source.API
        )
        names = {x.name for x in self.engine.schedules.values()}
        names |= {self.engine.rows[sid].name for sid in self.engine.broken}
        if s.id in self.engine.rows or s.name in names:
            raise Conflict(f"a schedule named {s.name!r} or with id {s.id} exists", "exists")
        if (
            s.status is Status.ACTIVE
            and self.engine.pipeline_status.get(s.pipeline) is not Status.ACTIVE
        ):
            raise Conflict(f"pipeline {s.pipeline} is Disabled", "pipeline_disabled")
        await self.engine.save_schedule(s, config_mod.schedule_to_dict(s, self.config))
        return await self.get_schedule(s.id)

    async def create_schedule_yaml(self, text: str) -> JSON:
        from watcherd.config.yaml import schedule_body  # the YAML parser, only when used

        return await self.create_schedule(schedule_body(text, config=self.config))

    async def update_schedule(self, ident: str, body: Mapping[str, Any]) -> JSON:
        _reject_readonly(body)
        broken = self._broken_id(ident)
        if broken is not None:
            if set(k for k, v in body.items() if v is not None) - {"status"}:
                raise Conflict(
                    f"schedule {ident} is in error ({self.engine.broken[broken]}); "
                    "only its status can change: disable and delete it, then create it again",
                    "in_error",
                )
            return await self.set_schedule_status(broken, str(body.get("status") or ""))
        s = self._schedule(ident)
        if self.views.source(s) != Source.API.value:
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
            # Everything that can refuse the PATCH is checked before anything is saved: a
            # refused PATCH changes nothing.
            if new.name != s.name and self._name_taken(new.name, but=s.id):
                raise Conflict(f"a schedule named {new.name!r} exists", "exists")
            if body.get("status") is not None:
                st = _status(str(body["status"]))
                if (
                    st is Status.ACTIVE
                    and s.status is not Status.ACTIVE
                    and self.engine.pipeline_status.get(new.pipeline) is not Status.ACTIVE
                ):
                    raise Conflict(f"pipeline {new.pipeline} is Disabled", "pipeline_disabled")
            await self.engine.save_schedule(new, config_mod.schedule_to_dict(new, self.config))
            s = new
        if body.get("status") is not None:
            return await self.set_schedule_status(s.id, str(body["status"]))
        return await self.get_schedule(s.id)

    def _name_taken(self, name: str, *, but: str) -> bool:
        """Whether a schedule other than `but` is named `name` (declared, API-created,
        removed or in error: every one has a stored row, and names are unique among them)."""
        return any(row.name == name and sid != but for sid, row in self.engine.rows.items())

    async def set_schedule_status(self, ident: str, status: str) -> JSON:
        st = _status(status)
        sid = self._broken_id(ident)
        if sid is None:
            s = self._schedule(ident)
            sid = s.id
            if self.views.source(s) == Source.REMOVED.value and st is Status.ACTIVE:
                raise Conflict(f"schedule {s.name} was removed from the config file", "removed")
            if st is s.status:
                return await self.get_schedule(sid)
            if (
                st is Status.ACTIVE
                and self.engine.pipeline_status.get(s.pipeline) is not Status.ACTIVE
            ):
                raise Conflict(f"pipeline {s.pipeline} is Disabled", "pipeline_disabled")
        await self.engine.set_schedule_status(sid, st)
        return await self.get_schedule(sid)

    async def delete_schedule(self, ident: str) -> None:
        sid = self._broken_id(ident)
        if sid is not None:
            row = self.engine.rows[sid]
            if row.status == Status.ACTIVE.value:
                raise Conflict(
                    f"schedule {row.name} is Active; disable it first", "schedule_active"
                )
            await self.engine.delete_schedule(sid)
            return
        s = self._schedule(ident)
        if self.views.source(s) == Source.FILE.value:
            raise Conflict(
                f"schedule {s.name} is declared in the config file", "declared_in_config"
            )
        if s.status is Status.ACTIVE:
            raise Conflict(f"schedule {s.name} is Active; disable it first", "schedule_active")
        await self.engine.delete_schedule(s.id)

    async def trigger_schedule(
        self,
        ident: str,
        *,
        path: str | None = None,
        parameters: Mapping[str, str] | None = None,
        by: str = "api",
        idempotency_key: str | None = None,
    ) -> JSON:
        s = self._schedule(ident)
        raw_path = self._trigger_path(s, path)
        params = _parameters(parameters)
        run = await self.engine.trigger(
            s, by=by, path=raw_path, parameters=params, idempotency_key=idempotency_key
        )
        return run_json(run, self.views.name(run.schedule_id))

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
        try:  # a raw name arrives as os.fsdecode does it: undecodable bytes as surrogates
            raw = name.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            raise ValidationError(f"{path!r} is not a file name", "path") from None
        if isinstance(ds, LocalDatastore) and not os.path.isfile(
            os.path.join(os.fsencode(ds.root), raw)
        ):
            raise ValidationError(f"no file {name!r} in datastore {ds.name}", "path")
        return raw

    # ── runs ─────────────────────────────────────────────────────────────────

    async def list_runs(
        self,
        *,
        schedule_id: str | None = None,
        pipeline_id: str | None = None,
        status: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> tuple[list[JSON], str | None]:
        sid = await self._runs_schedule_id(schedule_id) if schedule_id else None
        pid = self._pipeline_id(pipeline_id) if pipeline_id else None
        if status is not None and status not in {s.value for s in RunStatus}:
            raise ValidationError(f"unknown run status {status!r}", "status")
        if cursor is not None and not (cursor.isascii() and cursor.isdigit() and len(cursor) < 19):
            raise ValidationError("bad cursor", "cursor")
        page = await self.engine.store.list_runs(
            schedule_id=sid,
            pipeline_id=pid,
            status=status,
            limit=max(1, min(int(limit), 1000)),
            cursor=cursor or None,
        )
        return [run_json(r, self.views.name(r.schedule_id)) for r in page.runs], page.next_cursor

    async def _runs_schedule_id(self, ident: str) -> str:
        """The schedule id runs are filtered by: a schedule's (by id or name, in error too),
        or the id of a deleted one whose runs are still stored; else NotFound."""
        try:
            return self._broken_id(ident) or self._schedule(ident).id
        except NotFound:
            page = await self.engine.store.list_runs(schedule_id=ident, limit=1)
            if page.runs:
                return ident
            raise

    async def _run(self, run_id: str) -> Run:
        r = await self.engine.store.get_run(run_id)
        if r is None:
            raise NotFound("run", run_id)
        return r

    async def get_run(self, run_id: str) -> JSON:
        r = await self._run(run_id)
        return run_json(r, self.views.name(r.schedule_id))

    async def get_run_log(self, run_id: str) -> bytes:
        await self._run(run_id)
        return await self.engine.store.run_log(run_id) or b""

    async def retry_run(self, run_id: str) -> JSON:
        r = await self._run(run_id)
        if r.status not in TERMINAL:
            raise Conflict(
                f"run {run_id} is {r.status.value}; only a finished run can be retried",
                "run_not_finished",
            )
        if not await self.engine.retry_run(r):
            raise Conflict(f"run {run_id} changed meanwhile", "run_changed")
        return await self.get_run(run_id)

    async def cancel_run(self, run_id: str) -> JSON:
        r = await self._run(run_id)
        if r.status not in (RunStatus.QUEUED, RunStatus.RUNNING):
            raise Conflict(
                f"run {run_id} is {r.status.value}; only Queued or Running runs can be canceled",
                "run_finished",
            )
        await self.engine.cancel_run(run_id)
        return await self.get_run(run_id)

    # ── replicas ─────────────────────────────────────────────────────────────

    async def list_replicas(self) -> list[JSON]:
        out: list[JSON] = []
        for r in await self.engine.replicas():
            cached = self._owned.get(r.id)
            if cached is None or cached[0] != r.schedules:  # sorted and encoded once per change
                ids = sorted(r.schedules)
                cached = self._owned[r.id] = (frozenset(r.schedules), ids, encode(ids))
            body: JSON = {
                "id": r.id,
                "host": r.host,
                "started": format_utc(r.started),
                "last_heartbeat": format_utc(r.last_heartbeat),
                "running": r.running,
                "config_hash": r.config_hash,
            }
            text = f'{encode(body)[:-1]}, "schedules": {cached[2]}}}'
            out.append(EncodedJSON({**body, "schedules": cached[1]}, text))
        return out

    # ── health ───────────────────────────────────────────────────────────────

    def readiness(self) -> tuple[bool, JSON]:
        eng = self.engine
        waiting, errors = _waiting_and_errors(eng)
        for sid, why in eng.broken.items():
            if sid not in eng.schedules:
                errors.append({"schedule": eng.rows[sid].name, "error": why})
        state_error = eng.health.error
        why_not = eng.not_ready()
        ready = eng.started.is_set() and not waiting and why_not is None
        if errors and self.config.daemon.readyz_strict:
            ready = False
        body: JSON = {"ready": ready, "waiting": waiting, "errors": errors}
        if eng.reload_error:
            body["reload_error"] = eng.reload_error
        if state_error:
            body["state_error"] = state_error
        if why_not and not state_error:
            body["not_ready"] = why_not
        return ready, body


def _waiting_and_errors(eng: Engine) -> tuple[list[str], list[JSON]]:
    """The Active schedules not armed yet, and those in error, for /readyz."""
    errors: list[JSON] = []
    waiting: list[str] = []
    # One pass with the engine's maps in locals (`Engine.schedule_error` inlined): the
    # probe and the page ask every few seconds, and 10k schedules are on the event loop.
    broken, polls, armed, active = eng.broken, eng.poll, eng.timers.armed, Status.ACTIVE
    # With replicas, a schedule another replica holds is that one's to arm (SPEC §12): this
    # replica is ready without it.
    leases = eng.arming.leases
    held = leases.held if leases.replicas > 1 else None
    for sid, s in eng.schedules.items():
        if s.status is not active or (held is not None and sid not in held and sid not in broken):
            continue  # (a schedule in error is the config's: every replica lists it)
        error = broken.get(sid)
        p, a = polls.get(sid), armed.get(sid)
        if error is None:
            if p is not None and p.attempts and not p.ok:
                error = p.error
            elif a is not None:
                error = a.error
            if isinstance(s.trigger, DatastoreTrigger):
                if p is None or p.attempts == 0:
                    waiting.append(s.name)
            elif a is None:
                waiting.append(s.name)
        if error:
            errors.append({"schedule": s.name, "error": error})
    return waiting, errors


def _parameters(given: Mapping[str, str] | None) -> dict[str, str]:
    """Run parameters given by hand, under the config's limits (NUL bytes, sizes, text that
    is not Unicode are refused with their key path, as in a config file)."""
    params = {str(k): str(v) for k, v in (given or {}).items()}
    problems = limits.scan(params, "parameters")
    if problems:
        key_path, reason, _ = problems[0]
        raise ValidationError(reason, key_path)
    return params


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


def _encode_schedule_cursor(name: str) -> str:
    return base64.urlsafe_b64encode(name.encode("utf-8", "surrogatepass")).decode()


def _schedule_cursor(cursor: str) -> str:
    """The name a schedules page starts after (ValidationError if not a next_cursor given)."""
    try:
        raw = base64.b64decode(cursor.encode("ascii"), altchars=b"-_", validate=True)
        return raw.decode("utf-8", "surrogatepass")
    except (ValueError, UnicodeError, binascii.Error):
        raise ValidationError("bad cursor", "cursor") from None


async def _maybe_off_loop(n: int, build: Callable[[], T]) -> T:
    """`build()` here for a list of n ≤ OFF_LOOP_ITEMS items, else on a worker thread."""
    return build() if n <= OFF_LOOP_ITEMS else await asyncio.to_thread(build)
