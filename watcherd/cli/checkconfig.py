"""The `check-config` report (SPEC §6): schedules with their next fire times, warnings, errors.

It looks at the local filesystem (local roots, programs on PATH) but contacts no datastore or
endpoint; stored anchors and API-created schedules come from the caller (the state DB, read
only). Every text in the report has the config's secrets masked.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from watcherd.config import check_compat
from watcherd.config.schema import key_join
from watcherd.core.errors import ConfigErrors
from watcherd.core.models import (
    BlobDatastore,
    CommandTarget,
    Config,
    CronTrigger,
    DatastoreTrigger,
    LocalDatastore,
    Pipeline,
    RecurrenceTrigger,
    Schedule,
    Status,
    StoredSchedule,
)
from watcherd.core.placeholders import names
from watcherd.core.redact import make_redactor
from watcherd.core.slots import (
    creation_fire,
    effective_status,
    new_timer,
    same_trigger,
    upcoming,
)
from watcherd.core.timefmt import format_utc
from watcherd.core.words import interval_words, trigger_words
from watcherd.engine.reconcile import parse_api

__all__ = [
    "Problem",
    "Report",
    "ScheduleReport",
    "build_report",
    "fire_time_line",
    "format_json",
    "format_text",
]

FIRES = 3


@dataclass(frozen=True, slots=True, kw_only=True)
class Problem:
    """One warning or error line: `key_path: message`."""

    key_path: str
    message: str

    def __str__(self) -> str:
        return f"{self.key_path}: {self.message}" if self.key_path else self.message


@dataclass(frozen=True, slots=True, kw_only=True)
class ScheduleReport:
    """One schedule as check-config shows it."""

    id: str
    name: str
    source: str
    status: str
    pipeline: str  # id
    pipeline_name: str
    trigger: str  # in words
    zone: str | None = None  # time schedules: the zone fire times are also shown in
    next_fire_times: tuple[datetime, ...] = ()  # aware UTC; the creation fire first when due
    creation_fire: datetime | None = None
    watched: str | None = None  # datastore schedules: the directory or container/prefix, interval
    note: str = ""  # why no fire times are listed


@dataclass(frozen=True, slots=True, kw_only=True)
class Report:
    """The whole check-config result; exit code 2 when there is any error."""

    path: Path | None
    schedules: tuple[ScheduleReport, ...] = ()
    warnings: tuple[Problem, ...] = ()
    errors: tuple[Problem, ...] = ()

    @property
    def exit_code(self) -> int:
        return 2 if self.errors else 0


def build_report(
    config_or_errors: Config | ConfigErrors,
    *,
    now: datetime,
    stored: Mapping[str, StoredSchedule],
    path: Path | None = None,
    search_path: str | None = None,
    unreadable: str | None = None,
) -> Report:
    """Build the report for a loaded config (or the errors that stopped it loading).

    Args:
        config_or_errors: What `config.load` returned or raised.
        now: The current instant (aware); a schedule not yet stored is created now.
        stored: The state DB's schedules by id (empty when there is no DB yet).
        path: The config file, for the heading (default: the config's own path).
        search_path: PATH for the `argv[0]` check (default: the process's PATH).
        unreadable: why the state DB could not be read (a warning: what it stores is not
            shown, and `watcherd run` would refuse it).
    """
    if isinstance(config_or_errors, ConfigErrors):
        failed = [Problem(key_path=e.key_path, message=e.reason) for e in config_or_errors.errors]
        return Report(path=path, errors=tuple(failed))
    config = config_or_errors
    mask = make_redactor(config.secrets)
    parsed, broken = parse_api(stored.values(), config)
    api = sorted(parsed.values(), key=lambda s: s.name)
    unparsed = [(stored[sid].name, stored[sid].spec) for sid in broken]
    rows = [_schedule_row(s, config, stored.get(s.id), now) for s in (*config.schedules, *api)]
    warnings = _warnings(config, api, search_path)
    if unreadable is not None:
        warnings.insert(0, Problem(key_path="daemon.state_dir", message=(
            f"the state database cannot be read ({unreadable}): stored anchors, statuses and "
            "API-created schedules are not shown, and `watcherd run` would refuse it"
        )))  # fmt: skip
    problems = check_compat(config, api, unparsed)
    errors = [Problem(key_path=e.key_path, message=e.reason) for e in problems]
    return Report(
        path=path or config.path,
        schedules=tuple(_masked_row(r, mask) for r in rows),
        warnings=tuple(Problem(key_path=w.key_path, message=mask(w.message)) for w in warnings),
        errors=tuple(Problem(key_path=e.key_path, message=mask(e.message)) for e in errors),
    )


def _masked_row(row: ScheduleReport, mask: Callable[[str], str]) -> ScheduleReport:
    watched = mask(row.watched) if row.watched else row.watched
    return replace(row, trigger=mask(row.trigger), watched=watched)


# ── schedules ─────────────────────────────────────────────────────────────────


def _schedule_row(
    schedule: Schedule, config: Config, entry: StoredSchedule | None, now: datetime
) -> ScheduleReport:
    pipeline = config.pipeline_by_id(schedule.pipeline)
    schedule = replace(schedule, status=effective_status(schedule, entry))
    row = ScheduleReport(
        id=schedule.id,
        name=schedule.name,
        source=str(schedule.source),
        status=str(schedule.status),
        pipeline=schedule.pipeline,
        pipeline_name=pipeline.name if pipeline else "?",
        trigger=trigger_words(schedule),
    )
    trigger = schedule.trigger
    if isinstance(trigger, DatastoreTrigger):
        watched = (
            f"{_watched(trigger, config)}, polled every {interval_words(trigger.polling_interval)}"
        )
        return replace(row, watched=watched)
    if schedule.status is Status.DISABLED:
        return replace(row, note="schedule Disabled: nothing fires")
    if pipeline is not None and pipeline.status is Status.DISABLED:
        return replace(row, note="pipeline Disabled: nothing fires")
    times, creation = _fire_times(trigger, entry, now)
    zone = trigger.recurrence.zone if isinstance(trigger, RecurrenceTrigger) else trigger.cron.zone
    note = "" if times else "no more fire times"
    return replace(row, zone=zone, next_fire_times=times, creation_fire=creation, note=note)


def _fire_times(
    trigger: RecurrenceTrigger | CronTrigger, entry: StoredSchedule | None, now: datetime
) -> tuple[tuple[datetime, ...], datetime | None]:
    """The next FIRES fire times as the daemon computes them (`core.slots`): a schedule not
    stored yet, or whose trigger changed, is (re)created now, with its creation fire first."""
    if (
        entry is not None
        and entry.anchor is not None
        and entry.cursor is not None
        and same_trigger(entry.trigger_key, trigger)
    ):
        anchor, cursor, fresh = entry.anchor, max(entry.cursor, now), False
    else:
        (anchor, cursor), fresh = new_timer(trigger, now, active=True), True
    times = upcoming(trigger, anchor, cursor, FIRES)
    first = creation_fire(trigger, anchor) if fresh else None
    creation = first if times and times[0] == first else None
    return tuple(times), creation


def _watched(trigger: DatastoreTrigger, config: Config) -> str:
    store = config.datastores.get(trigger.datastore)
    if isinstance(store, LocalDatastore):
        return str(store.root / trigger.path_on_datastore)
    if isinstance(store, BlobDatastore):
        prefix = trigger.path_on_datastore + "/" if trigger.path_on_datastore else ""
        return f"container {store.container}, prefix {prefix or '(none)'}"
    return trigger.datastore


# ── warnings ──────────────────────────────────────────────────────────────────


def _warnings(config: Config, api: Iterable[Schedule], search_path: str | None) -> list[Problem]:
    out: list[Problem] = []
    for name, store in config.datastores.items():
        if isinstance(store, LocalDatastore) and not store.root.is_dir():
            what = "is not a directory" if store.root.exists() else "does not exist"
            path = key_join(key_join("datastores", name), "root")
            out.append(Problem(key_path=path, message=f"directory {store.root} {what}"))
    for pipeline in config.pipelines.values():
        out += _program_warnings(pipeline, config, search_path)
    used = {s.pipeline for s in (*config.schedules, *api)}
    used |= {p.on_failure for p in config.pipelines.values() if p.on_failure}
    for name, pipeline in config.pipelines.items():
        if pipeline.id not in used:
            out.append(Problem(key_path=key_join("pipelines", name), message="used by no schedule"))
    for i, schedule in enumerate(config.schedules):
        target = config.pipeline_by_id(schedule.pipeline)
        if schedule.status is Status.ACTIVE and target and target.status is Status.DISABLED:
            message = f"pipeline {target.name!r} is Disabled: this schedule starts nothing"
            out.append(Problem(key_path=f"schedules[{i}].pipeline", message=message))
    return out


def _program_warnings(pipeline: Pipeline, config: Config, search_path: str | None) -> list[Problem]:
    target = pipeline.target
    if not isinstance(target, CommandTarget):
        return []
    cwd = target.cwd or config.base_dir
    env_path = target.env.get("PATH") or search_path or os.environ.get("PATH", os.defpath)
    out = []
    for i, argv in enumerate(target.steps):
        program = argv[0]
        if names(program):
            continue  # decided per run
        if "/" in program:
            found = (cwd / program).is_file() and os.access(cwd / program, os.X_OK)
            problem = f"{program!r} is not an executable file (from {cwd})"
        else:
            found = shutil.which(program, path=env_path) is not None
            problem = f"{program!r} not found on PATH"
        if not found:
            path = f"{key_join(key_join('pipelines', pipeline.name), 'steps')}[{i}][0]"
            out.append(Problem(key_path=path, message=problem))
    return out


# ── output ────────────────────────────────────────────────────────────────────


def fire_time_line(value: datetime, zone: str) -> str:
    """`2026-11-25T10:15:00Z (2026-11-25 02:15 PST)`: UTC, then the schedule's zone."""
    local = value.astimezone(ZoneInfo(zone))
    return f"{format_utc(value)} ({local:%Y-%m-%d %H:%M} {local.tzname()})"


def format_text(report: Report) -> str:
    """The human-readable report."""
    counts = [
        _count(len(report.schedules), "schedule"),
        _count(len(report.warnings), "warning"),
        _count(len(report.errors), "error"),
    ]
    lines = [f"{report.path or 'config'}: {', '.join(counts)}"]
    for row in report.schedules:
        lines += ["", *_row_lines(row)]
    for title, problems in (("warnings", report.warnings), ("errors", report.errors)):
        if problems:
            lines += ["", f"{title}:"] + [f"  {p}" for p in problems]
    return "\n".join(lines) + "\n"


def _count(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _row_lines(row: ScheduleReport) -> list[str]:
    lines = [
        row.name,
        f"  id        {row.id}",
        f"  source    {row.source}",
        f"  status    {row.status}",
        f"  pipeline  {row.pipeline_name} ({row.pipeline})",
        f"  trigger   {row.trigger}",
    ]
    if row.watched is not None:
        lines.append(f"  watches   {row.watched}")
    for i, when in enumerate(row.next_fire_times):
        label = "  next      " if i == 0 else " " * 12
        mark = "  on creation" if when == row.creation_fire and i == 0 else ""
        lines.append(label + fire_time_line(when, row.zone or "UTC") + mark)
    if row.note:
        lines.append(f"  next      ({row.note})")
    return lines


def format_json(report: Report) -> str:
    """The `--json` document of SPEC §6; times are ISO UTC strings."""
    doc = {
        "schedules": [
            {
                "id": r.id,
                "name": r.name,
                "source": r.source,
                "status": r.status,
                "pipeline": r.pipeline,
                "trigger": r.trigger,
                "next_fire_times": [format_utc(t) for t in r.next_fire_times],
                "creation_fire": format_utc(r.creation_fire),
            }
            for r in report.schedules
        ],
        "warnings": [{"key_path": p.key_path, "message": p.message} for p in report.warnings],
        "errors": [{"key_path": p.key_path, "message": p.message} for p in report.errors],
    }
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
