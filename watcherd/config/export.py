"""Schedules back out: the API's JSON shape (SPEC §8) and `[[schedules]]` TOML for export."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict
from datetime import datetime, timedelta

from watcherd.core.durations import format_duration
from watcherd.core.models import (
    BlobEvents,
    Config,
    CronTrigger,
    DatastoreTrigger,
    LocalDatastore,
    RecurrenceTrigger,
    Schedule,
    Trigger,
)

__all__ = [
    "export_toml",
    "polling_interval_value",
    "schedule_to_dict",
    "toml_key",
    "toml_value",
    "trigger_name",
]

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_MINUTE = timedelta(minutes=1)


def _wall(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat(timespec="seconds")


def _duration(value: timedelta | None) -> str | None:
    return None if value is None else format_duration(value)


def polling_interval_value(value: timedelta) -> int | str:
    """Whole minutes as a number (Azure ML's unit), anything else as a duration string."""
    minutes, rest = divmod(value, _MINUTE)
    return minutes if not rest else format_duration(value)


def schedule_to_dict(schedule: Schedule, config: Config) -> dict[str, object]:
    """The schedule as the API shows it: exactly the §2 keys of its trigger kind, plus `id`
    and `source`. Unset optional keys are None; durations are strings, `polling_interval` a
    number of minutes when whole; wall times are `YYYY-MM-DDThh:mm:ss`."""
    out: dict[str, object] = {
        "id": schedule.id,
        "name": schedule.name,
        "description": schedule.description,
        "pipeline": schedule.pipeline,
        "experiment_name": schedule.experiment_name,
        "status": str(schedule.status),
        "pipeline_parameters": dict(schedule.pipeline_parameters),
        "continue_on_step_failure": schedule.continue_on_step_failure,
    }
    trigger = schedule.trigger
    if not isinstance(trigger, DatastoreTrigger) and trigger.v2 is not None:
        out["trigger"] = _plain(trigger.v2)  # as given (SPEC §13), never as v1 terms
    elif isinstance(trigger, RecurrenceTrigger):
        out["recurrence"] = trigger.recurrence.to_dict()
        out["end_time"] = _wall(trigger.end_time)
    elif isinstance(trigger, CronTrigger):
        rule = trigger.cron
        out["cron"] = rule.expression
        out["time_zone"] = rule.time_zone
        out["start_time"] = _wall(rule.start_time)
        out["end_time"] = _wall(rule.end_time)
    else:
        out.update(_datastore_keys(trigger, config))
    if not isinstance(trigger, DatastoreTrigger):
        opts = trigger.options
        out["catch_up"] = opts.catch_up
        out["max_catch_up"] = opts.max_catch_up
        out["concurrency"] = opts.concurrency
        out["max_queued"] = opts.max_queued
    out["source"] = str(schedule.source)
    return out


def _events(events: bool | BlobEvents | None) -> object:
    if isinstance(events, BlobEvents):
        return {k: v for k, v in asdict(events).items() if v is not None}
    return events


def trigger_name(trigger: Trigger) -> str:
    """The API key that holds a schedule's trigger: recurrence, cron, trigger or datastore."""
    if not isinstance(trigger, DatastoreTrigger) and trigger.v2 is not None:
        return "trigger"
    return trigger.kind


def _plain(value: object) -> object:
    """A deep copy made of dicts and lists (a frozen schedule never shares its tables)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _datastore_keys(trigger: DatastoreTrigger, config: Config) -> dict[str, object]:
    # list_page_size pages a blob listing; a local schedule shows None (not applicable).
    blob = not isinstance(config.datastores.get(trigger.datastore), LocalDatastore)
    return {
        "datastore": trigger.datastore,
        "path_on_datastore": trigger.path_on_datastore,
        "polling_interval": polling_interval_value(trigger.polling_interval),
        "data_path_parameter_name": trigger.data_path_parameter_name,
        "pattern": list(trigger.pattern),
        "ignore": list(trigger.ignore),
        "ignore_defaults": trigger.ignore_defaults,
        "settle": _duration(trigger.settle),
        "initial": trigger.initial,
        "events": _events(trigger.events),
        "list_page_size": trigger.list_page_size if blob else None,
    }


def export_toml(schedules: Iterable[Schedule], config: Config) -> str:
    """`[[schedules]]` tables that `load` accepts back; unset keys and `source` are left out,
    `id` is kept so the schedules keep their history when declared in a file."""
    blocks = []
    for schedule in schedules:
        lines = ["[[schedules]]"]
        for key, value in schedule_to_dict(schedule, config).items():
            if value is None or key == "source":
                continue
            line = f"{toml_key(key)} = {toml_value(value)}"
            pipeline = config.pipeline_by_id(schedule.pipeline) if key == "pipeline" else None
            lines.append(f"{line}  # {pipeline.name}" if pipeline else line)
        blocks.append("\n".join(lines) + "\n")
    return "\n".join(blocks)


def toml_key(key: str) -> str:
    # Table keys are never substituted (SPEC §2): no `$${` escape here.
    return key if _BARE_KEY.fullmatch(key) else _toml_str(key)


def toml_value(value: object) -> str:
    """A TOML literal for a str, bool, int, float, list, mapping (inline table) or datetime.

    Strings are written as the loader must read them back: every string value of a config
    file goes through `${VAR}` substitution, so a literal `${` is written `$${` (issue #11:
    an exported schedule must not pull the daemon's environment into its parameters)."""
    if isinstance(value, str):
        return _toml_str(value.replace("${", "$${"))
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _toml_float(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Mapping):
        items = ", ".join(f"{toml_key(str(k))} = {toml_value(v)}" for k, v in value.items())
        return "{ " + items + " }" if items else "{}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def _toml_float(value: float) -> str:
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return repr(value)


def _toml_str(text: str) -> str:
    # JSON's escapes are valid TOML ones; json leaves DEL raw, which TOML forbids.
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")
