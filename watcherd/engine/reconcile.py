"""A config applied to the stored schedules and pipelines (SPEC §2), as a pure computation.

Given the loaded config, the stored rows and `now`, `reconcile` decides every schedule's
status, source and timer (anchor, cursor) and which rows changed; the engine then writes the
changed rows and arms what it returns. Rules:
- a declared schedule is matched to its row by id; the file's status wins only when it
  differs from the status last seen in the file (else a run-time enable/disable stays);
- a declared schedule gone from the file becomes Disabled with source "removed";
- API-created schedules are never touched by a config; one that no longer parses (a rule got
  stricter since it was stored) is kept aside in error, and everything else runs;
- a time trigger that changed (or is new) gets a fresh anchor; enabling never fires by itself.

A config applied is marked in the store (`applied_mark`; kept by SQLite's schema 5 and
PostgreSQL's schema 3, whose triggers drop it when anything else writes a declared row).
Given the mark of this very config, a declared row still as that apply left it (source, file
status and status) is taken as is: its spec and trigger are what this config computes, and
neither is computed nor decoded (0.4 s of a restart with 10,000 schedules).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from watcherd import config as config_mod
from watcherd.core.errors import ConfigError, ConfigErrors
from watcherd.core.memo import PerObject
from watcherd.core.models import (
    Config,
    CronTrigger,
    RecurrenceTrigger,
    Schedule,
    Source,
    Status,
    StoredSchedule,
)
from watcherd.core.slots import (
    changed_cursor,
    effective_status,
    new_timer,
    same_trigger,
    trigger_key,
)
from watcherd.engine.ports import PipelineRow

__all__ = ["Reconciled", "applied_mark", "parse_api", "parse_stored", "reconcile", "spec_body"]

# Bump when config.schedule_to_dict's output changes shape: every declared row is then
# computed and compared again at the next start (tests/test_reconcile_mark.py pins it).
SPEC_SHAPE = "1"


@dataclass(slots=True)
class Reconciled:
    """What a config makes of the stored state."""

    schedules: dict[str, Schedule] = field(default_factory=dict)
    rows: dict[str, StoredSchedule] = field(default_factory=dict)
    changed: list[StoredSchedule] = field(default_factory=list)
    fresh: set[str] = field(default_factory=set)  # timers just (re)created: nothing missed
    broken: dict[str, str] = field(default_factory=dict)  # API schedule id → why it is in error
    applied: str | None = None  # applied_mark of the config: for the store to keep
    pipeline_status: dict[str, Status] = field(default_factory=dict)
    pipeline_rows: list[PipelineRow] = field(default_factory=list)


def spec_body(spec: Mapping[str, Any]) -> dict[str, Any]:
    """A stored schedule spec without its read-only keys, ready for parse_schedule."""
    return {k: v for k, v in spec.items() if k not in ("id", "source")}


def parse_stored(row: StoredSchedule, cfg: Config, source: Source) -> Schedule:
    """A stored (API-created or removed) schedule as a Schedule; raises ConfigErrors."""
    s = config_mod.parse_schedule(
        spec_body(row.spec), config=cfg, key_prefix=f"schedule {row.name!r}", source=source
    )
    return dataclasses.replace(s, id=row.id, source=source)


def parse_api(
    rows: Iterable[StoredSchedule], cfg: Config
) -> tuple[dict[str, Schedule], dict[str, str]]:
    """The API-created rows as schedules (with their stored status), and why each of the
    others no longer parses (by id)."""
    api: dict[str, Schedule] = {}
    broken: dict[str, str] = {}
    for row in rows:
        if row.source != Source.API.value:
            continue
        try:
            api[row.id] = dataclasses.replace(
                parse_stored(row, cfg, Source.API), status=Status(row.status)
            )
        except (ConfigErrors, ConfigError) as exc:
            broken[row.id] = f"stored schedule no longer valid: {_reasons(exc)}"
    return api, broken


def applied_mark(cfg: Config) -> str | None:
    """What the store keeps of a config applied: the spec shape and the config's digest
    (its shared tables as written); None for a Config built in code (never taken as is)."""
    return f"{SPEC_SHAPE}|{cfg.digest}" if cfg.digest else None


def reconcile(
    new: Config,
    rows: Mapping[str, StoredSchedule],
    pipes: Mapping[str, PipelineRow],
    now: datetime,
    applied: str | None = None,
    *,
    running: bool = False,
) -> Reconciled:
    """Apply `new` to the stored state; `applied`: the store's mark of the config it last
    applied; `running`: a reload of a running daemon (not a start: its timers have fired
    every slot due until now). Raises ConfigErrors when the config breaks API-created
    schedules (a pipeline or datastore they use is gone, a name clash)."""
    out = Reconciled(applied=applied_mark(new))
    same = out.applied is not None and applied == out.applied
    api, out.broken = parse_api(rows.values(), new)
    unparsed = [(rows[sid].name, rows[sid].spec) for sid in out.broken]
    errors = config_mod.check_compat(new, api.values(), unparsed)
    if errors:
        raise ConfigErrors(errors)
    _pipelines(new, pipes, out)
    shared: PerObject[Any] = PerObject()  # a trigger's key and new timer, once per trigger
    for s in new.schedules:
        _declared(s, rows.get(s.id), new, now, out, same=same, shared=shared, running=running)
    declared = {s.id for s in new.schedules}
    for sid, row in rows.items():
        if sid in declared:
            continue
        if sid in api:
            out.schedules[sid], out.rows[sid] = api[sid], row
        elif sid in out.broken:
            out.rows[sid] = row
        elif row.source in (Source.FILE.value, Source.REMOVED.value):
            removed = dataclasses.replace(
                row,
                source=Source.REMOVED.value,
                status=Status.DISABLED.value,
                updated_at=now if row.source != Source.REMOVED.value else row.updated_at,
            )
            out.rows[sid] = removed
            try:
                gone = parse_stored(removed, new, Source.REMOVED)
            except (ConfigErrors, ConfigError):
                continue  # e.g. its pipeline is gone too; its runs stay in the store
            out.schedules[sid] = dataclasses.replace(gone, status=Status.DISABLED)
    out.changed = [r for sid, r in out.rows.items() if (old := rows.get(sid)) is not r and old != r]
    return out


def _reasons(exc: ConfigErrors | ConfigError) -> str:
    errs = exc.errors if isinstance(exc, ConfigErrors) else [exc]
    return "; ".join(e.reason for e in errs)


def _pipelines(new: Config, pipes: Mapping[str, PipelineRow], out: Reconciled) -> None:
    """The file's status wins only when it changed since last seen (SPEC §2)."""
    for p in new.pipelines.values():
        stored = pipes.get(p.id)
        if stored is None or stored.file_status != p.status.value:
            st = p.status
        else:
            st = Status(stored.status)
        out.pipeline_status[p.id] = st
        out.pipeline_rows.append(PipelineRow(p.id, p.name, st.value, p.status.value))


# Plain texts for the stored rows (Enum's `.value` is a slow property; 10k rows at start).
_TEXT = {m: m.value for m in Status}
_FILE = Source.FILE.value


def _declared(
    s: Schedule,
    row: StoredSchedule | None,
    cfg: Config,
    now: datetime,
    out: Reconciled,
    *,
    same: bool,
    shared: PerObject[Any],
    running: bool = False,
) -> None:
    status = effective_status(s, row)
    sched = s
    if s.status is not status or s.source is not Source.FILE:  # mostly as loaded (10k at start)
        sched = dataclasses.replace(s, status=status, source=Source.FILE)
    if same and row is not None and _as_applied(s, row, status):
        out.schedules[s.id], out.rows[s.id] = sched, row
        return
    spec = config_mod.schedule_to_dict(s, cfg)
    tkey = anchor = cursor = hint = None
    t = s.trigger
    if isinstance(t, RecurrenceTrigger | CronTrigger):
        tkey = shared.get(t, None, compute=lambda: trigger_key(t))
        if row is not None and row.anchor and row.cursor and same_trigger(row.trigger_key, t, tkey):
            anchor, cursor, hint = row.anchor, row.cursor, row.next_hint
            if row.status != status and status is Status.ACTIVE:
                cursor, hint = now, None  # enabling never fires by itself
            elif running and row.spec.get("end_time") != spec.get("end_time"):  # a reload
                moved = changed_cursor(t, anchor, cursor, now)
                if moved != cursor:
                    cursor, hint = moved, None
        else:
            active = status is Status.ACTIVE and (
                out.pipeline_status.get(s.pipeline) is Status.ACTIVE
            )
            anchor, cursor = shared.get(t, active, compute=lambda: new_timer(t, now, active=active))
            out.fresh.add(s.id)
    changed = row is None or row.spec != spec or row.status != status
    out.schedules[s.id] = sched
    out.rows[s.id] = StoredSchedule(
        id=s.id,
        name=s.name,
        source=_FILE,
        status=_TEXT[status],
        file_status=_TEXT[s.status],
        spec=spec,
        trigger_key=tkey,
        anchor=anchor,
        cursor=cursor,
        created_at=row.created_at if row else now,
        updated_at=row.updated_at if row is not None and not changed else now,
        next_hint=hint,
    )


def _as_applied(s: Schedule, row: StoredSchedule, status: Status) -> bool:
    """Whether the row of a declared schedule is what the last apply of this same config
    left, and stays so: written from the file, with its status, not enabled or disabled
    since, and (time triggers) its timer set."""
    if row.source != _FILE or row.file_status != _TEXT[s.status] or row.status != _TEXT[status]:
        return False
    if isinstance(s.trigger, RecurrenceTrigger | CronTrigger):
        return row.trigger_key is not None and row.anchor is not None and row.cursor is not None
    return row.trigger_key is None
