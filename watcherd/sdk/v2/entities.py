"""The schedule entities of `azure.ai.ml.entities`, for watcherd (SPEC §13).

As in azure-ai-ml 1.35, the constructors check nothing: the daemon checks a schedule when it
is created or updated (422, with key paths rooted at `body.trigger`), with SPEC §13's rules
where they are stricter than azure-ai-ml's. `DatastoreTrigger` is watcherd's own: v2 has no
data-change trigger, watcherd has one in both shapes.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from enum import Enum
from typing import Any

from watcherd.client import ValidationError
from watcherd.sdk.v2.constants import TimeZone

__all__ = [
    "CronTrigger",
    "DatastoreTrigger",
    "JobSchedule",
    "RecurrencePattern",
    "RecurrenceTrigger",
    "ScheduleTriggerResult",
    "Trigger",
]

JSON = dict[str, Any]
_UTC: Any = TimeZone.UTC


def _time(value: str | datetime | None) -> str | None:
    """A start/end time for the API: strings as given, datetimes in ISO form (an aware one
    keeps its offset: the daemon converts it to the trigger's zone, SPEC §13)."""
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    return value


def _zone(value: object) -> Any:
    return value.value if isinstance(value, Enum) else value


def _some(data: JSON) -> JSON:
    return {k: v for k, v in data.items() if v is not None}


class RecurrencePattern:
    """When, within a recurrence's period, it fires: hours × minutes, on week or month days."""

    def __init__(
        self,
        hours: int | list[int],
        minutes: int | list[int],
        week_days: str | list[str] | None = None,
        month_days: int | list[int] | None = None,
    ) -> None:
        self.hours = hours
        self.minutes = minutes
        self.week_days = week_days
        self.month_days = month_days

    def _is_empty(self) -> bool:
        # azure-ai-ml reads "no pattern" as RecurrencePattern(hours=[], minutes=[]).
        no_days = not self.week_days and not self.month_days
        return self.hours == [] and self.minutes == [] and no_days

    def _to_api(self) -> JSON:
        return _some(
            {
                "hours": self.hours,
                "minutes": self.minutes,
                "week_days": self.week_days,
                "month_days": self.month_days,
            }
        )

    @classmethod
    def _from_api(cls, data: Mapping[str, Any] | None) -> RecurrencePattern:
        data = data or {}
        return cls(
            hours=data.get("hours", []),
            minutes=data.get("minutes", []),
            week_days=data.get("week_days"),
            month_days=data.get("month_days"),
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RecurrencePattern) and self._to_api() == other._to_api()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"RecurrencePattern({', '.join(f'{k}={v!r}' for k, v in self._to_api().items())})"


class _TimeTrigger:
    type: str
    start_time: str | datetime | None
    end_time: str | datetime | None
    time_zone: Any

    def _times(self) -> JSON:
        return {
            "start_time": _time(self.start_time),
            "end_time": _time(self.end_time),
            "time_zone": _zone(self.time_zone),
        }

    def _to_api(self) -> JSON:
        raise NotImplementedError

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self._to_api() == other._to_api()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._to_api().items() if k != "type")
        return f"{type(self).__name__}({args})"


class RecurrenceTrigger(_TimeTrigger):
    """Every `interval` minutes, hours, days, weeks or months, at `schedule`'s times.

    `frequency` is minute, hour, day, week or month, in any case (as azure-ai-ml).
    """

    def __init__(
        self,
        frequency: str,
        interval: int,
        schedule: RecurrencePattern | None = None,
        start_time: str | datetime | None = None,
        end_time: str | datetime | None = None,
        time_zone: str | Any = _UTC,
    ) -> None:
        self.type = "recurrence"
        self.frequency = frequency
        self.interval = interval
        self.schedule = schedule if schedule is not None else RecurrencePattern([], [])
        self.start_time = start_time
        self.end_time = end_time
        self.time_zone = time_zone

    def _to_api(self) -> JSON:
        body: JSON = {"type": self.type, "frequency": self.frequency, "interval": self.interval}
        if isinstance(self.schedule, RecurrencePattern) and not self.schedule._is_empty():
            body["schedule"] = self.schedule._to_api()
        elif self.schedule is not None and not isinstance(self.schedule, RecurrencePattern):
            body["schedule"] = self.schedule  # let the daemon say what is wrong with it
        return body | _some(self._times())


class CronTrigger(_TimeTrigger):
    """A five-field cron `expression` (Vixie semantics, SPEC §3.2) in `time_zone`."""

    def __init__(
        self,
        expression: str,
        start_time: str | datetime | None = None,
        end_time: str | datetime | None = None,
        time_zone: str | Any = _UTC,
    ) -> None:
        self.type = "cron"
        self.expression = expression
        self.start_time = start_time
        self.end_time = end_time
        self.time_zone = time_zone

    def _to_api(self) -> JSON:
        return {"type": self.type, "expression": self.expression} | _some(self._times())


class DatastoreTrigger:
    """watcherd's data trigger: one run per new or changed file in a datastore directory.

    `extra` takes the other datastore-trigger keys of SPEC §2 (`pattern`, `ignore`,
    `settle`, `initial`, `events`, …).
    """

    def __init__(
        self,
        datastore: str,
        path_on_datastore: str | None = None,
        polling_interval: float | str | None = None,
        data_path_parameter_name: str | None = None,
        **extra: Any,
    ) -> None:
        self.type = "datastore"
        self.datastore = datastore
        self.path_on_datastore = path_on_datastore
        self.polling_interval = polling_interval
        self.data_path_parameter_name = data_path_parameter_name
        self.extra = extra

    def _to_api(self) -> JSON:
        return _some(
            {
                "datastore": self.datastore,
                "path_on_datastore": self.path_on_datastore,
                "polling_interval": self.polling_interval,
                "data_path_parameter_name": self.data_path_parameter_name,
            }
        ) | _some(dict(self.extra))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DatastoreTrigger) and self._to_api() == other._to_api()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"DatastoreTrigger({', '.join(f'{k}={v!r}' for k, v in self._to_api().items())})"


Trigger = RecurrenceTrigger | CronTrigger | DatastoreTrigger

_DATASTORE_KEYS = (
    "path_on_datastore",
    "polling_interval",
    "data_path_parameter_name",
    "pattern",
    "ignore",
    "ignore_defaults",
    "settle",
    "initial",
    "events",
)


def pipeline_ref(create_job: object) -> str:
    """The pipeline a `create_job` names: `azureml:<name or id>` (v2's form) or a bare name.

    Raises:
        ValidationError: a job object, or a `:version` / `@label` suffix (SPEC §13).
    """
    if not isinstance(create_job, str) or not create_job.strip():
        raise ValidationError(
            "create_job must name a watcherd pipeline as 'azureml:<pipeline name or id>'; "
            "inline job definitions are not supported",
            key_path="create_job",
        )
    name = create_job.removeprefix("azureml:")
    if ":" in name or "@" in name:
        raise ValidationError(
            f"create_job {create_job!r}: version (':N') and label ('@label') suffixes are "
            "not supported; name the pipeline as 'azureml:<pipeline name or id>'",
            key_path="create_job",
        )
    return name


class JobSchedule:
    """A schedule that runs a pipeline (`create_job`) on a trigger (azure-ai-ml's JobSchedule).

    The experiment is `tags["experiment_name"]`, else the schedule's name (SPEC §13).
    `is_enabled` is read-only: None for a local object (unless given), from the daemon's
    status otherwise; change it with `begin_enable` / `begin_disable`.
    """

    def __init__(
        self,
        name: str,
        trigger: Trigger | None,
        create_job: Any,
        display_name: str | None = None,
        description: str | None = None,
        tags: dict[str, str] | None = None,
        properties: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self.name = name
        self.trigger = trigger
        self.create_job = create_job
        self.display_name = display_name
        self.description = description
        self.tags: dict[str, str] = dict(tags or {})
        self.properties: dict[str, Any] = dict(properties or {})
        self._is_enabled: bool | None = kwargs.pop("is_enabled", None)
        self.id: str | None = kwargs.pop("id", None)
        self.provisioning_state: str | None = kwargs.pop("provisioning_state", None)
        self.creation_context: Any = kwargs.pop("creation_context", None)
        self._data: JSON | None = None  # the daemon's answer this object came from
        self._loaded_trigger: JSON | None = None

    @property
    def is_enabled(self) -> bool | None:
        return self._is_enabled

    @property
    def experiment_name(self) -> str:
        return self.tags.get("experiment_name") or self.name

    def _trigger_body(self) -> JSON:
        if self.trigger is None:
            raise ValidationError("a schedule needs a trigger", key_path="trigger")
        if isinstance(self.trigger, DatastoreTrigger):
            return self.trigger._to_api()
        if isinstance(self.trigger, RecurrenceTrigger | CronTrigger):
            return {"trigger": self.trigger._to_api()}
        raise ValidationError(
            "trigger must be a RecurrenceTrigger, a CronTrigger or a DatastoreTrigger",
            key_path="trigger",
        )

    def _to_api(self) -> JSON:
        """The body of `POST /api/v1/schedules`."""
        body: JSON = {
            "name": self.name,
            "pipeline": pipeline_ref(self.create_job),
            "experiment_name": self.experiment_name,
        }
        if self.description is not None:
            body["description"] = self.description
        if self._is_enabled is not None:
            body["status"] = "Active" if self._is_enabled else "Disabled"
        return body | self._trigger_body()

    def _changes(self, current: JSON) -> JSON:
        """The body of `PATCH /api/v1/schedules/{id}`: what differs from `current`."""
        body = self._to_api()
        patch: JSON = {k: v for k, v in body.items() if k not in ("name",) and current.get(k) != v}
        trigger = self._trigger_body()
        if self._loaded_trigger is not None and trigger == self._loaded_trigger:
            for key in trigger:  # unchanged since `get`: keep the stored shape (v1 or v2)
                patch.pop(key, None)
        return patch

    @classmethod
    def _from_api(cls, data: JSON) -> JobSchedule:
        experiment = data.get("experiment_name")
        tags = {"experiment_name": experiment} if experiment and experiment != data["name"] else {}
        self = cls(
            name=data["name"],
            trigger=_trigger_from_api(data),
            create_job=data.get("pipeline"),
            description=data.get("description"),
            tags=tags,
            is_enabled=data.get("status") == "Active",
            id=data.get("id"),
            provisioning_state="Succeeded",
        )
        self._data = data
        if self.trigger is not None:
            self._loaded_trigger = self._trigger_body()
        return self

    def __repr__(self) -> str:
        return (
            f"JobSchedule(name={self.name!r}, trigger={self.trigger!r}, "
            f"create_job={self.create_job!r}, is_enabled={self.is_enabled!r})"
        )


def _trigger_from_api(data: JSON) -> Trigger | None:
    """A schedule's trigger in v2 shapes, whichever shape the daemon holds it in."""
    if isinstance(data.get("trigger"), dict):
        t = data["trigger"]
        if str(t.get("type", "")).lower() == "cron":
            return CronTrigger(
                t.get("expression", ""), t.get("start_time"), t.get("end_time"),
                t.get("time_zone", "UTC"),
            )  # fmt: skip
        return RecurrenceTrigger(
            t.get("frequency", ""),
            t.get("interval", 1),
            RecurrencePattern._from_api(t.get("schedule")),
            t.get("start_time"),
            t.get("end_time"),
            t.get("time_zone", "UTC"),
        )
    if isinstance(data.get("recurrence"), dict):  # a v1 recurrence, shown in v2 terms
        r = data["recurrence"]
        days = r.get("week_days")
        return RecurrenceTrigger(
            str(r.get("frequency", "")).lower(),
            r.get("interval", 1),
            RecurrencePattern(
                r.get("hours") or [],
                r.get("minutes") or [],
                [d.lower() for d in days] if days else None,
            ),
            r.get("start_time"),
            data.get("end_time"),
            r.get("time_zone") or "UTC",
        )
    if data.get("cron") is not None:
        return CronTrigger(
            data["cron"], data.get("start_time"), data.get("end_time"),
            data.get("time_zone") or "UTC",
        )  # fmt: skip
    if data.get("datastore") is not None:
        extra = {k: data[k] for k in _DATASTORE_KEYS[3:] if data.get(k) is not None}
        return DatastoreTrigger(
            data["datastore"],
            data.get("path_on_datastore"),
            data.get("polling_interval"),
            data.get("data_path_parameter_name"),
            **extra,
        )
    return None


class ScheduleTriggerResult:
    """What `schedules.trigger(name)` returns: the run's id as `job_name`."""

    def __init__(self, **kwargs: Any) -> None:
        self.job_name: str | None = kwargs.get("job_name")
        self.schedule_action_type: str | None = kwargs.get("schedule_action_type")

    def _to_dict(self) -> JSON:
        return {"job_name": self.job_name, "schedule_action_type": self.schedule_action_type}

    def __repr__(self) -> str:
        return f"ScheduleTriggerResult({self._to_dict()})"
