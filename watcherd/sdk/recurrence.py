"""`ScheduleRecurrence` and the v1 `TimeZone` enum (import them from `watcherd.sdk`).

Checks happen when Azure ML makes them: the constructor checks only `start_time` (no tzinfo;
watcherd also wants `YYYY-MM-DDThh:mm[:ss]`, SPEC §11) and `time_of_day`, which it turns into
`hours=[h], minutes=[m]` and does not keep, as azureml-pipeline-core 1.62 does. It stores what
Azure ML stores: a datetime `start_time` as `YYYY-MM-DDThh:mm:ss` text, and `TimeZone.UTC`
when a `start_time` comes without a zone (tests/compat compares the attributes). `validate()`
checks the rules of SPEC §3.1 in order, as often as it is called (`Schedule.create` and
`Schedule.update` call it again, as Azure ML's do), with Azure ML's messages.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from enum import Enum
from typing import Any

from watcherd.client import ValidationError
from watcherd.core import errors as _errors
from watcherd.core.recurrence import make_recurrence
from watcherd.core.timezones import WINDOWS_ZONE_NAMES, enum_member_name

__all__ = ["ScheduleRecurrence", "TimeZone", "zone_name"]

JSON = dict[str, Any]

# Azure ML's TimeZone enum: a member's name is its value without non-alphanumerics.
TimeZone = Enum(  # type: ignore[misc]  # members computed from the 131 Windows names
    "TimeZone",
    [(enum_member_name(v), v) for v in WINDOWS_ZONE_NAMES],
    module="watcherd.sdk",
)


def zone_name(value: object) -> Any:
    """A zone as the API takes it: an Enum member's value, anything else unchanged."""
    return value.value if isinstance(value, Enum) else value


def _checked(call: Any) -> Any:
    try:
        return call()
    except _errors.ValidationError as exc:
        raise ValidationError(exc.message, key_path=exc.key or None) from None


class ScheduleRecurrence:
    """How often and when a time schedule fires (Azure ML's `ScheduleRecurrence`).

    Raises:
        ValidationError: at construction, for `start_time` and `time_of_day` (Azure ML's
            messages); at `validate()`, for the rules of SPEC §3.1.
    """

    def __init__(
        self,
        frequency: str,
        interval: int,
        start_time: datetime | str | None = None,
        time_zone: Enum | str | None = None,
        hours: list[int] | None = None,
        minutes: list[int] | None = None,
        week_days: list[str] | None = None,
        time_of_day: str | None = None,
    ) -> None:
        if time_of_day is not None:
            # Only the construction checks: a stand-in Day/1 trigger passes rules 1–9.
            rec = _checked(
                lambda: make_recurrence(
                    "Day", 1, start_time, None, hours, minutes, None, time_of_day
                )
            )
            hours, minutes = list(rec.hours or ()), list(rec.minutes or ())
        elif start_time is not None:
            _checked(lambda: make_recurrence("Day", 1, start_time))
        if isinstance(start_time, datetime):
            # Azure ML keeps a (naive) datetime as this text, without microseconds.
            start_time = start_time.strftime("%Y-%m-%dT%H:%M:%S")
        if start_time is not None and time_zone is None:
            time_zone = TimeZone["UTC"]  # Azure ML's only default zone: a start_time's
        self.frequency = frequency
        self.interval = interval
        self.start_time = start_time
        self.time_zone = time_zone
        self.hours = hours
        self.minutes = minutes
        self.week_days = week_days
        # Azure ML keeps no time_of_day: it is hours/minutes now. Setting this attribute
        # later means "also this time of day", which validate() refuses as Azure ML would.
        self.time_of_day: str | None = None

    def validate(self) -> None:
        """Check every rule of SPEC §3.1; the first failure raises ValidationError."""
        _checked(
            lambda: make_recurrence(
                self.frequency,
                self.interval,
                self.start_time,
                zone_name(self.time_zone),
                self.hours,
                self.minutes,
                self.week_days,
                self.time_of_day,
            )
        )

    @classmethod
    def _from_dict(cls, data: Mapping[str, Any]) -> ScheduleRecurrence:
        """The daemon's (already valid) recurrence, without re-checking it."""
        self = cls.__new__(cls)
        self.frequency = data["frequency"]
        self.interval = data["interval"]
        self.start_time = data.get("start_time")
        self.time_zone = data.get("time_zone")
        self.hours = data.get("hours")
        self.minutes = data.get("minutes")
        self.week_days = data.get("week_days")
        self.time_of_day = None
        return self

    def to_dict(self) -> JSON:
        """The `recurrence` object of the API (unset keys left out)."""
        start = self.start_time
        if isinstance(start, datetime):
            start = start.isoformat(timespec="seconds")
        out: JSON = {"frequency": self.frequency, "interval": self.interval}
        extra = {
            "start_time": start,
            "time_zone": zone_name(self.time_zone),
            "hours": self.hours,
            "minutes": self.minutes,
            "week_days": self.week_days,
            "time_of_day": self.time_of_day,
        }
        out.update({k: v for k, v in extra.items() if v is not None})
        return out

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items())
        return f"ScheduleRecurrence({args})"
