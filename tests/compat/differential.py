"""The comparison rules of the differential tests (test_differential.py), pure and Azure-free.

Each generated input gets an outcome from Azure's package (a driver's result dict) and from
watcherd, and `classify_v1` / `classify_v2` name the pair: an agreement ("both_accept",
"both_reject", "same_message"), a deliberate difference of SPEC §11 / §13 ("deliberate:<why>"),
or a disagreement ("UNEXPLAINED: <why>"), which fails the test with the input. The rules are
deliberately narrow: a deliberate refusal must carry watcherd's message for the very key that
holds the deliberately refused value (so a wrong message elsewhere is still caught), a
deliberate acceptance must be of a zone watcherd knows, and only where Azure crashed with a
Python TypeError on a wrong type does any refusal do.
"""

from __future__ import annotations

import re
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from functools import cache
from typing import Any
from zoneinfo import ZoneInfo

from tests.compat.generators import CRON_BAD, CRON_OK, decode_v1_kwargs
from watcherd.config import parse_schedule
from watcherd.config.yaml import schedule_body
from watcherd.core.errors import ConfigErrors
from watcherd.core.models import Config, CronTrigger, RecurrenceTrigger, Schedule, Source
from watcherd.core.recurrence import MAX_INTERVAL
from watcherd.core.timezones import WINDOWS_ZONE_NAMES, enum_member_name
from watcherd.sdk import ScheduleRecurrence, TimeZone
from watcherd.sdk import ValidationError as SdkValidationError

__all__ = [
    "Outcome",
    "classify_v1",
    "classify_v2",
    "daemon_v1",
    "sdk_v1",
    "v1_as_json",
    "v1_stored_differences",
    "watcherd_v2",
]

UNEXPLAINED = "UNEXPLAINED"

# Azure ML's messages (SPEC §3.1) that a deliberate difference may put in watcherd's mouth.
INTERVAL_RULE = "Interval must be an integer greater than 0."
HOURS_RULE = "Hours must be between 0 and 23."
MINUTES_RULE = "Minutes must be between 0 and 59."
ZONE_RULE = "Time zone is not a valid TimeZone enum."
TIME_OF_DAY_FORMAT = "time_of_day should be in the format hh:mm."
TZINFO = "Can not specify tzinfo for start_time, use time_zone instead."
_LOCAL_START = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2})?", re.ASCII)
_ZONE_BY_MEMBER = {enum_member_name(v): v for v in WINDOWS_ZONE_NAMES}


@dataclass(frozen=True)
class Outcome:
    """watcherd's answer to one input: accepted (with the values to compare) or a message."""

    accepted: bool
    message: str | None = None
    stage: str | None = None  # v1 SDK: "init" | "validate"
    error_type: str | None = None  # a Python error instead of watcherd's ValidationError
    paths: tuple[str, ...] = ()  # v2 / daemon: the key paths of every problem
    values: dict[str, Any] = field(default_factory=dict)


# ── v1: ScheduleRecurrence ────────────────────────────────────────────────────


def v1_as_json(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword dict as a config file or API body holds it: an enum member as its value,
    a datetime as ISO text (an offset kept), a tuple as a list."""

    def conv(value: Any) -> Any:
        if isinstance(value, list):
            return [conv(v) for v in value]
        if isinstance(value, dict) and len(value) == 1:
            ((tag, inner),) = value.items()
            if tag == "$datetime":
                return datetime.fromisoformat(inner).isoformat()
            if tag == "$timezone":
                return _ZONE_BY_MEMBER[inner]
            if tag == "$tuple":
                return [conv(v) for v in inner]
        return value

    return {key: conv(value) for key, value in kwargs.items()}


def _sdk_values(rec: ScheduleRecurrence) -> dict[str, Any]:
    def plain(value: Any) -> Any:
        return list(value) if isinstance(value, tuple) else value

    keys = ("frequency", "interval", "hours", "minutes", "week_days")
    values = {key: plain(getattr(rec, key)) for key in keys}
    values["sent"] = rec.to_dict()  # what Schedule.create posts
    values["stored"] = {
        "start_time": _as_driver(rec.start_time),
        "time_zone": _as_driver(rec.time_zone),
    }
    return values


def _as_driver(value: Any) -> Any:
    """An attribute as the v1 driver encodes Azure's (enum members and datetimes tagged)."""
    if isinstance(value, Enum):
        return {"$enum": f"TimeZone.{value.name}", "value": value.value}
    if isinstance(value, datetime):
        return {"$datetime": value.isoformat()}
    return value


def v1_stored_differences(azure: Mapping[str, Any], sdk: Outcome) -> list[str]:
    """Where both accept: the `start_time` / `time_zone` attributes that differ from Azure's
    (Azure stores a datetime start as '%Y-%m-%dT%H:%M:%S' text, and sets TimeZone.UTC when a
    start_time comes without a zone; watcherd.sdk must too)."""
    theirs = azure["normalized"]
    return [k for k, v in sdk.values["stored"].items() if theirs[k] != v]


def sdk_v1(kwargs: Mapping[str, Any]) -> Outcome:
    """`watcherd.sdk.ScheduleRecurrence(**kwargs)`, then validate() twice (Schedule.create
    validates a recurrence the user may have validated already)."""
    stage = "init"
    try:
        rec = ScheduleRecurrence(**decode_v1_kwargs(dict(kwargs), TimeZone))
        stage = "validate"
        rec.validate()
        stage = "second validate"
        rec.validate()
    except SdkValidationError as exc:
        return Outcome(False, exc.message, stage)
    except Exception as exc:  # noqa: BLE001 - a crash is an outcome to report
        return Outcome(False, f"{type(exc).__name__}: {exc}", stage, type(exc).__name__)
    return Outcome(True, stage="validate", values=_sdk_values(rec))


def daemon_v1(recurrence: Mapping[str, Any], config: Config, pipeline: str) -> Outcome:
    """A recurrence as JSON (`v1_as_json`, or what the SDK sends) in an API body
    (`POST /schedules`, or a `[[schedules]]` table), checked by the daemon."""
    body: dict[str, object] = {"name": "s", "pipeline": pipeline, "experiment_name": "E"}
    body["recurrence"] = dict(recurrence)
    try:
        schedule = parse_schedule(body, config=config, key_prefix="body", source=Source.API)
    except ConfigErrors as exc:
        first = exc.errors[0]
        paths = tuple(e.key_path for e in exc.errors)
        return Outcome(False, first.reason, paths=paths)
    except Exception as exc:  # noqa: BLE001
        return Outcome(False, f"{type(exc).__name__}: {exc}", error_type=type(exc).__name__)
    trigger = schedule.trigger
    assert isinstance(trigger, RecurrenceTrigger)
    rec = trigger.recurrence
    values = {
        "frequency": rec.frequency,
        "interval": rec.interval,
        "hours": None if rec.hours is None else list(rec.hours),
        "minutes": None if rec.minutes is None else list(rec.minutes),
        "week_days": None if rec.week_days is None else list(rec.week_days),
        "start_time": rec.start_time,
        "time_zone": rec.time_zone,
    }
    return Outcome(True, values=values)


def _is_number_but_not_int(value: Any) -> bool:
    return isinstance(value, bool | float)


def _holds_non_int(value: Any) -> bool:
    items = value if isinstance(value, list) else [value]
    if isinstance(value, dict) and "$tuple" in value:
        items = value["$tuple"]
    return any(_is_number_but_not_int(v) for v in items)


def _v1_start_is_deliberate(value: Any) -> bool:
    """A start_time Azure stores unchecked and watcherd refuses (SPEC §11)."""
    if value is None or (isinstance(value, dict) and "$datetime" in value):
        return False
    if not isinstance(value, str) or not _LOCAL_START.fullmatch(value):
        return True
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return True
    return False


def _v1_deliberate_messages(kwargs: Mapping[str, Any]) -> dict[str, str]:
    """watcherd's messages that a deliberate difference explains, with the reason's name."""
    out: dict[str, str] = {}
    if _is_number_but_not_int(kwargs.get("interval")):
        out[INTERVAL_RULE] = "float_or_bool"
    for key, message in (("hours", HOURS_RULE), ("minutes", MINUTES_RULE)):
        if kwargs.get(key) is not None and _holds_non_int(kwargs[key]):
            out[message] = "float_or_bool"
    tod = kwargs.get("time_of_day")
    if isinstance(tod, str) and tod.endswith("\n"):
        out[TIME_OF_DAY_FORMAT] = "time_of_day_newline"
    frequency, interval = kwargs.get("frequency"), kwargs.get("interval")
    if (
        isinstance(frequency, str)
        and frequency in MAX_INTERVAL
        and type(interval) is int
        and interval > MAX_INTERVAL[frequency]
    ):
        out[f"Interval must be at most {MAX_INTERVAL[frequency]} for frequency {frequency}."] = (
            "interval_over_100_years"
        )
    return out


def _known_zone_string(kwargs: Mapping[str, Any]) -> bool:
    """A zone given as text that watcherd knows: one of the 131 names, or an IANA name."""
    zone = kwargs.get("time_zone")
    return isinstance(zone, str) and (zone in WINDOWS_ZONE_NAMES or zone in _iana())


def _start_message(message: str) -> bool:
    return message == TZINFO or message.startswith("start_time ")


def classify_v1(kwargs: Mapping[str, Any], azure: Mapping[str, Any], ours: Outcome) -> str:
    """Name the pair (Azure's driver result, watcherd's outcome) for one v1 input."""
    if ours.error_type is not None:
        return f"{UNEXPLAINED}: watcherd raised {ours.message}"
    if azure["accepted"] and ours.accepted:
        return "both_accept"
    if not azure["accepted"] and not ours.accepted and azure["message"] == ours.message:
        if ours.stage is not None and ours.stage != azure["stage"]:
            return f"{UNEXPLAINED}: same message at {ours.stage}, Azure at {azure['stage']}"
        return "same_message"
    if not ours.accepted:
        assert ours.message is not None
        why = _v1_deliberate_messages(kwargs).get(ours.message)
        if why is not None:
            return f"deliberate:{why}"
        if _v1_start_is_deliberate(kwargs.get("start_time")) and _start_message(ours.message):
            return "deliberate:start_time_format"
        if not azure["accepted"] and azure["error_type"] == "TypeError":
            return "deliberate:azure_type_error"  # Azure crashed on a wrong type: any message
    elif not azure["accepted"] and azure["message"] == ZONE_RULE and _known_zone_string(kwargs):
        return "deliberate:time_zone_string"
    theirs = "accepts" if azure["accepted"] else f"{azure['error_type']}: {azure['message']}"
    mine = "accepts" if ours.accepted else ours.message
    return f"{UNEXPLAINED}: Azure {theirs} | watcherd {mine}"


def compare_v1_values(azure: Mapping[str, Any], sdk: Outcome, daemon: Outcome) -> list[str]:
    """Where all three accept: the SDK's attributes and the daemon's recurrence against
    Azure's (time_of_day stored as hours/minutes, the zone, the start)."""
    theirs = azure["normalized"]
    problems = []
    for key in ("frequency", "interval", "hours", "minutes", "week_days"):
        if sdk.values[key] != theirs[key]:
            problems.append(f"SDK {key} {sdk.values[key]!r} != Azure's {theirs[key]!r}")
        if daemon.values[key] != theirs[key] and theirs[key] is not None:
            problems.append(f"daemon {key} {daemon.values[key]!r} != Azure's {theirs[key]!r}")
    zone = theirs["time_zone"]
    if isinstance(zone, dict):  # an enum member
        zone = zone["value"]
    if zone is not None and daemon.values["time_zone"] != zone:
        problems.append(f"daemon time_zone {daemon.values['time_zone']!r} != Azure's {zone!r}")
    start = theirs["start_time"]
    if start is not None and daemon.values["start_time"] != datetime.fromisoformat(start):
        problems.append(f"daemon start_time {daemon.values['start_time']} != Azure's {start}")
    return problems


# ── v2: schedule YAML ─────────────────────────────────────────────────────────


def watcherd_v2(text: str, config: Config) -> Outcome:
    """`schedules create --file`: the YAML into an API body, then the daemon's check."""
    try:
        body = schedule_body(text, config=config)
        schedule = parse_schedule(body, config=config, key_prefix="body", source=Source.API)
    except ConfigErrors as exc:
        reasons = "; ".join(str(e) for e in exc.errors)
        return Outcome(False, reasons, paths=tuple(e.key_path for e in exc.errors))
    except Exception as exc:  # noqa: BLE001
        return Outcome(False, f"{type(exc).__name__}: {exc}", error_type=type(exc).__name__)
    return Outcome(True, values=_v2_values(schedule))


def _v2_values(schedule: Schedule) -> dict[str, Any]:
    trigger = schedule.trigger
    if isinstance(trigger, CronTrigger):
        rule = trigger.cron
        return {
            "type": "cron",
            "expression": rule.expression,
            "start_time": rule.start_time,
            "end_time": rule.end_time,
            "time_zone": rule.time_zone,
            "zone": rule.zone,
            "pipeline": schedule.pipeline,
        }
    assert isinstance(trigger, RecurrenceTrigger)
    rec = trigger.recurrence
    return {
        "type": "recurrence",
        "frequency": rec.frequency.lower(),
        "interval": rec.interval,
        "schedule": _pattern(
            {
                "hours": rec.hours,
                "minutes": rec.minutes,
                "week_days": rec.week_days,
                "month_days": rec.month_days,
            }
        ),
        "start_time": rec.start_time,
        "end_time": trigger.end_time,
        "time_zone": rec.time_zone,
        "zone": rec.zone,
        "pipeline": schedule.pipeline,
    }


def _pattern(pattern: Mapping[str, Any] | None) -> dict[str, list[Any]]:
    """A pattern as lists, an empty or missing list left out (v2 reads no schedule as
    `RecurrencePattern(hours=[], minutes=[])`), week days in lower case."""
    out: dict[str, list[Any]] = {}
    for key, value in (pattern or {}).items():
        items = list(value) if isinstance(value, list | tuple) else [value]
        if value is not None and items:
            out[key] = [str(v).lower() for v in items] if key == "week_days" else items
    return out


@cache
def _iana() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def _is_int(value: Any) -> bool:
    return type(value) is int


def _items(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


_RANGES = {"hours": (0, 23), "minutes": (0, 59), "month_days": (1, 31)}


def v2_out_of_range(doc: Mapping[str, Any]) -> tuple[set[str], list[str]]:
    """For a file azure-ai-ml accepted: the trigger keys outside v2's documented ranges
    (which watcherd must refuse there) and the deliberate differences that apply.

    The keys are paths under `trigger` ("interval", "schedule.hours", "expression");
    deliberate: "iana_zone" (watcherd accepts), "interval_over_100_years" (refused at
    "interval", SPEC §3.1 rule 2b).
    """
    trigger = doc["trigger"]
    keys: set[str] = set()
    deliberate: list[str] = []
    zone = trigger.get("time_zone", "UTC")
    if zone not in WINDOWS_ZONE_NAMES:
        if isinstance(zone, str) and zone in _iana():
            deliberate.append("iana_zone")
        else:
            keys.add("time_zone")
    if str(trigger["type"]).lower() == "cron":
        expression = trigger["expression"]
        if expression not in CRON_OK:
            assert expression in CRON_BAD, f"classify the generator's cron {expression!r}"
            keys.add("expression")
        return keys, deliberate
    frequency = str(trigger["frequency"]).lower()
    interval = trigger["interval"]
    if not _is_int(interval) or interval < 1:
        keys.add("interval")
    elif interval > MAX_INTERVAL[frequency.capitalize()]:
        keys.add("interval")
        deliberate.append("interval_over_100_years")
    pattern = trigger.get("schedule")
    if pattern is None:
        return keys, deliberate
    if frequency in ("minute", "hour"):
        keys.add("schedule")
        return keys, deliberate
    for key, (low, high) in _RANGES.items():
        if key in pattern and any(
            not _is_int(v) or not low <= v <= high for v in _items(pattern[key])
        ):
            keys.add(f"schedule.{key}")
    if "week_days" in pattern and frequency == "day":
        keys.add("schedule.week_days")
    if "month_days" in pattern and frequency != "month":
        keys.add("schedule.month_days")
    return keys, deliberate


def _trigger_key(path: str) -> str:
    """ "body.trigger.schedule.hours[1]" → "schedule.hours"."""
    path = re.sub(r"\[\d+\]", "", path)
    return path.removeprefix("body.trigger.").removeprefix("body.trigger")


def _when(value: Any, zone: str) -> datetime | None:
    """Azure's start/end as naive wall time in `zone` (an offset converted, SPEC §13)."""
    if value is None:
        return None
    parsed = datetime.fromisoformat(value["$datetime"])
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(ZoneInfo(zone)).replace(tzinfo=None)
    return parsed.replace(microsecond=0)


def _azure_v2_values(normalized: Mapping[str, Any], zone: str) -> dict[str, Any]:
    trigger = normalized["trigger"]
    time_zone = trigger["time_zone"]
    if isinstance(time_zone, dict):  # TimeZone.UTC, the default
        time_zone = time_zone["value"]
    out = {
        "type": trigger["type"],
        "start_time": _when(trigger["start_time"], zone),
        "end_time": _when(trigger["end_time"], zone),
        "time_zone": time_zone,
    }
    if trigger["type"] == "cron":
        out["expression"] = trigger["expression"]
    else:
        frequency = trigger["frequency"]
        if isinstance(frequency, dict):
            frequency = frequency["value"]
        out |= {
            "frequency": str(frequency).lower(),
            "interval": trigger["interval"],
            "schedule": _pattern(trigger["schedule"]),
        }
    return out


def classify_v2(
    doc: Mapping[str, Any] | None,
    azure: Mapping[str, Any],
    ours: Outcome,
    pipeline_ids: Mapping[str, str],
) -> str:
    """Name the pair for one v2 YAML file; `doc` is the YAML as plain values (PyYAML)."""
    if ours.error_type is not None:
        return f"{UNEXPLAINED}: watcherd raised {ours.message}"
    if not azure["accepted"]:
        if ours.accepted:
            return f"{UNEXPLAINED}: Azure rejects ({azure['message']}), watcherd accepts"
        return "both_reject"
    assert doc is not None
    keys, deliberate = v2_out_of_range(doc)
    if keys:
        if ours.accepted:
            return f"{UNEXPLAINED}: out of v2's ranges at {sorted(keys)}, watcherd accepts"
        refused = {_trigger_key(p) for p in ours.paths}
        if not all(p.startswith("body.trigger.") for p in ours.paths) or refused != keys:
            return f"{UNEXPLAINED}: expected refusals at {sorted(keys)}, got {ours.message}"
        return "deliberate:" + (deliberate[-1] if deliberate else "out_of_range")
    if not ours.accepted:
        return f"{UNEXPLAINED}: in v2's ranges, watcherd refuses: {ours.message}"
    theirs = _azure_v2_values(azure["normalized"], ours.values["zone"])
    mine = {k: v for k, v in ours.values.items() if k in theirs}
    if mine != theirs:
        diff = {k: (mine.get(k), theirs[k]) for k in theirs if mine.get(k) != theirs[k]}
        return f"{UNEXPLAINED}: fields differ (watcherd, Azure): {diff}"
    create_job = azure["normalized"]["create_job"]
    if pipeline_ids.get(create_job) != ours.values["pipeline"]:
        return f"{UNEXPLAINED}: create_job {create_job!r} → {ours.values['pipeline']!r}"
    return "deliberate:iana_zone" if deliberate else "both_accept"
