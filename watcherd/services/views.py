"""Pipelines, schedules and runs as the API, the page and the SDK show them (JSON values)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from watcherd import config as config_mod
from watcherd.core.models import Config, Pipeline, Run, Schedule, Source, Status, StoredSchedule
from watcherd.core.redact import MASK, redact_url
from watcherd.core.timefmt import format_utc
from watcherd.core.words import trigger_words
from watcherd.engine.engine import Engine
from watcherd.services import EncodedJSON

__all__ = ["Views", "pipeline_json", "run_json"]

JSON = dict[str, Any]
_NO_FIRES: list[str] = []  # one object: the item cache compares next fire times by identity


def run_json(run: Run, schedule_name: str | None = None) -> JSON:
    """A run as the API shows it (times ISO UTC, duration in seconds)."""
    duration = None
    if run.started_at and run.finished_at:
        duration = round((run.finished_at - run.started_at).total_seconds(), 3)
    return {
        "id": run.id,
        "schedule_id": run.schedule_id or None,  # None: a pipeline submitted by hand
        "schedule_name": schedule_name,
        "pipeline_id": run.pipeline_id,
        "experiment_name": run.experiment_name,
        "status": run.status.value,
        "trigger": dict(run.trigger),
        "parameters": dict(run.parameters),
        "attempt": run.attempt,
        "attempts": [dict(a) for a in run.attempts],
        "error": run.error,
        "exit_code": run.exit_code,
        "remote_id": run.remote_id,
        "queued_at": format_utc(run.queued_at),
        "started_at": format_utc(run.started_at),
        "finished_at": format_utc(run.finished_at),
        "next_attempt_at": format_utc(run.next_attempt_at),
        "duration": duration,
    }


def pipeline_json(
    p: Pipeline,
    status: Status,
    schedule_ids: Sequence[str],
    newest: Run | None,
    names: Mapping[str, str],
) -> JSON:
    """A pipeline with its schedules and its newest run (submitted or scheduled)."""
    t = p.target
    endpoint = getattr(t, "url", None) or getattr(t, "endpoint", None)
    return {
        "id": p.id,
        "name": p.name,
        "kind": p.kind,
        "description": p.description,
        "status": status.value,
        "parameters": dict(p.parameters),
        "continue_on_step_failure": p.continue_on_step_failure,
        "endpoint": redact_url(endpoint) if endpoint else None,
        "schedules": list(schedule_ids),
        "last_run": run_json(newest, names.get(newest.schedule_id)) if newest else None,
    }


_NO_IDS: list[str] = []  # shared: a pipeline with no schedule keeps its cached item


@dataclass(frozen=True, slots=True)
class _Index:
    version: int  # ScheduleBook.version it was built at
    by_pipeline: dict[str, list[str]]
    by_name: list[tuple[str, str]]


class Views:
    """What the lists show per pipeline and schedule, with the per-schedule caches of trigger
    words and next fire times (recomputed only when the schedule changes or fires: the page
    polls every 3 s and must not cost a slot computation per schedule each time)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._words: dict[str, tuple[Schedule, str]] = {}
        self._bodies: dict[str, tuple[Schedule, Config, dict[str, Any]]] = {}
        self._fires: dict[str, tuple[object, list[str]]] = {}
        self._items: dict[str, tuple[tuple[object, ...], str | None, EncodedJSON]] = {}
        self._index_cache: _Index | None = None
        self._pipelines: dict[str, tuple[tuple[object, ...], EncodedJSON]] = {}
        self._synced = -1  # the ScheduleBook.version the caches were last pruned at

    @property
    def config(self) -> Config:
        return self.engine.config

    def source(self, s: Schedule) -> str:
        row = self.engine.rows.get(s.id)
        return row.source if row else s.source.value

    def name(self, sid: str) -> str | None:
        s = self.engine.schedules.get(sid)
        return s.name if s else None

    def schedules_by_pipeline(self) -> dict[str, list[str]]:
        """The ids of each pipeline's schedules (removed ones aside, those in error too)."""
        return self._index().by_pipeline

    def broken_pipeline(self, sid: str) -> str | None:
        """The pipeline id a stored schedule in error references (its stored `pipeline`, by
        id or name); None when its body names none."""
        ref = self.engine.rows[sid].spec.get("pipeline")
        if not isinstance(ref, str):
            return None
        p = self.config.pipeline_by_id(ref)
        return p.id if p is not None else ref

    def by_name(self) -> list[tuple[str, str]]:
        """(name, id) of every schedule, broken ones too, sorted: the schedules' page order."""
        return self._index().by_name

    def _index(self) -> _Index:
        """Built in one pass when the schedules changed (ScheduleBook.version), else cached:
        the page asks for both every 3 s, and 10k schedules are ~10 ms a pass."""
        version = self.engine.book.version
        if self._index_cache is None or self._index_cache.version != version:
            by_pipeline: dict[str, list[str]] = {}
            rows, removed = self.engine.rows, Source.REMOVED.value
            names: list[tuple[str, str]] = []
            for sid, s in self.engine.schedules.items():
                names.append((s.name, sid))
                row = rows.get(sid)
                if (row.source if row is not None else s.source.value) != removed:
                    by_pipeline.setdefault(s.pipeline, []).append(sid)
            for sid in self.engine.broken:
                if sid in rows and sid not in self.engine.schedules:
                    names.append((rows[sid].name, sid))
                    pid = self.broken_pipeline(sid)  # in error, it still references it
                    if pid is not None and rows[sid].source != removed:
                        by_pipeline.setdefault(pid, []).append(sid)
            names.sort()
            self._index_cache = _Index(version, by_pipeline, names)
        return self._index_cache

    def _sync(self) -> None:
        """When the schedules changed (ScheduleBook.version), drop the cached items of
        schedules and pipelines that are gone (deleted, or out of a reloaded config): the
        caches never outgrow what there is. Snapshots and pops: an item may be cached from a
        worker thread meanwhile."""
        version = self.engine.book.version
        if version == self._synced:
            return
        self._synced = version
        sids = self.engine.rows
        for cache in (self._words, self._bodies, self._fires, self._items):
            for gone in [sid for sid in list(cache) if sid not in sids]:
                cache.pop(gone, None)
        pids = {p.id for p in self.config.pipelines.values()}
        for gone in [pid for pid in list(self._pipelines) if pid not in pids]:
            self._pipelines.pop(gone, None)

    def pipeline(self, pid: str, newest: Run | None, by_pipeline: Mapping[str, list[str]]) -> JSON:
        """A pipeline item, cached with its JSON until what it shows changes (its schedule
        ids are thousands at 10k schedules: encoded once, not on every poll)."""
        self._sync()
        p = self.config.pipeline_by_id(pid)
        assert p is not None
        status = self.engine.pipeline_status.get(p.id, p.status)
        s = self.engine.schedules.get(newest.schedule_id) if newest else None
        ids = by_pipeline.get(p.id, _NO_IDS)
        key = (p, status, ids, newest, s)
        cached = self._pipelines.get(pid)
        if cached is not None and all(a is b for a, b in zip(cached[0], key, strict=True)):
            return cached[1]
        names = {s.id: s.name} if s is not None else {}
        item = EncodedJSON(pipeline_json(p, status, ids, newest, names))
        self._pipelines[pid] = (key, item)
        return item

    def next3(self, s: Schedule) -> list[str]:
        """The three next fire times of the lists, cached until the schedule fires or changes
        (read on the event loop for each item listed: the caches are pruned from here too)."""
        self._sync()
        armed = self.engine.timers.armed.get(s.id)
        if s.status is not Status.ACTIVE or armed is None:
            return _NO_FIRES
        key = (armed.gen, armed.due, armed.schedule)
        cached = self._fires.get(s.id)
        if cached is not None and cached[0] == key:
            return cached[1]
        times = [format_utc(t) for t in self.engine.next_fire_times(s.id, 3)]
        self._fires[s.id] = (key, times)
        return times

    def _words_of(self, s: Schedule) -> str:
        cached = self._words.get(s.id)
        if cached is not None and cached[0] is s:
            return cached[1]
        words = trigger_words(s)
        self._words[s.id] = (s, words)
        return words

    def _body_of(self, s: Schedule) -> dict[str, Any]:
        """The schedule's own keys as shown (secrets masked), cached per schedule object."""
        cfg = self.config
        cached = self._bodies.get(s.id)
        if cached is None or cached[0] is not s or cached[1] is not cfg:
            cached = self._bodies[s.id] = (s, cfg, _masked(config_mod.schedule_to_dict(s, cfg)))
        return dict(cached[2])

    def schedule(
        self, s: Schedule, last: Mapping[str, Run], fires: list[str] | None = None
    ) -> EncodedJSON:
        """A schedule as the API shows it; `fires`: its `next3`, when read beforehand on the
        event loop (the rest only reads immutable objects and may run on a worker thread).

        Cached, encoding included, until one of its inputs is another object: the schedule,
        the config, its row, its next fire times, its newest run (the stores hand back the
        same Run for an unchanged row), or its error."""
        cfg, row, lr = self.config, self.engine.rows.get(s.id), last.get(s.id)
        shown = self.next3(s) if fires is None else fires
        error = self.engine.schedule_error(s.id)
        key = (s, cfg, row, shown, lr)
        cached = self._items.get(s.id)
        if cached is not None and all(a is b for a, b in zip(cached[0], key, strict=True)):
            if cached[1] == error:
                return cached[2]
        item = EncodedJSON(self._schedule_body(s, row, lr, shown, error))
        self._items[s.id] = (key, error, item)
        return item

    def _schedule_body(
        self,
        s: Schedule,
        row: StoredSchedule | None,
        lr: Run | None,
        fires: list[str],
        error: str | None,
    ) -> JSON:
        body = self._body_of(s)
        body.update(
            id=s.id,
            status=s.status.value,
            source=self.source(s),
            created_at=format_utc(row.created_at) if row else None,
            updated_at=format_utc(row.updated_at) if row else None,
            next_fire_times=fires,
            trigger_words=self._words_of(s),
            last_run=run_json(lr, s.name) if lr else None,
            error=error,
        )
        return body

    def broken(self, sid: str, last: Mapping[str, Run]) -> JSON:
        """A stored API schedule that no longer parses: its stored body and why."""
        row = self.engine.rows[sid]
        lr = last.get(sid)
        body = _masked({k: v for k, v in row.spec.items() if k not in ("id", "source")})
        body.update(
            id=sid,
            name=row.name,
            status=row.status,
            source=row.source,
            created_at=format_utc(row.created_at),
            updated_at=format_utc(row.updated_at),
            next_fire_times=[],
            trigger_words=None,
            last_run=run_json(lr, row.name) if lr else None,
            error=self.engine.broken[sid],
        )
        return body


def _masked(body: dict[str, Any]) -> dict[str, Any]:
    """A schedule body as shown: the secrets of a blob trigger's queue (SPEC §8) masked."""
    events = body.get("events")
    if isinstance(events, dict):
        events = dict(events)
        if events.get("queue_connection_string"):
            events["queue_connection_string"] = MASK
        if isinstance(events.get("queue_account_url"), str):
            events["queue_account_url"] = redact_url(events["queue_account_url"])
        body = {**body, "events": events}
    return body
