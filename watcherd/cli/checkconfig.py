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
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from watcherd.config import check_compat
from watcherd.config.schema import key_join
from watcherd.core import cron, recurrence
from watcherd.core.durations import format_duration
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
    Source,
    Status,
)
from watcherd.core.placeholders import names
from watcherd.core.redact import make_redactor
from watcherd.core.wallclock import wall_to_utc

__all__ = [
    "Problem",
    "Report",
    "ScheduleReport",
    "StoredSchedule",
    "build_report",
    "format_json",
    "format_text",
    "trigger_words",
]

FIRES = 3


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredSchedule:
    """What the state DB knows of a schedule; API-created ones carry `schedule`."""

    id: str
    anchor: datetime  # aware: the instant the trigger was created or last changed
    status: str  # the current status (run-time enable/disable included)
    source: str  # file | api | removed
    schedule: Schedule | None = None
    file_status: str | None = None  # declared schedules: the status last seen in the file


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
) -> Report:
    """Build the report for a loaded config (or the errors that stopped it loading).

    Args:
        config_or_errors: What `config.load` returned or raised.
        now: The current instant (aware); a schedule not yet stored is created now.
        stored: The state DB's schedules by id (empty when there is no DB yet).
        path: The config file, for the heading (default: the config's own path).
        search_path: PATH for the `argv[0]` check (default: the process's PATH).
    """
    if isinstance(config_or_errors, ConfigErrors):
        failed = [Problem(key_path=e.key_path, message=e.reason) for e in config_or_errors.errors]
        return Report(path=path, errors=tuple(failed))
    config = config_or_errors
    mask = make_redactor(config.secrets)
    api = sorted(
        # The stored id wins: a schedule re-parsed from its stored body may carry a fresh one.
        (
            replace(e.schedule, id=e.id)
            for e in stored.values()
            if e.source == Source.API and e.schedule
        ),
        key=lambda s: s.name,
    )
    rows = [_schedule_row(s, config, stored.get(s.id), now) for s in (*config.schedules, *api)]
    warnings = _warnings(config, api, search_path)
    errors = [Problem(key_path=e.key_path, message=e.reason) for e in check_compat(config, api)]
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


def trigger_words(schedule: Schedule, config: Config) -> str:
    """The trigger in words, as check-config and the web page show it: "every 15 minutes",
    "when a file changes in inbox/incoming, checked every 5 min"."""
    trigger = schedule.trigger
    if isinstance(trigger, RecurrenceTrigger):
        text = recurrence.describe(trigger.recurrence)
        if trigger.end_time is not None:
            text += f", until {trigger.end_time:%Y-%m-%d %H:%M}"
        return text
    if isinstance(trigger, CronTrigger):
        return cron.describe(trigger.cron)
    where = "/".join(p for p in (trigger.datastore, trigger.path_on_datastore) if p)
    text = f"when a file changes in {where}"
    if trigger.pattern != ("*",):
        text += " matching " + " or ".join(trigger.pattern)
    return text + f", checked every {interval_words(trigger.polling_interval)}"


def interval_words(value: timedelta) -> str:
    """`5 min` for whole minutes, else the duration string (`30s`)."""
    minutes, rest = divmod(value, timedelta(minutes=1))
    return f"{minutes} min" if minutes and not rest else format_duration(value)


def _schedule_row(
    schedule: Schedule, config: Config, entry: StoredSchedule | None, now: datetime
) -> ScheduleReport:
    pipeline = config.pipeline_by_id(schedule.pipeline)
    schedule = replace(schedule, status=_effective_status(schedule, entry))
    row = ScheduleReport(
        id=schedule.id,
        name=schedule.name,
        source=str(schedule.source),
        status=str(schedule.status),
        pipeline=schedule.pipeline,
        pipeline_name=pipeline.name if pipeline else "?",
        trigger=trigger_words(schedule, config),
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
    times, creation = _fire_times(schedule, entry, now)
    zone = trigger.recurrence.zone if isinstance(trigger, RecurrenceTrigger) else trigger.cron.zone
    note = "" if times else "no more fire times"
    return replace(row, zone=zone, next_fire_times=times, creation_fire=creation, note=note)


def _effective_status(schedule: Schedule, entry: StoredSchedule | None) -> Status:
    """SPEC §2: a file status that differs from the one last seen in the file wins; else the
    stored (run-time) status stays."""
    if entry is None or entry.status not in tuple(Status):
        return schedule.status
    if schedule.source is Source.FILE and entry.file_status not in (None, schedule.status):
        return schedule.status
    return Status(entry.status)


def _trigger_key(schedule: Schedule) -> object:
    """What re-anchors a time schedule when it changes (SPEC §3.1)."""
    trigger = schedule.trigger
    if isinstance(trigger, RecurrenceTrigger):
        rec = trigger.recurrence
        return replace(rec, time_zone=rec.zone)
    if isinstance(trigger, CronTrigger):
        rule = trigger.cron
        return (rule.expression, rule.zone, rule.start_time)
    return None


def _fire_times(
    schedule: Schedule, entry: StoredSchedule | None, now: datetime
) -> tuple[tuple[datetime, ...], datetime | None]:
    """The next FIRES fire times, the creation fire first when one is due."""
    fresh = entry is None or (
        entry.schedule is not None and _trigger_key(entry.schedule) != _trigger_key(schedule)
    )
    created = now if fresh or entry is None else entry.anchor
    trigger = schedule.trigger
    times: list[datetime] = []
    creation = None
    after = now
    if isinstance(trigger, RecurrenceTrigger):
        rec, end = trigger.recurrence, trigger.end_time
        anchor = recurrence.anchor_for(rec, created)
        creation = recurrence.creation_fire(rec, anchor) if fresh else None
        if creation is not None and end is not None and wall_to_utc(end, rec.zone) < creation:
            creation = None
        if creation is not None:
            times.append(creation)
            after = creation
        while len(times) < FIRES and (nxt := recurrence.next_fire(rec, anchor, after, end)):
            times.append(nxt)
            after = nxt
    elif isinstance(trigger, CronTrigger):
        rule = trigger.cron
        anchor = cron.anchor_for(rule, created)
        while len(times) < FIRES and (nxt := cron.next_fire(rule, anchor, after)):
            times.append(nxt)
            after = nxt
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


def _utc(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def fire_time_line(value: datetime, zone: str) -> str:
    """`2026-11-25T10:15:00Z (2026-11-25 02:15 PST)`: UTC, then the schedule's zone."""
    local = value.astimezone(ZoneInfo(zone))
    return f"{_utc(value)} ({local:%Y-%m-%d %H:%M} {local.tzname()})"


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
                "next_fire_times": [_utc(t) for t in r.next_fire_times],
                "creation_fire": _utc(r.creation_fire) if r.creation_fire else None,
            }
            for r in report.schedules
        ],
        "warnings": [{"key_path": p.key_path, "message": p.message} for p in report.warnings],
        "errors": [{"key_path": p.key_path, "message": p.message} for p in report.errors],
    }
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
